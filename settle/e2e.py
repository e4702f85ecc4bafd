"""An isolated end-to-end run: prefixed topics, every process started, books audited, timed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from producers.merchants import load_merchants, publish_merchants, sample_merchants_path
from producers.order_flow import publish_order
from producers.orders import Accounting, OrderMix, expected_accounting, generate_orders
from producers.producer import AvroProducer
from schemas.codec import AvroDeserializer
from settle import processes
from settle.audit_books import BooksAudit, audit_books, unbatched_matched
from settle.audit_ingest import IngestAudit, audit_ingest
from settle.config import Settings
from settle.processes import ProcessSpec
from settle.smoke import registry_client
from settle.topics import create_topics, delete_topics
from sinks.db import connect
from sinks.migrate import migrate
from stream_processors.topics import TopicNames

# A settlement day shrunk to seconds: windows of 5 s closing 3 s later, a 6 s channel SLA
# and late answers at 10 s, so every fault shows up within a test's time.
FAST_TIMINGS = {
    "SETTLE_WINDOW_SECONDS": "5",
    "SETTLE_WINDOW_GRACE_SECONDS": "3",
    "SETTLE_RECON_SLA_MS": "6000",
    "SETTLE_ORPHAN_GRACE_MS": "6000",
}


@dataclass(slots=True)
class E2EResult:
    count: int
    expected: Accounting
    ingest: IngestAudit
    books: BooksAudit
    publish_s: float
    drain_s: float
    payments_per_s: float
    latency_ms_p50: int
    latency_ms_p99: int
    states: dict[str, int] = field(default_factory=dict)
    exceptions: dict[str, int] = field(default_factory=dict)
    late_matched: int = 0


def specs(seed: int, late_ms: int = 10000) -> list[ProcessSpec]:
    return [
        ProcessSpec("validate", ("worker", "validate", "--loglevel", "warning"), 0, ""),
        ProcessSpec("reconcile", ("worker", "reconcile", "--loglevel", "warning"), 0, ""),
        ProcessSpec("settle", ("worker", "settle", "--loglevel", "warning"), 0, ""),
        ProcessSpec("ledger-sink", ("sink", "ledger", "--loglevel", "warning"), 0, ""),
        ProcessSpec("settlement-sink", ("sink", "settlement", "--loglevel", "warning"), 0, ""),
        ProcessSpec("channels", ("simulate", "channels", "--seed", str(seed),
                                 "--latency-ms", "100", "--decline-rate", "0.05",
                                 "--fault-rate", "0.04", "--late-ms", str(late_ms)), 0, ""),
    ]


def _one(conn: Any, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _latency(conn: Any) -> tuple[int, int, float]:
    """p50/p99 of created_at -> ledger commit (on-time matches) and the last commit epoch."""
    row = conn.execute("""
        SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms),
               percentile_disc(0.99) WITHIN GROUP (ORDER BY ms),
               EXTRACT(EPOCH FROM MAX(j.posted_at))
          FROM ledger_journals j JOIN payments p USING (payment_id),
               LATERAL (SELECT (EXTRACT(EPOCH FROM j.posted_at - p.created_at) * 1000)::bigint
                        AS ms) l
         WHERE NOT p.late""").fetchone()
    return int(row[0] or 0), int(row[1] or 0), float(row[2] or 0)


def run_e2e(settings: Settings, run_dir: Path, count: int, seed: int, bad_ratio: float = 0.02,
            rate_per_s: float = 0.0, timeout_s: float = 600.0,
            say: Callable[[str], None] = lambda _m: None) -> E2EResult:
    """Publish `count` payments through a fresh, prefixed copy of the pipeline; audit it."""
    original = settings
    prefix = f"e2e{uuid.uuid4().hex[:6]}."
    topics = TopicNames(prefix)
    create_topics(settings.kafka, name_prefix=prefix)
    # A database of its own: the books audit must see this run's rows and nothing else.
    dbname = f"{settings.postgres.dbname}_{prefix.rstrip('.')}"
    with connect(settings.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    settings = replace(settings, postgres=replace(settings.postgres, dbname=dbname))
    with connect(settings.postgres) as conn:
        migrate(conn)
    env = {**FAST_TIMINGS, "SETTLE_TOPIC_PREFIX": prefix, "SETTLE_RUN_DIR": str(run_dir),
           "SETTLE_PG_DB": dbname}
    procs = specs(seed)
    base_pg = original.postgres
    registry = registry_client(settings)
    try:
        entries = load_merchants(sample_merchants_path())
        with AvroProducer(settings.kafka, registry, client_id="e2e") as producer:
            publish_merchants(producer, entries, time.time_ns() // 1_000_000,
                              topic=topics.merchants)
        for spec in procs:
            processes.start(run_dir, spec, env)
        mix = OrderMix(bad_ratio=bad_ratio, duplicate_ratio=0.01, conflict_ratio=0.002)
        orders = list(generate_orders(seed, count, entries, mix))
        expected = expected_accounting(orders)
        say(f"publishing {count:,} payment requests to {topics.requested}")
        started = time.time()
        with AvroProducer(settings.kafka, registry, client_id="e2e") as producer:
            for n, order in enumerate(orders):
                if rate_per_s > 0:
                    delay = started + n / rate_per_s - time.time()
                    if delay > 0:
                        time.sleep(delay)
                publish_order(producer, topics.requested, order)
        publish_s = time.time() - started
        say(f"published in {publish_s:.1f}s; waiting for the books to balance")
        decoder = AvroDeserializer(registry)
        deadline = time.monotonic() + timeout_s
        with connect(settings.postgres, autocommit=True) as conn:
            while True:
                for spec in procs:
                    if processes.running_pid(run_dir, spec.name) is None:
                        log = (run_dir / "logs" / f"{spec.name}.log").read_text(errors="replace")
                        raise RuntimeError(f"{spec.name} died; log ends:\n{log[-3000:]}")
                decided = _one(conn, "SELECT COUNT(*) FROM payments")
                say(f"{decided:,} payments decided")
                out_of_time = time.monotonic() >= deadline
                # The full audit re-reads whole topics: only once the cheap counts say done.
                if out_of_time or (decided == expected["routed"]
                                   and unbatched_matched(conn) == 0):
                    books = audit_books(settings, conn, decoder, results_topic=topics.results,
                                        batches_topic=topics.batches,
                                        routed_topics=topics.all_routed)
                    if books.ok or out_of_time:
                        break
                time.sleep(3.0)
            drain_s = time.time() - started
            p50, p99, last_commit = _latency(conn)
            states: dict[str, int] = dict(
                conn.execute("SELECT state, COUNT(*) FROM payments GROUP BY 1").fetchall())
            exceptions: dict[str, int] = dict(conn.execute(
                "SELECT outcome, COUNT(*) FROM reconciliation_exceptions GROUP BY 1").fetchall())
            late = _one(conn, "SELECT COUNT(*) FROM payments WHERE late")
        ingest = audit_ingest(settings.kafka, topics.requested, topics.all_routed,
                              topics.rejected, topics.dlq)
        span = max(last_commit - started, 1e-3)
        return E2EResult(
            count=count, expected=expected, ingest=ingest, books=books,
            publish_s=round(publish_s, 2), drain_s=round(drain_s, 2),
            payments_per_s=round(count / span, 1), latency_ms_p50=p50, latency_ms_p99=p99,
            states={k: int(v) for k, v in states.items()},
            exceptions={k: int(v) for k, v in exceptions.items()}, late_matched=int(late),
        )
    finally:
        processes.stop_all(run_dir, [spec.name for spec in procs])
        delete_topics(settings.kafka, topics.all)
        with connect(base_pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
