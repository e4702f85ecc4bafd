"""`settle audit ingest`: prove from the topics that every input ended in exactly one place."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from infra.config import KafkaSettings
from infra.kafka import make_consumer

SOURCE_HEADER = "settle-source"  # written by stream_processors.ingest on every output


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    source: str | None
    timestamp_ms: int = 0  # the record's Kafka timestamp (CreateTime: when it was produced)


@dataclass(slots=True)
class IngestAudit:
    """The ledger of the ingest stage: in = routed + rejected + dead-lettered + deduplicated."""

    read: int = 0
    routed: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    deduplicated: int = 0
    unaccounted: list[str] = field(default_factory=list)
    in_several_places: list[str] = field(default_factory=list)
    bad_duplicates: list[str] = field(default_factory=list)
    replayed_outputs: int = 0
    routed_by_topic: Counter[str] = field(default_factory=Counter)

    @property
    def balanced(self) -> bool:
        return (
            not self.unaccounted
            and not self.in_several_places
            and not self.bad_duplicates
            and self.read == self.routed + self.rejected + self.dead_lettered + self.deduplicated
        )


def read_topic(
    consumer: Consumer, topic: str, ends: dict[int, int] | None = None, timeout_s: float = 60.0
) -> Iterator[RawRecord]:
    """Every record of ``topic`` from the beginning up to ``ends`` (default: current ends)."""
    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        return
    if ends is None:
        ends = end_offsets(consumer, topic)
    targets = {p: end for p, end in ends.items() if end > 0}
    if not targets:
        return
    consumer.assign([TopicPartition(topic, p, 0) for p in targets])
    deadline = time.monotonic() + timeout_s
    while targets and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=5000, timeout=0.5)
        for msg in batch:
            if msg.error() is not None:
                continue
            part, off = msg.partition(), msg.offset()
            if part is None or off is None:
                continue
            end = targets.get(part)
            if end is None or off >= end:
                continue
            source = None
            for name, val in list(msg.headers() or []):
                if name == SOURCE_HEADER and isinstance(val, bytes):
                    source = val.decode("utf-8", "replace")
            yield RawRecord(topic, part, off, msg.key(), msg.value(), source,
                            msg.timestamp()[1])
            if off + 1 >= end:
                del targets[part]
        if batch:
            deadline = time.monotonic() + timeout_s
    consumer.unassign()


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None:
        return {}
    out = {}
    for p in meta.partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
        out[p] = high
    return out


def audit_ingest(
    kafka: KafkaSettings,
    requested: str,
    routed_topics: Iterable[str],
    rejected: str,
    dlq: str,
    decode_request: object = None,
    wait_s: float = 0.0,
) -> IngestAudit:
    """Join every input (by coordinates) with the outputs that name it in their header.

    An input with no output is a deduplicated re-send only if an earlier input with the same
    payment_id was routed and carried an identical body; otherwise it is unaccounted for.
    With ``wait_s`` the audit re-reads the outputs until everything is accounted for or the
    time is up (the pipeline may still be draining).
    """
    consumer = make_consumer(kafka, group_id=f"settle-audit-{uuid.uuid4()}")
    try:
        inputs = list(read_topic(consumer, requested))
        deadline = time.monotonic() + wait_s
        while True:
            result = _join(consumer, inputs, requested, routed_topics, rejected, dlq)
            if result.balanced or time.monotonic() >= deadline:
                return result
            time.sleep(2.0)
    finally:
        consumer.close()


def _join(
    consumer: Consumer,
    inputs: list[RawRecord],
    requested: str,
    routed_topics: Iterable[str],
    rejected: str,
    dlq: str,
) -> IngestAudit:
    audit = IngestAudit(read=len(inputs))
    placed: dict[str, set[str]] = {}
    for bucket, topics in (("routed", list(routed_topics)), ("rejected", [rejected]),
                           ("dlq", [dlq])):
        for topic in topics:
            seen_here: set[str] = set()
            for rec in read_topic(consumer, topic):
                if rec.source is None or not rec.source.startswith(requested + "/"):
                    continue
                if rec.source in seen_here:
                    # At-least-once: a replay after a crash may write the same output twice;
                    # it stays one placement (downstream dedupes by payment_id).
                    audit.replayed_outputs += 1
                    continue
                seen_here.add(rec.source)
                placed.setdefault(rec.source, set()).add(bucket)
                if bucket == "routed":
                    audit.routed_by_topic[topic] += 1
    # Every routed body first: with several partitioners one payment_id's copies sit on
    # several partitions, read in no common order, and the routed one may come last.
    routed_bodies: dict[bytes, set[bytes | None]] = {}
    for rec in inputs:
        if rec.key is not None and placed.get(
                f"{rec.topic}/{rec.partition}/{rec.offset}") == {"routed"}:
            routed_bodies.setdefault(rec.key, set()).add(rec.value)
    for rec in inputs:
        ref = f"{rec.topic}/{rec.partition}/{rec.offset}"
        buckets = placed.get(ref, set())
        if len(buckets) > 1:
            audit.in_several_places.append(ref)
            continue
        if buckets:
            bucket = next(iter(buckets))
            if bucket == "routed":
                audit.routed += 1
            elif bucket == "rejected":
                audit.rejected += 1
            else:
                audit.dead_lettered += 1
            continue
        # No output: only acceptable as an identical re-send of an earlier routed payment.
        if rec.key is not None and rec.key in routed_bodies:
            if rec.value in routed_bodies[rec.key]:
                audit.deduplicated += 1
            else:
                audit.bad_duplicates.append(ref)
        else:
            audit.unaccounted.append(ref)
    return audit
