"""The ceiling: preloaded requests copied by a bare confluent-kafka consume -> produce loop."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from infra.admin import create_topics
from infra.kafka import make_consumer, make_producer
from infra.registry import registry_client
from producers.merchants import load_merchants, publish_merchants, sample_merchants_path
from producers.order_flow import publish_order
from producers.orders import (
    Accounting,
    OrderMix,
    SimulatedOrder,
    expected_accounting,
    generate_orders,
)
from producers.producer import AvroProducer
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.errors import DecodeError
from schemas.topics import TopicSpec
from settle.benchmarks.common import Isolated, Offsets
from settle.benchmarks.measure import per_1000

Transform = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class Preloaded:
    count: int
    expected: Accounting
    orders: list[SimulatedOrder]
    publish_s: float


def preload_requests(iso: Isolated, count: int, seed: int, bad_ratio: float,
                     partitioner: str = "murmur2_random") -> Preloaded:
    """Merchants, then `count` simulated payment requests (Avro, real registry) on the prefix;
    `partitioner` places the requests (librdkafka's name: the placement bench uses CRC32)."""
    registry = registry_client(iso.settings)
    entries = load_merchants(sample_merchants_path())
    mix = OrderMix(bad_ratio=bad_ratio, duplicate_ratio=0.01, conflict_ratio=0.002)
    orders = list(generate_orders(seed, count, entries, mix))
    started = time.monotonic()
    with AvroProducer(iso.settings.kafka, registry, client_id="bench") as producer:
        publish_merchants(producer, entries, time.time_ns() // 1_000_000,
                          topic=iso.topics.merchants)
        producer.flush()
    with AvroProducer(iso.settings.kafka, registry, client_id="bench",
                      partitioner=partitioner) as producer:
        for order in orders:
            publish_order(producer, iso.topics.requested, order)
    return Preloaded(count, expected_accounting(orders), orders,
                     round(time.monotonic() - started, 2))


@dataclass(frozen=True, slots=True)
class PassRun:
    name: str
    records: int
    steady_s: float
    records_per_s: float
    cpu_s_per_1000: float


def passthrough(iso: Isolated, name: str, count: int, transform: Transform | None,
                timeout_s: float = 300.0) -> PassRun:
    """Copy `count` records of the requests topic to a fresh topic, keys and headers kept.

    Same client settings as every stage (infra.kafka: idempotent producer, lz4, linger,
    batching; read_committed consumer), offsets committed asynchronously per poll batch.
    Timed from the first record consumed until the output's end offsets reach `count`.
    """
    src = iso.topics.requested
    dst = f"{iso.prefix}bench.{name}"
    create_topics(iso.settings.kafka, [TopicSpec(dst, retention_ms=3600_000)])
    consumer = make_consumer(iso.settings.kafka, group_id=f"{iso.prefix}{name}-{uuid.uuid4()}")
    producer = make_producer(iso.settings.kafka, f"bench-{name}")
    offsets = Offsets(iso.settings)
    consumer.subscribe([src])
    seen = 0
    first_t: float | None = None
    cpu0 = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            msgs = consumer.consume(2000, 0.5)
            for msg in msgs:
                if msg.error() is not None:
                    continue
                if first_t is None:
                    first_t, cpu0 = time.monotonic(), time.process_time()
                value = msg.value()
                if transform is not None and value is not None:
                    value = transform(value)
                while True:
                    try:
                        producer.produce(dst, value=value, key=msg.key(),
                                         headers=msg.headers())
                        break
                    except BufferError:
                        producer.poll(0.05)
                seen += 1
            if msgs:
                consumer.commit(asynchronous=True)
            producer.poll(0)
        producer.flush(60)
        while offsets.end([dst]) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"passthrough {name}: {seen} of {count} in {timeout_s}s")
            time.sleep(0.05)
        assert first_t is not None
        steady = max(time.monotonic() - first_t, 1e-3)
        cpu = time.process_time() - cpu0
        return PassRun(name, count, round(steady, 3), round(count / steady, 1),
                       per_1000(cpu, count))
    finally:
        consumer.close()
        offsets.close()


def avro_roundtrip(iso: Isolated) -> Transform:
    """Decode with our AvroDeserializer, encode again with our AvroSerializer."""
    registry = registry_client(iso.settings)
    decoder = AvroDeserializer(registry, reader_schema="PaymentRequested")
    encoder = AvroSerializer(registry, f"{iso.prefix}bench.decode-encode", "PaymentRequested")

    def transform(value: bytes) -> bytes:
        try:
            return encoder.encode(decoder.decode(value))
        except DecodeError:
            return value  # injected garbage: copied as it is, like a dead letter's body
    return transform


def run_limits(iso: Isolated, count: int) -> tuple[PassRun, PassRun]:
    """Both passthroughs over the same preloaded requests (A raw bytes, B decode -> encode)."""
    raw = passthrough(iso, "passthrough-raw", count, None)
    avro = passthrough(iso, "passthrough-avro", count, avro_roundtrip(iso))
    return raw, avro
