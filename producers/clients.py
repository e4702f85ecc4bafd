"""Client plumbing the producer commands share: registry client, clock and topic read-back."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from infra.admin import delete_prefixed_topics
from infra.config import KafkaSettings, Settings
from infra.kafka import make_consumer
from infra.registry import registry_client
from producers.errors import ReadBackIncomplete
from schemas.errors import RegistryError
from schemas.registry import delete_subjects_with_prefix

READBACK_GROUP_PREFIX = "settle-readback"

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, as an int (no float on the way)."""
    return time.time_ns() // 1_000_000


def delete_isolated_run(settings: Settings, prefix: str) -> None:
    """Delete what an isolated run (benchmark, e2e, chaos) made under `prefix` on the broker
    and the registry: its topics, then its subjects (`prefix` + the contract's).

    Left behind, they pile up in a long-lived stack. A registry that refuses is logged, not
    raised, so it never hides the run's own result.
    """
    delete_prefixed_topics(settings.kafka, prefix)
    try:
        with registry_client(settings) as client:
            delete_subjects_with_prefix(client, prefix)
    except RegistryError as exc:
        log.warning("could not delete the registry subjects of %s*: %s", prefix, exc)


def _readback_consumer(kafka: KafkaSettings) -> Consumer:
    # A throwaway group that never commits: reading back must not move anyone's offsets.
    return make_consumer(kafka, group_id=f"{READBACK_GROUP_PREFIX}-{uuid.uuid4()}")


def _end_offsets(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, int]:
    """High watermark of each non-empty partition of `topic`."""
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise ReadBackIncomplete(f"cannot read metadata of {topic}: {exc}") from exc
    if meta is None or meta.error is not None:
        detail = meta.error if meta is not None else "no metadata"
        raise ReadBackIncomplete(f"topic {topic} is not available: {detail}")
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    for partition in sorted(meta.partitions):
        low, high = _watermarks(consumer, TopicPartition(topic, partition), deadline)
        if high > low:
            ends[partition] = high
    return ends


# Answers of a partition whose leader is not known yet (a topic created moments ago).
_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART})


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """A partition's low and high watermarks. A topic created moments ago may still answer
    NOT_LEADER_FOR_PARTITION (or another retriable error) while its leader is elected: asked
    again until `deadline`."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                tp, timeout=max(deadline - time.monotonic(), 1.0))
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.code() in _LEADER_MOVING or error.retriable())
            if not retriable or time.monotonic() >= deadline:
                raise
            log.debug("watermarks of %s[%d]: %s; asking again", tp.topic, tp.partition, exc)
            time.sleep(0.2)


def read_to_end(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every record of `topic` from the beginning up to the end offsets seen at the start.

    Records produced after the call started are not waited for, so the read always ends.
    A compacted topic has offset gaps; a partition counts as done once the consumer's
    position reaches the end offset, whether or not the last offsets still hold records.
    """
    consumer = _readback_consumer(kafka)
    try:
        ends = _end_offsets(consumer, topic, timeout_s)
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = dict(ends)
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                left = ", ".join(f"{topic}[{p}] to {end}" for p, end in sorted(pending.items()))
                raise ReadBackIncomplete(f"read-back timed out after {timeout_s}s: {left}")
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                partition, offset = msg.partition(), msg.offset()
                if partition in pending and offset is not None and offset < pending[partition]:
                    out.append(msg)
                    if offset + 1 >= pending[partition]:
                        del pending[partition]
            for tp in consumer.position([TopicPartition(topic, p) for p in list(pending)]):
                if tp.offset >= 0 and tp.offset >= pending.get(tp.partition, tp.offset + 1):
                    pending.pop(tp.partition, None)
        return out
    finally:
        consumer.close()


def read_at(
    kafka: KafkaSettings,
    topic: str,
    coordinates: Iterable[tuple[int, int]],
    timeout_s: float = 30.0,
) -> dict[tuple[int, int], Message]:
    """The records at the given (partition, offset) coordinates of `topic`, read by offset."""
    wanted = set(coordinates)
    if not wanted:
        return {}
    first: dict[int, int] = {}
    for partition, offset in wanted:
        first[partition] = min(offset, first.get(partition, offset))
    consumer = _readback_consumer(kafka)
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in sorted(first.items())])
        found: dict[tuple[int, int], Message] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted):
            if time.monotonic() > deadline:
                missing = sorted(wanted - found.keys())[:5]
                raise ReadBackIncomplete(
                    f"{len(wanted) - len(found)} of {len(wanted)} records of {topic} not read "
                    f"back within {timeout_s}s, e.g. {missing}"
                )
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            coordinate = (msg.partition(), msg.offset())
            if coordinate in wanted:
                found[coordinate] = msg
        return found
    finally:
        consumer.close()
