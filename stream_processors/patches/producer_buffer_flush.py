"""The flush before a commit waits until every buffered record has reached the producer.

Upstream: faust's ``ProducerBuffer.flush`` (faust/transport/producer.py), awaited by
``Producer.flush`` before every offset commit. Records faust sends itself (every table's
changelog record: ``send_soon``) wait in this buffer until its task hands them to aiokafka
(``_send_pending``). faust's flush waits for one hand-over at a time, 0.1 s at most: when a
hand-over takes longer (aiokafka waits for metadata or for room in its accumulator) the flush
returns with records still in the buffer, and its size does not count the record being handed
over at that moment. aiokafka's flush then waits for what it has, the commit goes ahead, and
the changelog record of an input just committed is sent afterwards: if the broker refuses
it, the table update is lost although the worker exits (patches.changelog_delivery) - the
offset was already committed. No upstream issue found.

The replacement waits until the buffer is empty and no hand-over is in progress
(``_send_pending`` is wrapped to count the one in progress), logging every 10 s while it
waits; a buffer that is not running refuses as faust's does (RuntimeError), a stopping
buffer is flushed by faust's own flush, and a threaded producer buffer (``producer_threaded``,
not used here) is left to faust. The flush before a commit thus returns only when every
changelog record of the acknowledged inputs is in aiokafka's accumulator, whose own flush
then waits for its delivery.

Proved by tests/unit/stream_processors/test_patch_changelog_delivery.py
(test_flush_waits_for_a_slow_hand_over, against test_faust_flush_returns_before_a_slow
_hand_over) and on the real broker by tests/integration/test_delivery_failure.py
(test_refused_changelog_record_stops_the_worker_before_the_commit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from faust.transport import producer as faust_producer

from stream_processors.patches import replace

log = logging.getLogger(__name__)

UPSTREAM: Final = (
    # replaced:
    "faust.transport.producer:ProducerBuffer.flush",
    # wrapped (counts the hand-over in progress):
    "faust.transport.producer:ProducerBuffer._send_pending",
    # the loop that takes records from the buffer, and what flush used to wait with:
    "faust.transport.producer:ProducerBuffer._handle_pending",
    "faust.transport.producer:ProducerBuffer.flush_atmost",
    "faust.transport.producer:ProducerBuffer.size",
)

_faust_flush = faust_producer.ProducerBuffer.flush
_faust_send_pending = faust_producer.ProducerBuffer._send_pending
_SENDING: Final = "_settle_sending"  # hand-overs in progress (0 or 1: one task hands over)
WAIT_S: Final = 0.1
WARN_EVERY_S: Final = 10.0


def in_flight(buffer: Any) -> int:
    """Records put in the buffer and not yet handed to the producer."""
    sending: int = getattr(buffer, _SENDING, 0)
    return int(buffer.size) + sending


async def send_pending(self: Any, fut: Any) -> None:
    """faust's ProducerBuffer._send_pending, counted while it runs."""
    setattr(self, _SENDING, getattr(self, _SENDING, 0) + 1)
    try:
        await _faust_send_pending(self, fut)
    finally:
        setattr(self, _SENDING, getattr(self, _SENDING) - 1)


async def flush(self: Any) -> None:
    """faust's ProducerBuffer.flush, waiting for every record put before it is handed over."""
    app = self.app
    if app is None or app.conf.producer_threaded:
        await _faust_flush(self)
        return
    started = last_warning = time.monotonic()
    while in_flight(self):
        if self.state != "running" and self.size:
            raise RuntimeError("Cannot flush: Producer not Running")  # faust's own refusal
        if self.should_stop:  # the buffer is stopping: faust's flush, as it is
            await _faust_flush(self)
            return
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=WAIT_S)
        except TimeoutError:
            now = time.monotonic()
            if now - last_warning >= WARN_EVERY_S:
                last_warning = now
                log.warning("producer buffer: %d records not yet handed to the producer "
                            "after %.0f s; the offset commit waits for them",
                            in_flight(self), now - started)


def install() -> None:
    cls = faust_producer.ProducerBuffer
    replace(cls, "_send_pending", send_pending)
    replace(cls, "flush", flush)
