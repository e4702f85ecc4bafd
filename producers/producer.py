"""Idempotent Avro producer for order systems: keyed by payment_id, delivery reports surfaced."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from infra.config import KafkaSettings
from infra.kafka import make_producer
from producers import metrics
from producers.errors import DeliveryFailed, ProducerClosed, StillQueued
from producers.signing import RequestSigner
from schemas.codec import AvroSerializer
from schemas.topics import REFUNDS_REQUESTED, TOPIC_RECORDS

log = logging.getLogger(__name__)

DeliveryCallback = Callable[["DeliveryReport"], None]
Headers = list[tuple[str, str | bytes | None]] | None

# How often the stall watch looks at the oldest queued record, and how long it waits after a
# check that found the broker away (each check is a metadata request).
STALL_CHECK_EVERY_S = 1.0
STALL_CHECK_BACKOFF_S = 5.0
# How long the broker must have shown every leader before a waiting record counts as stuck
# (at most the stall time itself): after a restart the client needs seconds to catch up.
STALL_GRACE_S = 10.0

# The record types whose values carry a merchant signature.
SIGNED_RECORD = "PaymentRequested"
SIGNED_REFUND_RECORD = "RefundRequested"


def leaders_present(leaders: Sequence[int] | None) -> bool:
    """Every partition has a leader (``leaders``: one id per partition, None: no answer)."""
    return bool(leaders) and all(leader >= 0 for leader in leaders or ())


def is_stuck(oldest_age_s: float | None, stall_s: float, healthy_for_s: float | None,
             grace_s: float) -> bool:
    """True when a queued record waits longer than it can for a reason that will pass.

    ``healthy_for_s`` is how long the broker has reported a leader for every partition of
    the record's topic without a break (None: not now). A record may wait while the broker
    is away or a partition has no leader (a restart, an election), and for a few seconds
    after it is back (reconnect, producer id, retries): librdkafka sends it then. A record
    older than ``stall_s`` whose partitions have all had a leader for ``grace_s`` is stuck:
    librdkafka can keep a partition without a leader in its own cache after a broker
    restart and never look again (an open librdkafka bug: a produce response's leader hint
    of -1 is skipped). Such a record would only time out (message.timeout.ms) and fail.
    """
    if oldest_age_s is None or oldest_age_s < stall_s or healthy_for_s is None:
        return False
    return healthy_for_s >= grace_s


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

    Stall watch: when a record has waited in the local queue longer than
    ``kafka.producer_stall_s`` and the broker has reported a leader for every partition of
    its topic for ``STALL_GRACE_S`` (see ``is_stuck``), the librdkafka producer is replaced
    by a new one. Records still queued in the old one are taken back and sent again on the
    new one in their order; records in flight finish on the old one. A queued record may be
    a retry of a request whose answer was lost, so a re-sent record can land twice: payment
    requests and confirmations are deduplicated by payment_id downstream. ``replacements``
    and ``resent`` count what the watch did. Refund requests are deduplicated by
    (payment_id, refund_id) downstream the same way.

    Every PaymentRequested and RefundRequested record is signed by ``signer`` before encoding
    (canonical forms v1 and refund-v1, see producers.signing). By default the signer comes
    from SETTLE_SIGNING_KEYRING, loaded on the first request (so a producer of other records
    never needs a keyring); None sends requests as given.
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
        self._kafka, self._client_id, self._overrides = kafka, client_id, overrides
        self._producer = make_producer(kafka, client_id, **overrides)
        self._stall_s = kafka.producer_stall_s
        # Records enqueued and not yet reported, oldest first: seq -> (monotonic enqueue time,
        # topic, key, value, headers); what the stall watch sends again.
        self._queued: dict[int, tuple[float, str, bytes | None, bytes | None, Headers]] = {}
        self._seq = itertools.count()
        self._next_check = 0.0
        self._healthy_since: float | None = None
        self._produce_lock = threading.RLock()
        self.replacements = 0
        self.resent = 0
        self._registry = registry
        self._serializers: dict[str, AvroSerializer] = {}
        self._signed_topics: set[str] = set()
        self._signed_refund_topics: set[str] = set()
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
            elif record == SIGNED_REFUND_RECORD:
                self._signed_refund_topics.add(topic)
        return ser

    def _request_signer(self) -> RequestSigner | None:
        if isinstance(self._signer, _FromSettings):
            self._signer = RequestSigner.from_settings()
        return self._signer

    def schema_id(self, topic: str) -> int:
        """The registry id of `topic`'s value schema (registered on first use, then cached)."""
        return self._serializer(topic).ensure_schema_id()

    def _report(self, seq: int, key: str, topic: str
                ) -> Callable[[KafkaError | None, Message], None]:
        enqueued = time.monotonic()

        def callback(err: KafkaError | None, msg: Message) -> None:
            entry = self._queued.pop(seq, None)
            if err is not None and err.code() == KafkaError._PURGE_QUEUE and entry is not None:
                # Taken back by the stall watch before it was sent: send it again.
                _, _, rkey, value, hdrs = entry
                self.resent += 1
                metrics.PRODUCED.labels(topic, "resent").inc()
                self._produce(topic, rkey, value, hdrs)
                return
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
        elif topic in self._signed_refund_topics:
            signer = self._request_signer()
            if signer is not None:
                record = signer.sign_refund_record(record)
        value = serializer.encode(dict(record))
        self.send_raw(topic, key.encode("utf-8"), value, headers)

    def send_refund(self, record: Mapping[str, Any], topic: str = REFUNDS_REQUESTED,
                    headers: Mapping[str, str] | None = None) -> None:
        """Sign (refund-v1) and enqueue a RefundRequested record, keyed by its payment_id."""
        self.send(topic, str(record["payment_id"]), record, headers)

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Enqueue bytes as they are (used for dead letters and by tests that inject garbage)."""
        hdrs: Headers = list(headers.items()) if headers else None
        self._produce(topic, key, value, hdrs)
        self.sent += 1
        metrics.PRODUCED.labels(topic, "sent").inc()
        self._producer.poll(0)
        self._watch_stall()

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 hdrs: Headers) -> None:
        seq = next(self._seq)
        callback = self._report(seq, key.decode("utf-8", "replace") if key else "", topic)
        with self._produce_lock:
            self._queued[seq] = (time.monotonic(), topic, key, value, hdrs)
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, headers=hdrs,
                                           on_delivery=callback)
                    break
                except BufferError:
                    # Local queue full: serve delivery reports to make room, then retry.
                    self._producer.poll(0.1)

    def _watch_stall(self) -> None:
        """Replace the librdkafka producer when its oldest queued record is stuck."""
        now = time.monotonic()
        if now < self._next_check or not self._queued:
            return
        self._next_check = now + STALL_CHECK_EVERY_S
        try:
            enqueued, topic, *_ = next(iter(self._queued.values()))
        except (StopIteration, RuntimeError):  # emptied, or changed by a callback meanwhile
            return
        if now - enqueued < self._stall_s:
            self._healthy_since = None
            return
        if leaders_present(self._leaders(topic)):
            if self._healthy_since is None:
                self._healthy_since = now
        else:
            self._healthy_since = None
            self._next_check = now + STALL_CHECK_BACKOFF_S
        healthy_for = None if self._healthy_since is None else now - self._healthy_since
        if is_stuck(now - enqueued, self._stall_s, healthy_for,
                    min(STALL_GRACE_S, self._stall_s)):
            self._healthy_since = None
            self.replace_client(
                f"a record for {topic} queued {now - enqueued:.0f}s, every partition with a "
                f"leader for {healthy_for:.0f}s")

    def _leaders(self, topic: str) -> list[int] | None:
        """Leader id of each partition of topic, from the broker now; None if it is away."""
        try:
            md = self._producer.list_topics(topic, timeout=2.0)
        except KafkaException:
            return None
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return [p.leader if p.error is None else -1 for p in meta.partitions.values()]

    def replace_client(self, reason: str) -> int:
        """Swap in a new librdkafka producer; records still queued in the old one are sent
        again on the new one (in order). Returns how many were taken back."""
        with self._produce_lock:
            old = self._producer
            self._producer = make_producer(self._kafka, self._client_id, **self._overrides)
            before = self.resent
            old.purge(in_queue=True, in_flight=False, blocking=True)
            # Serves the purge reports (each sends its record again on the new producer) and
            # lets records in flight finish on the old connection.
            left = old.flush(30)
            self.replacements += 1
        taken = self.resent - before
        log.warning("producer %s replaced: %s; %d queued record(s) sent again%s",
                    self._client_id, reason, taken,
                    f"; {left} still in flight on the old producer" if left else "")
        return taken

    def poll(self, timeout_s: float = 0.0) -> int:
        served = self._producer.poll(timeout_s)
        self._watch_stall()
        return served

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for every enqueued record's delivery report; raise if any failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
            if not remaining:
                break
            self._watch_stall()
            if time.monotonic() >= deadline:
                raise StillQueued(f"{remaining} records still undelivered after {timeout_s}s",
                                  remaining)
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
