"""Dead letters of the sinks: DeadLetter records produced and flushed before the DB commit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import AvroSerializer
from schemas.registry import SchemaRegistry
from sinks.base import DeadRecord
from sinks.errors import DeadLetterFailed

ERROR_MESSAGE_CHARS_MAX = 2000


def dead_letter_record(dead: DeadRecord, stage: str, failed_at_ms: int) -> dict[str, Any]:
    """The DeadLetter value of a refused record: original bytes, coordinates and the error."""
    src = dead.source
    return {
        "source_topic": src.topic,
        "source_partition": src.partition,
        "source_offset": src.offset,
        "original_key": src.key,
        "original_value": src.value,
        "stage": stage,
        "error_type": dead.error_type,
        "error_message": dead.message[:ERROR_MESSAGE_CHARS_MAX],
        "failed_at": failed_at_ms,
        "reason": dead.reason,
    }


class DeadLetterPublisher:
    """Produces dead letters with an idempotent producer and waits for every delivery."""

    def __init__(
        self, producer: Producer, registry: SchemaRegistry, topic: str, stage: str
    ) -> None:
        self.topic = topic
        self.stage = stage
        self._producer = producer
        self._serializer = AvroSerializer(registry, topic, "DeadLetter")

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
        if remaining or failures:
            raise DeadLetterFailed(
                f"{len(dead)} dead letter(s) to {self.topic}: {remaining} undelivered after "
                f"{timeout_s}s, {len(failures)} refused{': ' + failures[0] if failures else ''}"
            )
