"""Timer ticks delivered as events, and per-partition deadline queues, for stateful stages."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import faust

from infra.admin import admin_client
from infra.config import KafkaSettings
from settlement.errors import SettleError
from stream_processors.outputs import now_ms

log = logging.getLogger(__name__)

# Ticks are worthless after a few intervals; an hour keeps the topic tiny and still lets a
# restarted worker find the ones it had not read.
TICK_RETENTION: Final = timedelta(hours=1)
TICK_KEY: Final = b"tick"
TOPIC_VISIBLE_TIMEOUT_S: Final = 30.0
# Keys a stage handles per tick and partition, so one tick cannot stall the partition's inputs;
# the rest wait for the next tick.
TICK_KEYS_MAX: Final = 5_000
# A key whose tick failed unexpectedly (a bug or a corrupt value) is retried this much later,
# not every tick, so one bad key cannot flood the log.
TICK_RETRY_MS: Final = 60_000


class TopicNotVisible(SettleError, RuntimeError):
    """A topic the stage created did not show up in the cluster metadata in time."""


# Why ticks are records at all: faust writes a table change to the changelog partition of the
# event being processed, so a table may only change inside stream iteration. A timer has no
# event. A tick record on partition p of a topic co-partitioned with the stage's inputs gives
# the agent an event of partition p, inside which it may decide and delete partition p's keys.


def tick_topic_name(app_id: str) -> str:
    return f"{app_id}-ticks"


def encode_tick(sent_at_ms: int) -> bytes:
    """A tick's value: the sender's clock, for debugging only (the agent uses its own clock)."""
    return str(sent_at_ms).encode("ascii")


def tick_partitions(assignment: Iterable[Any], topic: str) -> list[int]:
    """The partitions of `topic` in a consumer assignment (a set of TP tuples)."""
    return sorted(tp.partition for tp in assignment if tp.topic == topic)


def stage_channel(
    app: faust.App,
    inputs: Sequence[str],
    owned: Sequence[faust.TopicT],
    partitions: int,
    kafka: KafkaSettings,
) -> faust.TopicT:
    """One raw-bytes channel over `inputs` plus the stage's own internal topics (`owned`).

    faust declares a channel's topics before it subscribes only when the channel is internal,
    and then with one set of options for every name. Here only the owned topics are created,
    each with its own options (e.g. the tick topic's short retention); the inputs are part of
    the contract, created by `settle topics create`, and never created here with wrong
    settings. Declaring before subscribing matters: a topic the broker's metadata does not
    show yet when the consumer subscribes is left out of the assignment until the next
    metadata refresh (minutes), so declare also waits until the new topics are visible.
    """
    owned_names = [name for t in owned for name in t.topics]

    class _StageChannel(faust.Topic):
        async def declare(self) -> None:
            for topic in owned:
                await topic.maybe_declare()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, wait_for_topics, kafka, owned_names, partitions, TOPIC_VISIBLE_TIMEOUT_S
            )

    return _StageChannel(
        app,
        topics=[*inputs, *owned_names],
        partitions=partitions,
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )


def wait_for_topics(
    kafka: KafkaSettings, names: Sequence[str], partitions: int, timeout_s: float
) -> None:
    """Block until every topic has `partitions` partitions with a leader in the metadata."""
    admin = admin_client(kafka)
    deadline = time.monotonic() + timeout_s
    missing = list(names)
    while missing:
        meta = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        missing = [
            name
            for name in names
            if name not in meta.topics
            or meta.topics[name].error is not None
            or len(meta.topics[name].partitions) != partitions
            or any(p.leader < 0 for p in meta.topics[name].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TopicNotVisible(f"topics {missing} not visible after {timeout_s}s")
        time.sleep(0.1)


def owned_topic(
    app: faust.App, name: str, partitions: int, retention: timedelta
) -> faust.TopicT:
    return app.topic(
        name,
        partitions=partitions,
        retention=retention,
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )


def install_tick_timer(app: faust.App, topic: str, interval_s: float) -> None:
    """Every interval, send one tick to each partition of `topic` assigned to this worker.

    Explicit partitions: the producer's partitioner would put every tick on one partition.
    Only the assigned partitions, because another worker ticks its own; a tick sent during a
    rebalance to a partition that moves away is simply handled by its new owner.
    """

    @app.timer(interval=interval_s)
    async def send_ticks() -> None:
        try:
            assigned = tick_partitions(app.consumer.assignment(), topic)
        except Exception as exc:  # consumer not started or mid-rebalance: try next interval
            log.debug("ticks: no assignment yet (%s)", exc)
            return
        value = encode_tick(now_ms())
        for partition in assigned:
            await app.producer.send(topic, TICK_KEY, value, partition, None, None)


class DeadlineQueue:
    """Per-partition min-heaps of (due_ms, key) with lazy deletion.

    `when[p][key]` is the one live deadline of a key; heap entries that disagree with it are
    stale and skipped, so rescheduling is O(log n) without searching the heap. The queues are
    memory only: a partition's queue is rebuilt from the table (`scan(p)`) the first time the
    partition is touched after `forget()` (call it on every rebalance: another worker may have
    changed the partition's keys while it was away). Callers always re-read the state before
    acting on a popped key, so a stale or early entry can never cause a wrong decision.
    """

    def __init__(self, scan: Callable[[int], Iterable[tuple[str, int | None]]]) -> None:
        self._scan = scan
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._when: dict[int, dict[str, int]] = {}

    def ensure(self, partition: int) -> None:
        if partition in self._heaps:
            return
        when = {key: due for key, due in self._scan(partition) if due is not None}
        heap = [(due, key) for key, due in when.items()]
        heapq.heapify(heap)
        self._heaps[partition] = heap
        self._when[partition] = when

    def schedule(self, partition: int, key: str, due_ms: int | None) -> None:
        """Set (or with None, clear) the key's deadline."""
        self.ensure(partition)
        when = self._when[partition]
        if due_ms is None:
            when.pop(key, None)
            return
        if when.get(key) == due_ms:
            return
        when[key] = due_ms
        heapq.heappush(self._heaps[partition], (due_ms, key))

    def pop_due(self, partition: int, now_ms: int, limit: int) -> list[str]:
        """Up to `limit` keys whose deadline has come, earliest first; they are unscheduled."""
        self.ensure(partition)
        heap, when = self._heaps[partition], self._when[partition]
        keys: list[str] = []
        while heap and len(keys) < limit and heap[0][0] <= now_ms:
            due, key = heapq.heappop(heap)
            if when.get(key) == due:
                del when[key]
                keys.append(key)
        # Stale entries pile up when keys are rescheduled often; compact now and then.
        if len(heap) > 2 * len(when) + 1024:
            heap[:] = [(due, key) for key, due in when.items()]
            heapq.heapify(heap)
        return keys

    def next_due_ms(self, partition: int) -> int | None:
        when = self._when.get(partition)
        return min(when.values()) if when else None

    def forget(self) -> None:
        self._heaps.clear()
        self._when.clear()

    def partitions(self) -> list[int]:
        return sorted(self._heaps)

    def __len__(self) -> int:
        return sum(len(w) for w in self._when.values())


def items_by_partition(
    store: Mapping[str, Any], partition: int
) -> Iterable[tuple[str, dict[str, Any]]]:
    """The entries of a table whose value records `partition` (values are {"partition": p, ...})."""
    for key, value in list(store.items()):
        if isinstance(value, dict) and value.get("partition") == partition:
            yield key, value
