"""Pure helpers of the benchmarks: /proc parsing, medians and ratios, rate search, tables."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def stat_cpu_ticks(stat_text: str) -> tuple[int, int]:
    """(ppid, utime + stime clock ticks) from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may hold spaces or ')', so the fields
    are counted after the last ')': state is then field 0, ppid 1, utime 11, stime 12.
    """
    rest = stat_text.rsplit(")", 1)
    if len(rest) != 2:
        raise ValueError("not a /proc/<pid>/stat line: no ')' after the command name")
    fields = rest[1].split()
    if len(fields) < 13:
        raise ValueError(f"/proc/<pid>/stat has {len(fields)} fields after the name, need 13")
    return int(fields[1]), int(fields[11]) + int(fields[12])


def status_kib(status_text: str, key: str) -> int:
    """A `Key:   123 kB` value of /proc/<pid>/status in KiB (0 when absent, e.g. a zombie)."""
    for line in status_text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def descendants(parents: Mapping[int, int], root: int) -> list[int]:
    """root and every process below it, given pid -> ppid of every live process."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def median(values: Iterable[float]) -> float:
    vals = list(values)
    if not vals:
        raise ValueError("median of no runs")
    return float(statistics.median(vals))


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is missing or the reference is not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return round(value / reference, 3)


def per_1000(cpu_s: float, records: float) -> float:
    """CPU seconds per 1,000 records."""
    return round(cpu_s / records * 1000, 4) if records > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RatePoint:
    """One rate of the latency search: median p50/p99 over its runs."""

    rate_per_s: int
    p50_ms: float
    p99_ms: float
    runs: int
    # False when the load generator fell short of the rate: the point proves nothing.
    rate_held: bool = True

    def within(self, p99_max_ms: float) -> bool:
        return self.rate_held and self.p99_ms <= p99_max_ms


def search_rates(
    measure: Callable[[int], RatePoint],
    rates: Sequence[int],
    p99_max_ms: float = 1000.0,
    refine: int = 0,
    grain: int = 25,
) -> tuple[int | None, list[RatePoint]]:
    """Try rates in ascending order until p99 exceeds the bound; (highest rate within it, all).

    A rate the load generator could not hold also ends the search.

    The search stops at the first failing rate: a pipeline that cannot hold p99 at R will not
    hold it at 2R, and each point costs a whole pipeline run. Then up to `refine` bisection
    steps between the highest rate that held and the first that did not (midpoints rounded
    down to `grain`), so a doubling ladder does not report 250 for a pipeline that holds 375.
    Points are returned in the order they were measured.
    """
    best: int | None = None
    failed: int | None = None
    points: list[RatePoint] = []
    for rate in sorted(set(rates)):
        point = measure(rate)
        points.append(point)
        if not point.within(p99_max_ms):
            failed = rate
            break
        best = rate
    for _ in range(refine):
        if best is None or failed is None:
            break
        mid = (best + failed) // 2 // grain * grain
        if not best < mid < failed:
            break
        point = measure(mid)
        points.append(point)
        if point.within(p99_max_ms):
            best = mid
        else:
            failed = mid
    return best, points


def doubling_rates(start: int, stop: int, extra: Iterable[int] = ()) -> list[int]:
    """start, 2*start, 4*start, ... up to stop, plus the extra rates (e.g. 1000), sorted."""
    if start <= 0:
        raise ValueError("start rate must be positive")
    rates = set(extra)
    rate = start
    while rate <= stop:
        rates.add(rate)
        rate *= 2
    return sorted(r for r in rates if r <= stop)


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the report: a figure's median over its runs and how it compares."""

    key: str
    label: str
    unit: str
    runs: tuple[float, ...]
    ratio: float | None = None
    ratio_of: str = ""
    target: str = ""
    target_ratio: float | None = None
    # True when the figure must stay at or under the target (latency), else at or over.
    at_most: bool = False

    @property
    def median(self) -> float | None:
        return median(self.runs) if self.runs else None

    @property
    def met(self) -> bool | None:
        if self.target_ratio is None:
            return None
        value = self.ratio if self.ratio_of else self.median
        if value is None:
            return None
        return value <= self.target_ratio if self.at_most else value >= self.target_ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "label": self.label, "unit": self.unit, "runs": list(self.runs),
            "median": self.median, "ratio": self.ratio, "ratio_of": self.ratio_of,
            "target": self.target, "met": self.met,
        }


def fmt_number(value: float | None) -> str:
    """Thousands separators for big figures, 3 significant decimals for small ones."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


def markdown_table(figures: Sequence[Figure]) -> str:
    """The report's table: figure, median, runs, ratio, target, met?"""
    lines = [
        "| figure | median | runs | ratio | target | met? |",
        "|---|---:|---|---:|---|:---:|",
    ]
    for f in figures:
        runs = ", ".join(fmt_number(r) for r in f.runs) or "-"
        ratio_text = f"{f.ratio:.2f} × {f.ratio_of}" if f.ratio is not None else "-"
        met = {True: "yes", False: "no", None: ""}[f.met]
        unit = f" {f.unit}" if f.unit else ""
        lines.append(
            f"| {f.label} | {fmt_number(f.median)}{unit} | {runs} | {ratio_text} | "
            f"{f.target or '-'} | {met} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class SinkSummary:
    """The sink's own account of a run (its exit summary): busy span and rows per table."""

    records: int
    busy_s: float
    rows_by_table: dict[str, int]

    @property
    def records_per_s(self) -> float:
        return self.records / self.busy_s if self.busy_s > 0 else 0.0

    def rows_per_s(self, tables: Iterable[str]) -> float:
        rows = sum(self.rows_by_table.get(t, 0) for t in tables)
        return rows / self.busy_s if self.busy_s > 0 else 0.0


_SUMMARY = re.compile(
    r"(\d+) records in \d+ batches, \d+ rows written \(([^)]*)\).*?records/s over ([\d.]+)s",
    re.S)


def parse_sink_summary(log_text: str) -> SinkSummary | None:
    """The last exit summary a `settle sink` printed (rich may wrap it over several lines)."""
    text = " ".join(log_text.split())
    matches = list(_SUMMARY.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    tables: dict[str, int] = {}
    for part in m.group(2).split(","):
        bits = part.split()
        if len(bits) == 2 and bits[1].isdigit():
            tables[bits[0]] = int(bits[1])
    return SinkSummary(int(m.group(1)), float(m.group(3)), tables)


@dataclass(frozen=True, slots=True)
class GcTotals:
    """A worker's garbage-collector pauses so far (its settle_gc_pause_seconds histogram)."""

    pause_s: float
    collections: tuple[int, int, int]  # per generation: young, middle, full

    def since(self, earlier: GcTotals) -> GcTotals:
        return GcTotals(self.pause_s - earlier.pause_s, (
            self.collections[0] - earlier.collections[0],
            self.collections[1] - earlier.collections[1],
            self.collections[2] - earlier.collections[2]))


_GC_SAMPLE = re.compile(
    r'^settle_gc_pause_seconds_(sum|count)\{([^}]*)\}\s+(\S+)\s*$', re.M)


def parse_gc_totals(metrics_text: str) -> GcTotals | None:
    """The GC pause totals in a worker's /metrics text; None when it has none."""
    pause = 0.0
    counts = [0, 0, 0]
    seen = False
    for kind, labels, value in _GC_SAMPLE.findall(metrics_text):
        generation = re.search(r'generation="(\d)"', labels)
        if generation is None or int(generation.group(1)) > 2:
            continue
        seen = True
        if kind == "sum":
            pause += float(value)
        else:
            counts[int(generation.group(1))] += int(float(value))
    return GcTotals(pause, (counts[0], counts[1], counts[2])) if seen else None


# Where a payment's end-to-end time goes, hop by hop (settle bench latency).
HOPS = ("validate", "channel", "reconcile", "ledger sink")


@dataclass(frozen=True, slots=True)
class HopRow:
    """One payment's way through the pipeline: when it was requested, ms in each hop."""

    payment_id: str
    requested_ms: int
    validate: int
    channel: int
    reconcile: int
    ledger_sink: int


def hop_rows(requested: Mapping[str, int], routed: Mapping[str, int],
             confirmed: Mapping[str, int], results: Mapping[str, int],
             posted: Mapping[str, int], since_ms: int = 0) -> list[HopRow]:
    """Each payment's hops from per-payment timestamps (epoch ms), in request order.

    validate: request produced -> routed record produced; channel: routed -> confirmation
    (the simulated channel's latency); reconcile: the later of the two -> its result;
    ledger sink: result -> journal commit. Payments requested before `since_ms`, or missing
    from any step (rejected, declined, late), are left out.
    """
    rows = []
    for pid, t0 in requested.items():
        if t0 < since_ms:
            continue
        r, c, res, p = routed.get(pid), confirmed.get(pid), results.get(pid), posted.get(pid)
        if r is None or c is None or res is None or p is None:
            continue
        rows.append(HopRow(pid, t0, r - t0, c - r, res - max(r, c), p - res))
    rows.sort(key=lambda row: (row.requested_ms, row.payment_id))
    return rows


def hop_ms(row: HopRow, hop: str) -> int:
    """A row's milliseconds in `hop` (one of HOPS)."""
    value: int = getattr(row, hop.replace(" ", "_"))
    return value


def hop_columns(rows: Iterable[HopRow]) -> dict[str, list[int]]:
    """The rows' milliseconds by hop (HOPS)."""
    rows = list(rows)
    return {hop: [hop_ms(r, hop) for r in rows] for hop in HOPS}


def slow_seconds(rows: Sequence[HopRow], hop: str, worst: float = 0.01,
                 top: int = 5) -> list[tuple[int, int, int]]:
    """When the slowest `worst` share of a hop happened: (second into the run, how many of
    them were requested in it, their worst ms), busiest seconds first, at most `top`.

    Tells one slow episode (a stall, a commit, a rebalance: the slow payments bunched in a
    second or two) from a tail spread over the whole run (queueing, a noisy machine).
    """
    if not rows:
        return []
    values = sorted(hop_ms(r, hop) for r in rows)
    cut = values[len(values) - max(1, math.ceil(len(values) * worst))]
    start = rows[0].requested_ms
    by_second: dict[int, list[int]] = {}
    for r in rows:
        if hop_ms(r, hop) >= cut:
            by_second.setdefault((r.requested_ms - start) // 1000, []).append(hop_ms(r, hop))
    ranked = sorted(by_second.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [(second, len(ms), max(ms)) for second, ms in ranked[:top]]


def percentile(values: Sequence[int], q: float) -> int:
    """The nearest-rank q-quantile (0 < q <= 1) of `values` (0 for none), as percentile_disc."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q))
    return int(ordered[rank - 1])


def hop_summary(hops: Mapping[str, Sequence[int]]) -> dict[str, dict[str, int]]:
    """p50/p99 (ms) and the count per hop."""
    return {h: {"p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99), "n": len(v)}
            for h, v in hops.items()}
