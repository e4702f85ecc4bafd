"""`settle bench all` and its parts: run them, take medians, compare, write the report."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.config import Settings
from settle.benchmarks.chain import STAGES, ChainRun, run_chain
from settle.benchmarks.common import Isolated, ProcRun, Say
from settle.benchmarks.latency import LatencyRun, measure_rate
from settle.benchmarks.limits import PassRun, preload_requests, run_limits
from settle.benchmarks.measure import (
    HOPS,
    Figure,
    RatePoint,
    doubling_rates,
    markdown_table,
    median,
    ratio,
    search_rates,
    status_kib,
)
from settle.benchmarks.peer import run_peer

PARTS = ("limits", "stages", "copy", "peer", "latency")
STAGE_LABELS = {
    "validate": "validate+route",
    "reconcile": "reconcile",
    "settle": "settle",
    "ledger-sink": "ledger sink",
    "settlement-sink": "settlement sink",
}
# The goals (not tests).
STAGE_TARGET = 0.5
PEER_TARGET = 1.0
COPY_TARGET = 0.5
E2E_RATE_TARGET = 5000
P99_MAX_MS = 1000.0
REFERENCE_RATE = 1000


@dataclass(frozen=True, slots=True)
class Options:
    count: int = 20_000
    runs: int = 3
    seed: int = 1
    bad_ratio: float = 0.02
    duration_s: float = 20.0
    rates: tuple[int, ...] = ()
    # Bisection steps between the highest rate that held p99 and the first that did not.
    refine: int = 1
    # p50/p99 are also measured at this rate (the issue asks for 1,000/s); 0 skips it.
    reference_rate: int = REFERENCE_RATE
    quix_venv: Path = Path(".bench/quix-venv")
    out_dir: Path = Path(".bench")

    @classmethod
    def quick(cls, **kw: Any) -> Options:
        """Short runs for development: figures are rough, the code paths are the same."""
        base: dict[str, Any] = {"count": 5000, "runs": 1, "duration_s": 8.0,
                                "rates": (500, 1000, 2000), "refine": 0}
        return cls(**{**base, **kw})

    def latency_rates(self) -> list[int]:
        extra = (self.reference_rate,) if self.reference_rate > 0 else ()
        return sorted(self.rates) if self.rates else doubling_rates(125, 16000, extra=extra)


@dataclass(slots=True)
class Raw:
    """Every run's measurements, before medians."""

    limits: list[tuple[PassRun, PassRun]] = field(default_factory=list)
    chains: list[ChainRun] = field(default_factory=list)
    peer: list[ProcRun] = field(default_factory=list)
    latency_runs: list[LatencyRun] = field(default_factory=list)
    latency_points: list[RatePoint] = field(default_factory=list)
    latency_best: int | None = None
    latency_reference: int = REFERENCE_RATE
    # A run that failed (a service restarted under it...) is reported, not fatal.
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "errors": self.errors,
            "limits": [{"raw": asdict(a), "avro": asdict(b)} for a, b in self.limits],
            "chains": [c.to_dict() for c in self.chains],
            "peer": [asdict(p) for p in self.peer],
            "latency_runs": [r.to_dict() for r in self.latency_runs],
            "latency_points": [asdict(p) for p in self.latency_points],
            "latency_best_rate_per_s": self.latency_best,
            "latency_reference_rate_per_s": self.latency_reference,
        }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram_kib = status_kib(Path("/proc/meminfo").read_text(), "MemTotal")
    except OSError:
        ram_kib = 0
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "ram_gib": round(ram_kib / 1024**2, 1),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_parts(settings: Settings, parts: Sequence[str], opts: Options, say: Say) -> Raw:
    """Run the chosen parts `opts.runs` times each, on fresh prefixed topics and databases.

    Every run preloads its requests once; the limits, the stages and the peer read the
    same records, side by side in time, so their ratios share the machine's state.
    """
    raw = Raw()
    wanted = set(parts)
    stages: list[str] = []
    if "stages" in wanted:
        stages = list(STAGES)
    elif "copy" in wanted:
        stages = ["ledger-sink"]
    if "peer" in wanted and "validate" not in stages:
        stages = ["validate", *stages]
    need_limits = "limits" in wanted or "stages" in wanted
    for run in range(opts.runs if (stages or need_limits or "peer" in wanted) else 0):
        tag = f"run {run + 1}/{opts.runs}"
        run_dir = opts.out_dir / "runs" / f"run{run + 1}"
        try:
            _one_run(settings, raw, wanted, stages, need_limits, opts, run, tag, run_dir, say)
        except Exception as exc:  # one failed run must not lose the others' figures
            raw.errors.append(f"{tag}: {type(exc).__name__}: {exc}")
            say(f"{tag} failed: {type(exc).__name__}: {exc}")
    if "latency" in wanted:
        def measure(rate: int) -> RatePoint:
            return measure_rate(settings, rate, opts.duration_s, opts.runs, opts.seed,
                                opts.out_dir / "runs", say, raw.latency_runs)
        raw.latency_reference = ref = opts.reference_rate
        try:
            raw.latency_best, raw.latency_points = search_rates(
                measure, opts.latency_rates(), P99_MAX_MS, refine=opts.refine)
            if ref > 0 and all(p.rate_per_s != ref for p in raw.latency_points):
                # The issue asks for p50/p99 at 1,000/s even when the search stopped below it.
                raw.latency_points.append(measure(ref))
        except Exception as exc:
            raw.errors.append(f"latency: {type(exc).__name__}: {exc}")
            say(f"latency failed: {type(exc).__name__}: {exc}")
    return raw


def _one_run(settings: Settings, raw: Raw, wanted: set[str], stages: list[str],
             need_limits: bool, opts: Options, run: int, tag: str, run_dir: Path,
             say: Say) -> None:
    with Isolated(settings, "") as iso:
        say(f"{tag}: preloading {opts.count:,} payment requests into {iso.topics.requested}")
        pre = preload_requests(iso, opts.count, opts.seed + run, opts.bad_ratio)
        if need_limits:
            say(f"{tag}: passthrough limits")
            raw.limits.append(run_limits(iso, opts.count))
        if "peer" in wanted:
            try:
                raw.peer.append(run_peer(iso, pre, opts.quix_venv, run_dir, say))
            except Exception as exc:  # the peer failing must not cost our own figures
                raw.errors.append(f"{tag}: peer: {type(exc).__name__}: {exc}")
        if stages:
            raw.chains.append(run_chain(iso, pre, opts.seed + run, run_dir, stages,
                                        _prefixed(say, tag)))


def _prefixed(say: Say, tag: str) -> Say:
    return lambda message: say(f"{tag}: {message}")


def _stage_runs(raw: Raw, stage: str) -> list[ProcRun]:
    return [c.stages[stage] for c in raw.chains if stage in c.stages]


def _payments(run: ProcRun, stage: str, chain: ChainRun) -> float:
    """Payments behind a stage's records (reconcile reads two records per payment...)."""
    if stage == "reconcile":
        return run.records / 2
    if stage == "settlement-sink":
        return float(chain.settlement_items)
    return float(run.records)


def figures(raw: Raw) -> list[Figure]:
    out: list[Figure] = []
    limit_a = median(a.records_per_s for a, _ in raw.limits) if raw.limits else None
    if raw.limits:
        out.append(Figure("limit.raw", "limit A: consume -> produce raw bytes", "records/s",
                          tuple(a.records_per_s for a, _ in raw.limits)))
        avro = tuple(b.records_per_s for _, b in raw.limits)
        out.append(Figure("limit.avro", "limit B: decode -> encode -> produce", "records/s",
                          avro, ratio=ratio(median(avro), limit_a), ratio_of="limit A"))
    for stage in STAGES:
        runs = _stage_runs(raw, stage)
        if not runs:
            continue
        values = tuple(r.records_per_s for r in runs)
        unit = "records/s"
        if stage == "settlement-sink":
            values = tuple(c.settlement_sink_items_per_s for c in raw.chains
                           if stage in c.stages)
            unit = "items/s"
        out.append(Figure(f"stage.{stage}", f"{STAGE_LABELS[stage]} alone", unit, values,
                          ratio=ratio(median(values), limit_a),
                          ratio_of="limit A" if limit_a else "",
                          target=f"≥ {STAGE_TARGET} × limit A" if limit_a else "",
                          target_ratio=STAGE_TARGET if limit_a else None))
    if raw.peer:
        peer = tuple(p.records_per_s for p in raw.peer)
        out.append(Figure("peer.quix", "Quix Streams validate+route (peer)", "records/s", peer))
        ours = _stage_runs(raw, "validate")
        if ours:
            vals = tuple(r.records_per_s for r in ours)
            out.append(Figure("peer.ratio", "validate+route vs the Quix peer", "records/s",
                              vals, ratio=ratio(median(vals), median(peer)),
                              ratio_of="Quix peer", target=f"≥ {PEER_TARGET} × peer",
                              target_ratio=PEER_TARGET))
    copies = [c for c in raw.chains if c.copy_rows_per_s]
    if copies:
        copy = tuple(c.copy_rows_per_s for c in copies)
        sink = tuple(c.ledger_sink_rows_per_s for c in copies)
        out.append(Figure("copy.raw", "raw binary COPY of the ledger rows", "rows/s", copy))
        out.append(Figure("copy.sink", "ledger sink, ledger rows", "rows/s", sink,
                          ratio=ratio(median(sink), median(copy)), ratio_of="raw COPY",
                          target=f"≥ {COPY_TARGET} × COPY", target_ratio=COPY_TARGET))
    if raw.latency_points:
        best = raw.latency_best
        tried = min(p.rate_per_s for p in raw.latency_points)
        out.append(Figure("e2e.rate", f"end to end: highest rate with p99 ≤ 1 s (0: not even "
                          f"{tried:,}/s)", "payments/s",
                          (float(best or 0),), target=f"≥ {E2E_RATE_TARGET:,}/s",
                          target_ratio=float(E2E_RATE_TARGET)))
        ref = raw.latency_reference
        at_ref = [r for r in raw.latency_runs if ref > 0 and r.rate_per_s == ref]
        if at_ref:
            out.append(Figure("e2e.p50", f"end to end p50 at {ref:,}/s", "ms",
                              tuple(float(r.p50_ms) for r in at_ref)))
            out.append(Figure("e2e.p99", f"end to end p99 at {ref:,}/s", "ms",
                              tuple(float(r.p99_ms) for r in at_ref), target="≤ 1,000 ms",
                              target_ratio=P99_MAX_MS, at_most=True))
        # Where the time goes, at the highest rate that held and at the reference rate.
        for rate in sorted({best or 0, ref} - {0}):
            hop_runs = [r for r in raw.latency_runs if r.rate_per_s == rate and r.hops]
            for hop in HOPS if hop_runs else ():
                for q in ("p50", "p99"):
                    out.append(Figure(
                        f"e2e.hop.{rate}.{hop}.{q}", f"at {rate:,}/s, {hop} hop {q}", "ms",
                        tuple(float(r.hops[hop][f"{q}_ms"]) for r in hop_runs
                              if hop in r.hops)))
    cpu_rows: list[tuple[str, str, list[float]]] = []
    rss_rows: list[tuple[str, str, list[float]]] = []
    for stage in STAGES:
        chains = [c for c in raw.chains if stage in c.stages]
        if chains:
            cpu_rows.append((stage, STAGE_LABELS[stage], [
                c.stages[stage].cpu_s / max(_payments(c.stages[stage], stage, c), 1) * 1000
                * _timed_share(c.stages[stage]) for c in chains]))
            rss_rows.append((stage, STAGE_LABELS[stage],
                             [c.stages[stage].rss_mib_peak for c in chains]))
    if raw.peer:
        cpu_rows.append(("quix", "Quix peer", [p.cpu_s_per_1000 for p in raw.peer]))
        rss_rows.append(("quix", "Quix peer", [p.rss_mib_peak for p in raw.peer]))
    if raw.limits:
        cpu_rows.append(("limit.raw", "limit A (in the bench process)",
                         [a.cpu_s_per_1000 for a, _ in raw.limits]))
    for key, label, per_run in cpu_rows:
        out.append(Figure(f"cpu.{key}", f"CPU s per 1,000 payments: {label}", "CPU s",
                          tuple(round(v, 4) for v in per_run)))
    for key, label, per_run in rss_rows:
        out.append(Figure(f"rss.{key}", f"peak RSS: {label}", "MiB", tuple(per_run)))
    # The faust workers' collector: its pauses as a share of the CPU the stage used.
    for stage in STAGES:
        shares = tuple(round(100 * run.gc_pause_s / run.cpu_s, 2)
                       for c in raw.chains if (run := c.stages.get(stage)) is not None
                       and run.gc_pause_s is not None and run.cpu_s > 0)
        if shares:
            out.append(Figure(f"gc.{stage}", f"GC pauses, share of CPU: {STAGE_LABELS[stage]}",
                              "%", shares))
    return out


def _timed_share(run: ProcRun) -> float:
    """cpu_s covers the timed span only: scale per payment by the records in that span."""
    timed = run.records_per_s * run.steady_s
    return run.records / timed if timed > 0 else 1.0


def write_report(name: str, raw: Raw, opts: Options, info: dict[str, Any]) -> tuple[Path, Path,
                                                                                     str]:
    """`<out>/<name>.json` (every run) and `<out>/<name>.md` (the table and the machine)."""
    figs = figures(raw)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    info = {**info, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report = {
        "machine": info,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "figures": [f.to_dict() for f in figs],
        "raw": raw.to_dict(),
    }
    json_path = opts.out_dir / f"{name}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    table = markdown_table(figs)
    latency_note = f", latency runs of {opts.duration_s:g}s" if raw.latency_points else ""
    md = (
        f"# settle benchmarks ({name})\n\n"
        f"Medians of {opts.runs} run(s), {opts.count:,} payments per stage run"
        f"{latency_note}. "
        "Ratios compare figures measured side by side in the same run; absolute figures "
        "depend on what else the machine was doing.\n\n"
        f"{table}\n"
        + "".join(f"Failed: {e}\n" for e in raw.errors) +
        f"Machine: {info['cpu_model']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"Python {info['python']}; load average at start {info['load_average_at_start']}.\n"
    )
    md_path = opts.out_dir / f"{name}.md"
    md_path.write_text(md)
    return json_path, md_path, table
