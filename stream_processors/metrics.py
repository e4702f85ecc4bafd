"""Prometheus metrics of the stream processors (bounded labels only: never ids)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, disable_created_metrics, start_http_server

# The *_created series double the scrape size and no dashboard uses them.
disable_created_metrics()

RECORDS = Counter(
    "settle_stage_records_total", "Records handled per stage and outcome", ["stage", "outcome"]
)
REJECTIONS = Counter(
    "settle_rejections_total", "Rejection reasons (a record may carry several)", ["reason"]
)
DEAD_LETTERS = Counter(
    "settle_dead_letters_total", "Records dead-lettered per stage and error type",
    ["stage", "error_type"],
)
ROUTED = Counter("settle_routed_total", "Payments routed per channel and rule", ["channel", "rule"])
REGISTRY_RETRIES = Counter(
    "settle_registry_retries_total", "Records retried because the registry was unavailable",
    ["stage"],
)
MERCHANTS_KNOWN = Gauge("settle_merchants_known", "Merchants in this worker's directory")
DEDUP_ENTRIES = Gauge("settle_dedup_entries", "payment_ids remembered for idempotency")


def serve(port: int) -> None:
    """Serve /metrics on 127.0.0.1:port (no-op for port 0)."""
    if port:
        start_http_server(port, addr="127.0.0.1")
