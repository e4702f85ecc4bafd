"""Shared pieces of the command line: console, settings and error reporting."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from rich.console import Console

from infra import config
from settlement.errors import SettleError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def settings() -> config.Settings:
    return config.load()


@contextlib.contextmanager
def fail_on_settle_error() -> Iterator[None]:
    """Turn the project's own errors into one clear line and exit code 1, not a traceback."""
    try:
        yield
    except SettleError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C, so `finally` stops what this run started.

    Python's default for SIGTERM ends the process on the spot. A bench or chaos run starts its
    pipeline in sessions of their own (a Ctrl-C in the terminal must not reach them before the
    run stops them in order), so a `kill` of the run left every worker, sink and simulator
    running: they went on using CPU and skewed the next run. A second SIGTERM, while the
    first is still cleaning up, ends the process at once.
    """

    def _exit(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        err_console.print("[yellow]terminated: stopping what this run started[/]")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
