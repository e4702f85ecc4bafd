"""End to end at a fixed rate: p50/p99 created_at -> ledger commit, and the highest rate held."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settle.benchmarks.common import Say
from settle.benchmarks.measure import RatePoint, median
from settle.config import Settings
from settle.e2e import run_e2e

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

    def to_dict(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate_per_s, "count": self.count,
                "published_per_s": self.published_per_s, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "books_ok": self.books_ok}


def measure_rate(settings: Settings, rate: int, duration_s: float, runs: int, seed: int,
                 out_dir: Path, say: Say, log: list[LatencyRun]) -> RatePoint:
    """`runs` whole-pipeline runs at `rate` payments/s for `duration_s`; medians of p50/p99."""
    count = max(int(rate * duration_s), 1)
    mine: list[LatencyRun] = []
    for run in range(runs):
        say(f"end to end at {rate:,}/s for {duration_s:g}s, run {run + 1}/{runs}")
        r = run_e2e(settings, out_dir / f"latency-{rate}-run{run + 1}", count, seed + run,
                    rate_per_s=float(rate), say=say, warmup=WARMUP_PAYMENTS)
        published = round(count / max(r.publish_s, 1e-3), 1)
        item = LatencyRun(rate, count, published, r.latency_ms_p50, r.latency_ms_p99,
                          bool(r.books.ok and r.ingest.balanced))
        mine.append(item)
        log.append(item)
        say(f"{rate:,}/s: p50 {item.p50_ms} ms, p99 {item.p99_ms} ms "
            f"(published at {published:,.0f}/s)")
    held = median(r.published_per_s for r in mine) >= PUBLISH_SHARE_MIN * rate
    return RatePoint(rate, median(r.p50_ms for r in mine), median(r.p99_ms for r in mine),
                     runs, rate_held=held)
