"""The local stack's services, stopped and started for faults and checked before a scenario.

Service faults go through `deploy/stack.sh stop|start SERVICE`, so they act on the stack
named by the SETTLE_* environment (never run them against a stack others are using).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from infra.config import REPO_ROOT
from infra.config import load as load_settings


def _stack_sh(*args: str, env: Mapping[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """`deploy/stack.sh ARGS` on the stack named by this process's SETTLE_* environment."""
    return subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), *args],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})


def stack_service(action: str, service: str) -> None:
    """`deploy/stack.sh stop|start SERVICE`; raises with its output when it fails."""
    proc = _stack_sh(action, service)
    if proc.returncode != 0:
        raise RuntimeError(f"stack.sh {action} {service} failed:\n{proc.stdout}{proc.stderr}")


STACK_SERVICES: Final = ("kafka", "registry", "postgres")   # what a scenario needs up


def down_services(status_table: str,
                  services: Iterable[str] = STACK_SERVICES) -> list[str]:
    """The `services` that `stack.sh status` shows as down or unhealthy."""
    wanted = set(services)
    found = []
    for line in status_table.splitlines():
        cells = line.split()
        if len(cells) >= 2 and cells[0] in wanted and cells[1] in ("down", "unhealthy"):
            found.append(cells[0])
    return found


def stack_status(lines: int = 25, env: Mapping[str, str] | None = None
                 ) -> tuple[int, str, dict[str, str]]:
    """`stack.sh status`'s exit code and table, and the last lines of each service not up
    (with any JVM crash file, hs_err_pid*.log, beside its log). `env` overrides settings:
    PostgreSQL's check logs in to SETTLE_PG_DB, which must exist."""
    status = _stack_sh("status", env=env)
    tails: dict[str, str] = {}
    if status.returncode != 0:
        for service in down_services(status.stdout, (*STACK_SERVICES, "prometheus")):
            tail = _stack_sh("logs", service, "-n", str(lines))
            tails[service] = (tail.stdout + tail.stderr).rstrip()
        crash_files = sorted(load_settings().run_dir.glob("*/logs/hs_err_pid*.log"),
                             key=lambda p: p.stat().st_mtime)
        for crash in crash_files[-2:]:
            tails[crash.name] = "\n".join(crash.read_text(errors="replace").splitlines()[:15])
    return status.returncode, status.stdout + status.stderr, tails


def ensure_stack_up(say: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Start any service a scenario needs that is not running; one line per service started.

    A scenario stops and starts services itself and must begin from a whole stack: a service
    that died before it (CI once lost the registry before the first scenario, and every
    scenario after it failed on "connection refused") is started again here, and the end of
    its log is kept in the line so the death can be explained.
    """
    code, table, tails = stack_status(lines=25)
    if code == 0:
        return []
    repairs = []
    for service in down_services(table):
        tail = tails.get(service, "")
        say(f"STACK: {service} was not up before the scenario; starting it if it is down. "
            f"The end of its log:\n{tail}")
        stack_service("start", service)   # waits until ready; "already running" if unhealthy
        repairs.append(f"{service} was not up before the scenario; "
                       f"its log ended: {tail.splitlines()[-1] if tail else '(empty)'}")
    # An unhealthy service (alive, not answering yet) gets a minute to become healthy; a
    # scenario that starts on a stack still broken after that fails on its own, loudly.
    deadline = time.monotonic() + 60
    while repairs and _stack_sh("status").returncode != 0 and time.monotonic() < deadline:
        time.sleep(1.0)
    return repairs
