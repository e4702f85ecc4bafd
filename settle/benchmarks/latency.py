"""End to end at a fixed rate: p50/p99 created_at -> ledger commit, and the highest rate held."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

from infra.config import Settings
from infra.kafka import make_consumer
from schemas.topics import TopicNames
from settle.audit_ingest import read_topic
from settle.benchmarks.common import Say
from settle.benchmarks.measure import (
    HopRow,
    RatePoint,
    hop_columns,
    hop_rows,
    hop_summary,
    median,
    slow_seconds,
)
from settle.e2e import isolated_dbname, run_e2e
from sinks.db import connect

# Below this share of the asked rate the publisher, not the pipeline, set the pace: the
# point says nothing about the pipeline at that rate and the search stops there.
PUBLISH_SHARE_MIN = 0.9
# Sent before the clock starts, so start-up (group joins, merchant loading) is not latency.
WARMUP_PAYMENTS = 50


@dataclass(slots=True)
class LatencyRun:
    rate_per_s: int
    count: int
    published_per_s: float
    p50_ms: int
    p99_ms: int
    books_ok: bool
    # hop -> {"p50_ms", "p99_ms", "n"}: where the time went (measure.hop_rows)
    hops: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate_per_s, "count": self.count,
                "published_per_s": self.published_per_s, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "books_ok": self.books_ok, "hops": self.hops}


def _first_timestamps(consumer: Any, topics: Sequence[str]) -> dict[str, int]:
    """payment_id (the record key) -> timestamp of its first record on any of `topics`."""
    out: dict[str, int] = {}
    for topic in topics:
        for rec in read_topic(consumer, topic):
            if rec.key is not None:
                pid = rec.key.decode("utf-8", "replace")
                if pid not in out or rec.timestamp_ms < out[pid]:
                    out[pid] = rec.timestamp_ms
    return out


def collect_hops(settings: Settings, prefix: str, since_ms: int,
                 dump: Path | None = None) -> tuple[dict[str, dict[str, int]], list[HopRow]]:
    """Per-hop p50/p99 of a finished run, read from its topics' timestamps and its ledger,
    and each payment's hops (also written to `dump` as CSV, when given)."""
    t = TopicNames(prefix)
    db = replace(settings.postgres, dbname=isolated_dbname(settings.postgres.dbname, prefix))
    with connect(db, autocommit=True) as conn:
        posted = {str(pid): int(ms) for pid, ms in conn.execute(
            "SELECT payment_id, (EXTRACT(EPOCH FROM posted_at) * 1000)::bigint"
            "  FROM ledger_journals").fetchall()}
    consumer = make_consumer(settings.kafka, group_id=f"settle-bench-hops-{uuid.uuid4()}")
    try:
        requested = _first_timestamps(consumer, [t.requested])
        routed = _first_timestamps(consumer, t.all_routed)
        confirmed = _first_timestamps(consumer, [t.confirmations])
        results = _first_timestamps(consumer, [t.results])
    finally:
        consumer.close()
    rows = hop_rows(requested, routed, confirmed, results, posted, since_ms=since_ms)
    if dump is not None:
        dump.parent.mkdir(parents=True, exist_ok=True)
        with dump.open("w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["payment_id", "requested_ms", "validate_ms", "channel_ms",
                          "reconcile_ms", "ledger_sink_ms"])
            out.writerows(astuple(r) for r in rows)
    return hop_summary(hop_columns(rows)), rows


def _hop_inspector(settings: Settings, say: Say, into: dict[str, dict[str, int]],
                   dump: Path) -> Callable[[Any, str, float], None]:
    """run_e2e's inspect hook: fills `into` with the run's hops before the teardown, writes
    each payment's hops to `dump` and says when the validate hop's slowest 1 % happened."""
    def inspect(_procs: Any, prefix: str, started_s: float) -> None:
        try:
            summary, rows = collect_hops(settings, prefix, int(started_s * 1000), dump)
        except Exception as exc:  # a diagnostic: the run's figures stand without it
            say(f"hop breakdown failed: {type(exc).__name__}: {exc}")
            return
        into.update(summary)
        slow = slow_seconds(rows, "validate")
        if slow:
            say("  slowest 1% of the validate hop, by second of the run: " + ", ".join(
                f"s{sec} {n}× ≤{worst} ms" for sec, n, worst in slow) + f" ({dump.name})")
    return inspect


def measure_rate(settings: Settings, rate: int, duration_s: float, runs: int, seed: int,
                 out_dir: Path, say: Say, log: list[LatencyRun]) -> RatePoint:
    """`runs` whole-pipeline runs at `rate` payments/s for `duration_s`; medians of p50/p99."""
    count = max(int(rate * duration_s), 1)
    mine: list[LatencyRun] = []
    for run in range(runs):
        say(f"end to end at {rate:,}/s for {duration_s:g}s, run {run + 1}/{runs}")
        hops: dict[str, dict[str, int]] = {}
        r = run_e2e(settings, out_dir / f"latency-{rate}-run{run + 1}", count, seed + run,
                    rate_per_s=float(rate), say=say, warmup=WARMUP_PAYMENTS,
                    inspect=_hop_inspector(settings, say, hops,
                                           out_dir / f"latency-{rate}-run{run + 1}-hops.csv"))
        published = round(count / max(r.publish_s, 1e-3), 1)
        item = LatencyRun(rate, count, published, r.latency_ms_p50, r.latency_ms_p99,
                          bool(r.books.ok and r.ingest.balanced), hops)
        mine.append(item)
        log.append(item)
        say(f"{rate:,}/s: p50 {item.p50_ms} ms, p99 {item.p99_ms} ms "
            f"(published at {published:,.0f}/s)")
        if hops:
            say("  hops p50/p99 ms: " + ", ".join(
                f"{h} {v['p50_ms']}/{v['p99_ms']}" for h, v in hops.items()))
    held = median(r.published_per_s for r in mine) >= PUBLISH_SHARE_MIN * rate
    return RatePoint(rate, median(r.p50_ms for r in mine), median(r.p99_ms for r in mine),
                     runs, rate_held=held)
