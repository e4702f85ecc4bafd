"""Unit tests for settlement.model: plain records and their Avro-dict conversion."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.errors import SettleError
from settlement.model import (
    CHANNELS,
    INTERFACES,
    MERCHANT_STATUSES,
    PAYMENT_METHODS,
    Merchant,
    PaymentRequest,
    RecordError,
    epoch_ms,
)

CREATED_AT_MS = 1_700_000_000_123


def payment_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "payer_id": "u-1",
        "amount_minor": 12345,
        "currency": "CNY",
        "method": "ALIPAY",
        "interface": "APP",
        "region": "CN",
        "created_at_ms": CREATED_AT_MS,
        "metadata": {"channel_hint": "x"},
        "signature_key_id": "m-1.k1",
        "signature": "ab" * 32,
    }
    record.update(overrides)
    return record


def merchant_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "merchant_id": "m-1",
        "name": "Tea House",
        "status": "ACTIVE",
        "settlement_currency": "CNY",
        "updated_at_ms": CREATED_AT_MS,
    }
    record.update(overrides)
    return record


def test_constant_sets() -> None:
    assert {"ALIPAY", "WECHAT_PAY", "UNIONPAY", "CARD"} == PAYMENT_METHODS
    assert {"APP", "PC_WEB", "MOBILE_WEB", "H5"} == INTERFACES
    assert {"alipay", "wechat_pay", "unionpay", "card"} == CHANNELS
    assert {"ACTIVE", "SUSPENDED"} == MERCHANT_STATUSES


def test_payment_request_round_trips_through_its_record() -> None:
    record = payment_record()
    request = PaymentRequest.from_record(record)
    assert request.amount_minor == 12345
    assert request.metadata == {"channel_hint": "x"}
    assert request.to_record() == record


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
        datetime(2023, 11, 15, 6, 13, 20, 123000, tzinfo=timezone(timedelta(hours=8))),
        # Sub-millisecond digits are floored, exactly like fastavro's timestamp-millis writer.
        datetime(2023, 11, 14, 22, 13, 20, 123999, tzinfo=UTC),
    ],
)
def test_created_at_accepts_an_aware_datetime(moment: datetime) -> None:
    request = PaymentRequest.from_record(payment_record(created_at_ms=moment))
    assert request.created_at_ms == CREATED_AT_MS
    assert request.to_record()["created_at_ms"] == CREATED_AT_MS


def avro_payment_record(**overrides: Any) -> dict[str, Any]:
    """The record as the Avro schema names it: the time is `created_at`."""
    record = payment_record(**overrides)
    record["created_at"] = record.pop("created_at_ms")
    return record


@pytest.mark.parametrize(
    "created_at",
    [CREATED_AT_MS, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)],
)
def test_created_at_is_read_under_its_avro_name(created_at: object) -> None:
    request = PaymentRequest.from_record(avro_payment_record(created_at_ms=created_at))
    assert request.created_at_ms == CREATED_AT_MS
    assert request == PaymentRequest.from_record(payment_record())


def test_both_time_names_must_agree() -> None:
    both = payment_record(created_at=CREATED_AT_MS)
    assert PaymentRequest.from_record(both).created_at_ms == CREATED_AT_MS
    with pytest.raises(RecordError, match="created_at and created_at_ms disagree"):
        PaymentRequest.from_record(payment_record(created_at=CREATED_AT_MS + 1))


def test_missing_time_is_named_by_its_avro_name() -> None:
    record = payment_record()
    del record["created_at_ms"]
    with pytest.raises(RecordError, match=r"missing field\(s\): created_at$"):
        PaymentRequest.from_record(record)


def test_naive_datetime_is_refused() -> None:
    naive = datetime(2023, 11, 14, 22, 13, 20)
    with pytest.raises(RecordError, match="created_at_ms is a naive datetime") as info:
        PaymentRequest.from_record(payment_record(created_at_ms=naive))
    assert isinstance(info.value, SettleError)


def test_epoch_ms_is_exact_before_and_after_the_epoch() -> None:
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_ms(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1
    far = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert epoch_ms(far) == 253402300799999
    with pytest.raises(ValueError):
        epoch_ms(datetime(2020, 1, 1))


def test_missing_fields_are_named() -> None:
    record = payment_record()
    del record["currency"], record["payer_id"]
    with pytest.raises(RecordError, match="payer_id, currency"):
        PaymentRequest.from_record(record)


def test_metadata_may_be_absent_or_null_but_not_a_non_map() -> None:
    record = payment_record()
    del record["metadata"]
    assert PaymentRequest.from_record(record).metadata == {}
    assert PaymentRequest.from_record(payment_record(metadata=None)).metadata == {}
    with pytest.raises(RecordError, match="metadata must be a map"):
        PaymentRequest.from_record(payment_record(metadata=[("a", "b")]))


def test_unknown_record_keys_are_ignored_for_schema_evolution() -> None:
    request = PaymentRequest.from_record(payment_record(new_field="ignored"))
    assert "new_field" not in request.to_record()


def test_bad_values_pass_through_for_validation_to_judge() -> None:
    request = PaymentRequest.from_record(payment_record(amount_minor=True, region="china"))
    assert request.amount_minor is True
    assert request.region == "china"


def test_request_is_frozen_hashable_and_owns_its_metadata() -> None:
    source = {"k": "v"}
    request = PaymentRequest.from_record(payment_record(metadata=source))
    source["k"] = "changed"
    assert request.metadata == {"k": "v"}
    with pytest.raises(TypeError):
        request.metadata["k"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.amount_minor = 1  # type: ignore[misc]
    assert hash(request) == hash(PaymentRequest.from_record(payment_record(metadata={"k": "v"})))
    other = PaymentRequest.from_record(payment_record(metadata={"k": "w"}))
    assert request != other


def test_constructor_defaults_metadata_to_empty() -> None:
    record = payment_record()
    del record["metadata"]
    assert PaymentRequest(**record).metadata == {}


def test_merchant_round_trip_and_activity() -> None:
    merchant = Merchant.from_record(merchant_record())
    assert merchant.is_active
    assert merchant.to_record() == merchant_record()
    assert not Merchant.from_record(merchant_record(status="SUSPENDED")).is_active
    assert not Merchant.from_record(merchant_record(status="CLOSED")).is_active


def test_merchant_time_accepts_datetime_and_refuses_missing_fields() -> None:
    moment = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert Merchant.from_record(merchant_record(updated_at_ms=moment)).updated_at_ms == (
        CREATED_AT_MS
    )
    avro = merchant_record()
    avro["updated_at"] = avro.pop("updated_at_ms")
    assert Merchant.from_record(avro) == Merchant.from_record(merchant_record())
    avro["updated_at"] = moment.replace(tzinfo=None)
    with pytest.raises(RecordError, match="updated_at is a naive datetime"):
        Merchant.from_record(avro)
    record = merchant_record()
    del record["status"]
    with pytest.raises(RecordError, match="Merchant: missing field"):
        Merchant.from_record(record)
    with pytest.raises(RecordError):
        Merchant.from_record(merchant_record(updated_at_ms=datetime(2020, 1, 1)))


text = st.text(max_size=20)


@given(
    ids=st.tuples(text, text, text, text),
    amount=st.integers(),
    currency=text,
    method=st.sampled_from(sorted(PAYMENT_METHODS)),
    interface=st.sampled_from(sorted(INTERFACES)),
    region=text,
    created=st.integers(),
    metadata=st.dictionaries(text, text, max_size=5),
)
def test_record_round_trip_for_any_values(
    ids: tuple[str, str, str, str],
    amount: int,
    currency: str,
    method: str,
    interface: str,
    region: str,
    created: int,
    metadata: dict[str, str],
) -> None:
    record = {
        "payment_id": ids[0],
        "merchant_id": ids[1],
        "order_id": ids[2],
        "payer_id": ids[3],
        "amount_minor": amount,
        "currency": currency,
        "method": method,
        "interface": interface,
        "region": region,
        "created_at_ms": created,
        "metadata": metadata,
        "signature_key_id": None,
        "signature": None,
    }
    request = PaymentRequest.from_record(record)
    assert request.to_record() == record
    assert PaymentRequest.from_record(request.to_record()) == request


# Fixed offsets rather than st.timezones(): no dependency on the machine's tz database.
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(timezone)


@given(moment=st.datetimes(timezones=offsets))
def test_epoch_ms_agrees_with_integer_microseconds(moment: datetime) -> None:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    assert epoch_ms(moment) == micros // 1000
