"""Seek to committed offsets without skipping a partition that has none (a faust/aiokafka gap).

After every rebalance faust restores its tables and then calls ``perform_seek``, which asks
aiokafka to seek each assigned partition to its committed offset. aiokafka only seeks when
the committed offset is a positive number: a partition with no committed offset yet (a new
consumer group, or an input nobody has committed on because its first output failed) or one
committed at 0 keeps whatever position the fetcher reached meanwhile. Records fetched before
the seek and dropped by faust (they arrived while the stream was paused for recovery) are then
never read again, and the next commit moves past them: the payment is read but never routed.
Found by tests/integration/test_delivery_failure.py (one run in four lost its request).

The fix seeks such partitions explicitly: to the beginning when nothing is committed (the
``earliest`` reset every stage uses), to 0 when 0 is committed. Changelog partitions are left
alone: faust seeks those itself from the tables' own offsets.

Second gap, in faust's fetch loop (``Consumer._drain_messages``): it remembers the last offset
handed to the streams per partition ("read offset") and silently drops any record at or
below it, and it marks any jump forward in offsets as an acknowledged "gap" (meant for
compacted and transactional topics). The read offset is written after the hand-over awaits,
so a rebalance that seeks the partition back to its committed offset meanwhile is followed by
a stale write: the re-fetched records between the commit and that offset are dropped, never
processed, and committed past; and records a batch held when a rebalance cut it short leave a
jump that faust acknowledges. The replacement below hands every record over (a record read
twice is a duplicate every stage already absorbs; a record never read is a lost payment) and
answers a jump by seeking back to the first missing offset (no input topic of this pipeline
is compacted or transactional, so a jump always means records not read yet). The read offset
is kept as "last offset read" everywhere (faust mixed it with "next offset to read").

Third, in the commit (``Consumer._new_offset``): faust commits the first run of consecutive
acknowledged offsets, and only refuses when the lowest acknowledged offset is more than one
past the committed one (and never when 0 is committed). The committed offset is the next
offset to read, so a run starting one past it skips a record that was never acknowledged.
The wrapper refuses any run that does not start at the committed offset.

Fourth, in the hand-over: the drain loop wrote a record's read offset after awaiting its
delivery, so a ``perform_seek`` that ran during that await (it resets the read offsets to
"committed - 1") was overwritten with the stale offset, and the jump rule could no longer
see that the re-fetch was still ahead. The read offset is now written before the await.

Fifth, in mode's ``FlowControlEvent.resume``: it empties every stream queue, also when the
flow was not suspended. After table recovery faust resumes the flow once to read the
changelogs, seeks the inputs to their committed offsets, and resumes it again: that second
resume threw away the input records delivered in between (kill-workers lost 2 to 58 records
of one partition in about one run in four). Queues are now emptied only by a resume that
ends a suspension (their records predate the rebalance and are fetched again from the
committed offset) and by ``perform_seek`` itself, in the same step as the read-offset reset:
what they hold then was handed over before the seek and is fetched again, and dropping it
there keeps a clean restart from processing those records twice.

Sixth, in the ack (``Consumer.ack``): a stream acknowledges the records it skips without
processing them (the flow is suspended, or the record belongs to an earlier generation), so
a commit could move past a record nobody processed. Those acknowledgements are refused: the
record stays uncommitted and the seek after the rebalance reads it again.

Seventh, the floor of the commit where nothing is committed yet: faust keeps "committed"
as None there (and also where 0 is committed), and the commit rule then has no floor: it
commits the first run of acknowledged offsets wherever it starts. A record skipped at 83
while 84 onwards were processed was committed past, never read again, and its payment
stayed unrouted (`settle chaos --seed 1`, partitions that validate had just sought back to
the beginning). The seek now reports the first offset of such a partition, and perform_seek
stores it (and a committed 0) as the floor, so new_offset waits for the record there.
The read offset it sets says the same ("first offset - 1"; faust and the fix above had
None, "anything comes next"): records of a fetch made before the seek and handed over after
it (the drain loop was inside that batch) were then delivered ahead of the re-read from the
beginning, so a later duplicate of a request was routed before the request itself, which
was then dropped as the duplicate (`settle chaos` scenario
registry-down-at-start-two-workers: 2 requests of 3,000 in its first run). Now the first of
those records is a jump: the partition is sought back to its first offset and the rest of
the batch is skipped.

Eighth, the order of the seek's steps. aiokafka's seek_to_committed looks up each partition's
committed offset and seeks it before looking up the next, and the first-offset lookup of the
seventh fix came after the seeks: while those awaits ran, the fetcher read from partitions
already sought and the drain loop handed the records over, and perform_seek's reset (read
offsets back to "committed - 1", stream queues emptied) then threw them away. Where more
records followed, the next one was a jump and the partition was read again; a partition's
last record stayed unread until the next rebalance (test_delivery_failure: a lone request,
never routed, three runs in three). Every lookup now comes first and all the seeks are made
in one step with no await after them, so the reset always precedes the hand-over of a
record fetched from a new position.

Ninth, a committed offset that retention has deleted past. aiokafka seeks to it, the fetcher
resets to the first offset left, and the commit, whose floor is the committed offset, never
moves again on that partition (every restart re-reads everything after it). The seek now
looks up the first offsets of every input partition, counts the deleted records
(settle_input_records_expired_total, alert SettleInputExpired), logs the range and reads on
from the first offset (tests/integration/test_input_expired.py).

Not a fault but a cost, in the same loop: faust awaits every record's hand-over to the
streams inside ``wait_first`` (four tasks and an ``asyncio.wait`` per record). The loop now
awaits the hand-over directly whenever it cannot wait on anything (``hand_over_ready``), and
keeps faust's path for the cases where it can; about a quarter less CPU per record in the
validate worker (README, Performance).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Final

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils import queues as mode_queues

log = logging.getLogger(__name__)

_PATCHED_ATTR = "_settle_seek_patched"


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


def last_read_before(committed: int | None) -> int | None:
    """The read offset that says "the next record expected is `committed`" (None: any).

    0 gives -1: the record at 0 comes next, and one past it is a jump (a leftover of a fetch
    made before the seek), not the first record.
    """
    return committed - 1 if committed is not None else None


async def perform_seek(self: Any) -> None:
    """faust's Consumer.perform_seek, storing "last offset read" rather than the next one.

    The committed offsets it stores are the floor of the next commit (new_offset), so 0 and
    a partition's first offset (nothing committed, read from the beginning) are stored as
    such: faust stored None for both, and then committed any run of acknowledged records,
    also one that started past a record never processed.
    """
    committed = await self.seek_to_committed()
    self._read_offset.update({tp: last_read_before(o) for tp, o in committed.items()})
    self._committed_offset.update({
        faust_consumer.ensure_TP(tp): o for tp, o in committed.items() if o is not None})
    # What the streams hold now was handed over before the seek and is fetched again from
    # the committed offsets: drop it here, in the same step as the reset, rather than at the
    # next resume (which would also drop records handed over after the seek).
    self.app.flow_control.clear()


async def seek(self: Any, partition: Any, offset: int) -> None:
    """faust's Consumer.seek, with the same read-offset meaning as perform_seek."""
    await self._seek(partition, offset)
    self._read_offset[faust_consumer.ensure_TP(partition)] = last_read_before(offset)


class Verdict:
    DELIVER = 0
    REWIND = 1   # records are missing before this one: seek back, deliver nothing of it yet
    SKIP = 2     # this partition is being rewound in this batch


def classify(offset: int, last: int | None, rewinding: bool) -> int:
    """What the fetch loop does with a record at `offset` after reading `last` (pure rule)."""
    if rewinding:
        return Verdict.SKIP
    if last is not None and offset > last + 1:
        return Verdict.REWIND
    return Verdict.DELIVER  # the next record, a re-read (duplicate), or the first one


MAX_REWINDS: Final = 3


# True in the fetch loop's task only: a commit started there holds every record back until
# it ends, while the timer's commits run beside the stream (loop_health times both).
IN_FETCH_LOOP: ContextVar[bool] = ContextVar("settle_in_fetch_loop", default=False)


async def drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - faust loop
    """faust's Consumer._drain_messages without its silent drops (see the module docstring).

    The same loop otherwise (flow control, commit every N acks, yielding to the event loop).
    Acked topics only (the stages' inputs; never compacted here): changelogs keep faust's
    own handling, since compaction leaves real holes in them.
    """
    IN_FETCH_LOOP.set(True)
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = self._read_offset
    acks_enabled_for = self.app.topics.acks_enabled_for
    flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    ready = hand_over_ready(self)
    rewinds: dict[tuple[Any, int], int] = {}
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            rewinding: set[Any] = set()
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    last = read_offset[tp]
                    if acks_enabled_for(message.topic):
                        verdict = classify(offset, last, tp in rewinding)
                        if verdict == Verdict.SKIP:
                            continue
                        if verdict == Verdict.REWIND:
                            assert last is not None
                            key = (tp, last + 1)
                            rewinds[key] = rewinds.get(key, 0) + 1
                            if rewinds[key] <= MAX_REWINDS:
                                log.warning("fetch: %s/%s jumped from offset %s to %s; "
                                            "reading again from %s", tp.topic, tp.partition,
                                            last, offset, last + 1)
                                rewinding.add(tp)
                                await self._seek(tp, last + 1)
                                continue
                            # e.g. retention deleted the records: nothing left to read there.
                            log.error("fetch: %s/%s still jumps from %s to %s after %d "
                                      "re-reads; going on from %s", tp.topic, tp.partition,
                                      last, offset, MAX_REWINDS, offset)
                        elif last is not None and offset <= last:
                            log.info("fetch: %s/%s re-read from offset %s (had read up to %s)",
                                     tp.topic, tp.partition, offset, last)
                    # Before any await: a seek during the awaits below resets the read
                    # offset, and that reset must win (the re-fetch is then a jump or a
                    # re-read, never mistaken for records already handed over).
                    read_offset[tp] = offset
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if ready(message.topic):
                        await callback(message)  # completes without suspending (see below)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                unset_flag(flag_consumer_fetching)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


def hand_over_ready(consumer: Any) -> Callable[[str], bool]:
    """A check that the hand-over of a record of `topic` would finish without waiting.

    faust awaits every record's hand-over inside ``wait_first`` (so a rebalance or a stop can
    cut a blocked one short), which makes four tasks, an ``asyncio.wait`` and an event-loop
    turn per record. The
    hand-over (the conductor's ``on_message``) only ever waits on the flow control during a
    rebalance, the producer buffer when full, the callback lock during a subscription
    change, or a full stream queue. When none of those holds it runs to the end in one step,
    so nothing can happen meanwhile that ``wait_first`` would have to watch for, and it is
    awaited directly; otherwise faust's path is taken.
    """
    app = consumer.app
    conductor = app.topics
    channels_of = conductor._topic_name_index
    lock = conductor._tp_to_callback_lock
    flow_control = app.flow_control
    suspend_flow = consumer.suspend_flow
    buffer = app.producer.buffer

    def ready(topic: str) -> bool:
        if (suspend_flow.is_set() or not flow_control.is_active() or lock.locked()
                or buffer.size > buffer.max_messages):
            return False
        return not any(chan.queue.full() for chan in channels_of.get(topic, ()))

    return ready


_faust_new_offset = faust_consumer.Consumer._new_offset


def new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp``: never past a record that was not acknowledged."""
    acked = self._acked[tp]
    committed = self._committed_offset[tp]
    if acked and committed is not None and not self._gap[tp] and min(acked) > committed:
        return None  # the record at `committed` is still in flight (or was never handed over)
    result: int | None = _faust_new_offset(self, tp)
    return result


_faust_ack = faust_consumer.Consumer.ack


def skipped_unprocessed(generation_id: int | None, current_generation_id: int,
                        flow_active: bool) -> bool:
    """Whether a stream is acknowledging a record it skipped (faust's two skip rules)."""
    stale = generation_id is not None and generation_id != current_generation_id
    return stale or not flow_active


def ack(self: Any, message: Any) -> bool:
    """faust's Consumer.ack, refusing the records a stream skipped without processing."""
    app = self.app
    if skipped_unprocessed(message.generation_id, app.consumer_generation_id,
                           app.flow_control.is_active()):
        with faust_consumer.ack_lock:
            # Out of the unacked set (a rebalance waits for it to empty), but not among
            # the acked offsets: the commit stops before it and the re-read processes it.
            message.acked = True
            self._unacked_messages.discard(message)
        return False
    result: bool = _faust_ack(self, message)
    return result


def flow_resume(self: Any) -> None:
    """mode's FlowControlEvent.resume, emptying the queues only after a suspension."""
    was_suspended = self._suspend.is_set()
    self._suspend.clear()
    self._resume.set()
    if was_suspended:
        self.clear()


def install() -> None:
    """Route faust's seek, fetch loop, commit and ack, and mode's resume, through the fixes
    above (idempotent)."""
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, _PATCHED_ATTR, False):
        return
    setattr(faust_consumer.Consumer, "_drain_messages", drain_messages)  # noqa: B010
    setattr(faust_consumer.Consumer, "perform_seek", perform_seek)  # noqa: B010
    setattr(faust_consumer.Consumer, "seek", seek)  # noqa: B010
    setattr(faust_consumer.Consumer, "_new_offset", new_offset)  # noqa: B010
    setattr(faust_consumer.Consumer, "ack", ack)  # noqa: B010
    setattr(mode_queues.FlowControlEvent, "resume", flow_resume)  # noqa: B010

    async def seek_to_committed(self: Any) -> Mapping[Any, int | None]:
        app = self.app
        changelogs = set(app.tables.changelog_topics)
        reset_earliest = str(app.conf.consumer_auto_offset_reset).lower() == "earliest"
        return await self.call_thread(
            seek_to_committed_or_reset, self._ensure_consumer(), changelogs, reset_earliest)

    setattr(thread_cls, "seek_to_committed", seek_to_committed)  # noqa: B010
    setattr(thread_cls, _PATCHED_ATTR, True)
