"""After the seek: "last offset read" in the read offsets, a real floor for the commit, and
the streams' stale records dropped in the same step.

Upstream: faust's ``Consumer.perform_seek`` (faust/transport/consumer.py), run after every
rebalance once the tables are recovered. Related reports: faust-streaming/faust#596 (a race
in recovery leaves gaps in the acked offsets), #216 and #221 (records fetched before the seek
reach the streams after it).

- faust stores the committed offset (the next offset to read) as the read offset, while its
  fetch loop stores the last offset it handed over there: one field, two meanings. The
  patched fetch loop (patches.drain_messages) tells a re-read, the next record and a jump
  apart by it, so the read offset now means "last offset read" everywhere:
  ``last_read_before(committed)``, None when nothing is known.
- faust keeps "committed" as None where nothing is committed and where 0 is committed, and
  the commit rule then has no floor: it commits the first run of acknowledged offsets
  wherever it starts. A record skipped at 83 while 84 onwards were processed was committed
  past, never read again, and its payment stayed unrouted (`settle chaos --seed 1`). The
  seek (patches.seek_to_committed) reports the first offset of such a partition, and this
  stores it (and a committed 0) as the floor, so new_offset waits for the record there. The
  read offset it sets says the same ("first offset - 1"; faust had None, "anything comes
  next"): records of a fetch made before the seek and handed over after it were then
  delivered ahead of the re-read from the beginning, so a later duplicate of a request was
  routed before the request itself, which was then dropped as the duplicate (`settle chaos`
  scenario registry-down-at-start-two-workers: 2 requests of 3,000). Now the first of those
  records is a jump (patches.drain_messages): the partition is sought back to its first
  offset and the rest of the batch is skipped.
- What the streams hold at the seek was handed over before it and is fetched again from the
  committed offsets: it is dropped here, in the same step as the reset, rather than at the
  next resume (which would also drop records handed over after the seek; see
  patches.flow_resume).

Proved by tests/unit/stream_processors/test_patch_offsets.py
(test_perform_seek_resets_read_offsets_and_drops
_what_the_streams_hold, test_perform_seek_keeps_a_zero_floor_that_faust_would_drop,
test_read_offset_means_last_read) and on the real broker by
tests/integration/test_delivery_failure.py and tests/chaos.
"""

from __future__ import annotations

from typing import Any, Final

from faust.transport import consumer as faust_consumer

from stream_processors.patches import replace

UPSTREAM: Final = (
    "faust.transport.consumer:Consumer.perform_seek",
)


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


def install() -> None:
    replace(faust_consumer.Consumer, "perform_seek", perform_seek)
