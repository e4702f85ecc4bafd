"""Routed payments that reconcile consumed and that never reached a terminal state in the books.

No table holds routed payments, so the monitor tails the routed topics itself (keys and
timestamps only, nothing is decoded) and asks PostgreSQL which of them have a row in
``payments`` (every terminal state has one). A payment is tracked in two steps:

1. *waiting*: routed, but the reconcile group's committed offset is not past it yet. A
   backlog in front of reconcile is its consumer lag's business (SettleConsumerLagGrowing),
   and reconcile starts a payment's SLA only when it reads it, so none of these count.
2. *consumed*: reconcile's committed offset passed it, the first time the monitor saw so.
   From then on reconcile owes it a terminal result within the channel's SLA; the ledger
   sink writes it to ``payments`` moments later. One still without a row after its
   channel's SLA + a margin is *overdue*: reconcile holds no deadline for it (its routed
   record was dead-lettered), its timers are stuck, or its result never reached the books.

Every check asks PostgreSQL about every consumed payment and forgets the decided ones, so
memory holds the payments in flight plus the overdue ones. On start the monitor reads back
``lookback`` seconds of the routed topics; it cannot know when reconcile consumed those, so
their clock starts at that first check (an overdue payment is reported again one grace
period after a restart).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, TopicPartition

from infra.config import KafkaSettings
from infra.kafka import make_consumer

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]

# payment ids per PostgreSQL round trip
CHECK_CHUNK = 5000

DECIDED_AMONG = "SELECT payment_id FROM payments WHERE payment_id = ANY(%s)"


@dataclass(frozen=True, slots=True)
class RoutedSource:
    """A routed topic, its channel, and how long a payment on it may stay undecided."""

    topic: str
    channel: str
    grace_s: float  # the channel's reconciliation SLA + the margin


@dataclass(frozen=True, slots=True)
class Overdue:
    """Overdue payments of one channel: how many, and the longest time one has been owed."""

    count: int = 0
    oldest_age_s: float = 0.0


@dataclass(slots=True)
class _Waiting:
    offset: int
    payment_id: str
    routed_ms: int


@dataclass(slots=True)
class _Consumed:
    channel: str
    since_ms: int  # when the monitor first saw reconcile past it (never before routing)


class UndecidedTracker:
    """Routed payments without a terminal state: the bookkeeping, free of I/O."""

    def __init__(self, sources: Iterable[RoutedSource]) -> None:
        self._channel = {s.topic: s.channel for s in sources}
        self._grace_ms = {s.channel: int(s.grace_s * 1000) for s in sources}
        self._waiting: dict[TopicPartitionKey, deque[_Waiting]] = defaultdict(deque)
        self._consumed: dict[str, _Consumed] = {}

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(sorted(self._grace_ms))

    def add(self, topic: str, partition: int, offset: int, payment_id: str,
            routed_ms: int) -> None:
        """A routed record, in offset order per partition."""
        self._waiting[(topic, partition)].append(_Waiting(offset, payment_id, routed_ms))

    def consumed(self, committed: Mapping[TopicPartitionKey, int], now_ms: int) -> None:
        """Move the records below reconcile's committed offsets from waiting to consumed."""
        for tp, queue in self._waiting.items():
            upto = committed.get(tp, -1)
            while queue and queue[0].offset < upto:
                w = queue.popleft()
                if w.payment_id not in self._consumed:  # a re-sent routed record keeps the first
                    self._consumed[w.payment_id] = _Consumed(
                        self._channel[tp[0]], max(w.routed_ms, now_ms))

    def to_check(self) -> list[str]:
        """Consumed payments whose terminal state is still to be found."""
        return list(self._consumed)

    def decided(self, payment_ids: Iterable[str]) -> None:
        """Forget payments found with a terminal state."""
        for pid in payment_ids:
            self._consumed.pop(pid, None)

    def overdue(self, now_ms: int) -> dict[str, Overdue]:
        """Per channel (every channel listed): consumed payments owed longer than the grace."""
        count: dict[str, int] = dict.fromkeys(self._grace_ms, 0)
        oldest_ms: dict[str, int] = dict.fromkeys(self._grace_ms, 0)
        for c in self._consumed.values():
            age_ms = now_ms - c.since_ms
            if age_ms > self._grace_ms[c.channel]:
                count[c.channel] += 1
                oldest_ms[c.channel] = max(oldest_ms[c.channel], age_ms)
        return {ch: Overdue(count[ch], oldest_ms[ch] / 1000) for ch in self._grace_ms}

    def sizes(self) -> tuple[int, int]:
        """(waiting, consumed) payments held in memory."""
        return sum(len(q) for q in self._waiting.values()), len(self._consumed)


def decided_among(conn: psycopg.Connection, payment_ids: list[str]) -> set[str]:
    """The payments among ``payment_ids`` that have a terminal state (a ``payments`` row)."""
    found: set[str] = set()
    for i in range(0, len(payment_ids), CHECK_CHUNK):
        rows = conn.execute(DECIDED_AMONG, (payment_ids[i:i + CHECK_CHUNK],)).fetchall()
        found.update(r[0] for r in rows)
    return found


class RoutedTail:
    """Reads the routed topics forward (keys and timestamps) into an ``UndecidedTracker``.

    The consumer is assigned partitions, never subscribed, and never commits: it keeps its
    own position, from ``lookback_s`` ago at the first read.
    """

    def __init__(self, kafka: KafkaSettings, sources: Iterable[RoutedSource],
                 tracker: UndecidedTracker, lookback_s: float,
                 read_budget_s: float = 10.0) -> None:
        self._kafka = kafka
        self._topics = tuple(s.topic for s in sources)
        self._tracker = tracker
        self._lookback_s = lookback_s
        self._read_budget_s = read_budget_s
        self._consumer: Consumer | None = None
        self._assigned: set[TopicPartitionKey] = set()
        self.next_offsets: dict[TopicPartitionKey, int] = {}

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = None
        self._assigned = set()

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    def read(self, ends: Mapping[TopicPartitionKey, int]) -> int:
        """Read up to ``ends`` (the routed partitions' end offsets, read by the caller in one
        admin request: a consumer asks per partition) or the time budget; records read.

        Kafka errors propagate, and the next read starts again from ``next_offsets`` with
        the same consumer (a librdkafka consumer recovers by itself; closing and making one
        per failed read only adds work for a cluster that is already in trouble).
        """
        return self._read(ends)

    def _read(self, end_offsets: Mapping[TopicPartitionKey, int]) -> int:
        if self._consumer is None:
            self._consumer = make_consumer(
                self._kafka, group_id=f"settle-monitor-routed-{uuid.uuid4()}")
        consumer = self._consumer
        self._assign_new_partitions(consumer, end_offsets)
        ends = {tp: end for tp, end in end_offsets.items()
                if tp in self._assigned and self.next_offsets.get(tp, 0) < end}
        read = 0
        deadline = time.monotonic() + self._read_budget_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if topic is None or partition is None or offset is None:
                    continue
                self.next_offsets[(topic, partition)] = offset + 1
                key = msg.key()
                if key is not None:
                    _kind, ts_ms = msg.timestamp()
                    self._tracker.add(topic, partition, offset, key.decode("utf-8", "replace"),
                                      ts_ms)
                    read += 1
                if offset + 1 >= ends.get((topic, partition), 0):
                    ends.pop((topic, partition), None)
        return read

    def _assign_new_partitions(self, consumer: Consumer,
                               end_offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Assign the partitions not assigned yet (topics may appear after the monitor
        starts), from ``lookback_s`` ago or where the last consumer left off."""
        new = [tp for tp in end_offsets if tp[0] in self._topics and tp not in self._assigned]
        if not new:
            return
        since_ms = int((time.time() - self._lookback_s) * 1000)
        unknown = [TopicPartition(t, p, since_ms) for t, p in new
                   if (t, p) not in self.next_offsets]
        if unknown:
            # A new consumer knows no leaders yet, and a ListOffsets sent before it does is
            # refused (NOT_LEADER_FOR_PARTITION) on every try: ask for the metadata first.
            for topic in sorted({t for t, _p in new}):
                consumer.list_topics(topic, timeout=10)
            for tp in consumer.offsets_for_times(unknown, timeout=10):
                # -1: no record at or after that time, so start at the end
                self.next_offsets[(tp.topic, tp.partition)] = (
                    tp.offset if tp.offset >= 0 else end_offsets[(tp.topic, tp.partition)])
        consumer.incremental_assign([TopicPartition(t, p, self.next_offsets[(t, p)])
                                     for t, p in new])
        self._assigned.update(new)
