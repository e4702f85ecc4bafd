"""Registry lookups done ahead, off the event loop: what a decoder needs, found once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from schemas import codec
from schemas.codec import AvroDeserializer, AvroSerializer, RegistryPrefetch, header
from schemas.errors import RegistryUnavailable, UnknownSchemaId
from schemas.registry import InMemoryRegistry
from tests.support.codec_samples import encoder, rejected, requested
from tests.support.reconcile import FlakyRegistry


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def encode(registry: InMemoryRegistry) -> Callable[[str, dict[str, Any]], bytes]:
    return encoder(registry)


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
