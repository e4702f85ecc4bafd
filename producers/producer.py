"""Idempotent Avro producer for order systems: keyed by payment_id, delivery reports surfaced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message

from producers import metrics
from producers.errors import DeliveryFailed, ProducerClosed
from producers.signing import RequestSigner
from schemas.codec import AvroSerializer
from schemas.topics import TOPIC_RECORDS
from settle.config import KafkaSettings
from settle.kafka import make_producer

DeliveryCallback = Callable[["DeliveryReport"], None]

# The record type whose values carry a merchant signature.
SIGNED_RECORD = "PaymentRequested"


class _FromSettings:
    """Default of AvroProducer(signer=...): the keyring the SETTLE_* settings name."""


FROM_SETTINGS = _FromSettings()


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

    Every PaymentRequested record is signed by ``signer`` before encoding (see
    producers.signing). By default the signer comes from SETTLE_SIGNING_KEYRING, loaded on
    the first payment request (so a producer of other records never needs a keyring); None
    sends payment requests as given.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: Any,
        client_id: str = "producer",
        on_delivery: DeliveryCallback | None = None,
        signer: RequestSigner | _FromSettings | None = FROM_SETTINGS,
        **overrides: Any,
    ) -> None:
        self._producer = make_producer(kafka, client_id, **overrides)
        self._registry = registry
        self._serializers: dict[str, AvroSerializer] = {}
        self._signed_topics: set[str] = set()
        self._signer = signer
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
            if record == SIGNED_RECORD:
                self._signed_topics.add(topic)
        return ser

    def _request_signer(self) -> RequestSigner | None:
        if isinstance(self._signer, _FromSettings):
            self._signer = RequestSigner.from_settings()
        return self._signer

    def schema_id(self, topic: str) -> int:
        """The registry id of `topic`'s value schema (registered on first use, then cached)."""
        return self._serializer(topic).ensure_schema_id()

    def _report(self, key: str, topic: str) -> Callable[[KafkaError | None, Message], None]:
        enqueued = time.monotonic()

        def callback(err: KafkaError | None, msg: Message) -> None:
            metrics.DELIVERY_SECONDS.labels(topic).observe(time.monotonic() - enqueued)
            metrics.PRODUCED.labels(topic, "delivered" if err is None else "failed").inc()
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
        serializer = self._serializer(topic)
        if topic in self._signed_topics:
            signer = self._request_signer()
            if signer is not None:
                record = signer.sign_record(record)
        value = serializer.encode(dict(record))
        self.send_raw(topic, key.encode("utf-8"), value, headers)

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Enqueue bytes as they are (used for dead letters and by tests that inject garbage)."""
        callback = self._report(key.decode("utf-8", "replace") if key else "", topic)
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
        metrics.PRODUCED.labels(topic, "sent").inc()
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
