"""Prometheus metrics of the producers and simulators (bounded labels only: never ids)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

from infra.runtime import RuntimeSettings

disable_created_metrics()

PRODUCED = Counter(
    "settle_producer_records_total",
    "Records a producer enqueued (sent) and the broker acknowledged (delivered) or refused "
    "(failed), or the stall watch took back from a stuck client and sent again (resent), "
    "per topic",
    ["topic", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "settle_producer_delivery_seconds",
    "From enqueueing a record to its delivery report",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ORDERS = Counter(
    "settle_simulator_orders_total",
    "Order requests the order-flow simulator published, per kind (valid, duplicate, "
    "conflict, or the injected bad-input kind)",
    ["kind"],
)
CONFIRMATIONS = Counter(
    "settle_channel_confirmations_total",
    "Confirmations the channel-gateway simulator published, per channel and status",
    ["channel", "status"],
)
REFUND_CONFIRMATIONS = Counter(
    "settle_channel_refund_confirmations_total",
    "Refund confirmations the channel-gateway simulator published, per channel and status",
    ["channel", "status"],
)
DISPUTES = Counter(
    "settle_channel_disputes_total",
    "ChannelDispute records the channel-gateway simulator published, per channel, stage and "
    "status (a redelivered record counted again)",
    ["channel", "stage", "status"],
)
REFUNDS = Counter(
    "settle_simulator_refunds_total",
    "Refund requests the order-flow simulator published, per scenario",
    ["scenario"],
)


def serve(runtime: RuntimeSettings) -> int:
    """Serve /metrics on the runtime's address and port when set; returns the port (0: off)."""
    if runtime.metrics_port:
        start_http_server(runtime.metrics_port, addr=runtime.metrics_addr)
    return runtime.metrics_port
