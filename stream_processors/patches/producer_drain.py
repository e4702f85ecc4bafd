"""aiokafka's producer sends one request per partition batch; this makes it one per broker.

Upstream: aiokafka's ``MessageAccumulator.drain_by_nodes``
(aiokafka/producer/message_accumulator.py). aiokafka 0.14 lingers each partition's batch on
its own clock (the per-batch linger in the accumulator: aio-libs/aiokafka#1137, #1142): when a
batch's ``linger_ms`` has passed, the sender drains that batch and any other whose linger has
passed too, and leaves the rest to linger on. A stage writes to many partitions
(four routed topics, a rejected and a dead-letter topic and its tables' changelogs, four
partitions each), and its records spread over them, so at a few hundred records per second
almost every batch holds one record and expires at a moment of its own: one produce
request per record, whatever the linger. Counted on the broker (its request log, 125
payments/s end to end): the three faust stages sent about 115 produce requests per second,
the same with a linger of 10 ms as with 50 ms.

The Java client does not do this: once one batch for a broker is ready, it drains every
partition that broker leads into the same request (``RecordAccumulator.drain``). This
module gives aiokafka's accumulator that rule. A batch sent before its linger has passed is
the same as a batch sent because it was full, which aiokafka already does: per partition the
order of batches, the idempotent sequence numbers and the muting of a partition with a
batch in flight are all as before, so ordering per key and delivery are unchanged. Only
how many records share a request changes.

Proved by tests/unit/stream_processors/test_patch_producer_drain.py (aiokafka's own accumulator in
memory:
test_a_ready_batch_takes_the_lingering_batches_of_its_broker against
test_aiokafka_alone_sends_only_the_ready_batch, muted and ignored brokers, unknown leaders).
"""

from __future__ import annotations

import collections
from typing import Any, Final

from aiokafka.errors import LeaderNotAvailableError, NotLeaderForPartitionError
from aiokafka.producer import message_accumulator

from stream_processors.patches import replace

UPSTREAM: Final = (
    # replaced (a copy with one change, marked "settle"):
    "aiokafka.producer.message_accumulator:MessageAccumulator.drain_by_nodes",
    # what ready_leaders reads of a batch:
    "aiokafka.producer.message_accumulator:MessageBatch.remaining_linger",
)

# aiokafka's own, kept for comparison (tests/unit/stream_processors/test_patch_producer_drain.py).
AIOKAFKA_DRAIN = message_accumulator.MessageAccumulator.drain_by_nodes


def ready_leaders(accumulator: Any, ignore_nodes: Any, muted_partitions: Any) -> set[int]:
    """The brokers that lead at least one partition whose first batch is ready to send."""
    leaders: set[int] = set()
    for tp, batches in accumulator._batches.items():
        if tp in muted_partitions or not batches:
            continue
        leader = accumulator._cluster.leader_for_partition(tp)
        if leader is None or leader == -1 or (ignore_nodes and leader in ignore_nodes):
            continue
        if not batches[0].remaining_linger():
            leaders.add(leader)
    return leaders


def drain_by_nodes(self: Any, ignore_nodes: Any,
                   muted_partitions: Any = frozenset()) -> tuple[dict[int, dict[Any, Any]], bool]:
    """aiokafka 0.14's ``MessageAccumulator.drain_by_nodes``, with one change (marked).

    A batch still lingering is drained anyway when its broker has another batch ready, so
    it goes in the same request instead of a request of its own a few ms later.
    """
    nodes: dict[int, dict[Any, Any]] = collections.defaultdict(dict)
    unknown_leaders_exist = False
    remaining_linger_time = None
    ready = ready_leaders(self, ignore_nodes, muted_partitions)  # settle: the change
    for tp in list(self._batches.keys()):
        # Just ignoring by node is not enough, as leader can change during the cycle
        if tp in muted_partitions:
            continue
        leader = self._cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            if self._batches[tp][0].expired():
                # batch is for partition is expired and still no leader,
                # so set exception for batch and pop it
                batch = self._pop_batch(tp)
                err = NotLeaderForPartitionError() if leader is None else LeaderNotAvailableError()
                batch.failure(exception=err)
            unknown_leaders_exist = True
            continue
        elif ignore_nodes and leader in ignore_nodes:
            continue

        batch_remaining_linger = self._batches[tp][0].remaining_linger()
        if batch_remaining_linger and leader not in ready:  # settle: `and leader not in ready`
            # Batch should linger more
            remaining_linger_time = (
                min(remaining_linger_time, batch_remaining_linger)
                if remaining_linger_time
                else batch_remaining_linger
            )
            continue

        batch = self._pop_batch(tp)
        # We can get an empty batch here if all `append()` calls failed with validation...
        if not batch.is_empty():
            nodes[leader][tp] = batch
        else:
            # We just want to trigger delivery future here, no message futures.
            batch.done_noack()

    # all batches are drained from accumulator
    # so create "wait" future again for waiting new data/linger expired in send task
    if not self._waiter_future.done():
        self._waiter_future.set_result(None)
    self._waiter_future = self._loop.create_future()

    # cleaning up old wakeup task
    if self._wakeup_handle:
        self._wakeup_handle.cancel()
        self._wakeup_handle = None

    # schedule a new wakeup task
    if remaining_linger_time:
        self._wakeup_handle = self._loop.call_later(
            remaining_linger_time, self._wakeup, self._waiter_future
        )

    return nodes, unknown_leaders_exist


def install() -> None:
    """Give aiokafka's accumulator the per-broker drain (idempotent)."""
    replace(message_accumulator.MessageAccumulator, "drain_by_nodes", drain_by_nodes)
