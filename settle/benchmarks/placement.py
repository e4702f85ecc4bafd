"""What a third party's partitioner costs: validate and reconcile fed by murmur2 or by CRC32.

One run per partitioner, alternated: the same simulated requests (no bad input) are
published with the pipeline's own partitioner (`murmur2_random`) or with librdkafka's
default (`consistent_random`, CRC32), and the confirmations of the routed payments likewise.
With CRC32 about (P-1)/P of the records land on another partition than their payment_id's
and each stage moves them (stream_processors.placement): one more produce and consume each.
Each stage's real worker drains its input alone; CPU is the process tree's over the timed
span. The extra CPU per moved record is the difference of CPU per payment between the two
partitioners, divided by the share of records moved.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.config import Settings
from infra.partitioning import partition_for
from infra.registry import registry_client
from producers.channels import ChannelSimConfig, plan_confirmations
from producers.producer import AvroProducer
from settle.benchmarks.chain import STAGE_ENV, decode_topic
from settle.benchmarks.common import (
    Isolated,
    Offsets,
    ProcRun,
    Say,
    run_measured,
    settle_argv,
)
from settle.benchmarks.limits import preload_requests
from settle.benchmarks.measure import median
from settle.processes import free_port

PARTITIONERS = ("murmur2_random", "consistent_random")


def crc32_misplaced(keys: Sequence[bytes], partitions: int) -> int:
    """How many keys librdkafka's consistent_random (CRC32) puts elsewhere than murmur2."""
    return sum(1 for k in keys
               if zlib.crc32(k) % partitions != partition_for(k, partitions))


@dataclass(slots=True)
class PlacementRun:
    partitioner: str
    payments: int
    requests_moved: int
    confirmations: int
    confirmations_moved: int
    validate: ProcRun
    reconcile: ProcRun


@dataclass(slots=True)
class PlacementReport:
    count: int
    runs: list[PlacementRun] = field(default_factory=list)

    def medians(self, partitioner: str) -> dict[str, float]:
        runs = [r for r in self.runs if r.partitioner == partitioner]
        return {
            "validate_records_per_s": median(r.validate.records_per_s for r in runs),
            "validate_cpu_s_per_1000": median(r.validate.cpu_s_per_1000 for r in runs),
            "reconcile_payments_per_s": median(r.reconcile.records_per_s for r in runs),
            "reconcile_cpu_s_per_1000": median(r.reconcile.cpu_s_per_1000 for r in runs),
            "requests_moved_share": median(r.requests_moved / max(r.payments, 1)
                                           for r in runs),
            "confirmations_moved_share": median(r.confirmations_moved / max(r.confirmations, 1)
                                                for r in runs),
        }

    def extra_us_per_moved(self) -> dict[str, float | None]:
        """Extra CPU microseconds per moved record, per stage (medians)."""
        base, crc = self.medians(PARTITIONERS[0]), self.medians(PARTITIONERS[1])
        out: dict[str, float | None] = {}
        for stage, share in (("validate", "requests_moved_share"),
                             ("reconcile", "confirmations_moved_share")):
            key = f"{stage}_cpu_s_per_1000"
            if crc[share] <= 0:
                out[stage] = None
                continue
            # CPU s per 1,000 payments -> µs per payment, over the moved share.
            out[stage] = round((crc[key] - base[key]) * 1000 / crc[share], 1)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "runs": [asdict(r) for r in self.runs],
                "medians": {p: self.medians(p) for p in PARTITIONERS},
                "extra_cpu_us_per_moved_record": self.extra_us_per_moved()}

    def markdown(self) -> str:
        rows = ["| partitioner | moved (requests / confirmations) | validate records/s | "
                "validate CPU s / 1,000 | reconcile payments/s | reconcile CPU s / 1,000 |",
                "|---|---|---|---|---|---|"]
        for p in PARTITIONERS:
            m = self.medians(p)
            rows.append(
                f"| {p} | {m['requests_moved_share']:.0%} / "
                f"{m['confirmations_moved_share']:.0%} | {m['validate_records_per_s']:,.0f} | "
                f"{m['validate_cpu_s_per_1000']:.3f} | {m['reconcile_payments_per_s']:,.0f} | "
                f"{m['reconcile_cpu_s_per_1000']:.3f} |")
        extra = self.extra_us_per_moved()
        rows.append("")
        rows.append("Extra CPU per moved record: " + ", ".join(
            f"{stage} {'-' if us is None else f'{us:,.0f} µs'}" for stage, us in extra.items()))
        return "\n".join(rows)


def _confirm(iso: Isolated, routed: Sequence[dict[str, Any]], seed: int,
             partitioner: str) -> list[bytes]:
    """One confirmation per routed payment (the channel simulator's planning); their keys."""
    config = ChannelSimConfig(seed=seed, latency_ms=0, decline_rate=0.05, fault_rate=0.0)
    now = time.time_ns() // 1_000_000
    keys: list[bytes] = []
    with AvroProducer(iso.settings.kafka, registry_client(iso.settings),
                      client_id="bench-channels", partitioner=partitioner) as producer:
        for record in routed:
            for planned in plan_confirmations(record, now, config):
                producer.send(iso.topics.confirmations, planned.key, planned.record)
                keys.append(planned.key.encode())
    return keys


def one_run(settings: Settings, count: int, seed: int, partitioner: str, out_dir: Path,
            say: Say) -> PlacementRun:
    n = settings.kafka.partitions
    with Isolated(settings, "pl", with_db=False) as iso:
        say(f"{partitioner}: preloading {count:,} requests")
        pre = preload_requests(iso, count, seed, bad_ratio=0.0, partitioner=partitioner)
        moved_requests = (crc32_misplaced([o.key.encode() for o in pre.orders], n)
                          if partitioner == "consistent_random" else 0)
        env = iso.env(**STAGE_ENV, SETTLE_RUN_DIR=str(out_dir / "run"))
        t = iso.topics
        offsets = Offsets(iso.settings)
        try:
            exp = pre.expected
            say(f"{partitioner}: validate draining {count:,} requests ({moved_requests:,} "
                "to move)")
            validate = run_measured(
                "validate", settle_argv("worker", "validate", "--loglevel", "warning"), env,
                lambda: offsets.end([*t.all_routed, t.rejected, t.dlq]),
                exp["routed"] + exp["rejected"] + exp["dead_lettered"], count,
                out_dir / f"validate-{partitioner}.log", metrics_port=free_port())
            routed = [r for topic in t.all_routed for r in decode_topic(iso, topic)]
            keys = _confirm(iso, routed, seed, partitioner)
            moved = crc32_misplaced(keys, n) if partitioner == "consistent_random" else 0
            say(f"{partitioner}: reconcile draining {len(routed):,} routed + {len(keys):,} "
                f"confirmations ({moved:,} to move)")
            group = f"{iso.prefix}settle-reconcile"
            inputs = [*t.all_routed, t.confirmations, f"{group}-placed"]
            total = len(routed) + len(keys) + moved
            reconcile = run_measured(
                "reconcile", settle_argv("worker", "reconcile", "--loglevel", "warning"), env,
                lambda: offsets.committed(group, inputs, n), total, len(routed),
                out_dir / f"reconcile-{partitioner}.log", metrics_port=free_port())
            placed = offsets.end([f"{iso.prefix}settle-validate-placed",
                                  f"{group}-placed"])
            if placed != moved_requests + moved:
                raise RuntimeError(f"{placed} records moved, {moved_requests + moved} expected")
        finally:
            offsets.close()
    return PlacementRun(partitioner, count, moved_requests, len(keys), moved, validate,
                        reconcile)


def run_placement(settings: Settings, count: int, runs: int, seed: int, out_dir: Path,
                  say: Say) -> tuple[PlacementReport, Path]:
    """`runs` pairs of runs, the partitioners alternated in order; report to out_dir."""
    report = PlacementReport(count)
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in range(runs):
        order = PARTITIONERS if run % 2 == 0 else PARTITIONERS[::-1]
        for partitioner in order:
            report.runs.append(one_run(settings, count, seed + run, partitioner,
                                       out_dir / "placement", say))
    path = out_dir / "placement.json"
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (out_dir / "placement.md").write_text(report.markdown() + "\n")
    return report, path
