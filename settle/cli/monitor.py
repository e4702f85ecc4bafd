"""`settle monitor`: consumer lag and the books' health as Prometheus metrics."""

from __future__ import annotations

import contextlib
import logging
import re
import signal

import click

from settle.cli.common import console, settings


@click.command("monitor")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.5), default=None,
              help="Seconds between reads of the broker's offsets "
                   "[default: SETTLE_MONITOR_INTERVAL_S, else 10].")
@click.option("--books-interval", "books_interval_s", type=click.FloatRange(min=1),
              default=None, help="Seconds between runs of the books' invariants "
                                 "[default: SETTLE_MONITOR_BOOKS_INTERVAL_S, else 30].")
@click.option("--settle-horizon", "horizon_s", type=click.FloatRange(min=0), default=None,
              help="A MATCHED payment (a succeeded refund) not in a batch this many seconds "
                   "after its decision breaks `matched_settled_in_time` "
                   "(`refunds_settled_in_time`); a refund journal without its payment's "
                   "journal this long breaks `refunds_within_capture` "
                   "[default: SETTLE_MONITOR_SETTLE_HORIZON_S, "
                   "else SETTLE_WINDOW_SECONDS + SETTLE_WINDOW_GRACE_SECONDS + 900].")
@click.option("--undecided-margin", "undecided_margin_s", type=click.FloatRange(min=0),
              default=None,
              help="A routed payment reconcile has consumed counts in "
                   "settle_routed_undecided_payments once it has had no terminal state for its "
                   "channel's SLA (SETTLE_RECON_SLA_MS, SETTLE_RECON_SLA_BY_CHANNEL) plus this "
                   "many seconds [default: SETTLE_MONITOR_UNDECIDED_MARGIN_S, else 120].")
@click.option("--undecided-lookback", "undecided_lookback_s", type=click.FloatRange(min=0),
              default=None,
              help="Seconds of the routed topics read back at start for that count "
                   "[default: SETTLE_MONITOR_UNDECIDED_LOOKBACK_S, else 86400].")
@click.option("--groups", default=None,
              help="Consumer groups to report lag for, a regular expression "
                   "[default: SETTLE_MONITOR_GROUPS, else <prefix>settle-.*].")
@click.option("--topic-prefix", default=None,
              help="Prefix of every topic (isolated test runs) [default: SETTLE_TOPIC_PREFIX].")
@click.option("--metrics-port", type=click.IntRange(min=1), default=None,
              help="Serve /metrics on 127.0.0.1:PORT [default: SETTLE_METRICS_PORT, else 19107].")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def monitor(interval_s: float | None, books_interval_s: float | None, horizon_s: float | None,
            undecided_margin_s: float | None, undecided_lookback_s: float | None,
            groups: str | None, topic_prefix: str | None, metrics_port: int | None,
            loglevel: str) -> None:
    """Publish consumer lag (from the broker's offsets) and the books' invariants as metrics.

    Reads the end offset of every contract topic and the committed offsets of every
    matching consumer group (faust workers and sinks), and checks the books in PostgreSQL
    (balanced journals and currencies, gross = net + fee, a journal for each MATCHED payment
    and succeeded refund and only for them, batch totals = items, batches = ledger, refunds
    in one batch, payable = carried balance + open items, payouts = payout_due, MATCHED
    payments and succeeded refunds batched in time, refunds within their capture), and
    counts the routed payments reconcile consumed that have no terminal state in PostgreSQL
    past their channel's SLA + margin. Serves settle_consumer_lag_records,
    settle_topic_end_offset, settle_books_balanced{invariant},
    settle_routed_undecided_payments{channel} and friends on /metrics; runs until Ctrl-C or
    SIGTERM.
    """
    import threading

    from prometheus_client import start_http_server

    from schemas import topics as t
    from settle import monitor as m
    from settle.undecided import RoutedSource

    logging.basicConfig(level=loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings()
    ms = s.monitor
    interval_s = ms.interval_s if interval_s is None else interval_s
    books_interval_s = ms.books_interval_s if books_interval_s is None else books_interval_s
    undecided_margin_s = (ms.undecided_margin_s if undecided_margin_s is None
                          else undecided_margin_s)
    undecided_lookback_s = (ms.undecided_lookback_s if undecided_lookback_s is None
                            else undecided_lookback_s)
    groups = ms.groups if groups is None else groups
    topic_prefix = s.runtime.topic_prefix if topic_prefix is None else topic_prefix
    if horizon_s is None:
        horizon_s = ms.settle_horizon_s
    if horizon_s is None:
        windows = s.processor.windows
        horizon_s = float(windows.size_seconds + windows.grace_seconds + 900)
    # The reconcile worker's SLAs, from the same settings it reads.
    recon = s.processor.recon
    options = m.MonitorOptions(
        topics=tuple(topic_prefix + name for name in t.TOPIC_NAMES),
        groups=groups or (re.escape(topic_prefix) + r"settle-.*"),
        interval_s=interval_s, books_interval_s=books_interval_s, horizon_s=horizon_s,
        routed=tuple(
            RoutedSource(topic_prefix + t.routed_topic(channel), channel,
                         recon.sla_ms_for(channel) / 1000 + undecided_margin_s)
            for channel in t.CHANNELS),
        reconcile_group=topic_prefix + "settle-reconcile",
        undecided_lookback_s=undecided_lookback_s,
    )
    port = metrics_port or s.metrics_port or 19107
    m.start(s, options)
    start_http_server(port, addr=s.runtime.metrics_addr)
    console.print(f"monitor: /metrics on {s.runtime.metrics_addr}:{port}; "
                  f"offsets every {interval_s:g}s "
                  f"(groups {options.groups}), books every {books_interval_s:g}s "
                  f"(settle horizon {horizon_s:g}s; routed payments undecided past their SLA "
                  f"+ {undecided_margin_s:g}s)")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    console.print("monitor: stopped")
