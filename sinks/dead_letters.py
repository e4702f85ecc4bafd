"""Dead letters of the sinks: DeadLetter records produced and flushed before the DB commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import AvroSerializer
from schemas.dead_letters import DEAD_LETTER_RECORD, dead_letter
from schemas.registry import SchemaRegistry
from sinks.base import DeadRecord
from sinks.errors import DeadLetterFailed

log = logging.getLogger(__name__)


def dead_letter_record(dead: DeadRecord, stage: str, failed_at_ms: int) -> dict[str, Any]:
    """The DeadLetter value of a refused record (schemas.dead_letters.dead_letter)."""
    src = dead.source
    return dead_letter(key=src.key, value=src.value, topic=src.topic, partition=src.partition,
                       offset=src.offset, stage=stage, error=dead.failure,
                       failed_at_ms=failed_at_ms)


class DeadLetterPublisher:
    """Produces dead letters with an idempotent producer and waits for every delivery.

    When a flush leaves letters undelivered, the client is replaced by a fresh one from
    `producer_factory` before the sink retries the batch: librdkafka can keep a partition
    leaderless in its cache for good after a broker restart (confluentinc/librdkafka#5430,
    see producers.producer.AvroProducer), and the same client would then refuse every retry.
    The old client's queue is purged; a letter it had in flight may still land, so a retry
    can write a dead letter twice (the same at-least-once copy a crash leaves).
    """

    def __init__(
        self, producer: Producer, registry: SchemaRegistry, topic: str, stage: str,
        producer_factory: Callable[[], Producer] | None = None,
    ) -> None:
        self.topic = topic
        self.stage = stage
        self._producer = producer
        self._factory = producer_factory
        self._serializer = AvroSerializer(registry, topic, DEAD_LETTER_RECORD)
        self.replacements = 0

    @property
    def producer(self) -> Producer:
        return self._producer

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))

    def _replace_client(self, remaining: int) -> None:
        if self._factory is None:
            return
        old = self._producer
        try:
            old.purge()
            old.flush(0)  # serve the purge's delivery reports
        except Exception as exc:  # a dying client: the new one is what matters
            log.warning("%s: purging the dead-letter producer: %s", self.stage, exc)
        self._producer = self._factory()
        self.replacements += 1
        log.warning("%s: %d dead letter(s) to %s still queued after the flush; replaced the "
                    "producer client (the batch is retried)", self.stage, remaining, self.topic)

    def publish(self, dead: Sequence[DeadRecord], timeout_s: float = 30.0) -> None:
        """Produce and flush; DeadLetterFailed unless every letter was acknowledged.

        Called before the rows' transaction commits, so a crash in between re-sends the
        letters on replay (a duplicate dead letter) rather than losing one.
        """
        if not dead:
            return
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(f"{err.name()}: {err.str()}")

        now_ms = time.time_ns() // 1_000_000
        for item in dead:
            value = self._serializer.encode(dead_letter_record(item, self.stage, now_ms))
            while True:
                try:
                    self._producer.produce(
                        self.topic, key=item.source.key, value=value, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    self._producer.poll(0.1)  # local queue full: serve reports, then retry
        remaining = self._producer.flush(timeout_s)
        if remaining:
            self._replace_client(remaining)
        if remaining or failures:
            raise DeadLetterFailed(
                f"{len(dead)} dead letter(s) to {self.topic}: {remaining} undelivered after "
                f"{timeout_s}s, {len(failures)} refused{': ' + failures[0] if failures else ''}"
            )
