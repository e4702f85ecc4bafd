"""Codec round trips: every contract record reads back the same; registry use of the codec."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas import contract
from schemas.codec import AvroDeserializer, AvroSerializer, from_epoch_ms, header, to_epoch_ms
from schemas.errors import RegistryError, SchemaError
from schemas.registry import InMemoryRegistry
from schemas.topics import TOPIC_RECORDS
from tests.support.codec_samples import (
    SAMPLES,
    T0,
    as_ms,
    encoder,
    merchant,
    requested,
    routed,
    with_defaults,
)


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def encode(registry: InMemoryRegistry) -> Callable[[str, dict[str, Any]], bytes]:
    return encoder(registry)


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
