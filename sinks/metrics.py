"""Prometheus metrics of the PostgreSQL sinks (bounded labels only: never ids)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

disable_created_metrics()

RECORDS = Counter(
    "settle_sink_records_total",
    "Records consumed by a sink, by outcome (written or dead_lettered)",
    ["sink", "outcome"],
)
BATCH_ROWS = Histogram(
    "settle_sink_batch_rows",
    "Rows written to PostgreSQL per committed batch",
    ["sink"],
    buckets=(0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000),
)
COMMIT_SECONDS = Histogram(
    "settle_sink_commit_duration_seconds",
    "Time to write a batch and commit it with its offsets, retries excluded",
    ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEAD_LETTERS = Counter(
    "settle_sink_dead_letters_total",
    "Records a sink dead-lettered, by error type",
    ["sink", "error_type"],
)
RETRIES = Counter(
    "settle_sink_retries_total",
    "Batches rolled back and retried, by cause (postgres, serialization, kafka, registry)",
    ["sink", "cause"],
)
E2E_LATENCY = Histogram(
    "settle_e2e_latency_seconds",
    "From a payment's created_at (set by the order system) to the commit of its ledger "
    "journal, per channel",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600),
)
LEDGER_POSTINGS = Counter(
    "settle_ledger_postings_total", "Ledger postings written, by side", ["side"]
)
for _side in ("DEBIT", "CREDIT"):  # both series exist from the start, so rate() works at once
    LEDGER_POSTINGS.labels(_side)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics on addr:port (no-op for port 0); settings.runtime says which."""
    if port:
        start_http_server(port, addr=addr)
