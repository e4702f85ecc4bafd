"""Unit and property tests for settlement.windows against brute-force reference models."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.windows import (
    DEFAULT_WINDOW_POLICY,
    SHANGHAI_MIDNIGHT_ORIGIN_MS,
    Window,
    WindowError,
    WindowPolicy,
    assign_window,
    batch_id,
    close_at_ms,
    is_closed_at,
    parse_batch_id,
    window_for,
)

DAY_MS = 86_400_000


def shanghai_midnight_ms(year: int, month: int, day: int) -> int:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        tz = zoneinfo.ZoneInfo("Asia/Shanghai")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tzdata for Asia/Shanghai on this host")
    return int(datetime(year, month, day, tzinfo=tz).timestamp()) * 1000


def test_origin_constant_is_shanghai_midnight() -> None:
    assert shanghai_midnight_ms(1970, 1, 1) == SHANGHAI_MIDNIGHT_ORIGIN_MS == -28_800_000


@pytest.mark.parametrize(("year", "month", "day"), [(2024, 1, 1), (2024, 7, 15), (2025, 3, 30)])
def test_default_windows_start_at_shanghai_midnight(year: int, month: int, day: int) -> None:
    midnight_ms = shanghai_midnight_ms(year, month, day)
    assert window_for(midnight_ms, DEFAULT_WINDOW_POLICY) == (midnight_ms, midnight_ms + DAY_MS)
    previous = window_for(midnight_ms - 1, DEFAULT_WINDOW_POLICY)
    assert previous == (midnight_ms - DAY_MS, midnight_ms)


def test_default_policy() -> None:
    assert WindowPolicy(86_400, 600, -28_800_000) == DEFAULT_WINDOW_POLICY
    assert WindowPolicy.demo(5, 1) == WindowPolicy(5, 1, 0)


def test_window_examples_including_negative_times() -> None:
    policy = WindowPolicy(10, 2, 0)
    assert window_for(0, policy) == Window(0, 10_000)
    assert window_for(9_999, policy) == Window(0, 10_000)
    assert window_for(10_000, policy) == Window(10_000, 20_000)
    assert window_for(-1, policy) == Window(-10_000, 0)
    assert window_for(-10_000, policy) == Window(-10_000, 0)
    assert window_for(-10_001, policy) == Window(-20_000, -10_000)
    assert close_at_ms(Window(0, 10_000), policy) == 12_000
    assert not is_closed_at(Window(0, 10_000), 11_999, policy)
    assert is_closed_at(Window(0, 10_000), 12_000, policy)


@pytest.mark.parametrize(
    "args", [(0, 0, 0), (-1, 0, 0), (1, -1, 0), (True, 0, 0), (1, 0, 1.5), (1.0, 0, 0)]
)
def test_policy_rules(args: tuple[object, object, object]) -> None:
    with pytest.raises(WindowError):
        WindowPolicy(*args)  # type: ignore[arg-type]


def test_assign_examples() -> None:
    policy = WindowPolicy(10, 2, 0)
    # Open: the window of the match, even during its grace period.
    assert assign_window(5_000, 11_999, policy) == Window(0, 10_000)
    # Closed by time: the window containing now.
    assert assign_window(5_000, 12_000, policy) == Window(10_000, 20_000)
    assert assign_window(5_000, 55_000, policy) == Window(50_000, 60_000)
    # Closed by the caller early: forward to the next window, never back.
    assert assign_window(5_000, 6_000, policy, closed={0}.__contains__) == Window(10_000, 20_000)
    # The caller's closed windows are skipped.
    closed = {0, 10_000, 20_000}.__contains__
    assert assign_window(5_000, 12_000, policy, closed=closed) == Window(30_000, 40_000)


def test_assign_refuses_to_hang() -> None:
    with pytest.raises(WindowError):
        assign_window(0, 0, WindowPolicy(1, 0, 0), closed=lambda _start: True)


def test_batch_ids() -> None:
    assert batch_id("m1", "CNY", -28_800_000) == "B:m1:CNY:-28800000"
    assert parse_batch_id("B:m:1:CNY:5") == ("m:1", "CNY", 5)
    for bad in ("m1:CNY:5", "B:m1:CNY:x", "B:m1:CNY:+5", "B::CNY:5", "B:m1::5", "B:CNY:5"):
        with pytest.raises(WindowError):
            parse_batch_id(bad)
    with pytest.raises(WindowError):
        batch_id("m1", "C:Y", 0)
    with pytest.raises(WindowError):
        batch_id("", "CNY", 0)


policies = st.builds(
    WindowPolicy,
    size_seconds=st.integers(min_value=1, max_value=7),
    grace_seconds=st.integers(min_value=0, max_value=20),
    origin_ms=st.integers(min_value=-50_000, max_value=50_000),
)
times = st.integers(min_value=-100_000, max_value=100_000)


def brute_force_windows(ts_ms: int, policy: WindowPolicy) -> list[int]:
    """Every aligned window start whose window contains ts_ms, by scanning all of them."""
    size_ms = policy.size_ms
    # |ts - origin| <= 150_000 ms and size >= 1_000 ms, so 200 windows each way cover it.
    starts = (policy.origin_ms + k * size_ms for k in range(-200, 201))
    return [start for start in starts if start <= ts_ms < start + size_ms]


@given(times, policies)
def test_every_timestamp_is_in_exactly_one_window(ts_ms: int, policy: WindowPolicy) -> None:
    start_ms, end_ms = window_for(ts_ms, policy)
    assert brute_force_windows(ts_ms, policy) == [start_ms]
    assert start_ms <= ts_ms < end_ms
    assert end_ms - start_ms == policy.size_ms


def reference_assign(
    matched_at_ms: int, now_ms: int, policy: WindowPolicy, closed: frozenset[int]
) -> int:
    """First acceptable window start, scanning forward from the match one window at a time."""
    (matched_start,) = brute_force_windows(matched_at_ms, policy)
    size_ms, grace_ms = policy.size_ms, policy.grace_ms

    def is_open(start: int) -> bool:
        return now_ms < start + size_ms + grace_ms and start not in closed

    if is_open(matched_start):
        return matched_start
    start = matched_start + size_ms
    # A moved payment goes to the batch that is open now: not before the window holding now.
    while not (is_open(start) and start + size_ms > now_ms):
        start += size_ms
    return start


@given(
    times,
    st.integers(min_value=-20_000, max_value=60_000),
    policies,
    st.frozensets(st.integers(min_value=-40, max_value=40), max_size=12),
)
def test_assignment_never_picks_a_closed_window(
    matched_at_ms: int, delay_ms: int, policy: WindowPolicy, closed_k: frozenset[int]
) -> None:
    now_ms = matched_at_ms + delay_ms
    base = window_for(matched_at_ms, policy).start_ms
    closed = frozenset(base + k * policy.size_ms for k in closed_k)
    window = assign_window(matched_at_ms, now_ms, policy, closed=closed.__contains__)
    assert not is_closed_at(window, now_ms, policy)
    assert window.start_ms not in closed
    assert window.start_ms >= base
    assert window == window_for(window.start_ms, policy)
    assert window.start_ms == reference_assign(matched_at_ms, now_ms, policy, closed)
    matched_open = not is_closed_at((base, base + policy.size_ms), now_ms, policy)
    assert (window.start_ms == base) == (matched_open and base not in closed)
