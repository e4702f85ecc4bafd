"""The runtime and monitor parts of the settings tree: where a process runs and what it serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from infra.gc_tuning import GcSettings
from infra.paths import DEFAULT_RUN_DIR
from settlement.errors import SettleError

# A loop iteration slower than this is a stall (logged, counted in settle_event_loop_stalls).
DEFAULT_WARN_MS: Final = 500
EVENT_LOOPS: Final = ("asyncio", "uvloop")
LOGLEVELS: Final = ("debug", "info", "warning", "error")


class RuntimeConfigError(SettleError):
    """A runtime or monitor setting is malformed."""


# Kept under its old name: the stall probe's settings errors are caught by it.
LoopHealthConfigError = RuntimeConfigError


@dataclass(frozen=True, slots=True)
class LoopHealthSettings:
    """The faust workers' event-loop stall probe (stream_processors.loop_health)."""

    warn_ms: int = DEFAULT_WARN_MS
    stacks: int = 0  # stalls whose stacks are dumped, then no more


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Where a process keeps its data, what it serves, how its interpreter is tuned."""

    run_dir: Path = DEFAULT_RUN_DIR
    metrics_port: int = 0  # 0: do not serve /metrics
    # Address /metrics binds to: loopback by default; 0.0.0.0 in containers (compose).
    metrics_addr: str = "127.0.0.1"
    # Prefix of every topic (isolated test and benchmark runs use their own copies).
    topic_prefix: str = ""
    event_loop: str = "asyncio"
    gc: GcSettings = field(default_factory=GcSettings)
    loop: LoopHealthSettings = field(default_factory=LoopHealthSettings)
    # Log level of the pipeline processes an end-to-end, bench or chaos run starts.
    e2e_loglevel: str = "warning"
    # How long a consumer group waits for a silent member before it hands the member's
    # partitions to the others; None: each client's default (faust stages 60 s, sinks 45 s).
    session_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """`settle monitor`'s defaults (its command-line options override them)."""

    interval_s: float = 10.0
    books_interval_s: float = 30.0
    # None: the settlement window + its grace + 900 s.
    settle_horizon_s: float | None = None
    undecided_margin_s: float = 120.0
    undecided_lookback_s: float = 86_400.0
    groups: str | None = None  # a regular expression; None: <prefix>settle-.*


def nonneg_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise RuntimeConfigError(f"{name}={raw!r} is not an integer") from exc
    if value < 0:
        raise RuntimeConfigError(f"{name}={raw!r} must be 0 or more")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise RuntimeConfigError(f"{name}={raw!r} is not a number") from exc
    if not value >= minimum:  # also refuses nan
        raise RuntimeConfigError(f"{name}={raw!r} must be {minimum:g} or more")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise RuntimeConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def load_loop_health(env: Mapping[str, str]) -> LoopHealthSettings:
    warn_ms = nonneg_int(env, "SETTLE_LOOP_STALL_WARN_MS", DEFAULT_WARN_MS)
    if warn_ms == 0:
        raise RuntimeConfigError("SETTLE_LOOP_STALL_WARN_MS=0: every probe would warn")
    return LoopHealthSettings(warn_ms, nonneg_int(env, "SETTLE_STALL_STACKS", 0))


def load_monitor(env: Mapping[str, str]) -> MonitorSettings:
    horizon = env.get("SETTLE_MONITOR_SETTLE_HORIZON_S", "")
    return MonitorSettings(
        interval_s=_float(env, "SETTLE_MONITOR_INTERVAL_S", 10.0, 0.5),
        books_interval_s=_float(env, "SETTLE_MONITOR_BOOKS_INTERVAL_S", 30.0, 1.0),
        settle_horizon_s=(_float(env, "SETTLE_MONITOR_SETTLE_HORIZON_S", 0.0, 0.0)
                          if horizon else None),
        undecided_margin_s=_float(env, "SETTLE_MONITOR_UNDECIDED_MARGIN_S", 120.0, 0.0),
        undecided_lookback_s=_float(env, "SETTLE_MONITOR_UNDECIDED_LOOKBACK_S", 86_400.0, 0.0),
        groups=env.get("SETTLE_MONITOR_GROUPS") or None,
    )


def load_runtime(env: Mapping[str, str], run_dir: Path, metrics_port: int,
                 gc: GcSettings, session_timeout_ms: int | None) -> RuntimeSettings:
    return RuntimeSettings(
        run_dir=run_dir,
        metrics_port=metrics_port,
        metrics_addr=env.get("SETTLE_METRICS_ADDR", "") or "127.0.0.1",
        topic_prefix=env.get("SETTLE_TOPIC_PREFIX", ""),
        event_loop=_choice(env, "SETTLE_EVENT_LOOP", "asyncio", EVENT_LOOPS),
        gc=gc,
        loop=load_loop_health(env),
        e2e_loglevel=_choice(env, "SETTLE_E2E_LOGLEVEL", "warning", LOGLEVELS),
        session_timeout_ms=session_timeout_ms,
    )
