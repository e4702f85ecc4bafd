"""Bad input: malformed values are typed DecodeErrors, mismatching records EncodeErrors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import contract
from schemas.codec import AvroDeserializer, header
from schemas.errors import (
    BadMagicByte,
    BodyDecodeError,
    DecodeError,
    EmptyValue,
    EncodeError,
    SchemaError,
    TrailingBytes,
    TruncatedBody,
    TruncatedHeader,
    UnknownSchemaId,
)
from schemas.registry import InMemoryRegistry
from schemas.topics import TOPIC_RECORDS
from settlement.errors import SettleError
from tests.support.codec_samples import (
    LONG_MAX,
    SAMPLES,
    batch,
    dead_letter,
    encoder,
    item,
    merchant,
    reconciliation,
    rejected,
    requested,
    without,
)


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def encode(registry: InMemoryRegistry) -> Callable[[str, dict[str, Any]], bytes]:
    return encoder(registry)


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
