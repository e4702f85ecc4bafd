"""Wire-format codec with an in-memory registry; the registry client over a fake HTTP transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec, contract
from schemas.codec import (
    AvroDeserializer,
    AvroSerializer,
    RegistryPrefetch,
    from_epoch_ms,
    header,
    to_epoch_ms,
)
from schemas.errors import (
    BadMagicByte,
    BodyDecodeError,
    DecodeError,
    EmptyValue,
    EncodeError,
    IncompatibleSchema,
    RegistryError,
    RegistryUnavailable,
    SchemaError,
    SchemaMismatch,
    TrailingBytes,
    TruncatedBody,
    TruncatedHeader,
    UnknownSchemaId,
)
from schemas.registry import InMemoryRegistry, RegistryClient, register_all
from schemas.topics import TOPIC_RECORDS
from settlement.errors import SettleError
from tests.unit.test_reconcile_processor import FlakyRegistry

LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
T0 = 1_764_040_000_123  # 2025-11-25, epoch ms
ALL_BYTES = bytes(range(256))


def requested(**overrides: Any) -> dict[str, Any]:
    record = {
        "payment_id": "pay-000123",
        "merchant_id": "m-42",
        "order_id": "o-9",
        "payer_id": "u-7",
        "amount_minor": 12345,
        "currency": "CNY",
        "method": "ALIPAY",
        "interface": "APP",
        "region": "CN",
        "created_at": T0,
        "metadata": {"campaign": "双十一", "emoji": "💳"},
    }
    record.update(overrides)
    return record


def routed(**overrides: Any) -> dict[str, Any]:
    record = requested(channel="ALIPAY", rule_id="rule-cn-alipay", routed_at=T0 + 5)
    record.update(overrides)
    return record


def reconciliation(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "result_id": "r-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "channel": "CARD",
        "outcome": "MATCHED",
        "terminal": True,
        "late": False,
        "expected_amount_minor": 100,
        "expected_currency": "KWD",
        "confirmed_amount_minor": 100,
        "confirmed_currency": "KWD",
        "confirmation_id": "c-1",
        "channel_txn_id": "t-1",
        "created_at": T0,
        "decided_at": T0 + 1000,
        "detail": "",
    }
    record.update(overrides)
    return record


def item(payment_id: str, gross: int, fee: int) -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "gross_minor": gross,
        "fee_minor": fee,
        "net_minor": gross - fee,
        "matched_at": T0,
    }


def merchant(**overrides: Any) -> dict[str, Any]:
    record = {
        "merchant_id": "m-1",
        "name": "Café Zürich 北京",
        "status": "SUSPENDED",
        "settlement_currency": "CHF",
        "updated_at": 0,
    }
    return record | overrides


def rejected(**overrides: Any) -> dict[str, Any]:
    record = {
        "payment_id": "",
        "merchant_id": None,
        "reasons": [{"code": "MISSING_PAYMENT_ID", "detail": "payment_id is empty"}],
        "request": None,
        "stage": "validate",
        "rejected_at": T0,
    }
    return record | overrides


def confirmation(**overrides: Any) -> dict[str, Any]:
    record = {
        "confirmation_id": "c",
        "channel": "UNIONPAY",
        "channel_txn_id": "t",
        "payment_id": "p",
        "status": "FAILED",
        "amount_minor": 1,
        "currency": "CNY",
        "confirmed_at": T0,
        "decline_code": "51",
    }
    return record | overrides


def batch(**overrides: Any) -> dict[str, Any]:
    record = {
        "batch_id": "b",
        "merchant_id": "m",
        "currency": "JPY",
        "window_start": T0,
        "window_end": T0 + 3_600_000,
        "payment_count": 2,
        "gross_minor": 300,
        "fee_minor": 3,
        "net_minor": 297,
        "closed_at": T0 + 3_600_001,
        "items": [item("p1", 100, 1), item("p2", 200, 2)],
    }
    return record | overrides


def dead_letter(**overrides: Any) -> dict[str, Any]:
    record = {
        "source_topic": "payments.requested",
        "source_partition": 2_147_483_647,
        "source_offset": LONG_MAX,
        "original_key": ALL_BYTES,
        "original_value": b"\x00\x00\x00\x00\x07garbage",
        "stage": "validate",
        "error_type": "TruncatedBody",
        "error_message": "body ends early",
        "failed_at": T0,
        "reason": "TRUNCATED_BODY",
    }
    return record | overrides


def without(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in fields}


RECONCILIATION_NULLS = dict.fromkeys(
    (
        "merchant_id",
        "channel",
        "expected_amount_minor",
        "expected_currency",
        "confirmed_amount_minor",
        "confirmed_currency",
        "confirmation_id",
        "channel_txn_id",
        "created_at",
    )
)
UTC_PLUS_8 = timezone(timedelta(hours=8))

# (record name, sample, expected after decode with defaults filled; None = same as sample)
SAMPLES: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
    ("PaymentRequested", requested(), None),
    ("PaymentRequested", requested(metadata={}, amount_minor=0, currency="JPY"), None),
    ("PaymentRequested", requested(amount_minor=LONG_MAX, method="CARD", interface="H5"), None),
    ("PaymentRequested", requested(amount_minor=LONG_MIN, payer_id="", order_id="注文-①"), None),
    ("PaymentRequested", without(requested(), "metadata"), requested(metadata={})),
    (
        "PaymentRequested",
        requested(created_at=datetime(2025, 1, 1, 8, tzinfo=UTC_PLUS_8)),
        requested(created_at=datetime(2025, 1, 1, tzinfo=UTC)),
    ),
    ("Merchant", merchant(), None),
    ("PaymentRejected", rejected(), None),
    (
        "PaymentRejected",
        without(rejected(payment_id="p", reasons=[], stage="route"), "merchant_id", "request"),
        rejected(payment_id="p", reasons=[], stage="route"),
    ),
    (
        "PaymentRejected",
        rejected(
            payment_id="p",
            merchant_id="m",
            reasons=[{"code": "A", "detail": "a"}, {"code": "B", "detail": "b"}],
            request=requested(),
        ),
        None,
    ),
    ("RoutedPayment", routed(), None),
    (
        "RoutedPayment",
        routed(channel="WECHAT_PAY", method="WECHAT_PAY", interface="MOBILE_WEB", metadata={}),
        None,
    ),
    ("ChannelConfirmation", confirmation(), None),
    (
        "ChannelConfirmation",
        without(confirmation(status="SUCCEEDED", amount_minor=LONG_MAX), "decline_code"),
        confirmation(status="SUCCEEDED", amount_minor=LONG_MAX, decline_code=None),
    ),
    ("ReconciliationResult", reconciliation(), None),
    (
        "ReconciliationResult",
        without(
            reconciliation(outcome="ORPHAN_CONFIRMATION", terminal=False),
            "late",
            "detail",
            *RECONCILIATION_NULLS,
        ),
        reconciliation(outcome="ORPHAN_CONFIRMATION", terminal=False) | RECONCILIATION_NULLS,
    ),
    (
        "ReconciliationResult",
        reconciliation(
            outcome="LATE_CONFIRMATION",
            late=True,
            expected_amount_minor=LONG_MIN,
            detail="ümlaut ✓",
        ),
        None,
    ),
    ("SettlementBatch", batch(), None),
    (
        "SettlementBatch",
        batch(currency="CNY", payment_count=0, gross_minor=0, fee_minor=0, net_minor=0, items=[]),
        None,
    ),
    ("DeadLetter", dead_letter(), None),
    (
        "DeadLetter",
        without(dead_letter(original_key=None, original_value=b"", error_message=""), "reason"),
        dead_letter(original_key=None, original_value=b"", error_message="", reason=""),
    ),
]


def as_ms(value: Any) -> Any:
    """Replace datetimes by epoch ms, recursively, so written ints and read datetimes compare."""
    if isinstance(value, datetime):
        return to_epoch_ms(value)
    if isinstance(value, dict):
        return {k: as_ms(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_ms(v) for v in value]
    return value


def with_defaults(record_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Return a record as a reader sees it: absent fields filled with their defaults."""
    named: dict[str, Any] = {}

    def fill(schema: Any, value: Any) -> Any:
        if isinstance(schema, str):
            return fill(named[schema], value) if schema in named else value
        if isinstance(schema, list):  # the contract's unions are all ["null", X]
            return None if value is None else fill(schema[-1], value)
        kind = schema.get("type")
        if kind in ("record", "enum"):
            named[schema["name"]] = named[f"{schema['namespace']}.{schema['name']}"] = schema
        if kind == "record":
            return {
                f["name"]: fill(f["type"], value[f["name"]]) if f["name"] in value else f["default"]
                for f in schema["fields"]
            }
        if kind == "array":
            return [fill(schema["items"], v) for v in value]
        if kind == "map":
            return {k: fill(schema["values"], v) for k, v in value.items()}
        return value

    return dict(fill(json.loads(contract.schema_str_for(record_name)), record))


def topic_of(record_name: str) -> str:
    return next(t for t, r in TOPIC_RECORDS.items() if r == record_name)


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def encode(registry: InMemoryRegistry) -> Callable[[str, dict[str, Any]], bytes]:
    serializers: dict[str, AvroSerializer] = {}

    def encode(record_name: str, record: dict[str, Any]) -> bytes:
        if record_name not in serializers:
            serializers[record_name] = AvroSerializer(registry, topic_of(record_name), record_name)
        return serializers[record_name].encode(record)

    return encode


# --- round trips --------------------------------------------------------------------------------


def test_samples_cover_every_topic_record() -> None:
    assert {name for name, _, _ in SAMPLES} == set(TOPIC_RECORDS.values())


@pytest.mark.parametrize(("record_name", "sample", "expected"), SAMPLES)
def test_round_trip(
    registry: InMemoryRegistry,
    encode: Callable[[str, dict[str, Any]], bytes],
    record_name: str,
    sample: dict[str, Any],
    expected: dict[str, Any] | None,
) -> None:
    data = encode(record_name, sample)
    schema_id, decoded = AvroDeserializer(registry).decode_with_id(data)
    assert data[:5] == header(schema_id)
    wanted = with_defaults(record_name, expected if expected is not None else sample)
    assert as_ms(decoded) == as_ms(wanted)


def test_timestamps_decode_as_aware_utc_datetimes(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    decoded = AvroDeserializer(registry).decode(encode("PaymentRequested", requested()))
    assert decoded["created_at"] == from_epoch_ms(T0)
    assert decoded["created_at"].tzinfo is not None
    assert decoded["created_at"].utcoffset() == timedelta(0)


def test_decoded_record_re_encodes_to_the_same_bytes(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    for record_name, sample, _ in SAMPLES:
        data = encode(record_name, sample)
        assert encode(record_name, AvroDeserializer(registry).decode(data)) == data


def test_serializer_registers_lazily_once(registry: InMemoryRegistry) -> None:
    serializer = AvroSerializer(registry, "payments.requested", "PaymentRequested")
    assert registry.subjects() == [] and serializer.schema_id is None
    serializer.encode(requested())
    serializer.encode(requested())
    assert registry.subjects() == ["payments.requested-value"]
    assert registry.requests == 1
    assert registry.get_schema(serializer.schema_id or 0) == contract.schema_str_for(
        "PaymentRequested"
    )


def test_routed_topics_share_one_schema_id(registry: InMemoryRegistry) -> None:
    ids = {
        AvroSerializer(registry, t, "RoutedPayment").encode(routed())[:5]
        for t, r in TOPIC_RECORDS.items()
        if r == "RoutedPayment"
    }
    assert len(ids) == 1


def test_serializer_without_auto_register_looks_up(registry: InMemoryRegistry) -> None:
    serializer = AvroSerializer(registry, "merchants", "Merchant", auto_register=False)
    sample = merchant()
    with pytest.raises(RegistryError):
        serializer.encode(sample)
    registry.register("merchants-value", contract.schema_str_for("Merchant"))
    decoded = AvroDeserializer(registry).decode(serializer.encode(sample))
    assert decoded["name"] == sample["name"]


def test_serializer_refuses_a_topic_carrying_another_record(registry: InMemoryRegistry) -> None:
    with pytest.raises(SchemaError, match="carries PaymentRequested"):
        AvroSerializer(registry, "payments.requested", "Merchant")


def test_deserializer_fetches_each_writer_schema_once(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    data = encode("PaymentRequested", requested())
    deserializer = AvroDeserializer(registry)
    before = registry.requests
    for _ in range(5):
        deserializer.decode(data)
    assert registry.requests == before + 1


# --- registry lookups done ahead, off the event loop ---------------------------------------------


def test_deserializer_says_which_values_need_the_registry_and_prefetch_fills_it(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    data = encode("PaymentRequested", requested())
    deserializer = AvroDeserializer(registry)
    assert deserializer.needs_registry(data)
    for bad in (None, b"", b"{}", b"\x00\x00"):  # fail on their own, no lookup could help
        assert not deserializer.needs_registry(bad)
        deserializer.prefetch(bad)
    before = registry.requests
    deserializer.prefetch(data)
    assert registry.requests == before + 1
    assert not deserializer.needs_registry(data)
    deserializer.prefetch(data)  # nothing left to fetch
    deserializer.decode(data)
    assert registry.requests == before + 1


def test_an_unknown_id_found_by_prefetch_is_not_asked_about_again_by_its_decode(
    registry: InMemoryRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(codec.time, "monotonic", lambda: clock[0])
    bogus = b"\x00\x00\x00\x03\xe7" + b"\x02a"
    deserializer = AvroDeserializer(registry)
    deserializer.prefetch(bogus)  # the lookup's SchemaNotFound is swallowed and noted
    assert registry.requests == 1
    assert not deserializer.needs_registry(bogus)
    with pytest.raises(UnknownSchemaId, match="asked just before"):
        deserializer.decode(bogus)
    assert registry.requests == 1
    # one decode only: the next record with that id asks again (it may be registered now)
    assert deserializer.needs_registry(bogus)
    with pytest.raises(UnknownSchemaId, match="unknown to the registry"):
        deserializer.decode(bogus)
    assert registry.requests == 2
    # a note no decode took goes stale
    deserializer.prefetch(bogus)
    clock[0] += codec.UNKNOWN_ID_TTL_S
    assert deserializer.needs_registry(bogus)
    with pytest.raises(UnknownSchemaId, match="unknown to the registry"):
        deserializer.decode(bogus)
    assert registry.requests == 4


def test_an_id_registered_after_a_bogus_record_used_it_decodes(
    registry: InMemoryRegistry,
) -> None:
    deserializer = AvroDeserializer(registry)
    early = header(1) + b"\x02a"  # id 1 before anything is registered
    deserializer.prefetch(early)
    with pytest.raises(UnknownSchemaId):
        deserializer.decode(early)
    data = AvroSerializer(registry, "payments.requested", "PaymentRequested").encode(requested())
    assert data[:5] == header(1)
    deserializer.prefetch(data)
    assert deserializer.decode(data)["payment_id"] == requested()["payment_id"]


def test_prefetch_resolves_serializers_and_writer_ids_once_and_survives_an_outage() -> None:
    registry = FlakyRegistry()
    data = AvroSerializer(registry, "payments.requested", "PaymentRequested").encode(requested())
    rejected_ser = AvroSerializer(registry, "payments.rejected", "PaymentRejected")
    dlq = AvroSerializer(registry, "payments.dlq", "DeadLetter")
    decoder = AvroDeserializer(registry)
    prefetch = RegistryPrefetch([decoder], [rejected_ser, dlq])
    assert prefetch.needed(data)
    registry.down = True
    prefetch.fetch(data)  # errors are left for the processor: nothing raised here
    assert prefetch.needed(data) and not rejected_ser.resolved
    with pytest.raises(RegistryUnavailable):
        decoder.decode(data)  # the processor meets the outage and retries
    registry.down = False
    prefetch.fetch(data)
    assert rejected_ser.resolved and dlq.resolved
    assert not prefetch.needed(data)
    before = registry.requests
    decoder.decode(data)
    rejected_ser.encode(rejected())
    assert registry.requests == before  # no lookups left for the event loop


# --- schema evolution ---------------------------------------------------------------------------


def old_payment_requested() -> str:
    """PaymentRequested as an earlier producer wrote it: no metadata, plus a since-removed field."""
    schema = json.loads(contract.schema_str_for("PaymentRequested"))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "metadata"]
    schema["fields"].append({"name": "legacy_flag", "type": "boolean", "doc": "gone"})
    return json.dumps(schema)


def test_reader_schema_fills_defaults_and_drops_unknown_fields(registry: InMemoryRegistry) -> None:
    old_id = registry.register("payments.requested-value", old_payment_requested())
    old = {k: v for k, v in requested().items() if k != "metadata"} | {"legacy_flag": True}
    from fastavro import parse_schema, schemaless_writer

    body = bytearray(header(old_id))
    from io import BytesIO

    out = BytesIO()
    schemaless_writer(out, parse_schema(json.loads(old_payment_requested())), old)
    data = bytes(body) + out.getvalue()
    assert "legacy_flag" in AvroDeserializer(registry).decode(data)
    decoded = AvroDeserializer(registry, "PaymentRequested").decode(data)
    assert decoded["metadata"] == {} and "legacy_flag" not in decoded


def test_unresolvable_writer_schema_is_a_schema_mismatch(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    data = encode("Merchant", merchant())
    with pytest.raises(SchemaMismatch) as caught:
        AvroDeserializer(registry, "PaymentRequested").decode(data)
    assert caught.value.reason == "SCHEMA_MISMATCH"


def test_writer_schema_that_is_not_avro_is_a_schema_mismatch(registry: InMemoryRegistry) -> None:
    schema_id = registry.register("x-value", 'syntax = "proto3"; message M {}')
    with pytest.raises(SchemaMismatch):
        AvroDeserializer(registry).decode(header(schema_id) + b"\x00")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (None, EmptyValue, "EMPTY_VALUE"),
        (b"", EmptyValue, "EMPTY_VALUE"),
        (b"\x01\x00\x00\x00\x01\x02", BadMagicByte, "BAD_MAGIC_BYTE"),
        (b'{"payment_id": "p"}', BadMagicByte, "BAD_MAGIC_BYTE"),
        (b"\xff", BadMagicByte, "BAD_MAGIC_BYTE"),
        (b"\x00", TruncatedHeader, "TRUNCATED_HEADER"),
        (b"\x00\x00\x00\x01", TruncatedHeader, "TRUNCATED_HEADER"),
        (b"\x00\x00\x00\x03\xe7" + b"\x02a", UnknownSchemaId, "UNKNOWN_SCHEMA_ID"),
        (b"\x00\xff\xff\xff\xff", UnknownSchemaId, "UNKNOWN_SCHEMA_ID"),
    ],
)
def test_bad_header(
    registry: InMemoryRegistry, data: bytes | None, error: type[DecodeError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        AvroDeserializer(registry).decode(data)
    assert caught.value.reason == reason
    assert isinstance(caught.value, SchemaError) and isinstance(caught.value, SettleError)


@pytest.mark.parametrize(("record_name", "sample", "_"), SAMPLES)
def test_every_truncation_of_a_body_is_truncated_body(
    registry: InMemoryRegistry,
    encode: Callable[[str, dict[str, Any]], bytes],
    record_name: str,
    sample: dict[str, Any],
    _: Any,
) -> None:
    data = encode(record_name, sample)
    deserializer = AvroDeserializer(registry)
    for end in range(5, len(data)):
        with pytest.raises(TruncatedBody) as caught:
            deserializer.decode(data[:end])
        assert caught.value.reason == "TRUNCATED_BODY"
        assert caught.value.schema_id == int.from_bytes(data[1:5], "big")


@pytest.mark.parametrize("extra", [b"\x00", b"\x02a", b"garbage after the body"])
def test_trailing_bytes_are_refused(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes], extra: bytes
) -> None:
    data = encode("PaymentRequested", requested())
    with pytest.raises(TrailingBytes) as caught:
        AvroDeserializer(registry).decode(data + extra)
    assert caught.value.reason == "TRAILING_BYTES"


def test_malformed_bodies_are_body_decode_errors(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    data = encode("Merchant", merchant(name="ab"))
    name_at = data.index(b"ab")
    bad_utf8 = data[:name_at] + b"\xff\xfe" + data[name_at + 2 :]
    status_at = name_at + 2  # enum index follows the name
    bad_enum = data[:status_at] + b"\x0e" + data[status_at + 1 :]  # index 7 of 2 symbols
    for bad in (bad_utf8, bad_enum):
        with pytest.raises(BodyDecodeError) as caught:
            AvroDeserializer(registry).decode(bad)
        assert caught.value.reason == "BODY_DECODE_ERROR"
        assert isinstance(caught.value.__cause__, Exception)


@pytest.fixture(scope="module")
def known_registry() -> tuple[InMemoryRegistry, list[int]]:
    registry = InMemoryRegistry()
    ids = [
        registry.register(f"{n}-value", contract.schema_str_for(n))
        for n in sorted(TOPIC_RECORDS.values())
    ]
    return registry, ids


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(
    known_registry: tuple[InMemoryRegistry, list[int]], data: bytes
) -> None:
    try:
        assert isinstance(AvroDeserializer(known_registry[0]).decode(data), dict)
    except DecodeError as exc:
        assert exc.reason


@settings(max_examples=3000, deadline=None)
@given(index=st.integers(min_value=0, max_value=7), body=st.binary(max_size=300))
def test_arbitrary_bodies_under_a_known_id_decode_or_raise_decode_error(
    known_registry: tuple[InMemoryRegistry, list[int]], index: int, body: bytes
) -> None:
    registry, ids = known_registry
    schema_id = ids[index % len(ids)]
    try:
        assert isinstance(AvroDeserializer(registry).decode(header(schema_id) + body), dict)
    except DecodeError as exc:
        assert exc.schema_id == schema_id and exc.reason


# --- encode errors ------------------------------------------------------------------------------


PR = "PaymentRequested"
RR = "ReconciliationResult"
ENCODE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    (PR, without(requested(), "currency"), f"{PR}.currency"),
    (PR, requested(amount_minor=12.5), f"{PR}.amount_minor"),
    (PR, requested(amount_minor=100.0), f"{PR}.amount_minor"),
    (PR, requested(amount_minor=True), f"{PR}.amount_minor"),
    (PR, requested(amount_minor="100"), f"{PR}.amount_minor"),
    (PR, requested(amount_minor=LONG_MAX + 1), f"{PR}.amount_minor"),
    (PR, requested(amount_minor=None), f"{PR}.amount_minor"),
    (PR, requested(currency=978), f"{PR}.currency"),
    (PR, requested(method="PAYPAL"), f"{PR}.method"),
    (PR, requested(created_at=datetime(2025, 1, 1)), f"{PR}.created_at"),
    (PR, requested(created_at=1.7e12), f"{PR}.created_at"),
    (PR, requested(metadata={"k": 1}), f"{PR}.metadata['k']"),
    (PR, requested(metdata={}), PR),
    (RR, reconciliation(expected_amount_minor=1.0), f"{RR}.expected_amount_minor"),
    (RR, reconciliation(terminal=1), f"{RR}.terminal"),
    (
        "SettlementBatch",
        batch(items=[item("p1", 100, 1), item("p2", 1, 0) | {"fee_minor": 0.5}]),
        "SettlementBatch.items[1].fee_minor",
    ),
    ("SettlementBatch", batch(payment_count=2**31), "SettlementBatch.payment_count"),
    (
        "PaymentRejected",
        rejected(request=requested(amount_minor=False)),
        "PaymentRejected.request.amount_minor",
    ),
    ("DeadLetter", dead_letter(original_value="not bytes"), "DeadLetter.original_value"),
]


@pytest.mark.parametrize(("record_name", "record", "field"), ENCODE_ERRORS)
def test_encode_refuses_records_that_do_not_match(
    encode: Callable[[str, dict[str, Any]], bytes],
    record_name: str,
    record: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(EncodeError) as caught:
        encode(record_name, record)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert isinstance(caught.value, SchemaError) and isinstance(caught.value, SettleError)


# --- epoch helpers ------------------------------------------------------------------------------


def test_epoch_ms_helpers() -> None:
    assert to_epoch_ms(T0) == T0
    assert to_epoch_ms(from_epoch_ms(T0)) == T0
    assert to_epoch_ms(from_epoch_ms(-1)) == -1
    assert from_epoch_ms(0) == datetime(1970, 1, 1, tzinfo=UTC)
    # Sub-millisecond parts are truncated towards the past, in integer arithmetic.
    assert to_epoch_ms(datetime(1970, 1, 1, 0, 0, 0, 1999, tzinfo=UTC)) == 1
    assert (
        to_epoch_ms(datetime(2025, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))) == 1735689600000
    )
    for bad in (datetime(2025, 1, 1), True, 1.5, "1"):
        with pytest.raises(SchemaError):
            to_epoch_ms(bad)  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        from_epoch_ms(1.5)  # type: ignore[arg-type]


# --- registry client over a fake transport ------------------------------------------------------


class FakeRegistryHttp:
    """A scripted Confluent-compatible registry behind httpx.MockTransport."""

    def __init__(self) -> None:
        self.up = True
        self.requests: list[httpx.Request] = []
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.levels: dict[str, str] = {}
        self.fail_5xx = 0
        self.incompatible = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if self.fail_5xx:
            self.fail_5xx -= 1
            return httpx.Response(503, json={"error_code": 50301, "message": "busy"})
        parts = request.url.path.removeprefix("/apis/ccompat/v7/").split("/")
        body = json.loads(request.content) if request.content else {}
        if request.method == "POST" and parts[0] == "subjects" and parts[2:] == ["versions"]:
            if self.incompatible and parts[1] in self.subjects:
                return httpx.Response(409, json={"error_code": 409, "message": "incompatible"})
            schema_id = next((i for i, s in self.schemas.items() if s == body["schema"]), None)
            if schema_id is None:
                schema_id = len(self.schemas) + 1
                self.schemas[schema_id] = body["schema"]
            self.subjects.setdefault(parts[1], []).append(schema_id)
            return httpx.Response(200, json={"id": schema_id})
        if request.method == "GET" and parts[:2] == ["schemas", "ids"]:
            if int(parts[2]) not in self.schemas:
                return httpx.Response(404, json={"error_code": 40403, "message": "not found"})
            return httpx.Response(200, json={"schema": self.schemas[int(parts[2])]})
        if parts[0] == "config":
            if parts[1] not in self.subjects:  # Apicurio before 3.x: 404 for a new subject
                return httpx.Response(404, json={"error_code": 40401, "message": "no subject"})
            if request.method == "PUT":
                self.levels[parts[1]] = body["compatibility"]
                return httpx.Response(200, json=body)
            return httpx.Response(200, json={"compatibilityLevel": self.levels[parts[1]]})
        if request.method == "GET" and parts == ["subjects"]:
            return httpx.Response(200, json=sorted(self.subjects))
        return httpx.Response(404, json={"error_code": 404, "message": "no route"})


@pytest.fixture
def http() -> FakeRegistryHttp:
    return FakeRegistryHttp()


@pytest.fixture
def client(http: FakeRegistryHttp) -> RegistryClient:
    return RegistryClient(
        "http://127.0.0.1:9/apis/ccompat/v7",
        username="svc",
        password="s3cret",
        backoff_seconds=0,
        transport=httpx.MockTransport(http),
    )


def test_client_register_speaks_the_confluent_api(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    schema = contract.schema_str_for("Merchant")
    assert client.register("merchants-value", schema) == 1
    assert client.register("merchants-value", schema) == 1
    assert len(http.requests) == 1  # second call served from the cache
    sent = http.requests[0]
    assert sent.url.path == "/apis/ccompat/v7/subjects/merchants-value/versions"
    assert sent.headers["content-type"] == "application/vnd.schemaregistry.v1+json"
    assert sent.headers["authorization"].startswith("Basic ")
    assert json.loads(sent.content) == {"schema": schema}


def test_client_maps_409_to_incompatible_schema(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    client.register("s", contract.schema_str_for("Merchant"))
    http.incompatible = True
    with pytest.raises(IncompatibleSchema) as caught:
        client.register("s", contract.schema_str_for("DeadLetter"))
    assert caught.value.status_code == 409


def test_client_retries_5xx_then_succeeds(client: RegistryClient, http: FakeRegistryHttp) -> None:
    http.fail_5xx = 2
    assert client.register("s", contract.schema_str_for("Merchant")) == 1
    assert len(http.requests) == 3


def test_client_gives_up_with_registry_unavailable_but_cache_keeps_working(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    serializer = AvroSerializer(client, "merchants", "Merchant")
    data = serializer.encode(merchant())
    deserializer = AvroDeserializer(client)
    deserializer.decode(data)
    http.up = False
    assert serializer.encode(merchant()) == data
    assert AvroDeserializer(client).decode(data)["merchant_id"] == "m-1"
    before = len(http.requests)
    with pytest.raises(RegistryUnavailable) as caught:
        client.get_schema(99)
    assert len(http.requests) == before + 4
    message = str(caught.value)
    assert "127.0.0.1:9" in message and "4 times" in message
    assert "s3cret" not in message and "svc" not in repr(client)


def test_credentials_in_the_url_never_reach_messages() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = RegistryClient(
        "http://svc:s3cret@127.0.0.1:9/apis/ccompat/v7",
        attempts_max=2,
        backoff_seconds=0,
        transport=httpx.MockTransport(refuse),
    )
    with pytest.raises(RegistryUnavailable) as caught:
        down.get_schema(1)
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(down)
    assert "127.0.0.1:9" in str(caught.value)


def test_unknown_id_from_a_real_client_is_unknown_schema_id(client: RegistryClient) -> None:
    with pytest.raises(UnknownSchemaId):
        AvroDeserializer(client).decode(header(42) + b"\x00")


def test_register_all_handles_apicurio_config_on_new_subjects(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    ids = register_all(client)
    assert set(ids) == {f"{t}-value" for t in TOPIC_RECORDS}
    assert http.levels == {s: "BACKWARD" for s in ids}
    assert len(set(ids.values())) == len(set(TOPIC_RECORDS.values()))
    assert register_all(client) == ids
    assert client.get_compatibility("merchants-value") == "BACKWARD"
    assert client.get_compatibility("nope") is None
    assert client.subjects() == sorted(ids)


def test_register_all_with_the_in_memory_registry(registry: InMemoryRegistry) -> None:
    ids = register_all(registry)
    assert register_all(registry) == ids
    assert all(registry.get_compatibility(s) == "BACKWARD" for s in ids)
