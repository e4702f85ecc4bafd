"""Stage benchmarks on the real stack: preload a topic, start a worker, time the drain."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from infra.admin import create_topics
from infra.config import Settings
from infra.registry import registry_client
from producers.clients import delete_isolated_run
from producers.merchants import load_merchants, publish_merchants, sample_merchants_path
from producers.order_flow import publish_order
from producers.orders import OrderMix, expected_accounting, generate_orders
from producers.producer import AvroProducer
from schemas.topics import TopicNames
from settle.benchmarks.common import Offsets, ProcRun, run_measured, settle_argv
from settle.processes import free_port


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
    log_path: Path,
    timeout_s: float = 600.0,
) -> ProcRun:
    """Start the stage's worker and time from its first output to its last expected one
    (benchmarks.common.run_measured: the process tree's CPU, its peak RSS, its GC pauses)."""
    # One long-lived consumer for the end offsets: a consumer made per poll cost the bench
    # about half a core, taken from the worker it measures on a 2-core machine.
    offsets = Offsets(settings)
    try:
        return run_measured(
            stage, settle_argv("worker", stage, "--loglevel", "warning"), env,
            lambda: offsets.end(output_topics), expected_outputs, records, log_path,
            timeout_s=timeout_s, poll_s=0.2, metrics_port=free_port())
    finally:
        offsets.close()


def use_run_keyring(settings: Settings, out_dir: Path) -> None:
    """Signed traffic, as in production: producers and workers read the keyring from the
    environment (the configured one, or one made under the report folder)."""
    from infra.keyring import ensure_run_keyring

    out_dir.mkdir(parents=True, exist_ok=True)
    keyring_path = ensure_run_keyring(
        out_dir, [e.merchant_id for e in load_merchants(sample_merchants_path())],
        settings.signing)
    if keyring_path is not None:
        os.environ["SETTLE_SIGNING_KEYRING"] = str(keyring_path)


def bench_validate(settings: Settings, count: int, runs: int, seed: int, bad_ratio: float,
                   out_dir: Path, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Median of `runs` drains of `count` preloaded payments through validate+route."""
    results: list[ProcRun] = []
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
                {"SETTLE_TOPIC_PREFIX": prefix},
                out_dir / f"validate-run{run + 1}.log",
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
