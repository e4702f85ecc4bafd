"""The channel-gateway simulator process: consume routed payments and routed refunds, answer
them when due (channel.confirmations, channel.refund_confirmations), reverse the share of
them its config says a while later (status REVERSED on the same topics), and dispute a share
of the captured card and UnionPay payments (channel.disputes: opened, then decided).

Failure policy: an undecodable routed record is counted and skipped (it is not the
simulator's to dead-letter); a confirmation the broker refuses stops the run with
DeliveryFailed before any offset past it is committed. Offsets are committed only after every
confirmation planned from the records before them was produced and flushed, so a crash or
Ctrl-C re-reads the rest; replayed answers keep their confirmation_id and so dedupe downstream.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from infra.config import Settings
from infra.kafka import make_consumer
from producers import metrics
from producers.channels import (
    FAULT_ORPHAN,
    ORPHAN_PREFIX,
    REVERSED,
    ChannelSimConfig,
    PlannedConfirmation,
    decide,
    decide_refund,
    plan_confirmations,
    plan_refund_confirmations,
)
from producers.clients import wall_clock_ms
from producers.dispute_flow import DisputeCounts, PlannedDispute, plan_disputes
from producers.errors import DeliveryFailed, StillQueued
from producers.producer import AvroProducer, DeliveryReport
from schemas.codec import AvroDeserializer
from schemas.errors import DecodeError, RegistryUnavailable
from schemas.topics import (
    CHANNEL_CONFIRMATIONS,
    CHANNEL_DISPUTES,
    REFUND_CONFIRMATIONS,
    REFUNDS_ROUTED,
    ROUTED_TOPICS,
)

log = logging.getLogger(__name__)

DEFAULT_GROUP: Final = "settle-channel-sim"
COMMIT_INTERVAL_S: Final = 1.0
# A periodic commit waits this long for the answers it covers; a broker away longer only
# postpones the commit (the loop keeps serving the group meanwhile).
COMMIT_FLUSH_TIMEOUT_S: Final = 5.0
POLL_MAX_S: Final = 0.1
PROGRESS_INTERVAL_S: Final = 0.5
REGISTRY_BACKOFF_MAX_S: Final = 10.0

TP = tuple[str, int]


class OffsetTracker:
    """Per partition, the next offset that is safe to commit.

    A record is done once all its planned confirmations are produced; the commit point is the
    lowest offset not yet done (or one past the last consumed record when all are done).
    """

    def __init__(self) -> None:
        self._next: dict[TP, int] = {}
        self._open: dict[TP, dict[int, int]] = {}
        self._committed: dict[TP, int] = {}

    def consumed(self, tp: TP, offset: int, pending: int) -> None:
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        if pending > 0:
            self._open.setdefault(tp, {})[offset] = pending

    def produced(self, tp: TP, offset: int) -> None:
        waiting = self._open.get(tp)
        if waiting is None or offset not in waiting:
            return  # the partition was revoked meanwhile; nothing to commit for it
        waiting[offset] -= 1
        if waiting[offset] <= 0:
            del waiting[offset]

    def committable(self, tps: Sequence[TP] | None = None) -> dict[TP, int]:
        """Commit points that moved since the last `mark_committed`."""
        out: dict[TP, int] = {}
        for tp in tps if tps is not None else list(self._next):
            if tp not in self._next:
                continue
            waiting = self._open.get(tp)
            point = min(waiting) if waiting else self._next[tp]
            if point > self._committed.get(tp, -1):
                out[tp] = point
        return out

    def mark_committed(self, points: dict[TP, int]) -> None:
        self._committed.update(points)

    def forget(self, tps: Sequence[TP]) -> None:
        for tp in tps:
            self._next.pop(tp, None)
            self._open.pop(tp, None)
            self._committed.pop(tp, None)


@dataclass(slots=True)
class SimStats:
    """Counts per channel and per fault, for the summary printed at exit."""

    consumed: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    declined: Counter[str] = field(default_factory=Counter)
    published: Counter[str] = field(default_factory=Counter)
    # Routed refunds, per channel and per fault, and their answers per channel.
    refunds_consumed: Counter[str] = field(default_factory=Counter)
    refund_faults: Counter[str] = field(default_factory=Counter)
    refunds_declined: Counter[str] = field(default_factory=Counter)
    refunds_published: Counter[str] = field(default_factory=Counter)
    # REVERSED answers published per channel (payments, refunds); counted in published too.
    reversals: Counter[str] = field(default_factory=Counter)
    refund_reversals: Counter[str] = field(default_factory=Counter)
    # ChannelDispute records published (not counted in published).
    disputes: DisputeCounts = field(default_factory=DisputeCounts)
    orphans: int = 0
    delivered: int = 0
    failed: int = 0
    first_error: str | None = None
    consumer_error: str | None = None
    scheduled: int = 0
    commits: int = 0
    refused_commits: int = 0  # commits the group refused (retried at the next interval)
    registry_waits: int = 0
    elapsed_s: float = 0.0
    stop_reason: str = ""

    def on_delivery(self, report: DeliveryReport) -> None:
        if report.ok:
            self.delivered += 1
        else:
            self.failed += 1
            self.first_error = self.first_error or f"{report.key}: {report.error}"

    @property
    def consumed_total(self) -> int:
        return (sum(self.consumed.values()) + sum(self.refunds_consumed.values())
                + self.undecodable)


@dataclass(order=True, slots=True)
class _Due:
    due_ms: int
    seq: int
    planned: PlannedConfirmation | PlannedDispute = field(compare=False)
    source: TP = field(compare=False)
    offset: int = field(compare=False)


class ChannelSimulator:
    """Answers routed payments on `confirmations_topic` as the configured channels would, and
    routed refunds from `refunds_topic` on `refund_confirmations_topic` (None: refunds are
    left to another client, which may answer them on the same topic); disputes captured
    payments on `disputes_topic` (None, or a dispute rate of 0: none)."""

    def __init__(
        self,
        settings: Settings,
        registry: Any,
        config: ChannelSimConfig,
        group: str = DEFAULT_GROUP,
        routed_topics: Sequence[str] = ROUTED_TOPICS,
        confirmations_topic: str = CHANNEL_CONFIRMATIONS,
        clock: Callable[[], int] = wall_clock_ms,
        refunds_topic: str | None = REFUNDS_ROUTED,
        refund_confirmations_topic: str = REFUND_CONFIRMATIONS,
        refund_channels: Sequence[str] | None = None,
        disputes_topic: str | None = CHANNEL_DISPUTES,
    ) -> None:
        self.config = config
        self.disputes_topic = disputes_topic
        self.routed_topics = list(routed_topics)
        self.confirmations_topic = confirmations_topic
        self.refunds_topic = refunds_topic
        self.refund_confirmations_topic = refund_confirmations_topic
        # Channel symbols (ALIPAY...) whose refunds this simulator answers; None: every one.
        self.refund_channels = (None if refund_channels is None
                                else frozenset(c.upper() for c in refund_channels))
        self.stats = SimStats()
        self._settings = settings
        self._registry = registry
        self._group = group
        self._clock = clock
        self._decoder = AvroDeserializer(registry)
        self._tracker = OffsetTracker()
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._last_input = time.monotonic()

    def run(
        self,
        max_records: int | None = None,
        idle_exit_s: float | None = None,
        on_progress: Callable[[SimStats, int], None] | None = None,
    ) -> SimStats:
        """Consume until max_records, idle_exit_s of silence (then drain what is scheduled) or
        Ctrl-C (then stop at once; unanswered records stay uncommitted)."""
        started = time.monotonic()
        consumer = make_consumer(self._settings.kafka, self._group)
        producer = AvroProducer(
            self._settings.kafka, self._registry, client_id="channel-sim",
            on_delivery=self.stats.on_delivery,
        )

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            tps = [(p.topic, p.partition) for p in partitions]
            if not self.stats.failed:  # after a failed delivery nothing more may be committed
                # After a session timeout (a broker away longer than session.timeout.ms) the
                # group has already dropped this member and refuses the commit: the offsets
                # stay uncommitted and the next owner answers those records again.
                self._commit_or_retry(c, producer, tps, "revoked partitions' offsets")
            self._tracker.forget(tps)

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            # Joining the group takes seconds: idleness counts from the assignment on.
            self._last_input = time.monotonic()

        topics = [*self.routed_topics, *([self.refunds_topic] if self.refunds_topic else [])]
        consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
        consuming = True
        self._last_input = last_commit = last_progress = time.monotonic()
        try:
            while True:
                self._publish_due(producer)
                if consuming:
                    msg = consumer.poll(self._poll_timeout_s())
                    if msg is not None:
                        if self._handle(msg):
                            self._last_input = time.monotonic()
                        if max_records is not None and self.stats.consumed_total >= max_records:
                            consuming = self._stop_consuming(consumer, "max-records reached")
                    elif idle_exit_s is not None and self._idle_s() >= idle_exit_s:
                        consuming = self._stop_consuming(consumer, f"idle for {idle_exit_s}s")
                elif not self._heap:
                    break
                else:
                    # Drain: keep serving the group (partitions paused) until the last is due.
                    consumer.poll(self._poll_timeout_s())
                now = time.monotonic()
                if now - last_commit >= COMMIT_INTERVAL_S:
                    self._commit_or_retry(consumer, producer)
                    last_commit = now
                if on_progress is not None and now - last_progress >= PROGRESS_INTERVAL_S:
                    on_progress(self.stats, len(self._heap))
                    last_progress = now
        except KeyboardInterrupt:
            self.stats.stop_reason = "interrupted"
        except BaseException as exc:
            self.stats.stop_reason = f"error: {type(exc).__name__}"
            log.error("channel simulator stopping on %s: %s", type(exc).__name__, exc)
            raise
        finally:
            try:
                self._commit_or_retry(consumer, producer, None, "last offsets before stopping",
                                      flush_timeout_s=60.0)
            finally:
                consumer.close()
                self.stats.elapsed_s = time.monotonic() - started
        return self.stats

    def _idle_s(self) -> float:
        return time.monotonic() - self._last_input

    def _stop_consuming(self, consumer: Consumer, reason: str) -> bool:
        self.stats.stop_reason = reason
        assigned = consumer.assignment()
        if assigned:
            consumer.pause(assigned)
        return False

    def _poll_timeout_s(self) -> float:
        if not self._heap:
            return POLL_MAX_S
        until_due_s = (self._heap[0].due_ms - self._clock()) / 1000
        return min(POLL_MAX_S, max(0.0, until_due_s))

    def _handle(self, msg: Message) -> bool:
        """Plan the answers to one routed record; False for a consumer event that is no record."""
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                # e.g. a routed topic that does not exist: shown in the summary, not fatal.
                self.stats.consumer_error = self.stats.consumer_error or str(error)
            return False
        topic, partition, offset = msg.topic() or "", msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        if self.refunds_topic is not None and topic == self.refunds_topic:
            return self._handle_refund(msg, topic, partition, offset)
        try:
            routed = self._decode_waiting_for_registry(msg.value())
            plans = plan_confirmations(routed, self._clock(), self.config)
        except (DecodeError, KeyError, TypeError, ValueError):
            self.stats.undecodable += 1
            self._tracker.consumed((topic, partition), offset, 0)
            return True
        channel = str(routed["channel"])
        decision = decide(str(routed["payment_id"]), self.config)
        self.stats.consumed[channel] += 1
        self.stats.faults[decision.fault] += 1
        if decision.declined:
            self.stats.declined[channel] += 1
        disputes: list[PlannedDispute] = []
        if self.disputes_topic is not None and plans:
            # Dated from the payment's own answer (the first planned), which it follows.
            disputes = plan_disputes(routed, plans[0].due_ms, self.config.seed,
                                     decision.captured, self.config.disputes)
        self._tracker.consumed((topic, partition), offset, len(plans) + len(disputes))
        due: list[PlannedConfirmation | PlannedDispute] = [*plans, *disputes]
        for planned in due:
            heapq.heappush(
                self._heap, _Due(planned.due_ms, next(self._seq), planned, (topic, partition),
                                 offset)
            )
            self.stats.scheduled += 1
        return True

    def _handle_refund(self, msg: Message, topic: str, partition: int, offset: int) -> bool:
        try:
            routed = self._decode_waiting_for_registry(msg.value())
            channel = str(routed["channel"])
            if self.refund_channels is not None and channel not in self.refund_channels:
                # Another channel's refund, answered by its own adapter: done with it.
                self._tracker.consumed((topic, partition), offset, 0)
                return True
            plans = plan_refund_confirmations(routed, self._clock(), self.config)
            decision = decide_refund(str(routed["payment_id"]), str(routed["refund_id"]),
                                     self.config)
        except (DecodeError, KeyError, TypeError, ValueError):
            self.stats.undecodable += 1
            self._tracker.consumed((topic, partition), offset, 0)
            return True
        self.stats.refunds_consumed[channel] += 1
        self.stats.refund_faults[decision.fault] += 1
        if decision.declined:
            self.stats.refunds_declined[channel] += 1
        self._tracker.consumed((topic, partition), offset, len(plans))
        for planned in plans:
            heapq.heappush(
                self._heap, _Due(planned.due_ms, next(self._seq), planned, (topic, partition),
                                 offset)
            )
            self.stats.scheduled += 1
        return True

    def _decode_waiting_for_registry(self, value: bytes | None) -> dict[str, Any]:
        """Decode a routed record; while the registry is away (a schema id not cached yet),
        wait with backoff instead of crashing: the record is already polled, and a channel
        does not forget a payment because a schema lookup failed."""
        backoff_s = 0.5
        while True:
            try:
                record: dict[str, Any] = self._decoder.decode(value)
                return record
            except RegistryUnavailable as exc:
                self.stats.registry_waits += 1
                log.warning("schema registry unavailable, decoding again in %.1fs: %s",
                            backoff_s, exc)
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, REGISTRY_BACKOFF_MAX_S)

    def _publish_due(self, producer: AvroProducer) -> None:
        now_ms = self._clock()
        while self._heap and self._heap[0].due_ms <= now_ms:
            due = self._heap[0]
            record = due.planned.record
            refund = due.planned.is_refund
            out = self.refund_confirmations_topic if refund else self.confirmations_topic
            if isinstance(due.planned, PlannedDispute):
                assert self.disputes_topic is not None  # planned only with a topic
                out = self.disputes_topic
            try:
                producer.send(out, due.planned.key, record)
            except RegistryUnavailable as exc:
                # Stays first in the heap: sent on a later pass, once the registry is back.
                self.stats.registry_waits += 1
                log.warning("schema registry unavailable, confirmation %s waits: %s",
                            due.planned.key, exc)
                time.sleep(1.0)
                return
            heapq.heappop(self._heap)
            channel, status = str(record["channel"]), str(record["status"])
            if isinstance(due.planned, PlannedDispute):
                self.stats.disputes.add(due.planned)
                metrics.DISPUTES.labels(channel, str(record["stage"]), status).inc()
            elif refund:
                self.stats.refunds_published[channel] += 1
                if status == REVERSED:
                    self.stats.refund_reversals[channel] += 1
                metrics.REFUND_CONFIRMATIONS.labels(channel, status).inc()
            else:
                self.stats.published[channel] += 1
                if status == REVERSED:
                    self.stats.reversals[channel] += 1
                metrics.CONFIRMATIONS.labels(channel, status).inc()
            if (isinstance(due.planned, PlannedConfirmation)
                    and due.planned.key.startswith(ORPHAN_PREFIX)
                    and due.planned.fault == FAULT_ORPHAN):
                self.stats.orphans += 1
            self._tracker.produced(due.source, due.offset)

    def _commit_or_retry(self, consumer: Consumer, producer: AvroProducer,
                         tps: Sequence[TP] | None = None,
                         what: str = "offsets",
                         flush_timeout_s: float = COMMIT_FLUSH_TIMEOUT_S) -> None:
        """A commit the group refuses for now (a broker restart moved the coordinator, a
        rebalance is under way, a session timed out and the member is unknown) is logged and
        tried again at the next interval: the offsets stay uncommitted, so nothing is skipped
        (at worst answered twice). A fatal error, or a failed delivery, still raises."""
        try:
            self._commit(consumer, producer, tps, flush_timeout_s)
        except StillQueued as exc:
            # The broker is away (a restart, say): the answers wait in the producer's queue,
            # and the offsets of their inputs wait for them.
            self.stats.refused_commits += 1
            log.warning("%d confirmation(s) still queued after %gs: %s stay uncommitted; "
                        "retrying at the next commit", exc.undelivered, flush_timeout_s, what)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.fatal():
                raise
            self.stats.refused_commits += 1
            log.warning("offset commit refused (%s): %s stay uncommitted; retrying at the "
                        "next commit", err.str(), what)

    def _commit(
        self, consumer: Consumer, producer: AvroProducer, tps: Sequence[TP] | None = None,
        flush_timeout_s: float = 60.0,
    ) -> None:
        """Flush what was produced, then commit the offsets whose answers are all out."""
        producer.flush(flush_timeout_s)
        if self.stats.failed:
            raise DeliveryFailed(
                f"{self.stats.failed} confirmation(s) failed delivery; first: "
                f"{self.stats.first_error}; offsets after them were not committed"
            )
        points = self._tracker.committable(tps)
        if not points:
            return
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in points.items()], asynchronous=False
        )
        self._tracker.mark_committed(points)
        self.stats.commits += 1
