"""The fault schedule of `settle chaos`: reproducible from its seed, every kind of fault."""

from __future__ import annotations

import itertools
from pathlib import Path

from settle.chaos import KILL, KINDS, REBALANCE, STORM, keep_logs, random_plan, scenarios


def test_same_seed_same_schedule() -> None:
    assert random_plan(1, 300, 100) == random_plan(1, 300, 100)
    assert random_plan(1, 300, 100) != random_plan(2, 300, 100)


def test_schedule_covers_every_kind_and_stays_inside_the_traffic() -> None:
    plan = random_plan(1, 300, 100)
    assert plan.count == 30_000
    assert {f.kind for f in plan.faults} == set(KINDS)
    assert {f.target for f in plan.faults if f.kind == KILL} >= {"validate", "ledger-sink"}
    times = [f.at_s for f in plan.faults]
    assert times == sorted(times)
    assert times[0] >= 8 and times[-1] <= 290
    assert all(b - a >= 12 for a, b in itertools.pairwise(times))
    assert plan.two_workers_per_stage == any(f.kind == REBALANCE for f in plan.faults)


def test_every_scenario_has_a_fault() -> None:
    for name, plan in scenarios().items():
        assert plan.faults or plan.registry_down_at_start_s, name
        assert all(f.size > 0 for f in plan.faults if f.kind == STORM), name


def test_keep_logs_copies_every_log_and_replaces_an_older_copy(tmp_path: Path) -> None:
    src = tmp_path / "run" / "logs"
    src.mkdir(parents=True)
    (src / "channels.log").write_text("Traceback: DeliveryFailed\n")
    (src / "validate.log").write_text("ok\n")
    (src / "notes.txt").write_text("not a log\n")
    dest = tmp_path / "reports" / "chaos-x-logs"
    dest.mkdir(parents=True)
    (dest / "stale.log").write_text("from an earlier run\n")

    assert keep_logs(src, dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["channels.log", "validate.log"]
    assert (dest / "channels.log").read_text() == "Traceback: DeliveryFailed\n"


def test_keep_logs_without_logs_keeps_nothing(tmp_path: Path) -> None:
    assert keep_logs(tmp_path / "missing", tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
