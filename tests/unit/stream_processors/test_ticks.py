"""Deadline queues and tick helpers: per partition, lazy deletion, rebuilt from the table."""

from __future__ import annotations

from collections import namedtuple

from stream_processors.ticks import (
    DeadlineQueue,
    encode_tick,
    items_by_partition,
    tick_partitions,
    tick_topic_name,
)

TP = namedtuple("TP", "topic partition")


def test_tick_partitions_pick_the_tick_topic_from_an_assignment() -> None:
    assignment = {TP("x-ticks", 2), TP("x-ticks", 0), TP("payments", 1), TP("x-ticks-2", 3)}
    assert tick_partitions(assignment, "x-ticks") == [0, 2]
    assert tick_topic_name("p.settle-reconcile") == "p.settle-reconcile-ticks"
    assert encode_tick(123) == b"123"


def test_queue_pops_due_keys_in_order_and_respects_the_limit() -> None:
    q = DeadlineQueue(lambda p: [])
    q.schedule(0, "b", 20)
    q.schedule(0, "a", 10)
    q.schedule(1, "c", 5)
    assert q.pop_due(0, 9, 10) == []
    assert q.pop_due(0, 25, 1) == ["a"]
    assert q.pop_due(0, 25, 10) == ["b"]
    assert q.pop_due(1, 25, 10) == ["c"]
    assert len(q) == 0


def test_rescheduling_and_clearing_leave_no_stale_pops() -> None:
    q = DeadlineQueue(lambda p: [])
    q.schedule(0, "a", 10)
    q.schedule(0, "a", 30)  # moved later: the entry at 10 is stale
    q.schedule(0, "b", 10)
    q.schedule(0, "b", None)  # cleared
    assert q.pop_due(0, 20, 10) == []
    assert q.next_due_ms(0) == 30
    assert q.pop_due(0, 30, 10) == ["a"]


def test_queue_is_rebuilt_from_the_table_after_forget() -> None:
    table = {
        "a": {"partition": 0, "due": 10},
        "b": {"partition": 1, "due": 10},
        "c": {"partition": 0, "due": None},
    }
    scanned: list[int] = []

    def scan(p: int) -> list[tuple[str, int | None]]:
        scanned.append(p)
        return [(k, v["due"]) for k, v in items_by_partition(table, p)]

    q = DeadlineQueue(scan)
    assert q.pop_due(0, 10, 10) == ["a"]
    q.forget()
    assert q.partitions() == []
    assert q.pop_due(0, 10, 10) == ["a"]
    assert scanned == [0, 0]


def test_stale_entries_are_compacted() -> None:
    q = DeadlineQueue(lambda p: [])
    for due in range(5_000):
        q.schedule(0, "a", due + 100)
    assert q.pop_due(0, 0, 10) == []  # triggers compaction
    assert len(q._heaps[0]) == 1
