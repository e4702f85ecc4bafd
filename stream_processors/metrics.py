"""Prometheus metrics of the stream processors (bounded labels only: never ids)."""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

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
INPUT_EXPIRED = Counter(
    "settle_input_records_expired_total",
    "Input records deleted by retention before this stage's consumer group processed them "
    "(found at a rebalance: the committed offset was below the partition's first offset)",
    ["topic"],
)
MERCHANTS_KNOWN = Gauge("settle_merchants_known", "Merchants in this worker's directory")
DEDUP_ENTRIES = Gauge("settle_dedup_entries", "payment_ids remembered for idempotency")


WORKER_READY = Gauge(
    "settle_worker_ready",
    "1 while the worker processes records; 0 while it starts, recovers its tables from their "
    "changelogs or rebalances",
    ["stage"],
)


def init_stage(stage: str, ticks: bool = True) -> None:
    """Create a stage's counters that may stay at 0, so dashboards and rate() see them."""
    REGISTRY_RETRIES.labels(stage)
    WORKER_READY.labels(stage).set(0)
    if ticks:
        TICK_ERRORS.labels(stage)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics on addr:port (no-op for port 0); settings.runtime says which."""
    if port:
        start_http_server(port, addr=addr)

# reconcile stage
RECON_OUTCOMES = Counter(
    "settle_reconciliation_outcomes_total",
    "Reconciliation results published per channel and outcome",
    ["channel", "outcome"],
)
REFUND_REQUESTS = Counter(
    "settle_refund_requests_total",
    "Refund requests decided by the reconcile stage, by decision (accepted, rejected, duplicate)",
    ["decision"],
)
REFUND_REJECTIONS = Counter(
    "settle_refund_rejections_total", "Refund request rejections by reason code", ["reason"]
)
REFUND_OUTCOMES = Counter(
    "settle_refund_outcomes_total",
    "Refund results by channel and outcome (MATCHED = refunded)",
    ["channel", "outcome"],
)
REFUND_OVER_CAPTURE = Counter(
    "settle_refund_over_capture_attempts_total",
    "Channel answers that would refund more than the payment has left of its capture",
    ["channel"],
)
DISPUTE_RESULTS = Counter(
    "settle_dispute_results_total",
    "Dispute results published by the reconcile stage, by channel and event (OPENED, WON, "
    "LOST, STAGE_CHANGED, REJECTED)",
    ["channel", "event"],
)
DISPUTE_REJECTIONS = Counter(
    "settle_dispute_rejections_total", "Rejected dispute records by reason code", ["reason"]
)
CASE_EVENTS = Counter(
    "settle_case_events_total",
    "Exception case events published by the reconcile stage, by kind (OPENED, PROPOSED, "
    "REJECTED, RESOLVED, REFUSED) and the outcome that opened the case (UNKNOWN: an action "
    "naming no case the stage holds)",
    ["kind", "outcome"],
)
RECON_TIME_TO_MATCH = Histogram(
    "settle_reconciliation_time_to_match_seconds",
    "From routing (the channel was asked) to the MATCHED decision",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
RECON_UNMATCHED = Gauge(
    "settle_reconciliation_unmatched",
    "Undecided payments on this worker: routed awaiting a confirmation, or confirmations "
    "awaiting their routed payment",
    ["channel", "waiting_for"],
)
RECON_UNMATCHED_OLDEST_AGE = Gauge(
    "settle_reconciliation_unmatched_oldest_age_seconds",
    "Age of the oldest undecided payment on this worker (0 when none)",
    ["channel", "waiting_for"],
)
RECON_SLA = Gauge(
    "settle_reconciliation_sla_seconds",
    "How long a routed payment may wait for its channel's confirmation before it is decided "
    "MISSING_CONFIRMATION (the reconciler's setting, for alert thresholds)",
    ["channel"],
)
RECON_STATES = Gauge(
    "settle_reconciliation_states", "Reconciliation states of the partitions this worker owns"
)

# settle stage
BATCHES_CLOSED = Counter(
    "settle_batches_closed_total", "Settlement batches closed and published", ["currency"]
)
BATCH_AMOUNTS_CLOSED = Counter(
    "settle_batch_amounts_closed_minor_total",
    "Minor units in closed settlement batches per currency and kind (gross, fee, net of "
    "payments; refund_, payment_reversal_, refund_reversal_, dispute_hold_, "
    "dispute_release_ and dispute_fee_ gross, fee, net; payout; carried_out), all positive",
    ["currency", "kind"],
)
BATCH_ITEMS = Counter(
    "settle_batch_items_total", "Settlement items by what became of them (added, duplicate, ...)",
    ["outcome"],
)
OPEN_BATCHES = Gauge("settle_open_batches", "Open settlement batches on this worker")
TICK_ERRORS = Counter(
    "settle_tick_errors_total", "Keys a timer tick could not process (retried later)", ["stage"]
)
