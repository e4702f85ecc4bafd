"""Event-loop stalls and garbage-collector pauses of a worker: metrics, log lines, stacks.

A faust worker does all its work on one event loop, so anything that keeps the loop from
coming back (a long callback, a full garbage collection, the GIL held by the consumer thread,
the process not getting a core) delays every record it holds by that long. A probe sleeps
`PROBE_INTERVAL_S` at a time and measures how late it wakes:

- `settle_event_loop_lag_seconds{stage}`: how late, every probe;
- `settle_gc_pause_seconds{stage,generation}`: every collection's pause (`gc.callbacks`);
- a warning line for each lag of `SETTLE_LOOP_STALL_WARN_MS` (default 500) or more, with the
  CPU the process used meanwhile (near the stall's length: busy in this process; near 0:
  starved of CPU) and the GC pauses inside it, so a latency spike can be dated and explained;
- `settle_stage_commit_seconds{stage,path}`: each offset commit, from faust's commit sensor
  hooks. `path="fetch_loop"` is the commit every `SETTLE_STAGE_COMMIT_EVERY` records, made
  inside the fetch loop: no record reaches the stream until it ends, yet the event loop is
  free meanwhile, so the probe above never sees it. `path="timer"` runs beside the stream;
- with `SETTLE_STALL_STACKS=N` (default 0) the first N stalls also write every thread's stack
  to the process's stderr (the worker's log) while the stall is still going on
  (`faulthandler`'s watchdog thread, in C, runs while the loop is stuck), which names what
  the loop was doing.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faust.sensors import Sensor
from prometheus_client import Histogram

from infra.runtime import (
    LoopHealthSettings,
)
from stream_processors.patches.drain_messages import IN_FETCH_LOOP

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.1

LOOP_LAG = Histogram(
    "settle_event_loop_lag_seconds",
    "How late the worker's event loop woke a probe due every 0.1 s: time it spent on "
    "something else (a long callback, a GC pause, the GIL elsewhere, no free core)",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GC_PAUSE = Histogram(
    "settle_gc_pause_seconds",
    "Pauses of the worker's garbage collector per generation",
    ["stage", "generation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


COMMIT_SECONDS = Histogram(
    "settle_stage_commit_seconds",
    "Offset commits of a faust stage, producer flush included; path fetch_loop holds every "
    "record back until it ends, path timer runs beside the stream",
    ["stage", "path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class CommitTimer(Sensor):
    """A faust sensor timing each offset commit into `settle_stage_commit_seconds`."""

    def __init__(self, stage: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._paths = {True: COMMIT_SECONDS.labels(stage, "fetch_loop"),
                       False: COMMIT_SECONDS.labels(stage, "timer")}

    def on_commit_initiated(self, consumer: Any) -> tuple[float, bool]:
        return self._clock(), IN_FETCH_LOOP.get()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        started, in_fetch_loop = state
        self._paths[bool(in_fetch_loop)].observe(max(self._clock() - started, 0.0))


_INSTALLED: dict[str, GcPauses] = {}


class GcPauses:
    """Times every collection through `gc.callbacks`; `total_s` only grows."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self._observe = observe
        self._started = 0.0
        self.total_s = 0.0
        self.count = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total_s += pause
        self.count += 1
        self._observe(info["generation"], pause)


@dataclass(slots=True)
class Stall:
    lag_s: float
    cpu_s: float  # process CPU (all threads) over the probe's whole sleep
    gc_s: float  # GC pauses over the probe's whole sleep
    gc_count: int

    def describe(self, stage: str) -> str:
        return (f"{stage}: event loop stalled {self.lag_s * 1000:.0f} ms "
                f"(process CPU {self.cpu_s * 1000:.0f} ms meanwhile, "
                f"{self.gc_count} GC pauses {self.gc_s * 1000:.0f} ms)")


@dataclass(slots=True)
class StallProbe:
    """The arithmetic of one probe: fed each wake-up, says whether it was a stall."""

    interval_s: float
    warn_s: float
    _last: tuple[float, float, float, int] | None = None

    def start(self, wall: float, cpu: float, gc_total: float, gc_count: int) -> None:
        self._last = (wall, cpu, gc_total, gc_count)

    def wake(self, wall: float, cpu: float, gc_total: float,
             gc_count: int) -> tuple[float, Stall | None]:
        """The lag of this wake-up, and a Stall when it reached the warning threshold."""
        assert self._last is not None, "start() first"
        wall0, cpu0, gc0, n0 = self._last
        self._last = (wall, cpu, gc_total, gc_count)
        lag = max(0.0, wall - wall0 - self.interval_s)
        if lag < self.warn_s:
            return lag, None
        return lag, Stall(lag, cpu - cpu0, gc_total - gc0, gc_count - n0)


async def probe_forever(stage: str, cfg: LoopHealthSettings, gc_pauses: GcPauses,
                        interval_s: float = PROBE_INTERVAL_S) -> None:
    lag_metric = LOOP_LAG.labels(stage)
    probe = StallProbe(interval_s, cfg.warn_ms / 1000)
    stacks_left = cfg.stacks
    # faulthandler fires from its own thread if the loop is not back by then: the stack is
    # taken during the stall, not after it.
    arm_s = interval_s + cfg.warn_ms / 1000
    probe.start(time.monotonic(), time.process_time(), gc_pauses.total_s, gc_pauses.count)
    try:
        while True:
            if stacks_left:
                faulthandler.dump_traceback_later(arm_s, repeat=False, file=2)  # fd 2: the log
            await asyncio.sleep(interval_s)
            lag, stall = probe.wake(time.monotonic(), time.process_time(),
                                    gc_pauses.total_s, gc_pauses.count)
            lag_metric.observe(lag)
            if stall is not None:
                log.warning("%s", stall.describe(stage))
                if stacks_left:
                    stacks_left -= 1
                    if not stacks_left:
                        faulthandler.cancel_dump_traceback_later()
                        log.warning("%s: SETTLE_STALL_STACKS used up, no more stacks", stage)
    finally:
        if cfg.stacks:
            faulthandler.cancel_dump_traceback_later()


def install(app: Any, stage: str, cfg: LoopHealthSettings) -> LoopHealthSettings:
    """Start the probe with the worker (`app.task`) and time GC pauses from now on."""

    def observe(generation: int, pause: float) -> None:
        GC_PAUSE.labels(stage, str(generation)).observe(pause)

    gc_pauses = GcPauses(observe)
    previous = _INSTALLED.pop(stage, None)  # an app built again in one process (tests)
    if previous is not None and previous in gc.callbacks:
        gc.callbacks.remove(previous)
    _INSTALLED[stage] = gc_pauses
    for generation in ("0", "1", "2"):
        GC_PAUSE.labels(stage, generation)
    LOOP_LAG.labels(stage)
    gc.callbacks.append(gc_pauses)
    app.sensors.add(CommitTimer(stage))

    @app.task
    async def loop_health() -> None:
        await probe_forever(stage, cfg, gc_pauses)

    return cfg
