"""A stage's first registry lookups run in a thread, never on the worker's event loop."""

from __future__ import annotations

import asyncio
import threading

from schemas.codec import AvroDeserializer, AvroSerializer, RegistryPrefetch
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.routing import DEFAULT_RULES, RoutingTable
from settlement.validation import ValidationPolicy
from stream_processors.app import registry_off_loop
from stream_processors.ingest import IngestProcessor, SeenIndex
from tests.support.codec_samples import requested


class ThreadNotingRegistry(InMemoryRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def register(self, subject: str, schema_str: str) -> int:
        self.threads.append(threading.get_ident())
        return super().register(subject, schema_str)

    def get_schema(self, schema_id: int) -> str:
        self.threads.append(threading.get_ident())
        return super().get_schema(schema_id)


def test_lookups_a_record_needs_run_off_the_loop_and_only_once() -> None:
    registry = ThreadNotingRegistry()
    data = AvroSerializer(registry, "payments.requested", "PaymentRequested").encode(requested())
    registry.threads.clear()
    decoder = AvroDeserializer(registry)
    dlq = AvroSerializer(registry, "payments.dlq", "DeadLetter")
    prefetch = RegistryPrefetch([decoder], [dlq])

    async def run() -> int:
        loop_thread = threading.get_ident()
        await registry_off_loop(prefetch, data)
        await registry_off_loop(prefetch, data)  # nothing left: no thread hop, no lookup
        decoder.decode(data)
        return loop_thread

    loop_thread = asyncio.run(run())
    assert len(registry.threads) == 2  # the DeadLetter registration and the writer schema
    assert loop_thread not in registry.threads


def test_the_validate_processor_prefetches_every_output_schema() -> None:
    registry = InMemoryRegistry()
    processor = IngestProcessor(registry, lambda _m: None, SeenIndex({}, 1000),
                                RoutingTable(DEFAULT_RULES), ValidationPolicy(), TopicNames(""))
    assert processor.prefetch.needed(None)  # output schemas not registered yet
    processor.prefetch.fetch(None)
    assert not processor.prefetch.needed(None)
    subjects = set(registry.subjects())
    topics = TopicNames("")
    assert {f"{topics.routed(ch)}-value" for ch in topics.channels} <= subjects
    assert {f"{topics.rejected}-value", f"{topics.dlq}-value"} <= subjects
