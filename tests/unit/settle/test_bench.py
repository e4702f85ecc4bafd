"""Unit tests for the benchmarks' pure parts: /proc parsing, medians, rate search, tables."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settle.benchmarks.measure import (
    Figure,
    GcTotals,
    HopRow,
    RatePoint,
    descendants,
    doubling_rates,
    fmt_number,
    hop_columns,
    hop_rows,
    hop_summary,
    markdown_table,
    median,
    parse_gc_totals,
    parse_sink_summary,
    per_1000,
    percentile,
    ratio,
    search_rates,
    slow_seconds,
    stat_cpu_ticks,
    status_kib,
)

# A real /proc/<pid>/stat line of a faust worker (fields after the name: state, ppid, ...,
# utime at 14, stime at 15 counting from 1).
STAT = ("4242 (python3) S 4100 4242 4100 0 -1 4194560 52006 0 3 0 1234 567 0 0 20 0 9 0 "
        "881234 1052803072 31990 18446744073709551615 1 1 0 0 0 0 0 16781312 17642 0 0 0 "
        "17 1 0 0 0 0 0 0 0 0 0 0 0 0 0")


def test_stat_cpu_ticks_reads_ppid_and_user_plus_system() -> None:
    assert stat_cpu_ticks(STAT) == (4100, 1234 + 567)


def test_stat_cpu_ticks_survives_a_name_with_spaces_and_parentheses() -> None:
    tricky = STAT.replace("(python3)", "(faust (worker) x)")
    assert stat_cpu_ticks(tricky) == (4100, 1801)


@pytest.mark.parametrize("text", ["", "4242 python3 S 1 2 3", "1 (x) S 1 2"])
def test_stat_cpu_ticks_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError):
        stat_cpu_ticks(text)


def test_status_kib_finds_the_key_and_zero_when_absent() -> None:
    status = "Name:\tpython3\nVmPeak:\t 1200000 kB\nVmHWM:\t  131072 kB\nVmRSS:\t  120000 kB\n"
    assert status_kib(status, "VmHWM") == 131072
    assert status_kib(status, "VmRSS") == 120000
    assert status_kib("Name:\tzombie\n", "VmHWM") == 0


def test_descendants_walks_the_whole_tree_and_nothing_else() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert sorted(descendants(parents, 10)) == [10, 11, 12, 13]
    assert descendants(parents, 99) == [99]


def test_median_ratio_and_per_1000() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0]) == 2.5
    with pytest.raises(ValueError):
        median([])
    assert ratio(750.0, 1500.0) == 0.5
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert per_1000(2.0, 4000) == 0.5
    assert per_1000(2.0, 0) == 0.0


@given(st.lists(st.floats(min_value=0, max_value=1e9), min_size=1, max_size=9))
def test_median_lies_between_min_and_max(values: list[float]) -> None:
    assert min(values) <= median(values) <= max(values)


def _fake(p99_by_rate: dict[int, float], held: set[int] | None = None) -> tuple[
        list[int], Callable[[int], RatePoint]]:
    tried: list[int] = []

    def measure(rate: int) -> RatePoint:
        tried.append(rate)
        return RatePoint(rate, p99_by_rate[rate] / 2, p99_by_rate[rate], 3,
                         rate_held=held is None or rate in held)
    return tried, measure


def test_search_stops_at_the_first_rate_over_the_bound() -> None:
    tried, measure = _fake({250: 300, 500: 400, 1000: 900, 2000: 1500, 4000: 700})
    best, points = search_rates(measure, [1000, 250, 4000, 500, 2000], 1000)
    assert best == 1000
    assert tried == [250, 500, 1000, 2000]  # ascending, and 4000 never tried
    assert [p.rate_per_s for p in points] == tried


def test_search_with_every_rate_within_returns_the_highest() -> None:
    _tried, measure = _fake({250: 10, 500: 20})
    assert search_rates(measure, [250, 500], 1000)[0] == 500


def test_search_with_the_first_rate_over_returns_none() -> None:
    _tried, measure = _fake({250: 5000, 500: 10})
    best, points = search_rates(measure, [250, 500], 1000)
    assert best is None and len(points) == 1


def test_search_stops_where_the_load_generator_fell_short() -> None:
    tried, measure = _fake({250: 10, 500: 20, 1000: 30}, held={250, 500})
    best, _points = search_rates(measure, [250, 500, 1000], 1000)
    assert best == 500 and tried == [250, 500, 1000]


def test_p99_exactly_at_the_bound_is_within() -> None:
    _tried, measure = _fake({1000: 1000.0})
    assert search_rates(measure, [1000], 1000)[0] == 1000


def test_refine_bisects_between_the_last_rate_held_and_the_first_failed() -> None:
    tried, measure = _fake({125: 300, 250: 500, 500: 3000, 375: 900, 425: 1200})
    best, points = search_rates(measure, [125, 250, 500], 1000, refine=2)
    assert best == 375
    assert tried == [125, 250, 500, 375, 425]
    assert [p.rate_per_s for p in points] == tried


def test_refine_narrows_down_after_a_failed_midpoint() -> None:
    tried, measure = _fake({250: 500, 500: 3000, 375: 1500, 300: 800})
    best, _points = search_rates(measure, [250, 500], 1000, refine=2)
    assert (best, tried) == (300, [250, 500, 375, 300])


def test_refine_does_nothing_without_a_rate_that_held_or_one_that_failed() -> None:
    tried, measure = _fake({250: 5000, 500: 10})
    assert search_rates(measure, [250, 500], 1000, refine=3)[0] is None
    assert tried == [250]
    tried, measure = _fake({250: 10, 500: 20})
    assert search_rates(measure, [250, 500], 1000, refine=3)[0] == 500
    assert tried == [250, 500]


def test_refine_stops_when_no_rate_of_the_grain_lies_between() -> None:
    tried, measure = _fake({250: 500, 275: 3000})
    assert search_rates(measure, [250, 275], 1000, refine=3, grain=25)[0] == 250
    assert tried == [250, 275]


def test_doubling_rates_include_the_extra_ones_in_order() -> None:
    assert doubling_rates(250, 4000, extra=(1000, 3000)) == [250, 500, 1000, 2000, 3000, 4000]
    assert doubling_rates(250, 100) == []
    with pytest.raises(ValueError):
        doubling_rates(0, 100)


def test_figure_met_uses_the_ratio_when_there_is_one() -> None:
    stage = Figure("stage.x", "x", "records/s", (100.0, 300.0, 200.0), ratio=0.4,
                   ratio_of="limit A", target="≥ 0.5 × limit A", target_ratio=0.5)
    assert stage.median == 200.0
    assert stage.met is False
    p99 = Figure("e2e.p99", "p99", "ms", (800.0, 1200.0, 900.0), target="≤ 1,000 ms",
                 target_ratio=1000.0, at_most=True)
    assert p99.met is True
    assert Figure("x", "x", "", (1.0,)).met is None


def test_markdown_table_has_every_column_and_row() -> None:
    figures = [
        Figure("limit.raw", "limit A", "records/s", (50_000.0, 52_000.0, 51_000.0)),
        Figure("stage.validate", "validate+route alone", "records/s", (2500.0,), ratio=0.049,
               ratio_of="limit A", target="≥ 0.5 × limit A", target_ratio=0.5),
        Figure("cpu.validate", "CPU", "CPU s", (0.35,)),
    ]
    table = markdown_table(figures)
    lines = table.strip().splitlines()
    assert lines[0] == "| figure | median | runs | ratio | target | met? |"
    assert len(lines) == 2 + len(figures)
    assert "| limit A | 51,000 records/s | 50,000, 52,000, 51,000 | - | - |  |" in lines
    assert "0.05 × limit A" in lines[3] and lines[3].endswith("| no |")
    assert "0.35 CPU s" in lines[4]


def test_fmt_number() -> None:
    assert fmt_number(None) == "-"
    assert fmt_number(12345.6) == "12,346"
    assert fmt_number(12.345) == "12.35"
    assert fmt_number(0.04) == "0.04"
    assert fmt_number(0.0) == "0"


def test_parse_sink_summary_reads_a_wrapped_summary() -> None:
    log = (
        "ledger-sink: x.reconciliation.results -> PostgreSQL \npostgresql://...\n"
        "ledger-sink: 3845 records in 2 batches, 18598 rows written (ledger_entries \n"
        "10908, ledger_journals 3636, payments 3845, reconciliation_exceptions 209), 0 \n"
        "dead letters, 0 duplicates, 0 retries; 14,164 rows/s, 2,928 records/s over 1.31s\n"
    )
    summary = parse_sink_summary(log)
    assert summary is not None
    assert summary.records == 3845 and summary.busy_s == 1.31
    assert summary.rows_by_table["ledger_journals"] == 3636
    assert summary.rows_per_s(["ledger_journals", "ledger_entries"]) == pytest.approx(
        (3636 + 10908) / 1.31)
    assert parse_sink_summary("the sink was killed before its summary") is None


def test_parse_sink_summary_reads_what_the_sink_prints() -> None:
    from sinks.options import SinkStats

    stats = SinkStats(records=40, rows_written=120, batches=5, read_ahead=3,
                      first_record_at=10.0, last_commit_at=12.5,
                      rows_by_table={"ledger_entries": 90, "ledger_journals": 30})
    summary = parse_sink_summary(f"ledger-sink: {stats.summary()}\n")
    assert "3 batches read ahead" in stats.summary()
    assert summary is not None
    assert (summary.records, summary.busy_s) == (40, 2.5)
    assert summary.rows_by_table == {"ledger_entries": 90, "ledger_journals": 30}


def test_validate_cpu_bench_checks_every_outcome() -> None:
    from collections import Counter

    from settle.benchmarks.validate_cpu import build_workload, run_once

    w = build_workload(300, seed=3, bad_ratio=0.1, duplicate_ratio=0.05)
    assert set(w.expected) >= {"routed", "rejected", "dead_lettered", "deduplicated"}
    run = run_once(w)
    assert run.records == 300 and run.cpu_s > 0
    # A run whose outcomes differ from the simulator's expectation is an error, not a figure.
    w.expected = Counter({"routed": 300})
    with pytest.raises(RuntimeError, match="differ from the expected"):
        run_once(w)


def test_hops_split_each_payment_between_the_stages() -> None:
    requested = {"a": 1000, "b": 1010, "warm": 10, "declined": 1020}
    routed = {"a": 1020, "b": 1015, "warm": 20, "declined": 1030}
    confirmed = {"a": 1120, "b": 1300, "warm": 30, "declined": 1100}
    results = {"a": 1150, "b": 1900, "warm": 40}        # the declined one has no result
    posted = {"a": 1400, "b": 2000, "warm": 50}
    hops = hop_columns(hop_rows(requested, routed, confirmed, results, posted, since_ms=1000))
    assert hops == {"validate": [20, 5], "channel": [100, 285], "reconcile": [30, 600],
                    "ledger sink": [250, 100]}
    # Each payment's hops add up to its end-to-end time.
    assert sum(h[0] for h in hops.values()) == posted["a"] - requested["a"]
    summary = hop_summary(hops)
    assert summary["reconcile"] == {"p50_ms": 30, "p99_ms": 600, "n": 2}


def test_hop_rows_are_per_payment_in_request_order() -> None:
    requested = {"b": 1010, "a": 1000, "warm": 10, "declined": 1020}
    routed = {"a": 1020, "b": 1015, "warm": 20, "declined": 1030}
    confirmed = {"a": 1120, "b": 1300, "warm": 30, "declined": 1100}
    results = {"a": 1150, "b": 1900, "warm": 40}
    posted = {"a": 1400, "b": 2000, "warm": 50}
    assert hop_rows(requested, routed, confirmed, results, posted, since_ms=1000) == [
        HopRow("a", 1000, 20, 100, 30, 250), HopRow("b", 1010, 5, 285, 600, 100)]


def _row(at_ms: int, validate_ms: int) -> HopRow:
    return HopRow(f"p{at_ms}", at_ms, validate_ms, 0, 0, 0)


def test_slow_seconds_finds_one_episode() -> None:
    # 10 s at 100/s, all 40 ms but for a 350 ms episode 6.2-6.3 s into the run.
    rows = [_row(t, 350 if 6_200 <= t < 6_300 else 40) for t in range(0, 10_000, 10)]
    assert slow_seconds(rows, "validate") == [(6, 10, 350)]


def test_slow_seconds_of_a_spread_tail_names_many_seconds() -> None:
    rows = [_row(t, 500 if t % 1_000 == 0 else 40) for t in range(0, 10_000, 10)]
    assert slow_seconds(rows, "validate", top=3) == [(0, 1, 500), (1, 1, 500), (2, 1, 500)]
    assert len(slow_seconds(rows, "validate", top=99)) == 10
    assert slow_seconds([], "validate") == []
    assert slow_seconds(rows, "ledger sink")[0] == (0, 100, 0)  # all equal: all "slowest"


def test_percentile_is_nearest_rank_like_percentile_disc() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile(values[::-1], 1.0) == 100  # unsorted input
    assert percentile([7], 0.99) == 7 and percentile([], 0.5) == 0


# ----------------------------------------------------------------------------- GC totals

def test_gc_totals_read_from_the_workers_own_histogram() -> None:
    """The text a worker serves: its real settle_gc_pause_seconds histogram, rendered."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    pauses = Histogram("settle_gc_pause_seconds", "GC pauses", ["stage", "generation"],
                       registry=registry, buckets=(0.001, 0.1, 1))
    for generation, pause in (("0", 0.002), ("0", 0.003), ("1", 0.02), ("2", 0.25)):
        pauses.labels("reconcile", generation).observe(pause)
    text = generate_latest(registry).decode()
    totals = parse_gc_totals(text)
    assert totals is not None
    assert totals.collections == (2, 1, 1)
    assert totals.pause_s == pytest.approx(0.275)


def test_gc_totals_absent_from_a_process_without_them() -> None:
    text = "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 3.0\n"
    assert parse_gc_totals(text) is None


def test_gc_totals_since_an_earlier_reading() -> None:
    later = GcTotals(1.5, (100, 10, 2))
    assert later.since(GcTotals(0.5, (40, 4, 2))) == GcTotals(1.0, (60, 6, 0))
