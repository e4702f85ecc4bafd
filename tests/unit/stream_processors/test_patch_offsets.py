"""The offset rules of the consumer patches (stream_processors/patches: seek_to_committed,
perform_seek, consumer_seek, drain_messages, new_offset, ack, flow_resume), on faust's own
bookkeeping structures.

The fetch loop and seek run against the real broker in tests/integration
(test_delivery_failure, test_ingest_stage) and tests/chaos; these pin the decisions.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, NamedTuple

from intervaltree import IntervalTree
from mode.utils import queues as mode_queues

from stream_processors.patches import (
    ack,
    drain_messages,
    flow_resume,
    new_offset,
    perform_seek,
    seek_to_committed,
)


class TP(NamedTuple):
    topic: str
    partition: int


class Books:
    """The attributes faust's Consumer._new_offset reads."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset[T] = committed
        self._acked[T] = list(acked)
        self._acked_index[T] = set(acked)


T = TP("payments.requested", 3)


def test_commits_the_run_that_starts_at_the_committed_offset() -> None:
    assert new_offset.new_offset(Books(10, [10, 11, 12]), T) == 13


def test_never_commits_past_a_record_that_was_not_acknowledged() -> None:
    # faust itself would commit 13 here: it tolerates a hole of exactly one record.
    assert new_offset.new_offset(Books(10, [11, 12]), T) is None
    assert new_offset.new_offset(Books(10, [15, 16]), T) is None


def test_stops_at_a_hole_inside_the_run() -> None:
    assert new_offset.new_offset(Books(10, [10, 11, 13]), T) == 12


def test_nothing_committed_yet_commits_the_first_run() -> None:
    assert new_offset.new_offset(Books(None, [0, 1, 2]), T) == 3
    assert new_offset.new_offset(Books(None, []), T) is None


def test_a_partition_read_from_its_beginning_commits_only_from_its_first_offset() -> None:
    # perform_seek stores the first offset (here 0) as the floor; 83 was skipped, 84 on
    # processed: faust (floor None) would commit 86 and lose 83 for good.
    assert new_offset.new_offset(Books(0, [84, 85]), T) is None
    assert new_offset.new_offset(Books(0, [0, 1]), T) == 2
    # Retention removed 0..39: the first offset on the log is the floor.
    assert new_offset.new_offset(Books(40, [40, 41]), T) == 42


class FakeAioConsumer:
    """What seek_to_committed_or_reset calls on an AIOKafkaConsumer, in the order called."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self._committed = committed
        self.calls: list[tuple[str, Any]] = []
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return set(self._committed)

    async def committed(self, tp: TP) -> int | None:
        self.calls.append(("committed", tp))
        await asyncio.sleep(0)
        return self._committed[tp]

    def seek(self, tp: TP, offset: int) -> None:
        self.calls.append(("seek", tp))
        self.seeks.append((tp, offset))

    async def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
        self.calls.append(("beginning_offsets", tuple(tps)))
        await asyncio.sleep(0)
        if self.first_offset is None:
            raise TimeoutError("ListOffsets timed out")
        first = self.first_offset
        return {tp: first.get(tp, 0) if isinstance(first, dict) else first for tp in tps}

    first_offset: int | dict[TP, int] | None = 0


def _seek(committed: dict[TP, int | None], reset_earliest: bool = True,
          first_offset: int | dict[TP, int] | None = 0,
          expired: list[tuple[TP, int]] | None = None) -> tuple[FakeAioConsumer, Any]:
    consumer = FakeAioConsumer(committed)
    consumer.first_offset = first_offset
    changelogs = {"app-payments-seen-changelog"}
    found: list[tuple[TP, int]] = [] if expired is None else expired
    result: Any = asyncio.run(seek_to_committed.seek_to_committed_or_reset(
        consumer, changelogs, reset_earliest, on_expired=lambda tp, n: found.append((tp, n))))
    return consumer, result


def test_partitions_without_a_positive_commit_are_sought_explicitly() -> None:
    none, zero, five = TP("in", 0), TP("in", 1), TP("in", 2)
    changelog = TP("app-payments-seen-changelog", 0)
    consumer, result = _seek({none: None, zero: 0, five: 5, changelog: None},
                             first_offset={none: 7})
    # Nothing committed: the first offset (7); 0 committed: 0; 5 committed: 5 (what aiokafka
    # does); the changelog is left to faust.
    assert sorted(consumer.seeks) == [(none, 7), (zero, 0), (five, 5)]
    # The partition read from its beginning reports its first offset: the commit's floor.
    assert result == {none: 7, zero: 0, five: 5, changelog: None}


def test_every_lookup_is_made_before_the_first_seek() -> None:
    """No await after a seek: a record fetched from a new position must not be handed over
    before perform_seek resets the read offsets (it would be thrown away with no gap left to
    show it was missed)."""
    tps = {TP("in", p): c for p, c in enumerate([None, 0, 5, None, 12])}
    tps[TP("app-payments-seen-changelog", 0)] = None
    consumer, _ = _seek(tps, first_offset=3)
    kinds = [kind for kind, _ in consumer.calls]
    first_seek = kinds.index("seek")
    assert all(kind == "seek" for kind in kinds[first_seek:]), kinds
    assert kinds.count("committed") == len(tps) and kinds.count("beginning_offsets") == 1


def test_a_commit_below_the_first_offset_is_counted_and_read_on_from_there() -> None:
    """Retention deleted records the group never processed: say how many, and do not stall
    (the commit's floor would stay below every offset still on the log)."""
    behind, zero, fine = TP("in", 0), TP("in", 1), TP("in", 2)
    expired: list[tuple[TP, int]] = []
    consumer, result = _seek({behind: 5, zero: 0, fine: 12},
                             first_offset={behind: 9, zero: 4, fine: 3}, expired=expired)
    assert sorted(consumer.seeks) == [(behind, 9), (zero, 4), (fine, 12)]
    assert result == {behind: 9, zero: 4, fine: 12}
    assert sorted(expired) == [(behind, 4), (zero, 4)]


def test_a_failed_first_offset_lookup_floors_the_commit_at_zero() -> None:
    none = TP("in", 0)
    consumer, result = _seek({none: None}, first_offset=None)
    # Offset 0 below the log start is moved to the first offset by the earliest reset.
    assert consumer.seeks == [(none, 0)] and result == {none: 0}


def test_latest_reset_leaves_uncommitted_partitions_alone() -> None:
    consumer, result = _seek({TP("in", 0): None}, reset_earliest=False)
    assert consumer.seeks == []
    assert ("beginning_offsets", (TP("in", 0),)) not in consumer.calls
    assert result == {TP("in", 0): None}


def test_fetch_rule_delivers_in_order_and_re_reads() -> None:
    V = drain_messages.Verdict
    assert drain_messages.classify(0, None, False) == V.DELIVER   # nothing read yet
    assert drain_messages.classify(8, 7, False) == V.DELIVER      # the next record
    assert drain_messages.classify(3, 7, False) == V.DELIVER      # a re-read after a seek back:
    assert drain_messages.classify(7, 7, False) == V.DELIVER      # faust dropped these


def test_fetch_rule_rewinds_on_a_jump_and_skips_the_rest_of_the_batch() -> None:
    V = drain_messages.Verdict
    assert drain_messages.classify(9, 7, False) == V.REWIND       # faust acked 8 as a "gap"
    assert drain_messages.classify(10, 7, True) == V.SKIP
    assert drain_messages.classify(8, 7, True) == V.SKIP          # the seek re-reads it in order


def test_read_offset_means_last_read() -> None:
    assert perform_seek.last_read_before(None) is None
    assert perform_seek.last_read_before(0) == -1
    # Nothing committed, read from offset 0: a record at 100 left over from a fetch before
    # the seek is a jump, not the first record.
    assert drain_messages.classify(100, perform_seek.last_read_before(0), False) == \
        drain_messages.Verdict.REWIND
    assert drain_messages.classify(0, perform_seek.last_read_before(0), False) == \
        drain_messages.Verdict.DELIVER
    assert perform_seek.last_read_before(10) == 9
    # After a seek to the committed 10, the record at 10 is the next one, 11 is a jump.
    last = perform_seek.last_read_before(10)
    assert drain_messages.classify(10, last, False) == drain_messages.Verdict.DELIVER
    assert drain_messages.classify(11, last, False) == drain_messages.Verdict.REWIND


def test_a_skipped_record_is_not_acknowledged() -> None:
    skipped = ack.skipped_unprocessed
    assert not skipped(4, 4, True)        # processed in the current generation
    assert not skipped(None, 4, True)     # a record without a generation (not from a fetch)
    assert skipped(3, 4, True)            # fetched before the last rebalance
    assert skipped(4, 4, False)           # the flow is suspended: the stream drops it


def _flow_holding(*items: int) -> tuple[Any, Any]:
    """mode's flow control (not suspended) and a stream queue under it holding `items`."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    flow = FlowControlEvent(initially_suspended=False)
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    for item in items:
        queue.put_nowait(item)
    return flow, queue


def test_resume_keeps_queued_records_unless_it_ends_a_suspension() -> None:
    async def run() -> tuple[int, int]:
        flow, queue = _flow_holding(1, 2)
        flow_resume.flow_resume(flow)     # not suspended: faust would drop both records here
        kept = queue.qsize()
        flow.suspend()
        flow_resume.flow_resume(flow)     # after a suspension: the records predate a rebalance
        return kept, queue.qsize()

    assert asyncio.run(run()) == (2, 0)


def test_perform_seek_resets_read_offsets_and_drops_what_the_streams_hold() -> None:
    from types import SimpleNamespace

    async def run() -> tuple[Any, Any, int]:
        flow, queue = _flow_holding(78, 79)  # handed over before the seek, fetched again after

        class Consumer:
            def __init__(self) -> None:
                self.app = SimpleNamespace(flow_control=flow)
                self._read_offset: dict[TP, int | None] = {T: 79}
                self._committed_offset: dict[TP, int | None] = {}

            async def seek_to_committed(self) -> dict[TP, int | None]:
                return {T: 78}

        consumer = Consumer()
        await perform_seek.perform_seek(consumer)
        return consumer._read_offset[T], consumer._committed_offset[T], queue.qsize()

    assert asyncio.run(run()) == (77, 78, 0)


def test_perform_seek_keeps_a_zero_floor_that_faust_would_drop() -> None:
    from types import SimpleNamespace

    async def run() -> dict[TP, int | None]:
        flow, _ = _flow_holding()
        new, zero, changelog = TP("in", 0), TP("in", 1), TP("app-changelog", 0)

        class Consumer:
            def __init__(self) -> None:
                self.app = SimpleNamespace(flow_control=flow)
                self._read_offset: dict[TP, int | None] = {}
                self._committed_offset: dict[TP, int | None] = {}

            async def seek_to_committed(self) -> dict[TP, int | None]:
                return {new: 0, zero: 0, changelog: None}  # `new` was read from its beginning

        consumer = Consumer()
        await perform_seek.perform_seek(consumer)
        assert consumer._read_offset == {new: -1, zero: -1, changelog: None}
        return consumer._committed_offset

    assert asyncio.run(run()) == {TP("in", 0): 0, TP("in", 1): 0}


def test_hand_over_is_awaited_directly_only_when_nothing_can_make_it_wait() -> None:
    from types import SimpleNamespace

    async def run() -> list[bool]:
        flow = mode_queues.FlowControlEvent(initially_suspended=False)
        queue: mode_queues.FlowControlQueue[int] = mode_queues.FlowControlQueue(
            maxsize=2, flow_control=flow)
        lock = asyncio.Lock()
        buffer = SimpleNamespace(size=0, max_messages=100)
        conductor = SimpleNamespace(
            _topic_name_index=defaultdict(list, {T.topic: [SimpleNamespace(queue=queue)]}),
            _tp_to_callback_lock=lock)
        consumer = SimpleNamespace(
            app=SimpleNamespace(topics=conductor, flow_control=flow,
                                producer=SimpleNamespace(buffer=buffer)),
            suspend_flow=asyncio.Event())
        ready = drain_messages.hand_over_ready(consumer)
        seen = [ready(T.topic), ready("a topic nobody reads")]
        queue.put_nowait(1)
        queue.put_nowait(2)
        seen.append(ready(T.topic))            # the stream's queue is full
        queue.clear()
        buffer.size = 101
        seen.append(ready(T.topic))            # the producer buffer waits to ebb
        buffer.size = 0
        consumer.suspend_flow.set()
        seen.append(ready(T.topic))            # a rebalance began
        consumer.suspend_flow.clear()
        flow.suspend()
        seen.append(ready(T.topic))            # the flow is suspended
        flow.resume()
        async with lock:
            seen.append(ready(T.topic))        # the subscription is changing
        seen.append(ready(T.topic))
        return seen

    assert asyncio.run(run()) == [True, True, False, False, False, False, False, True]
