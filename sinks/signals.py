"""Graceful stop for a sink: the first SIGTERM/SIGINT asks to stop, a second one aborts."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(
    label: str, stop: Callable[[], None], stopping: Callable[[], bool], install: bool = True
) -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT call `stop`; when already stopping they raise
    KeyboardInterrupt. Handlers can only be set in the main thread; elsewhere this is a no-op.
    """
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stopping():
            raise KeyboardInterrupt  # second signal: abandon the uncommitted batch
        log.info("%s: %s received, finishing the current batch", label,
                 signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
