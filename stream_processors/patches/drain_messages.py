"""faust's fetch loop without its silent drops, and a cheaper hand-over of each record.

Upstream: faust's ``Consumer._drain_messages`` (faust/transport/consumer.py), the loop that
hands every fetched record to the streams. It remembers the last offset handed to the
streams per partition ("read offset") and silently drops any record below it ("DROPPED
MESSAGE ROFF"), and it marks any jump forward in offsets as an acknowledged "gap" (meant for
compacted and transactional topics). Related reports: faust-streaming/faust#596 (a race in
recovery leaves gaps in the acked offsets), #606 (wrong offset committed across gaps),
robinhood/faust#115 (the first record read after a rebalance dropped).

- The read offset is written after the hand-over awaits, so a rebalance that seeks the
  partition back to its committed offset meanwhile is followed by a stale write: the
  re-fetched records between the commit and that offset are dropped, never processed, and
  committed past; and records a batch held when a rebalance cut it short leave a jump that
  faust acknowledges. The replacement hands every record over (a record read twice is a
  duplicate every stage already absorbs; a record never read is a lost payment) and answers
  a jump by seeking back to the first missing offset (no input topic of this pipeline is
  compacted or transactional, so a jump always means records not read yet; ``classify``).
- The read offset is written before the hand-over's await: a ``perform_seek`` that ran during
  that await (it resets the read offsets to "committed - 1") was overwritten with the stale
  offset, and the jump rule could no longer see that the re-fetch was still ahead.
- Not a fault but a cost: faust awaits every record's hand-over inside ``wait_first`` (four
  tasks and an ``asyncio.wait`` per record). The loop now awaits the hand-over directly
  whenever it cannot wait on anything (``hand_over_ready``), and keeps faust's path for the
  cases where it can; about a quarter less CPU per record in the validate worker.

Acked topics only (the stages' inputs; never compacted here): changelogs keep faust's own
handling, since compaction leaves real holes in them.

Proved by tests/unit/stream_processors/test_patch_offsets.py
(test_fetch_rule_delivers_in_order_and_re_reads,
test_fetch_rule_rewinds_on_a_jump_and_skips_the_rest_of_the_batch,
test_read_offset_means_last_read, test_hand_over_is_awaited_directly_only_when_nothing_can
_make_it_wait) and on the real broker by tests/integration/test_delivery_failure.py,
tests/integration/test_ingest_stage.py and tests/chaos (kill-workers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

from faust.transport import consumer as faust_consumer

from stream_processors.patches import replace

log = logging.getLogger(__name__)

UPSTREAM: Final = (
    # replaced (a copy with the changes described above):
    "faust.transport.consumer:Consumer._drain_messages",
    # hand_over_ready mirrors every wait of the hand-over (the conductor's on_message):
    "faust.transport.conductor:ConductorCompiler.build",
    "faust.transport.conductor:Conductor._compile_message_handler",
    "faust.transport.producer:ProducerBuffer.wait_until_ebb",
    "mode.utils.queues:FlowControlEvent.acquire",
)


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


def install() -> None:
    replace(faust_consumer.Consumer, "_drain_messages", drain_messages)
