"""The event-loop stall probe: settings, its arithmetic, GC timing, and a real stalled loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from infra.runtime import (
    DEFAULT_WARN_MS,
    LoopHealthConfigError,
    LoopHealthSettings,
)
from infra.runtime import load_loop_health as load
from stream_processors.loop_health import (
    COMMIT_SECONDS,
    CommitTimer,
    GcPauses,
    StallProbe,
    probe_forever,
)
from stream_processors.patches.drain_messages import IN_FETCH_LOOP


def test_defaults_warn_at_half_a_second_and_dump_no_stacks() -> None:
    cfg = load({})
    assert cfg == LoopHealthSettings(DEFAULT_WARN_MS, 0)
    assert load({"SETTLE_LOOP_STALL_WARN_MS": "200", "SETTLE_STALL_STACKS": "3"}) == (
        LoopHealthSettings(200, 3))


@pytest.mark.parametrize("env, fragment", [
    ({"SETTLE_LOOP_STALL_WARN_MS": "soon"}, "is not an integer"),
    ({"SETTLE_LOOP_STALL_WARN_MS": "-1"}, "must be 0 or more"),
    ({"SETTLE_LOOP_STALL_WARN_MS": "0"}, "every probe would warn"),
    ({"SETTLE_STALL_STACKS": "1.5"}, "is not an integer"),
])
def test_bad_settings_say_which_and_why(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(LoopHealthConfigError, match=fragment):
        load(env)


def test_probe_on_time_is_no_stall_and_lag_never_negative() -> None:
    probe = StallProbe(0.1, 0.5)
    probe.start(10.0, 1.0, 0.0, 0)
    lag, stall = probe.wake(10.15, 1.01, 0.0, 0)
    assert lag == pytest.approx(0.05)
    assert stall is None
    lag, stall = probe.wake(10.24, 1.02, 0.0, 0)  # woke early (clock granularity)
    assert lag == 0.0
    assert stall is None


def test_probe_late_by_the_threshold_is_a_stall_with_what_happened_meanwhile() -> None:
    probe = StallProbe(0.1, 0.5)
    probe.start(10.0, 1.0, 0.2, 7)
    lag, stall = probe.wake(10.9, 1.75, 0.5, 9)
    assert lag == pytest.approx(0.8)
    assert stall is not None
    assert stall.cpu_s == pytest.approx(0.75)
    assert stall.gc_s == pytest.approx(0.3)
    assert stall.gc_count == 2
    line = stall.describe("validate")
    assert line == ("validate: event loop stalled 800 ms (process CPU 750 ms meanwhile, "
                    "2 GC pauses 300 ms)")
    # the next wake-up is measured from this one, not from the start
    lag, stall = probe.wake(11.0, 1.8, 0.5, 9)
    assert lag == pytest.approx(0.0, abs=1e-9)
    assert stall is None


def test_probe_needs_a_start() -> None:
    with pytest.raises(AssertionError):
        StallProbe(0.1, 0.5).wake(1.0, 1.0, 0.0, 0)


def test_gc_pauses_times_real_collections_per_generation() -> None:
    seen: list[tuple[int, float]] = []
    pauses = GcPauses(lambda generation, pause: seen.append((generation, pause)))
    gc.callbacks.append(pauses)
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        gc.callbacks.remove(pauses)
    generations = [g for g, _ in seen]
    assert 2 in generations and 0 in generations
    assert pauses.count == len(seen) >= 2
    assert pauses.total_s == pytest.approx(sum(p for _, p in seen))
    assert all(p >= 0 for _, p in seen)


async def _run_with_a_blocked_loop(cfg: LoopHealthSettings, block_s: float) -> None:
    pauses = GcPauses(lambda generation, pause: None)
    task = asyncio.create_task(probe_forever("validate", cfg, pauses, interval_s=0.02))
    await asyncio.sleep(0.1)
    time.sleep(block_s)  # a callback that keeps the loop from coming back
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_blocked_loop_is_logged_as_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stream_processors.loop_health")
    asyncio.run(_run_with_a_blocked_loop(LoopHealthSettings(warn_ms=150, stacks=0), 0.4))
    stalls = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalls) == 1, stalls
    assert stalls[0].startswith("validate: event loop stalled ")
    # the blocking sleep used no CPU: the line tells a starved loop from a busy one
    assert "process CPU" in stalls[0]


def test_stall_stacks_are_written_during_the_stall_and_then_stop(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stream_processors.loop_health")
    asyncio.run(_run_with_a_blocked_loop(LoopHealthSettings(warn_ms=100, stacks=1), 0.5))
    err = capfd.readouterr().err
    assert "Timeout (0:00:00" in err  # faulthandler's header for dump_traceback_later
    assert "_run_with_a_blocked_loop" in err  # the stack names what blocked the loop
    assert any("no more stacks" in r.getMessage() for r in caplog.records)


def _commits(stage: str, path: str) -> tuple[float, float]:
    """(count, sum) of settle_stage_commit_seconds{stage, path}."""
    samples = {s.name: s.value for metric in COMMIT_SECONDS.collect() for s in metric.samples
               if s.labels.get("stage") == stage and s.labels.get("path") == path}
    return (samples["settle_stage_commit_seconds_count"],
            samples["settle_stage_commit_seconds_sum"])


def test_commit_timer_tells_the_fetch_loops_commits_from_the_timers() -> None:
    now = [100.0]
    timer = CommitTimer("commit-test", clock=lambda: now[0])

    state = timer.on_commit_initiated(None)  # the timer's task: IN_FETCH_LOOP unset
    now[0] += 0.25
    timer.on_commit_completed(None, state)

    async def fetch_loop() -> None:  # a task of its own, like faust's fetcher
        IN_FETCH_LOOP.set(True)
        inner = timer.on_commit_initiated(None)
        now[0] += 0.4
        timer.on_commit_completed(None, inner)

    asyncio.run(fetch_loop())
    assert IN_FETCH_LOOP.get() is False  # the flag stayed in the fetch loop's task
    assert _commits("commit-test", "timer") == (1.0, 0.25)
    assert _commits("commit-test", "fetch_loop") == (1.0, pytest.approx(0.4))
