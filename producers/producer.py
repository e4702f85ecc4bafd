"""Idempotent Avro producer for order systems: keyed by payment_id, delivery reports surfaced."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message

from producers.errors import DeliveryFailed, ProducerClosed
from schemas.codec import AvroSerializer
from schemas.topics import TOPIC_RECORDS
from settle.config import KafkaSettings
from settle.kafka import make_producer

DeliveryCallback = Callable[["DeliveryReport"], None]


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What the broker said about one record."""

    topic: str
    key: str
    partition: int
    offset: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class AvroProducer:
    """Publishes records of the contract to their topics.

    Failure policy: a record the schema refuses raises ``EncodeError`` at ``send``; a record
    the broker refuses (after librdkafka's own idempotent retries) is reported to the
    ``on_delivery`` callback, and, when no callback is given, collected and raised as
    ``DeliveryFailed`` by the next ``flush`` (or at exit of the ``with`` block).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: Any,
        client_id: str = "producer",
        on_delivery: DeliveryCallback | None = None,
        **overrides: Any,
    ) -> None:
        self._producer = make_producer(kafka, client_id, **overrides)
        self._registry = registry
        self._serializers: dict[str, AvroSerializer] = {}
        self._on_delivery = on_delivery
        self._failures: list[DeliveryReport] = []
        self._lock = threading.Lock()
        self._closed = False
        self.sent = 0
        self.delivered = 0

    def _serializer(self, topic: str) -> AvroSerializer:
        ser = self._serializers.get(topic)
        if ser is None:
            record = TOPIC_RECORDS.get(topic)
            if record is None:
                # A topic outside the contract (tests use prefixed copies): use the contract
                # name it ends with.
                base = next((t for t in TOPIC_RECORDS if topic.endswith(t)), None)
                if base is None:
                    raise KeyError(f"topic {topic!r} is not part of the contract")
                record = TOPIC_RECORDS[base]
            ser = AvroSerializer(self._registry, topic, record)
            self._serializers[topic] = ser
        return ser

    def _report(self, key: str) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, msg: Message) -> None:
            partition, offset = msg.partition(), msg.offset()
            report = DeliveryReport(
                topic=msg.topic() or "",
                key=key,
                partition=partition if partition is not None else -1,
                offset=offset if offset is not None else -1,
                error=None if err is None else f"{err.name()}: {err.str()}",
            )
            if report.ok:
                self.delivered += 1
            if self._on_delivery is not None:
                self._on_delivery(report)
            elif not report.ok:
                with self._lock:
                    self._failures.append(report)

        return callback

    def send(
        self,
        topic: str,
        key: str,
        record: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Encode and enqueue one record keyed by ``key`` (payment_id, batch_id or merchant_id)."""
        if self._closed:
            raise ProducerClosed("producer is closed")
        value = self._serializer(topic).encode(dict(record))
        self.send_raw(topic, key.encode("utf-8"), value, headers)

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Enqueue bytes as they are (used for dead letters and by tests that inject garbage)."""
        callback = self._report(key.decode("utf-8", "replace") if key else "")
        hdrs: list[tuple[str, str | bytes | None]] | None = (
            list(headers.items()) if headers else None
        )
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=hdrs,
                                       on_delivery=callback)
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry.
                self._producer.poll(0.1)
        self.sent += 1
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> int:
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for every enqueued record's delivery report; raise if any failed."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} records still undelivered after {timeout_s}s")
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            first = failures[0]
            raise DeliveryFailed(
                f"{len(failures)} records failed delivery; first: key={first.key} "
                f"topic={first.topic}: {first.error}",
                failures,
            )

    def close(self, timeout_s: float = 60.0) -> None:
        if not self._closed:
            self._closed = True
            self.flush(timeout_s)

    def __enter__(self) -> AvroProducer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            # Still try to deliver what was enqueued, but don't mask the original error.
            self._closed = True
            self._producer.flush(10)
