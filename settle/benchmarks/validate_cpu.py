"""Validate+route without a broker: CPU per record of IngestProcessor.process alone.

The stage benchmark (`settle bench stages`) times a faust worker on the real stack; this one
feeds pre-encoded, signed PaymentRequested values (Confluent wire format) straight into the
processor the worker wraps, with an in-memory registry and a dict as the seen store, so what
it measures is the per-record Python work of decode, signature check, validation,
idempotency, routing and encode, and nothing else. Every run starts with an empty seen store,
and every payment must come out as the simulator expects (routed, rejected, dead-lettered or
deduplicated), so a faster run cannot be a run that skipped work.

    settle bench validate-cpu --count 20000 --runs 3
    python -m settle.benchmarks.validate_cpu --profile   # the same, plus a cProfile table
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from producers.merchants import load_merchants, sample_merchants_path
from producers.orders import (
    DEAD_LETTERED,
    DEDUPLICATED,
    REJECTED,
    ROUTED,
    OrderMix,
    generate_orders,
)
from producers.signing import RequestSigner
from schemas.codec import AvroSerializer
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.model import Merchant
from settlement.routing import DEFAULT_TABLE
from settlement.signing import Keyring, SigningKey
from settlement.validation import ValidationPolicy
from stream_processors.ingest import IngestProcessor, SeenIndex

# A fixed clock: generated created_at and the processor's "now" agree in every run.
NOW_MS = 1_764_000_000_000
RETENTION_MS = 8 * 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class CpuRun:
    records: int
    cpu_s: float
    wall_s: float

    @property
    def records_per_cpu_s(self) -> float:
        return self.records / max(self.cpu_s, 1e-9)

    @property
    def cpu_s_per_1000(self) -> float:
        return self.cpu_s / max(self.records, 1) * 1000


@dataclass(slots=True)
class Workload:
    """Everything a run needs, built once: the encoded inputs and the processor's parts."""

    registry: InMemoryRegistry
    merchants: dict[str, Merchant]
    keyring: Keyring
    topics: TopicNames
    inputs: list[tuple[bytes, bytes]]  # (key, wire-format value)
    expected: Counter[str]


def _keyring(seed: int, merchant_ids: list[str]) -> Keyring:
    # Deterministic secrets (the bench needs no real ones): same seed, same signatures.
    return Keyring(
        SigningKey(f"{m}.bench", m, hashlib.sha256(f"bench-{seed}-{m}".encode()).digest(),
                   "active", 0)
        for m in merchant_ids
    )


def build_workload(count: int, seed: int = 1, bad_ratio: float = 0.0,
                   duplicate_ratio: float = 0.0) -> Workload:
    """`count` simulated payment requests, signed and encoded as the producers publish them."""
    entries = load_merchants(sample_merchants_path())
    merchants = {e.merchant_id: Merchant(e.merchant_id, e.name, e.status,
                                         e.settlement_currency, NOW_MS) for e in entries}
    keyring = _keyring(seed, sorted(merchants))
    registry = InMemoryRegistry()
    topics = TopicNames()
    encoder = AvroSerializer(registry, topics.requested, "PaymentRequested")
    schema_id = encoder.ensure_schema_id()
    mix = OrderMix(bad_ratio=bad_ratio, duplicate_ratio=duplicate_ratio, schema_id=schema_id,
                   keyring=keyring if bad_ratio else None)
    signer = RequestSigner(keyring)
    inputs: list[tuple[bytes, bytes]] = []
    expected: Counter[str] = Counter()
    for order in generate_orders(seed, count, entries, mix, clock=lambda: NOW_MS):
        if order.record is not None:
            value = encoder.encode(signer.sign_record(order.record))
        else:
            assert order.raw is not None
            value = order.raw
        inputs.append((order.key.encode(), value))
        expected[order.expected] += 1
    return Workload(registry, merchants, keyring, topics, inputs, expected)


def new_processor(w: Workload) -> IngestProcessor:
    seen = SeenIndex({}, RETENTION_MS)
    return IngestProcessor(w.registry, w.merchants.get, seen, DEFAULT_TABLE, ValidationPolicy(),
                           w.topics, clock=lambda: NOW_MS, keyring=w.keyring)


_OUTCOME_OF = {"routed": ROUTED, "rejected": REJECTED, "dead_lettered": DEAD_LETTERED,
               "deduplicated": DEDUPLICATED}


def run_once(w: Workload, profiler: cProfile.Profile | None = None) -> CpuRun:
    """Feed every input through a fresh processor; checks the outcomes add up as expected."""
    proc = new_processor(w)
    topic = w.topics.requested
    outcomes: Counter[str] = Counter()
    process = proc.process
    inputs = w.inputs
    if profiler is not None:
        profiler.enable()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for offset, (key, value) in enumerate(inputs):
        outcomes[process(key, value, topic, 0, offset).outcome] += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if profiler is not None:
        profiler.disable()
    got = Counter({_OUTCOME_OF.get(k, k): v for k, v in outcomes.items()})
    want = Counter({k: v for k, v in w.expected.items() if v})
    if got != want:
        raise RuntimeError(f"outcomes {dict(got)} differ from the expected {dict(want)}")
    return CpuRun(len(inputs), cpu, wall)


def bench_validate_cpu(count: int = 20_000, runs: int = 3, seed: int = 1,
                       bad_ratio: float = 0.0, duplicate_ratio: float = 0.0,
                       profile_top: int = 0) -> dict[str, Any]:
    """Median CPU of RUNS runs over the same inputs; with profile_top, a cProfile table too."""
    w = build_workload(count, seed, bad_ratio, duplicate_ratio)
    run_once(w)  # warm-up: registry lookups, schema parsing, first-call caches
    results = [run_once(w) for _ in range(runs)]
    report: dict[str, Any] = {
        "count": count, "runs": runs, "seed": seed, "bad_ratio": bad_ratio,
        "duplicate_ratio": duplicate_ratio, "expected": dict(w.expected),
        "cpu_s": [round(r.cpu_s, 3) for r in results],
        "cpu_s_per_1000_median": round(statistics.median(r.cpu_s_per_1000 for r in results), 4),
        "records_per_cpu_s_median": round(
            statistics.median(r.records_per_cpu_s for r in results), 0),
    }
    if profile_top:
        profiler = cProfile.Profile()
        run_once(w, profiler)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(profile_top)
        report["profile"] = out.getvalue()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m settle.benchmarks.validate_cpu",
        description="CPU per record of the validate+route processor, no broker "
                    "(same as `settle bench validate-cpu`).")
    parser.add_argument("--count", type=int, default=20_000, help="inputs per run (20000)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the median counts (3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bad-ratio", type=float, default=0.0,
                        help="share of injected bad input (0: valid signed payments only)")
    parser.add_argument("--duplicate-ratio", type=float, default=0.0)
    parser.add_argument("--profile", type=int, nargs="?", const=25, default=0, metavar="N",
                        help="also print the top N functions of a cProfile run by own time")
    args = parser.parse_args(argv)
    report = bench_validate_cpu(args.count, args.runs, args.seed, args.bad_ratio,
                                args.duplicate_ratio, args.profile)
    print(format_report(report))


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"validate+route processor, {report['count']:,} inputs x {report['runs']} runs "
        f"(seed {report['seed']}, expected {report['expected']})",
        f"CPU s per run: {report['cpu_s']}",
        f"median {report['cpu_s_per_1000_median']} CPU s per 1,000 inputs, "
        f"{report['records_per_cpu_s_median']:,.0f} inputs per CPU second",
    ]
    if "profile" in report:
        lines.append(report["profile"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
