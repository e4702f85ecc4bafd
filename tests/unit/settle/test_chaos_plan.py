"""The fault schedule of `settle chaos`: reproducible from its seed, every kind of fault."""

from __future__ import annotations

import itertools
from pathlib import Path

from settle.chaos import (
    KILL,
    KINDS,
    REBALANCE,
    STORM,
    down_services,
    keep_logs,
    offset_ranges,
    random_plan,
    scenarios,
)


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


# ----------------------------------------------------------------------------- stack status

STATUS = """\
SERVICE     STATE     PID      ADDRESS                 RSS_MiB  DETAIL
kafka       up        14664    127.0.0.1:19092             475
registry    down      -        127.0.0.1:18081               -
postgres    unhealthy 14897    127.0.0.1:15432             104  pg_isready: down
prometheus  down      -        127.0.0.1:19090               -
validate    running   18025    (pipeline)                   74
"""


def test_down_services_names_the_needed_services_not_up() -> None:
    # Prometheus is not needed by a scenario; pipeline processes are not services.
    assert down_services(STATUS) == ["registry", "postgres"]
    assert down_services(STATUS, ("prometheus", "kafka")) == ["prometheus"]


def test_down_services_of_a_whole_stack_is_empty() -> None:
    whole = STATUS.replace("down      -        127.0.0.1:18081", "up        14825    "
                           "127.0.0.1:18081").replace("unhealthy", "up       ")
    assert down_services(whole) == []


def test_offset_ranges_group_missing_records_by_partition() -> None:
    refs = ["p.requested/0/5", "p.requested/0/6", "p.requested/0/9", "p.requested/2/1"]
    assert offset_ranges(refs) == {"p.requested/0": [[5, 6], [9, 9]], "p.requested/2": [[1, 1]]}
    assert offset_ranges([]) == {}
