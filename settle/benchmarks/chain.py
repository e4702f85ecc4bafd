"""Each stage alone on a preloaded input: validate -> reconcile -> settle -> both sinks, + COPY.

One run preloads payment requests once, then starts each stage's real process on its own,
after the previous stage has filled its input: the validate worker drains the requests; the
routed payments get their confirmations from the channel simulator's own planning logic; the
reconcile worker drains both; the settle worker and the ledger sink drain the results; the
settlement sink drains the closed batches. Each is timed from its first output to its last.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from infra.kafka import make_consumer
from infra.registry import registry_client
from producers.channels import ChannelSimConfig, plan_confirmations
from producers.producer import AvroProducer
from schemas.codec import AvroDeserializer
from settle.audit_ingest import read_topic
from settle.benchmarks.common import (
    Isolated,
    Offsets,
    ProcRun,
    Say,
    run_measured,
    settle_argv,
)
from settle.benchmarks.limits import Preloaded
from settle.benchmarks.measure import SinkSummary, parse_sink_summary, per_1000
from settle.processes import free_port
from sinks.db import connect
from sinks.ledger_rows import ENTRY_TYPES, JOURNAL_TYPES, EntryRow, JournalRow, build_ledger_rows
from sinks.pg import copy_rows

STAGES = ("validate", "reconcile", "settle", "ledger-sink", "settlement-sink")

# Timers must not fire while a stage drains a preloaded backlog (a payment waiting for its
# confirmation in another partition's backlog would go MISSING); settlement windows are
# short so the settle worker closes its batches within the run and the settlement sink has
# input.
STAGE_ENV = {
    "SETTLE_RECON_SLA_MS": "600000",
    "SETTLE_RECON_SLA_BY_CHANNEL": "card=600000",
    "SETTLE_ORPHAN_GRACE_MS": "600000",
    "SETTLE_WINDOW_SECONDS": "5",
    "SETTLE_WINDOW_GRACE_SECONDS": "2",
}


@dataclass(slots=True)
class ChainRun:
    stages: dict[str, ProcRun] = field(default_factory=dict)
    ledger_rows: int = 0
    ledger_sink_rows_per_s: float = 0.0
    copy_rows_per_s: float = 0.0
    copy_s: float = 0.0
    settlement_items: int = 0
    settlement_sink_items_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "stages"}
        out["stages"] = {k: asdict(v) for k, v in self.stages.items()}
        return out


def decode_topic(iso: Isolated, topic: str) -> list[dict[str, Any]]:
    """Every record of a topic, decoded (the topic is complete: its writer has stopped)."""
    decoder = AvroDeserializer(registry_client(iso.settings))
    consumer = make_consumer(iso.settings.kafka, group_id=f"bench-read-{uuid.uuid4()}")
    try:
        return [decoder.decode(r.value) for r in read_topic(consumer, topic)]
    finally:
        consumer.close()


def publish_confirmations(iso: Isolated, routed: Sequence[dict[str, Any]], seed: int) -> int:
    """One confirmation per routed payment, planned as the channel simulator plans them."""
    config = ChannelSimConfig(seed=seed, latency_ms=0, decline_rate=0.05, fault_rate=0.0)
    now = time.time_ns() // 1_000_000
    sent = 0
    with AvroProducer(iso.settings.kafka, registry_client(iso.settings),
                      client_id="bench-channels") as producer:
        for record in routed:
            for planned in plan_confirmations(record, now, config):
                producer.send(iso.topics.confirmations, planned.key, planned.record)
                sent += 1
    return sent


def _sql_count(iso: Isolated, sql: str, args: Sequence[object] = ()) -> int:
    with connect(iso.settings.postgres, autocommit=True) as conn:
        row = conn.execute(sql, tuple(args)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _sink_progress(iso: Isolated, topic: str) -> Callable[[], int]:
    return lambda: _sql_count(
        iso, "SELECT COALESCE(SUM(next_offset), 0) FROM sink_offsets WHERE topic = %s", [topic])


def run_chain(iso: Isolated, pre: Preloaded, seed: int, out_dir: Path, wanted: Sequence[str],
              say: Say) -> ChainRun:
    """Run the stages in `wanted` (and what they need upstream), each alone; time each."""
    last = max(STAGES.index(s) for s in wanted)
    env = iso.env(**STAGE_ENV, SETTLE_RUN_DIR=str(out_dir / "run"))
    t = iso.topics
    partitions = iso.settings.kafka.partitions
    offsets = Offsets(iso.settings)
    run = ChainRun()
    try:
        exp = pre.expected
        say(f"validate worker draining {pre.count:,} requests")
        run.stages["validate"] = run_measured(
            "validate", settle_argv("worker", "validate", "--loglevel", "warning"), env,
            lambda: offsets.end([*t.all_routed, t.rejected, t.dlq]),
            exp["routed"] + exp["rejected"] + exp["dead_lettered"], pre.count,
            out_dir / "validate.log", metrics_port=free_port())
        if last < 1:
            return run
        routed = [r for topic in t.all_routed for r in decode_topic(iso, topic)]
        confirmations = publish_confirmations(iso, routed, seed)
        say(f"reconcile worker draining {len(routed):,} routed + {confirmations:,} confirmations")
        # Progress is what reconcile has consumed (its committed input offsets), not what it
        # has output: a result comes out only once both halves of a payment are in, and how
        # faust interleaves the two inputs' fetches decides how much work precedes the first
        # result. Timed by results, a run that read most routed records first left that work
        # before its clock started, and reported its records/s from the rest.
        recon_group = f"{iso.prefix}settle-reconcile"
        recon_inputs = [*t.all_routed, t.confirmations]
        run.stages["reconcile"] = run_measured(
            "reconcile", settle_argv("worker", "reconcile", "--loglevel", "warning"), env,
            lambda: offsets.committed(recon_group, recon_inputs, partitions),
            len(routed) + confirmations, len(routed) + confirmations,
            out_dir / "reconcile.log", metrics_port=free_port())
        if last < 2:
            return run
        results = decode_topic(iso, t.results)
        matched = sum(1 for r in results if r.get("outcome") == "MATCHED")
        if "settle" in wanted or last >= 4:
            say(f"settle worker draining {len(results):,} results ({matched:,} matched)")
            items_topic = f"{iso.prefix}settle-settle-items"
            group = f"{iso.prefix}settle-settle"

            def batched_items() -> int:
                return sum(len(b.get("items") or ()) for b in decode_topic(iso, t.batches))

            def wait_closed() -> None:
                # The settlement sink's input: every matched payment in a closed batch.
                deadline = time.monotonic() + 120
                while batched_items() < matched and time.monotonic() < deadline:
                    time.sleep(1.0)

            run.stages["settle"] = run_measured(
                "settle", settle_argv("worker", "settle", "--loglevel", "warning"), env,
                lambda: offsets.committed(group, [items_topic], partitions), matched,
                len(results), out_dir / "settle.log",
                after=wait_closed if last >= 4 else None, metrics_port=free_port())
        if "ledger-sink" in wanted:
            say(f"ledger sink draining {len(results):,} results")
            ledger = run_measured(
                "ledger-sink", settle_argv("sink", "ledger", "--loglevel", "warning"), env,
                _sink_progress(iso, t.results), len(results), len(results),
                out_dir / "ledger-sink.log")
            run.ledger_rows = _sql_count(
                iso, "SELECT (SELECT COUNT(*) FROM ledger_journals)"
                     " + (SELECT COUNT(*) FROM ledger_entries)")
            run.ledger_sink_rows_per_s = round(
                run.ledger_rows * ledger.records_per_s / max(ledger.records, 1), 1)
            summary = parse_sink_summary((out_dir / "ledger-sink.log").read_text())
            if summary is not None and summary.busy_s > 0:
                ledger = _with_sink_clock(ledger, summary)
                run.ledger_sink_rows_per_s = round(summary.rows_per_s(LEDGER_TABLES), 1)
            run.stages["ledger-sink"] = ledger
            run.copy_s, copied = raw_copy(iso, results)
            run.copy_rows_per_s = round(copied / max(run.copy_s, 1e-6), 1)
            say(f"ledger sink {run.ledger_sink_rows_per_s:,.0f} rows/s; raw COPY "
                f"{run.copy_rows_per_s:,.0f} rows/s")
        if last >= 4:
            batches = offsets.end([t.batches])
            say(f"settlement sink draining {batches:,} closed batches")
            sink = run_measured(
                "settlement-sink", settle_argv("sink", "settlement", "--loglevel", "warning"),
                env, _sink_progress(iso, t.batches), batches, batches,
                out_dir / "settlement-sink.log")
            run.settlement_items = _sql_count(iso, "SELECT COUNT(*) FROM settlement_batch_items")
            run.settlement_sink_items_per_s = round(
                run.settlement_items / max(sink.steady_s, 1e-3), 1)
            summary = parse_sink_summary((out_dir / "settlement-sink.log").read_text())
            if summary is not None and summary.busy_s > 0:
                sink = _with_sink_clock(sink, summary)
                run.settlement_sink_items_per_s = round(
                    summary.rows_per_s(["settlement_batch_items"]), 1)
            run.stages["settlement-sink"] = sink
        return run
    finally:
        offsets.close()


LEDGER_TABLES = ("ledger_journals", "ledger_entries")


def _with_sink_clock(run: ProcRun, summary: SinkSummary) -> ProcRun:
    """A sink times itself from its first record to its last commit: finer than polling."""
    # Its span covers all its records, so the CPU must too.
    return replace(run, steady_s=summary.busy_s, records_per_s=round(summary.records_per_s, 1),
                   cpu_s=run.cpu_s_from_idle,
                   cpu_s_per_1000=per_1000(run.cpu_s_from_idle, run.records))


def raw_copy(iso: Isolated, results: Sequence[dict[str, Any]]) -> tuple[float, int]:
    """Binary COPY of the ledger rows of `results` into an empty, migrated database.

    The same row builder as the sink, the same tables with their constraints, indexes and
    the deferred balance trigger, one transaction: what the sink's rows cost at the least.
    Returns (seconds, rows copied).
    """
    rows = build_ledger_rows(results, iso.settings.sink.fees)
    settings = iso.create_db(f"{iso.dbname}_copy")
    with connect(settings.postgres) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            copy_rows(cur, "ledger_journals", JournalRow._fields, JOURNAL_TYPES, rows.journals)
            copy_rows(cur, "ledger_entries", EntryRow._fields, ENTRY_TYPES, rows.entries)
        conn.commit()
        elapsed = time.perf_counter() - started
    return round(elapsed, 4), len(rows.journals) + len(rows.entries)
