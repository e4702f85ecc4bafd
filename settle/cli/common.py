"""Shared pieces of the command line: console, settings and error reporting."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console

from settle import config
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
