"""Outputs are delivered before their input's offset is committed, or the worker dies.

faust's non-transactional path sends with aiokafka and commits offsets on a timer after
``producer.flush()``. A send the broker refuses (after aiokafka's retries) only fails the
record's future, which nobody awaits: flush returns, the commit goes ahead, and the input
whose output was lost is never read again. A send that raises at once (metadata timeout)
escapes the agent, and faust acks and skips the event.

Both are turned into an immediate hard exit (``os._exit``), before any later commit can
run: the failed record's future callback is scheduled before the flush that waits for its
batch resumes, and a graceful stop is not an option because faust commits on shutdown.
Restarted, the worker re-reads from the last commit and re-sends; the idempotent stages
(dedup by payment_id, result ids, batch ids) make the replay harmless. Exiting is the
at-least-once answer; losing the record silently is not.

The tables' changelog records are sent by faust itself, not through ``send_all``: the app's
guard (``attach``; every stage's app has one) is also called for those by
stream_processors.patches.changelog_delivery, so a table update the broker refuses ends the
worker the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

# Exit status of a worker that stopped because an output could not be delivered (EX_TEMPFAIL:
# try again later; a supervisor restarts it).
EXIT_SEND_FAILED: Final = 75

# The app attribute holding its stage's guard (attach, guard_of).
APP_ATTR: Final = "settle_delivery_guard"


class Sender(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
             timestamp: float | None, headers: Any) -> Awaitable[Awaitable[Any]]: ...


def _hard_exit(status: int) -> None:  # pragma: no cover - ends the process
    logging.shutdown()
    os._exit(status)


class DeliveryGuard:
    """Watches every output's delivery; the first failure ends the process."""

    def __init__(self, stage: str, exit_fn: Callable[[int], None] = _hard_exit) -> None:
        self.stage = stage
        self._exit = exit_fn
        self.failed: BaseException | None = None
        self.pending = 0

    def fail(self, topic: str, exc: BaseException, what: str = "an output") -> None:
        if self.failed is None:
            self.failed = exc
            log.critical(
                "%s: %s to %s could not be delivered (%s: %s); exiting with status %d "
                "before its input's offset is committed, so a restart re-processes it",
                self.stage, what, topic, type(exc).__name__, exc, EXIT_SEND_FAILED)
            self._exit(EXIT_SEND_FAILED)

    def watch(self, topic: str, future: Awaitable[Any]) -> None:
        """Fail when the delivery future fails (or is cancelled)."""
        if not isinstance(future, asyncio.Future):
            return  # not a delivery future (a test double): nothing to watch
        self.pending += 1

        def done(f: asyncio.Future[Any]) -> None:
            self.pending -= 1
            if f.cancelled():
                self.fail(topic, asyncio.CancelledError("delivery cancelled"))
            elif (exc := f.exception()) is not None:
                self.fail(topic, exc)

        future.add_done_callback(done)

    async def send_all(self, producer: Sender,
                       outputs: Iterable[tuple[str, bytes | None, bytes, Any, int | None]]
                       ) -> None:
        """Send (topic, key, value, headers, partition) outputs in order, each watched."""
        for topic, key, value, headers, partition in outputs:
            try:
                future = await producer.send(topic, key, value, partition, None, headers)
            except Exception as exc:  # faust's ProducerSendError, aiokafka's KafkaError
                self.fail(topic, exc)
                raise
            self.watch(topic, future)


def attach(app: Any, guard: DeliveryGuard) -> DeliveryGuard:
    """Make `guard` the app's: the one its faust-sent records (changelogs) answer to."""
    setattr(app, APP_ATTR, guard)
    return guard


def guard_of(app: Any) -> DeliveryGuard | None:
    """The guard attached to the app, if any."""
    guard = getattr(app, APP_ATTR, None)
    return guard if isinstance(guard, DeliveryGuard) else None
