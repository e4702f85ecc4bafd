"""Seek every input partition to where its next record is, committed or not, in one step.

Upstream: aiokafka's ``AIOKafkaConsumer.seek_to_committed`` (which faust's
``AIOKafkaConsumerThread.seek_to_committed`` calls after every rebalance, through
``Consumer.perform_seek``) only seeks a partition whose committed offset is a positive number
(aio-libs/aiokafka#1003: "seek_to_committed does not work when committed offset is 0"), and
it awaits each partition's committed-offset lookup between its seeks. Related faust reports of
records skipped around a rebalance: faust-streaming/faust#216, #221, #596.

Three gaps, one replacement (``seek_to_committed_or_reset``, installed as faust's
``AIOKafkaConsumerThread.seek_to_committed``):

1. A partition with no committed offset yet (a new consumer group, or an input nobody has
   committed on because its first output failed) or one committed at 0 keeps whatever
   position the fetcher reached meanwhile. Records fetched before the seek and dropped by
   faust (they arrived while the stream was paused for recovery) are then never read again,
   and the next commit moves past them: the payment is read but never routed. Found by
   tests/integration/test_delivery_failure.py (one run in four lost its request). The fix
   seeks such partitions explicitly: to the beginning when nothing is committed (the
   ``earliest`` reset every stage uses), to 0 when 0 is committed, and reports the first
   offset of a partition read from its beginning, which perform_seek stores as the floor of
   the next commit (see patches.perform_seek and patches.new_offset). Changelog partitions
   are left alone: faust seeks those itself from the tables' own offsets.
2. The order of the steps. Every lookup (committed offsets, first offsets) is now made before
   the first seek, and all seeks are made together with no await after them, so perform_seek's
   reset of the read offsets always precedes the hand-over of a record fetched from a new
   position. aiokafka awaited each lookup between seeks (and the first-offset lookup came after
   them): a record fetched from a partition already sought was handed over, then thrown away
   by that reset, and with no record after it to show the gap it was never read again
   (test_delivery_failure: a lone request, never routed, three runs in three).
3. A committed offset that retention has deleted past. aiokafka seeks to it, the fetcher
   resets to the first offset left, and the commit, whose floor is the committed offset,
   never moves again on that partition. The seek now counts the deleted records
   (settle_input_records_expired_total, alert SettleInputExpired), logs the range and reads
   on from the first offset.

Proved by tests/unit/stream_processors/test_patch_offsets.py
(test_partitions_without_a_positive_commit_are_sought
_explicitly, test_every_lookup_is_made_before_the_first_seek, test_a_commit_below_the_first
_offset_is_counted_and_read_on_from_there, test_a_failed_first_offset_lookup_floors_the_commit
_at_zero, test_latest_reset_leaves_uncommitted_partitions_alone) and on the real broker by
tests/integration/test_delivery_failure.py and tests/integration/test_input_expired.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_processors.patches import replace

log = logging.getLogger(__name__)

UPSTREAM: Final = (
    # replaced:
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed",
    # its logic copied (and changed as described above):
    "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed",
    # the fetch position read for the log line:
    "aiokafka.consumer.subscription_state:Assignment.state_value",
)


def _position(consumer: Any, tp: Any) -> int | None:
    """The fetch position aiokafka holds for ``tp`` (None when it has none); never waits."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return state._position if state is not None else None
    except Exception:  # internal layout changed: the position is only for the log line
        return None


def _count_expired(tp: Any, records: int) -> None:
    from stream_processors import metrics

    metrics.INPUT_EXPIRED.labels(tp.topic).inc(records)


async def seek_to_committed_or_reset(
    consumer: Any, changelog_topics: frozenset[str] | set[str], reset_earliest: bool,
    on_expired: Callable[[Any, int], None] = _count_expired,
) -> Mapping[Any, int | None]:
    """aiokafka's seek_to_committed, plus an explicit seek where it would not move.

    Returns the committed offsets, except that a partition sought to the beginning maps to
    its first offset: the offset its stream reads next, which is what a commit must start at.

    Every lookup (committed offsets, first offsets) is made before the first seek, and the
    seeks are made together, with no await between them or after them. A record fetched from
    a new position can then only reach the drain loop after the caller (perform_seek) has
    reset its read offsets and emptied the stream queues in the step that resumes it.
    aiokafka's own seek_to_committed awaited each partition's lookup between seeks (and the
    first-offset lookup came after them): a record fetched from a partition already sought was
    handed over, then thrown away by that reset, and with no record after it to show the gap
    it was never read again (tests/integration/test_delivery_failure.py, a lone request on its
    partition: never routed, three runs in three).

    A committed offset below the partition's first offset means retention deleted records
    this group never processed: they are counted (`on_expired`, the
    settle_input_records_expired_total counter that pages), logged, and reading resumes at
    the first offset. Seeking to the committed offset instead would reset to the first offset
    anyway, and the commit, whose floor is the committed offset, would never move again.
    """
    partitions = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    committed: dict[Any, int | None] = {}
    for tp in partitions:
        committed[tp] = await consumer.committed(tp)
    lookup = [tp for tp in partitions if tp.topic not in changelog_topics
              and (committed[tp] is not None or reset_earliest)]
    beginnings: Mapping[Any, int] = {}
    if lookup:
        try:
            beginnings = await consumer.beginning_offsets(lookup)
        except Exception as exc:  # the broker went away between the two requests
            log.error("seek: cannot read the first offsets of %s (%r); reading those with "
                      "nothing committed from offset 0 (the reset moves that to the first "
                      "offset) and committing none of them past offset 0 until the next "
                      "rebalance", _names(lookup), exc)
    # From here to the return: no await.
    floor = dict(committed)
    for tp in partitions:
        offset = committed[tp]
        if tp.topic in changelog_topics:
            if offset is not None and offset > 0:
                consumer.seek(tp, offset)  # what aiokafka's seek_to_committed does
            continue
        first = beginnings.get(tp)
        if offset is None:
            if not reset_earliest:
                continue
            target = first if first is not None else 0
        elif first is not None and offset < first:
            log.error("seek: %s/%s has offset %s committed but its first offset is %s: "
                      "retention deleted %d records this group never processed; reading on "
                      "from %s", tp.topic, tp.partition, offset, first, first - offset, first)
            on_expired(tp, first - offset)
            target = first
        else:
            target = offset
        if offset is None or offset == 0:
            position = _position(consumer, tp)
            if position:
                log.warning("seek: %s/%s has %s committed but its fetch position was %s; "
                            "reading it again from offset %s", tp.topic, tp.partition,
                            "nothing" if offset is None else "offset 0", position, target)
        consumer.seek(tp, target)
        # The floor of the next commit (see new_offset): the first record the stream must
        # acknowledge.
        floor[tp] = target
    return floor


def _names(tps: list[Any]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in tps)


async def seek_to_committed(self: Any) -> Mapping[Any, int | None]:
    """faust's AIOKafkaConsumerThread.seek_to_committed, through seek_to_committed_or_reset."""
    app = self.app
    changelogs = set(app.tables.changelog_topics)
    reset_earliest = str(app.conf.consumer_auto_offset_reset).lower() == "earliest"
    return await self.call_thread(
        seek_to_committed_or_reset, self._ensure_consumer(), changelogs, reset_earliest)


def install() -> None:
    """Route faust's seek to committed offsets through seek_to_committed_or_reset."""
    replace(faust_aiokafka.AIOKafkaConsumerThread, "seek_to_committed", seek_to_committed)
