"""A record a stream skipped without processing is not acknowledged for the commit.

Upstream: faust's ``Consumer.ack`` (faust/transport/consumer.py). A stream acknowledges the
records it skips without processing them: those that arrive while the flow is suspended,
and those of an earlier consumer generation (the skip rule added by
faust-streaming/faust#223 for #221, prefetched records delivered after a rebalance). Their
offsets then count as processed, and a commit could move past a record nobody processed.
Related: faust-streaming/faust#596.

The replacement refuses those acknowledgements: the record leaves the unacked set (a
rebalance waits for that set to empty) but its offset is not among the acked ones, so the
commit stops before it and the seek after the rebalance reads it again. Every other record
goes through faust's ack unchanged.

Proved by tests/unit/stream_processors/test_patch_offsets.py
(test_a_skipped_record_is_not_acknowledged) and
on the real broker by tests/chaos (kill-workers, rebalances under load).
"""

from __future__ import annotations

from typing import Any, Final

from faust.transport import consumer as faust_consumer

from stream_processors.patches import replace

UPSTREAM: Final = (
    "faust.transport.consumer:Consumer.ack",
    # the two skip rules `skipped_unprocessed` mirrors:
    "faust.streams:Stream._py_aiter",
)

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


def install() -> None:
    replace(faust_consumer.Consumer, "ack", ack)
