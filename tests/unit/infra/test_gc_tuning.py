"""SETTLE_GC_THRESHOLD / SETTLE_GC_FREEZE: the workers' and sinks' garbage-collector settings."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from infra.gc_tuning import (
    DEFAULT_THRESHOLD,
    GcConfigError,
    GcSettings,
    apply,
    load,
    parse_threshold,
)


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_defaults_raise_the_young_threshold_and_freeze() -> None:
    cfg = load({})
    assert cfg == GcSettings(DEFAULT_THRESHOLD, True)
    assert cfg.threshold[0] > 700  # Python's own is 700: the point of the setting


@pytest.mark.parametrize(("raw", "expected"), [
    ("700,10,10", (700, 10, 10)),
    (" 20000 , 5 , 3 ", (20000, 5, 3)),
    ("1000", (1000, DEFAULT_THRESHOLD[1], DEFAULT_THRESHOLD[2])),
    ("1000,2", (1000, 2, DEFAULT_THRESHOLD[2])),
])
def test_thresholds_are_read(raw: str, expected: tuple[int, int, int]) -> None:
    assert parse_threshold(raw) == expected
    assert load({"SETTLE_GC_THRESHOLD": raw}).threshold == expected


@pytest.mark.parametrize(("raw", "says"), [
    ("lots", "'lots' is not an integer"),
    ("1000,,10", "'' is not an integer"),
    ("1.5", "'1.5' is not an integer"),
    ("1,2,3,4", "1 to 3 comma-separated integers"),
    ("0", "0 would switch the cyclic collector off"),
    ("-5", "0 would switch the cyclic collector off"),
    ("1000,0,10", "every threshold must be 1 or more"),
    ("1000,10,-1", "every threshold must be 1 or more"),
])
def test_malformed_thresholds_are_refused_by_name(raw: str, says: str) -> None:
    with pytest.raises(GcConfigError, match="SETTLE_GC_THRESHOLD") as err:
        load({"SETTLE_GC_THRESHOLD": raw})
    assert says in str(err.value)


@pytest.mark.parametrize(("raw", "freeze"), [
    ("", True), ("on", True), ("ON", True), ("1", True), ("yes", True),
    ("off", False), ("0", False), ("false", False), (" Off ", False),
])
def test_freeze_switch(raw: str, freeze: bool) -> None:
    assert load({"SETTLE_GC_FREEZE": raw}).freeze is freeze


def test_a_malformed_freeze_switch_is_refused() -> None:
    with pytest.raises(GcConfigError, match="SETTLE_GC_FREEZE='maybe': expected on or off"):
        load({"SETTLE_GC_FREEZE": "maybe"})


def test_apply_sets_thresholds_and_freezes_what_is_alive(restore_gc: None) -> None:
    gc.unfreeze()
    line = apply(GcSettings((12345, 7, 3), True))
    assert gc.get_threshold() == (12345, 7, 3)
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # at least the imported modules' objects
    said = re.fullmatch(r"gc thresholds 12345,7,3, ([\d,]+) start-up objects frozen", line)
    assert said is not None, line
    # The count is read as the line is made; an object or two may be made after that.
    assert abs(int(said.group(1).replace(",", "")) - frozen) < 100


def test_apply_without_freeze_leaves_the_heap_alone(restore_gc: None) -> None:
    gc.unfreeze()
    line = apply(GcSettings((700, 10, 10), False))
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
    assert line == "gc thresholds 700,10,10"


def test_cyclic_garbage_made_after_the_freeze_is_still_collected(restore_gc: None) -> None:
    apply(GcSettings((50_000, 20, 10), True))

    class Node:
        pass

    collected_before = sum(s["collected"] for s in gc.get_stats())
    for _ in range(100):
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    gc.collect()
    collected = sum(s["collected"] for s in gc.get_stats()) - collected_before
    assert collected >= 200  # every node of the 100 cycles (and their __dict__s)


@pytest.mark.parametrize("command", [["worker", "validate"], ["sink", "ledger"]])
def test_a_process_with_a_malformed_setting_stops_with_one_clear_line(
        command: list[str]) -> None:
    # Nothing is started: the setting is read before any connection is made.
    proc = subprocess.run(
        [sys.executable, "-m", "settle", *command],
        env={"SETTLE_GC_THRESHOLD": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "GcConfigError" in proc.stderr
    assert "SETTLE_GC_THRESHOLD='lots'" in proc.stderr
    assert "Traceback" not in proc.stderr
