"""`settle sink ledger|settlement`: run a PostgreSQL sink in the foreground."""

from __future__ import annotations

import logging
import sys

import click

from schemas.topics import (
    CASE_EVENTS,
    DISPUTE_RESULTS,
    PAYMENTS_DLQ,
    RECONCILIATION_RESULTS,
    REFUND_RESULTS,
    SETTLEMENTS_BATCHES,
)
from settle.cli.common import console, fail_on_settle_error, settings

SINKS = {
    "ledger": (RECONCILIATION_RESULTS, "settle-ledger-sink"),
    "settlement": (SETTLEMENTS_BATCHES, "settle-settlement-sink"),
}


@click.command("sink")
@click.argument("name", metavar="ledger|settlement", type=click.Choice(sorted(SINKS)))
@click.option("--group", default=None,
              help="Consumer group, also the key of its rows in sink_offsets "
                   "[default: settle-<name>-sink].")
@click.option("--batch-rows", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Most records per PostgreSQL transaction.")
@click.option("--batch-wait-ms", type=click.IntRange(min=0), default=200, show_default=True,
              help="Longest wait to fill a batch before writing what there is.")
@click.option("--idle-exit-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit after this many seconds without a record (tests, benchmarks).")
@click.option("--max-records", type=click.IntRange(min=1), default=None,
              help="Exit once this many records are committed.")
@click.option("--metrics-port", type=click.IntRange(min=0), default=None,
              help="Serve Prometheus /metrics on 127.0.0.1:PORT "
                   "[default: SETTLE_METRICS_PORT; 0 = off].")
@click.option("--topic", default=None, help="Read this topic instead of the contract's.")
@click.option("--dlq-topic", default=None,
              help="Where undecodable and refused records go [default: payments.dlq].")
@click.option("--topic-prefix", default=None,
              help="Prefix of every topic and of the group (isolated test runs) "
                   "[default: SETTLE_TOPIC_PREFIX].")
@click.option("--session-timeout-ms", type=click.IntRange(min=1000), default=None,
              help="How long the group waits for a silent member before reassigning its "
                   "partitions [default: SETTLE_SESSION_TIMEOUT_MS, else librdkafka's 45000].")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def sink(
    name: str,
    group: str | None,
    batch_rows: int,
    batch_wait_ms: int,
    idle_exit_s: float | None,
    max_records: int | None,
    metrics_port: int | None,
    topic: str | None,
    dlq_topic: str | None,
    topic_prefix: str | None,
    session_timeout_ms: int | None,
    loglevel: str,
) -> None:
    """Write a topic to PostgreSQL exactly once: rows and offsets in one transaction.

    \b
    ledger:     reconciliation.results -> payments, ledger_journals/ledger_entries (PAYMENT),
                reconciliation_exceptions
                refunds.results        -> refunds, ledger journals (REFUND), refund_exceptions
                disputes.results       -> disputes, ledger journals (DISPUTE_*),
                                          dispute_rejections
                cases.events           -> case_events, exception_cases
    settlement: settlements.batches    -> settlement_batches, settlement_batch_items,
                                          ledger journals (PAYOUT)

    The sink resumes from its offsets in sink_offsets (not Kafka's), so a replay writes
    nothing twice. Undecodable records and records that would break an invariant go to
    the dead-letter topic; PostgreSQL outages are retried with backoff. SIGTERM or Ctrl-C
    finishes the current batch, then prints a summary. Needs `settle db migrate` first.
    """
    from infra import gc_tuning
    from infra.registry import registry_client
    from sinks import metrics
    from sinks.ledger_sink import LedgerWriter
    from sinks.offsets_consumer import SWITCH_INTERVAL_S, OffsetsConsumer
    from sinks.options import SinkOptions
    from sinks.settlement_sink import SettlementWriter

    logging.basicConfig(level=loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry call
    # The read-ahead thread holds the GIL while it decodes; when PostgreSQL answers, the
    # main thread would wait up to the switch interval (5 ms) per statement to go on.
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    s = settings()
    gc_settings = s.runtime.gc
    if topic_prefix is None:
        topic_prefix = s.runtime.topic_prefix
    if session_timeout_ms is None:
        session_timeout_ms = s.runtime.session_timeout_ms
    default_topic, default_group = SINKS[name]
    options = SinkOptions(
        group_id=group or topic_prefix + default_group,
        topic=topic or topic_prefix + default_topic,
        dlq_topic=dlq_topic or topic_prefix + PAYMENTS_DLQ,
        batch_rows_max=batch_rows,
        batch_wait_ms=batch_wait_ms,
        idle_exit_s=idle_exit_s,
        max_records=max_records,
        session_timeout_ms=session_timeout_ms,
    )
    metrics.serve(s.metrics_port if metrics_port is None else metrics_port,
                  s.runtime.metrics_addr)
    writer = (LedgerWriter(s.sink.fees, refund_topic=topic_prefix + REFUND_RESULTS,
                           dispute_topic=topic_prefix + DISPUTE_RESULTS,
                           case_topic=topic_prefix + CASE_EVENTS)
              if name == "ledger" else SettlementWriter())
    pg = s.postgres.for_sinks()
    console.print(f"{writer.stage}: {options.topic} -> PostgreSQL {pg.describe()} "
                  f"as group {options.group_id}")
    console.print(f"{writer.stage}: {gc_tuning.apply(gc_settings)}")
    with registry_client(s) as registry:
        stats = OffsetsConsumer(s, registry, writer, options).run()
    console.print(f"{writer.stage}: {stats.summary()}")


if __name__ == "__main__":  # until the lead registers it: python -m settle.cli.sinks ledger
    with fail_on_settle_error():
        sink(prog_name="settle sink")
