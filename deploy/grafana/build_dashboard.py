"""Generate the provisioned Grafana dashboard of the settle pipeline, deterministically.

    python deploy/grafana/build_dashboard.py          # rewrite dashboards/settle-pipeline.json
    python deploy/grafana/build_dashboard.py --check  # exit 1 if the committed JSON is stale

The panels are written here, as data, so a review reads PromQL rather than Grafana JSON.
Only the metric families of the pipeline (plus `up` and `process_*`) are queried, never a
payment or merchant id, and the only variable is Grafana's built-in `$__rate_interval`, so
every expression is plain PromQL once that is replaced (see `dashboard_queries`).
Standard library only: it runs without the project's virtualenv.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARD_PATH = HERE / "dashboards" / "settle-pipeline.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    description: str = ""
    kind: str = "timeseries"  # timeseries | stat
    unit: str = "short"
    width: int = 12
    height: int = 8
    stacked: bool = False
    bars: bool = False
    # stat panels: value -> (text, color); thresholds as (value or None for base, color)
    mappings: tuple[tuple[int, str, str], ...] = ()
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)
    decimals: int | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def rate(selector: str) -> str:
    return f"rate({selector}[{RATE}])"


def sum_rate(selector: str, by: str = "") -> str:
    return f"sum by ({by}) ({rate(selector)})" if by else f"sum({rate(selector)})"


def quantile(q: str, histogram: str, by: str = "") -> str:
    labels = "le" + (f", {by}" if by else "")
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket')}))"


def or_zero(expr: str) -> str:
    """A counter that exists only once it counted (dead letters by error type): 0 until then."""
    return f"{expr} or on () vector(0)"


def t(expr: str, legend: str) -> Target:
    return Target(expr, legend)


UP_DOWN = ((0, "DOWN", "red"), (1, "UP", "green"))
BALANCED = ((0, "NOT BALANCED", "red"), (1, "BALANCED", "green"))
RED_WHEN_POSITIVE = ((None, "green"), (1e-9, "red"))

# Topic names may carry a prefix (isolated runs): match on the contract name's suffix.
INPUT_RATE = sum_rate('settle_topic_end_offset{topic=~"(.*[.])?payments[.]requested"}')
VALIDATE_RATE = sum_rate('settle_stage_records_total{stage="validate"}')
REJECTED_RATE = sum_rate('settle_stage_records_total{stage="validate",outcome="rejected"}')

OVERVIEW = Row("Overview", (
    Panel("Books balanced", (t("min(settle_books_balanced)", "books"),), kind="stat",
          width=3, height=4, mappings=BALANCED,
          thresholds=((None, "red"), (1, "green")),
          description="min over every invariant checked by `settle monitor`: 1 when all "
                      "hold. The Ledger and settlement row shows each invariant."),
    Panel("Since last books check",
          (t("time() - max(settle_books_check_timestamp_seconds)", "age"),),
          kind="stat", unit="s", width=3, height=4, decimals=0,
          thresholds=((None, "green"), (120, "orange"), (600, "red")),
          description="Seconds since `settle monitor` last completed a books check."),
    Panel("Targets up", (t('sum(up{job="settle"})', "up"),
                         t('count(up{job="settle"})', "scraped")),
          kind="stat", width=3, height=4,
          description="Pipeline processes answering /metrics, out of those Prometheus "
                      "scrapes."),
    Panel("Payments in", (t(INPUT_RATE, "in"),), kind="stat", unit="cps", width=3,
          height=4, description="Write rate of payments.requested (its end offsets)."),
    Panel("Ledger rows written",
          (t(sum_rate('settle_sink_records_total{sink="ledger",outcome="written"}'),
             "written"),),
          kind="stat", unit="cps", width=3, height=4),
    Panel("E2E latency p99", (t(quantile("0.99", "settle_e2e_latency_seconds"), "p99"),),
          kind="stat", unit="s", width=3, height=4,
          thresholds=((None, "green"), (30, "orange"), (120, "red")),
          description="Payment created_at to ledger commit."),
    Panel("Consumer lag", (t("sum(settle_consumer_lag_records)", "records"),),
          kind="stat", width=3, height=4,
          thresholds=((None, "green"), (10000, "orange"), (100000, "red")),
          description="Sum of end offset - committed offset over every group (the sinks' "
                      "offsets are the ones stored in PostgreSQL)."),
    Panel("Dead letters", (t(or_zero(sum_rate("settle_dead_letters_total")), "stages"),
                           t(or_zero(sum_rate("settle_sink_dead_letters_total")), "sinks")),
          kind="stat", unit="cps", width=3, height=4, thresholds=RED_WHEN_POSITIVE),
    Panel("Pipeline throughput", (
        t(INPUT_RATE, "payments.requested (in)"),
        t(VALIDATE_RATE, "validated"),
        t(sum_rate("settle_reconciliation_outcomes_total"), "reconciled"),
        t(sum_rate('settle_sink_records_total{sink="ledger",outcome="written"}'),
          "ledger rows"),
        t(sum_rate('settle_sink_records_total{sink="settlement",outcome="written"}'),
          "settlement rows"),
    ), unit="cps", width=24),
    Panel("Scrape targets",
          (t("max by (job, process) (up)", "{{job}} {{process}}"),), kind="stat",
          width=24, height=4, mappings=UP_DOWN, thresholds=((None, "red"), (1, "green"))),
    Panel("Process CPU", (t(rate('process_cpu_seconds_total{job="settle"}'),
                            "{{process}}"),),
          unit="percentunit",
          description="CPU seconds per second of each pipeline process (1 = one core)."),
    Panel("Process resident memory",
          (t('process_resident_memory_bytes{job="settle"}', "{{process}}"),), unit="bytes"),
    Panel("Event loop lag p99 by stage",
          (t(quantile("0.99", "settle_event_loop_lag_seconds", "stage"), "{{stage}} p99"),
           t(quantile("0.5", "settle_event_loop_lag_seconds", "stage"), "{{stage}} p50")),
          unit="s",
          description="How late each faust worker's event loop woke a probe due every "
                      "0.1 s. Every record in that worker waits out the lag; 0.5 s and more "
                      "counts towards SettleEventLoopStalls (runbook in the README)."),
    Panel("Event loop stalls over 0.5 s by stage",
          (t(f"sum by (stage) (increase(settle_event_loop_lag_seconds_count[{RATE}]))"
             f" - sum by (stage) "
             f"(increase(settle_event_loop_lag_seconds_bucket{{le=\"0.5\"}}[{RATE}]))",
             "{{stage}}"),), bars=True, width=6,
          description="Probes that woke 0.5 s late or more: the count the "
                      "SettleEventLoopStalls alert sums over 10 minutes. The worker's log "
                      "has one warning per stall."),
    Panel("GC time by stage",
          (t(sum_rate("settle_gc_pause_seconds_sum", "stage"), "{{stage}}"),),
          unit="percentunit", width=6,
          description="Seconds per second each faust worker spent in garbage collection "
                      "(all generations)."),
    Panel("Offset commits p99 by stage and path",
          (t(quantile("0.99", "settle_stage_commit_seconds", "stage, path"),
             "{{stage}} {{path}}"),), unit="s", width=24,
          description="A fetch_loop commit (every SETTLE_STAGE_COMMIT_EVERY records) holds "
                      "every record of that worker back until it ends, without stalling the "
                      "event loop; timer commits run beside the stream."),
))

INGEST = Row("Ingest", (
    Panel("Stage records by stage and outcome",
          (t(sum_rate("settle_stage_records_total", "stage, outcome"),
             "{{stage}} {{outcome}}"),), unit="cps"),
    Panel("Ingest accounting: in vs validated",
          (t(INPUT_RATE, "in (payments.requested end offsets)"),
           t(VALIDATE_RATE, "out (routed + rejected + dead-lettered + deduplicated)")),
          unit="cps",
          description="Both lines should meet: every record read ends in exactly one "
                      "validate outcome."),
    Panel("Rejections by reason",
          (t(sum_rate("settle_rejections_total", "reason"), "{{reason}}"),), unit="cps",
          stacked=True),
    Panel("Rejection ratio",
          (t(f"{REJECTED_RATE} / {VALIDATE_RATE}", "rejected"),), unit="percentunit"),
    Panel("Dead letters by stage and error type",
          (t(or_zero(sum_rate("settle_dead_letters_total", "stage, error_type")),
             "{{stage}} {{error_type}}"),), unit="cps", stacked=True),
    Panel("Registry retries by stage",
          (t(sum_rate("settle_registry_retries_total", "stage"), "{{stage}}"),), unit="cps"),
    Panel("Producer records by topic and outcome",
          (t(sum_rate("settle_producer_records_total", "topic, outcome"),
             "{{topic}} {{outcome}}"),), unit="cps"),
    Panel("Merchant directory and dedup table",
          (t("max(settle_merchants_known)", "merchants known"),
           t("sum(settle_dedup_entries)", "dedup entries")), width=24),
))

OUTCOMES = "settle_reconciliation_outcomes_total"
OUTCOMES_BY_CHANNEL = sum_rate(OUTCOMES, "channel")
DECLINED_BY_CHANNEL = sum_rate(OUTCOMES + '{outcome="DECLINED"}', "channel")
MATCHED_BY_CHANNEL = sum_rate(OUTCOMES + '{outcome="MATCHED"}', "channel")

CHANNELS = Row("Channels", (
    Panel("Routed by channel", (t(sum_rate("settle_routed_total", "channel"), "{{channel}}"),),
          unit="cps", stacked=True),
    Panel("Routed by rule", (t(sum_rate("settle_routed_total", "rule, channel"),
                               "{{rule}} -> {{channel}}"),), unit="cps"),
    Panel("Channel share of routed payments",
          (t(f"{sum_rate('settle_routed_total', 'channel')} / ignoring (channel) group_left "
             f"{sum_rate('settle_routed_total')}", "{{channel}}"),), unit="percentunit"),
    Panel("Confirmations by channel and status",
          (t(sum_rate("settle_channel_confirmations_total", "channel, status"),
             "{{channel}} {{status}}"),), unit="cps"),
    Panel("Decline ratio by channel",
          (t(f"{DECLINED_BY_CHANNEL} / {OUTCOMES_BY_CHANNEL}", "{{channel}}"),),
          unit="percentunit",
          description="DECLINED reconciliation outcomes over all outcomes, per channel."),
    Panel("Match ratio by channel",
          (t(f"{MATCHED_BY_CHANNEL} / {OUTCOMES_BY_CHANNEL}", "{{channel}}"),),
          unit="percentunit"),
))

RECONCILIATION = Row("Reconciliation", (
    Panel("Outcomes by channel", (t(sum_rate(OUTCOMES, "channel, outcome"),
                                    "{{channel}} {{outcome}}"),), unit="cps"),
    Panel("Exceptions by outcome",
          (t(sum_rate(OUTCOMES + '{outcome!="MATCHED"}', "outcome"), "{{outcome}}"),),
          unit="cps", stacked=True,
          description="Every outcome but MATCHED (each one is a reconciliation_exceptions "
                      "row)."),
    Panel("Time to match p50 / p99",
          (t(quantile("0.5", "settle_reconciliation_time_to_match_seconds"), "p50"),
           t(quantile("0.99", "settle_reconciliation_time_to_match_seconds"), "p99")),
          unit="s", width=8),
    Panel("Unmatched backlog by channel",
          (t("sum by (channel, waiting_for) (settle_reconciliation_unmatched)",
             "{{channel}} waiting for {{waiting_for}}"),), width=8),
    Panel("Oldest unmatched age by channel",
          (t("max by (channel, waiting_for) "
             "(settle_reconciliation_unmatched_oldest_age_seconds)",
             "{{channel}} waiting for {{waiting_for}}"),), unit="s", width=8,
          description="Compare with the channel SLA (SETTLE_RECON_SLA_MS): older payments "
                      "become MISSING_CONFIRMATION."),
    Panel("Reconciliation states held",
          (t("sum(settle_reconciliation_states)", "states"),)),
    Panel("Tick errors by stage",
          (t(sum_rate("settle_tick_errors_total", "stage"), "{{stage}}"),), unit="cps"),
))

LEDGER = Row("Ledger and settlement", (
    Panel("Books invariants", (t("min by (invariant) (settle_books_balanced)",
                                 "{{invariant}}"),),
          kind="stat", mappings=BALANCED, thresholds=((None, "red"), (1, "green")),
          height=6),
    Panel("Monitor errors by check",
          (t(sum_rate("settle_monitor_errors_total", "check"), "{{check}}"),), unit="cps",
          height=6),
    Panel("E2E latency p50 / p99 (created_at to ledger commit)",
          (t(quantile("0.5", "settle_e2e_latency_seconds"), "p50"),
           t(quantile("0.99", "settle_e2e_latency_seconds"), "p99")), unit="s"),
    Panel("E2E latency p99 by channel",
          (t(quantile("0.99", "settle_e2e_latency_seconds", "channel"), "{{channel}}"),),
          unit="s"),
    Panel("Ledger postings by side",
          (t(sum_rate("settle_ledger_postings_total", "side"), "{{side}}"),), unit="cps",
          description="DEBIT and CREDIT postings; counts, not amounts."),
    Panel("Batch items by outcome",
          (t(sum_rate("settle_batch_items_total", "outcome"), "{{outcome}}"),), unit="cps"),
    Panel("Batches closed by currency",
          (t(f"sum by (currency) (increase(settle_batches_closed_total[{RATE}]))",
             "{{currency}}"),), bars=True, width=8),
    Panel("Amounts closed by currency (minor units)",
          (t(f"sum by (currency, kind) "
             f"(increase(settle_batch_amounts_closed_minor_total[{RATE}]))",
             "{{currency}} {{kind}}"),), width=8,
          description="gross, fee and net of the closed batches, in the currency's minor "
                      "unit (JPY 0 decimals, CNY 2, KWD 3): compare within a currency only."),
    Panel("Open batches", (t("sum(settle_open_batches)", "open"),), width=8),
))

REFUND_REQUESTS = "settle_refund_requests_total"
REFUNDS = Row("Refunds", (
    Panel("Refund requests by decision",
          (t(sum_rate(REFUND_REQUESTS, "decision"), "{{decision}}"),), unit="cps",
          stacked=True,
          description="accepted (routed to the channel), rejected (refunds.rejected, by "
                      "reason on the right), duplicate (an identical re-send, dropped)."),
    Panel("Refund rejections by reason",
          (t(sum_rate("settle_refund_rejections_total", "reason"), "{{reason}}"),),
          unit="cps", stacked=True),
    Panel("Refund outcomes by channel",
          (t(sum_rate("settle_refund_outcomes_total", "channel, outcome"),
             "{{channel}} {{outcome}}"),), unit="cps",
          description="Refund results on refunds.results; MATCHED = refunded."),
    Panel("Refund requests per MATCHED payment (1h)",
          (t('sum(rate(settle_refund_requests_total{decision!="duplicate"}[1h])) / '
             'sum(rate(settle_reconciliation_outcomes_total{outcome="MATCHED"}[1h]))',
             "requests / MATCHED payments"),),
          unit="percentunit", width=6,
          description="Identical re-sends not counted. SettleRefundRateSpike raises a ticket "
                      "above 0.2 for 15 minutes."),
    Panel("Over-capture attempts (1h)",
          (t(or_zero("sum by (channel) "
                     "(increase(settle_refund_over_capture_attempts_total[1h]))"),
             "{{channel}}"),),
          kind="stat", thresholds=RED_WHEN_POSITIVE, width=6,
          description="Channel answers that would refund more than the payment has left of "
                      "its capture (SettleRefundOverCapture pages on any)."),
))

DISPUTES = Row("Disputes and cases", (
    Panel("Open disputes by channel and stage",
          (t("sum by (channel, stage) (settle_disputes_open)", "{{channel}} {{stage}}"),),
          stacked=True,
          description="Disputes OPEN in PostgreSQL (settle monitor): their amounts are held "
                      "from the merchants' payouts until won or lost."),
    Panel("Open disputes by time to respond-by",
          (t("sum by (due_in) (settle_disputes_open_by_deadline)", "{{due_in}}"),),
          stacked=True, bars=True,
          description="overdue: the deadline passed with the dispute still open; 0-2d is what "
                      "SettleDisputeDeadlineSoon raises a ticket for."),
    Panel("Soonest respond-by by channel",
          (t("min by (channel) (settle_disputes_respond_by_soonest_seconds)", "{{channel}}"),),
          kind="stat", unit="s", width=8, height=6,
          thresholds=((None, "red"), (0, "orange"), (172800, "green")),
          description="Time left until the earliest deadline among the channel's open "
                      "disputes (negative: passed)."),
    Panel("Funds on hold by currency (minor units)",
          (t("sum by (currency) (settle_disputes_held_minor)", "{{currency}}"),), width=8,
          height=6,
          description="Σ amount of the open disputes, in each currency's minor unit (JPY 0 "
                      "decimals, CNY 2, KWD 3): compare within a currency only."),
    Panel("Dispute invariants",
          (t('min by (invariant) (settle_books_balanced{invariant=~"dispute.*|cases.*|'
             'manual.*"})', "{{invariant}}"),),
          kind="stat", mappings=BALANCED, thresholds=((None, "red"), (1, "green")), width=8,
          height=6,
          description="Holds and receivables = the open disputes (SettleDisputeHoldMismatch), "
                      "each dispute event posted and batched once, no release before its "
                      "hold, manual matches posted, cases resolved once."),
    Panel("Dispute results by channel and event",
          (t(sum_rate("settle_dispute_results_total", "channel, event"),
             "{{channel}} {{event}}"),), unit="cps",
          description="Results on disputes.results: OPENED holds, WON releases, LOST takes the "
                      "amount and the fee, REJECTED opens a case (reasons on the right)."),
    Panel("Dispute rejections by reason",
          (t(sum_rate("settle_dispute_rejections_total", "reason"), "{{reason}}"),),
          unit="cps", stacked=True),
    Panel("Open cases by outcome and age",
          (t("sum by (outcome, age) (settle_cases_open)", "{{outcome}} {{age}}"),),
          stacked=True,
          description="Exception cases not resolved (open or awaiting approval), by the "
                      "outcome that opened them and days since."),
    Panel("Oldest open case by outcome",
          (t("max by (outcome) (settle_cases_open_oldest_age_seconds)", "{{outcome}}"),),
          unit="s", width=6,
          description="SettleCasesAging raises a ticket past 3 days."),
    Panel("Cases awaiting approval",
          (t("sum by (outcome) (settle_cases_awaiting_approval)", "{{outcome}}"),
           t("max(settle_cases_awaiting_approval_oldest_age_seconds) / 3600",
             "longest wait (h)")),
          width=6,
          description="Resolutions above the approval limit waiting for a second operator; "
                      "SettleCaseApprovalWaiting raises a ticket past 4 hours."),
))

SINKS = Row("Sinks", (
    Panel("Sink rows by sink and outcome",
          (t(sum_rate("settle_sink_records_total", "sink, outcome"),
             "{{sink}} {{outcome}}"),), unit="cps"),
    Panel("Commit duration p50 / p99 by sink",
          (t(quantile("0.5", "settle_sink_commit_duration_seconds", "sink"), "{{sink}} p50"),
           t(quantile("0.99", "settle_sink_commit_duration_seconds", "sink"),
             "{{sink}} p99")), unit="s"),
    Panel("Commits by sink",
          (t(sum_rate("settle_sink_commit_duration_seconds_count", "sink"), "{{sink}}"),),
          unit="cps", width=8),
    Panel("Rows per commit by sink (mean)",
          (t(f"{sum_rate('settle_sink_batch_rows_sum', 'sink')} / "
             f"{sum_rate('settle_sink_batch_rows_count', 'sink')}", "{{sink}}"),), width=8),
    Panel("Sink retries by sink and cause",
          (t(sum_rate("settle_sink_retries_total", "sink, cause"), "{{sink}} {{cause}}"),),
          unit="cps", width=8),
    Panel("Sink dead letters by sink and error type",
          (t(or_zero(sum_rate("settle_sink_dead_letters_total", "sink, error_type")),
             "{{sink}} {{error_type}}"),), unit="cps"),
))

LAG = Row("Lag", (
    Panel("Consumer lag by group and topic",
          (t("sum by (group, topic) (settle_consumer_lag_records)", "{{group}} {{topic}}"),)),
    Panel("Largest partition lag by group",
          (t("max by (group) (settle_consumer_lag_records)", "{{group}}"),)),
    Panel("Lag trend by group",
          (t(f"sum by (group) (deriv(settle_consumer_lag_records[{RATE}]))", "{{group}}"),),
          unit="cps", description="Records per second; above 0 the group is falling behind."),
    Panel("Topic input rate",
          (t(sum_rate("settle_topic_end_offset", "topic"), "{{topic}}"),), unit="cps",
          description="rate() of each topic's end offset (high watermark): records written "
                      "per second."),
))

# The read-only HTTP API (`settle api serve`, process "api"). It runs in `make demo`, not in
# every deployment of the pipeline: each query falls back to 0 while no API is scraped.
API_REQUESTS = "settle_api_requests_total"
API_DURATION = "settle_api_request_duration_seconds"
API_5XX_RATE = sum_rate(API_REQUESTS + '{status=~"5.."}')

API = Row("API", (
    Panel("API up", (t(or_zero('max(up{job="settle", process="api"})'), "api"),),
          kind="stat", width=4, height=8, mappings=UP_DOWN,
          thresholds=((None, "red"), (1, "green")),
          description="`settle api serve` answering /metrics (0 also when no API is "
                      "scraped)."),
    Panel("API requests by route and status",
          (t(or_zero(sum_rate(API_REQUESTS, "route, status")), "{{route}} {{status}}"),),
          unit="cps", width=10, stacked=True,
          description="route is the route's path template, status the HTTP status: 400 "
                      "bad input, 401 missing/unknown/revoked key, 404 unknown or another "
                      "merchant's object."),
    Panel("API 5xx share",
          (t(or_zero(f"({or_zero(API_5XX_RATE)}) / {sum_rate(API_REQUESTS)}"), "5xx"),),
          unit="percentunit", width=10,
          description="Requests answered with a server error, of all requests; "
                      "SettleApiErrors pages above 5% for 5 minutes (runbook: "
                      "docs/operations.md)."),
    Panel("API latency p99 / p50 by route",
          (t(or_zero(quantile("0.99", API_DURATION, "route")), "{{route}} p99"),
           t(or_zero(quantile("0.5", API_DURATION, "route")), "{{route}} p50")),
          unit="s", width=24,
          description="SettleApiSlow raises a ticket when a route's p99 stays above 1 s "
                      "for 10 minutes (runbook: docs/operations.md)."),
))

ROWS = (OVERVIEW, INGEST, CHANNELS, RECONCILIATION, REFUNDS, DISPUTES, LEDGER, SINKS, LAG,
        API)


def _targets(panel: Panel) -> list[dict[str, Any]]:
    return [
        {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": target.expr,
            "instant": False,
            "legendFormat": target.legend,
            "range": True,
            "refId": chr(ord("A") + i),
        }
        for i, target in enumerate(panel.targets)
    ]


def _thresholds(panel: Panel) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in panel.thresholds],
    }


def _panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": _thresholds(panel)}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.mappings:
        defaults["mappings"] = [{
            "type": "value",
            "options": {str(value): {"text": text, "color": color, "index": i}
                        for i, (value, text, color) in enumerate(panel.mappings)},
        }]
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "bars" if panel.bars else "line",
            "fillOpacity": 60 if panel.bars else (25 if panel.stacked else 10),
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stacked else "none"},
        }
        options: dict[str, Any] = {
            "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table",
                       "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name" if len(panel.targets) > 1 or "{{" in
                        panel.targets[0].legend else "value",
        }
    out: dict[str, Any] = {
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": grid,
        "id": panel_id,
        "options": options,
        "targets": _targets(panel),
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.description:
        out["description"] = panel.description
    return out


def build(rows: tuple[Row, ...] = ROWS) -> dict[str, Any]:
    """The dashboard as a dict: expanded rows, each followed by its panels, laid out
    left to right and wrapped at Grafana's 24 columns."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows:
        panels.append({"collapsed": False, "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                       "id": next_id, "panels": [], "title": row.title, "type": "row"})
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            grid = {"h": panel.height, "w": panel.width, "x": x, "y": y}
            panels.append(_panel_json(panel, next_id, grid))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "description": "Settle pipeline: ingest, routing, reconciliation, ledger, settlement, "
                       "sinks and lag. Generated by deploy/grafana/build_dashboard.py.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["settle"],
        "templating": {"list": []},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": "Settle pipeline",
        "uid": "settle-pipeline",
        "version": 1,
        "weekStart": "",
    }


def render(rows: tuple[Row, ...] = ROWS) -> str:
    """The dashboard JSON text, byte for byte what is committed."""
    return json.dumps(build(rows), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def _walk(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_walk(panel.get("panels", [])))  # collapsed rows nest their panels
    return out


def dashboard_queries(path: Path | str = DASHBOARD_PATH,
                      rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, expr) for every target of the dashboard JSON at ``path``, with
    ``$__rate_interval`` replaced, ready to send to Prometheus."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"].replace(RATE, rate_interval))
        for panel in _walk(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare with the committed file; exit 1 if it differs")
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
