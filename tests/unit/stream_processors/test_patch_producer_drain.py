"""The per-broker drain: a broker with one batch ready takes every batch it leads.

Runs aiokafka's own MessageAccumulator in memory (no broker): a cluster stand-in answers
which node leads each partition, and batch ages are set by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.structs import TopicPartition

from stream_processors.patches import producer_drain

ORIGINAL = producer_drain.AIOKAFKA_DRAIN
LINGER_MS = 50


class Cluster:
    def __init__(self, leaders: dict[TopicPartition, int]) -> None:
        self.leaders = leaders

    def leader_for_partition(self, tp: TopicPartition) -> int | None:
        return self.leaders.get(tp)


A0, A1, A2 = (TopicPartition("routed", p) for p in range(3))
B0 = TopicPartition("changelog", 0)
LEADERS = {A0: 1, A1: 1, A2: 1, B0: 2}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def accumulator(loop: asyncio.AbstractEventLoop, tps: list[TopicPartition],
                ready: set[TopicPartition]) -> MessageAccumulator:
    """One record per partition in `tps`; those in `ready` have lingered long enough."""
    acc = MessageAccumulator(Cluster(LEADERS), 16384, 0, 30, loop=loop, linger_ms=LINGER_MS)
    for tp in tps:
        loop.run_until_complete(acc.add_message(tp, b"k", b"v", timeout=1))
        if tp in ready:
            acc._batches[tp][0]._ctime -= 1.0  # created a second ago: past its linger
    return acc


def drained(result: tuple[dict[int, dict[Any, Any]], bool]) -> dict[int, set[TopicPartition]]:
    nodes, _unknown = result
    return {node: set(batches) for node, batches in nodes.items()}


def test_a_ready_batch_takes_the_lingering_batches_of_its_broker(
        loop: asyncio.AbstractEventLoop) -> None:
    acc = accumulator(loop, [A0, A1, A2, B0], ready={A0})
    assert drained(producer_drain.drain_by_nodes(acc, set())) == {1: {A0, A1, A2}}
    # B0's broker had nothing ready: it lingers on, with a wake-up set for it.
    assert [tp for tp, queue in acc._batches.items() if queue] == [B0]
    assert acc._wakeup_handle is not None


def test_aiokafka_alone_sends_only_the_ready_batch(loop: asyncio.AbstractEventLoop) -> None:
    """What the fix changes: without it each partition's batch waits for its own linger."""
    acc = accumulator(loop, [A0, A1, A2, B0], ready={A0})
    assert drained(ORIGINAL(acc, set())) == {1: {A0}}


def test_nothing_ready_nothing_sent(loop: asyncio.AbstractEventLoop) -> None:
    acc = accumulator(loop, [A0, A1, B0], ready=set())
    assert drained(producer_drain.drain_by_nodes(acc, set())) == {}
    assert acc._wakeup_handle is not None


def test_a_muted_partition_stays_even_when_its_broker_is_ready(
        loop: asyncio.AbstractEventLoop) -> None:
    """A partition with a batch in flight is muted: one batch in flight keeps order."""
    acc = accumulator(loop, [A0, A1, A2], ready={A0})
    assert drained(producer_drain.drain_by_nodes(acc, set(), frozenset({A1}))) == {1: {A0, A2}}
    assert len(acc._batches[A1]) == 1


def test_a_muted_ready_batch_does_not_make_its_broker_ready(
        loop: asyncio.AbstractEventLoop) -> None:
    acc = accumulator(loop, [A0, A1], ready={A0})
    assert drained(producer_drain.drain_by_nodes(acc, set(), frozenset({A0}))) == {}


def test_an_ignored_broker_sends_nothing(loop: asyncio.AbstractEventLoop) -> None:
    """A broker with a request already in flight is ignored by the sender."""
    acc = accumulator(loop, [A0, A1, B0], ready={A0, B0})
    assert drained(producer_drain.drain_by_nodes(acc, {1})) == {2: {B0}}


def test_a_partition_without_leader_is_not_sent(loop: asyncio.AbstractEventLoop) -> None:
    orphan = TopicPartition("routed", 9)
    acc = accumulator(loop, [A0, orphan], ready={A0})
    nodes, unknown = producer_drain.drain_by_nodes(acc, set())
    assert {n: set(b) for n, b in nodes.items()} == {1: {A0}}
    assert unknown is True
    assert len(acc._batches[orphan]) == 1


def test_install_is_idempotent() -> None:
    producer_drain.install()
    producer_drain.install()
    assert MessageAccumulator.drain_by_nodes is producer_drain.drain_by_nodes
