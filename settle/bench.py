"""Stage benchmarks on the real stack: preload a topic, start a worker, time the drain."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from producers.clients import delete_isolated_run
from producers.merchants import load_merchants, publish_merchants, sample_merchants_path
from producers.order_flow import publish_order
from producers.orders import OrderMix, expected_accounting, generate_orders
from producers.producer import AvroProducer
from settle.benchmarks.common import Offsets
from settle.config import Settings
from settle.smoke import registry_client
from settle.topics import create_topics
from stream_processors.topics import TopicNames

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class StageRun:
    stage: str
    records: int
    outputs: int
    steady_s: float
    records_per_s: float
    cpu_s: float
    cpu_s_per_1000: float
    rss_mib_peak: float
    startup_s: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc, so no dependency)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def preload_validate(settings: Settings, topics: TopicNames, count: int, seed: int,
                     bad_ratio: float) -> int:
    """Publish merchants and `count` simulated orders; returns the expected output count."""
    registry = registry_client(settings)
    entries = load_merchants(sample_merchants_path())
    mix = OrderMix(bad_ratio=bad_ratio, duplicate_ratio=0.01, conflict_ratio=0.002)
    orders = list(generate_orders(seed, count, entries, mix))
    expected = expected_accounting(orders)
    with AvroProducer(settings.kafka, registry, client_id="bench") as producer:
        publish_merchants(producer, entries, time.time_ns() // 1_000_000, topic=topics.merchants)
        producer.flush()
        for order in orders:
            publish_order(producer, topics.requested, order)
    return expected["routed"] + expected["rejected"] + expected["dead_lettered"]


def run_stage(
    settings: Settings,
    stage: str,
    records: int,
    expected_outputs: int,
    output_topics: list[str],
    env: dict[str, str],
    timeout_s: float = 600.0,
    log_path: Path | None = None,
) -> StageRun:
    """Start the stage's worker and time from its first output to its last expected one."""
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - lives as long as the child
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "settle.cli", "worker", stage, "--loglevel", "warning"],
        env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    first_t = cpu_first = None
    rss_peak = 0.0
    # One long-lived consumer for the end offsets: a consumer made per poll cost the bench
    # about half a core, taken from the worker it measures on a 2-core machine.
    offsets = Offsets(settings)
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{stage} worker exited with {proc.returncode}")
            done = offsets.end(output_topics)
            now = time.monotonic()
            rss_peak = max(rss_peak, rss_mib(proc.pid))
            if done > 0 and first_t is None:
                first_t, cpu_first, first_done = now, cpu_seconds(proc.pid), done
            if done >= expected_outputs:
                assert first_t is not None and cpu_first is not None
                cpu = cpu_seconds(proc.pid) - cpu_first
                steady = max(now - first_t, 1e-3)
                measured = records * (done - first_done) / max(done, 1)
                return StageRun(
                    stage=stage, records=records, outputs=done, steady_s=round(steady, 3),
                    records_per_s=round(measured / steady, 1), cpu_s=round(cpu, 2),
                    cpu_s_per_1000=round(cpu / max(measured, 1) * 1000, 3),
                    rss_mib_peak=round(rss_peak, 1), startup_s=round(first_t - started, 2),
                )
            time.sleep(0.2)
        raise TimeoutError(f"{stage}: {expected_outputs} outputs not reached in {timeout_s}s")
    finally:
        offsets.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def use_run_keyring(settings: Settings, out_dir: Path) -> None:
    """Signed traffic, as in production: producers and workers read the keyring from the
    environment (the configured one, or one made under the report folder)."""
    from settle.keyring import ensure_run_keyring

    out_dir.mkdir(parents=True, exist_ok=True)
    keyring_path = ensure_run_keyring(
        out_dir, [e.merchant_id for e in load_merchants(sample_merchants_path())],
        settings.signing)
    if keyring_path is not None:
        os.environ["SETTLE_SIGNING_KEYRING"] = str(keyring_path)


def bench_validate(settings: Settings, count: int, runs: int, seed: int, bad_ratio: float,
                   out_dir: Path, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Median of `runs` drains of `count` preloaded payments through validate+route."""
    results: list[StageRun] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    use_run_keyring(settings, out_dir)
    for run in range(runs):
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        topics = TopicNames(prefix)
        create_topics(settings.kafka, name_prefix=prefix)
        try:
            progress(f"run {run + 1}/{runs}: preloading {count:,} payments into {topics.requested}")
            expected = preload_validate(settings, topics, count, seed + run, bad_ratio)
            progress(f"run {run + 1}/{runs}: draining through the validate worker")
            result = run_stage(
                settings, "validate", count, expected,
                [*topics.all_routed, topics.rejected, topics.dlq],
                {"SETTLE_TOPIC_PREFIX": prefix, "SETTLE_METRICS_PORT": "0"},
                log_path=out_dir / f"validate-run{run + 1}.log",
            )
            results.append(result)
            progress(f"run {run + 1}/{runs}: {result.records_per_s:,.0f} records/s, "
                     f"{result.cpu_s_per_1000} CPU s per 1,000")
        finally:
            delete_isolated_run(settings, prefix)
    rates = [r.records_per_s for r in results]
    report = {
        "stage": "validate",
        "count": count,
        "runs": [asdict(r) for r in results],
        "records_per_s_median": statistics.median(rates),
        "cpu_s_per_1000_median": statistics.median(r.cpu_s_per_1000 for r in results),
        "rss_mib_peak_max": max(r.rss_mib_peak for r in results),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validate.json").write_text(json.dumps(report, indent=2))
    return report
