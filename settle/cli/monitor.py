"""`settle monitor`: consumer lag and the books' health as Prometheus metrics."""

from __future__ import annotations

import contextlib
import logging
import re
import signal

import click

from settle.cli.common import console, settings


@click.command("monitor")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.5), default=10.0,
              envvar="SETTLE_MONITOR_INTERVAL_S", show_envvar=True, show_default=True,
              help="Seconds between reads of the broker's offsets.")
@click.option("--books-interval", "books_interval_s", type=click.FloatRange(min=1),
              default=30.0, envvar="SETTLE_MONITOR_BOOKS_INTERVAL_S", show_envvar=True,
              show_default=True, help="Seconds between runs of the books' invariants.")
@click.option("--settle-horizon", "horizon_s", type=click.FloatRange(min=0), default=None,
              envvar="SETTLE_MONITOR_SETTLE_HORIZON_S", show_envvar=True,
              help="A MATCHED payment not in a batch this many seconds after its decision "
                   "breaks `matched_settled_in_time` [default: SETTLE_WINDOW_SECONDS + "
                   "SETTLE_WINDOW_GRACE_SECONDS + 900].")
@click.option("--undecided-margin", "undecided_margin_s", type=click.FloatRange(min=0),
              default=120.0, envvar="SETTLE_MONITOR_UNDECIDED_MARGIN_S", show_envvar=True,
              show_default=True,
              help="A routed payment reconcile has consumed counts in "
                   "settle_routed_undecided_payments once it has had no terminal state for its "
                   "channel's SLA (SETTLE_RECON_SLA_MS, SETTLE_RECON_SLA_BY_CHANNEL) plus this "
                   "many seconds.")
@click.option("--undecided-lookback", "undecided_lookback_s", type=click.FloatRange(min=0),
              default=86_400.0, envvar="SETTLE_MONITOR_UNDECIDED_LOOKBACK_S", show_envvar=True,
              show_default=True,
              help="Seconds of the routed topics read back at start for that count.")
@click.option("--groups", default=None, envvar="SETTLE_MONITOR_GROUPS", show_envvar=True,
              help="Consumer groups to report lag for, a regular expression "
                   "[default: <prefix>settle-.*].")
@click.option("--topic-prefix", default="", envvar="SETTLE_TOPIC_PREFIX", show_envvar=True,
              help="Prefix of every topic (isolated test runs).")
@click.option("--metrics-port", type=click.IntRange(min=1), default=None,
              help="Serve /metrics on 127.0.0.1:PORT [default: SETTLE_METRICS_PORT, else 19107].")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def monitor(interval_s: float, books_interval_s: float, horizon_s: float | None,
            undecided_margin_s: float, undecided_lookback_s: float,
            groups: str | None, topic_prefix: str, metrics_port: int | None,
            loglevel: str) -> None:
    """Publish consumer lag (from the broker's offsets) and the books' invariants as metrics.

    Reads the end offset of every contract topic and the committed offsets of every
    matching consumer group (faust workers and sinks), and checks the books in PostgreSQL
    (balanced journals and currencies, gross = net + fee, a journal for each MATCHED payment
    and only for them, batch totals = items, batches = ledger, MATCHED payments batched in
    time), and counts the routed payments reconcile consumed that have no terminal state in
    PostgreSQL past their channel's SLA + margin. Serves settle_consumer_lag_records,
    settle_topic_end_offset, settle_books_balanced{invariant},
    settle_routed_undecided_payments{channel} and friends on /metrics; runs until Ctrl-C or
    SIGTERM.
    """
    import os
    import threading

    from prometheus_client import start_http_server

    from infra.config import metrics_addr
    from schemas import topics as t
    from settle import monitor as m
    from settle.undecided import RoutedSource
    from stream_processors import settings as ps_settings

    logging.basicConfig(level=loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings()
    if horizon_s is None:
        window = int(os.environ.get("SETTLE_WINDOW_SECONDS", "86400"))
        grace = int(os.environ.get("SETTLE_WINDOW_GRACE_SECONDS", "600"))
        horizon_s = float(window + grace + 900)
    # The reconcile worker's SLAs, from the same settings it reads.
    recon = ps_settings.load().recon
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
    start_http_server(port, addr=metrics_addr())
    console.print(f"monitor: /metrics on {metrics_addr()}:{port}; offsets every {interval_s:g}s "
                  f"(groups {options.groups}), books every {books_interval_s:g}s "
                  f"(settle horizon {horizon_s:g}s; routed payments undecided past their SLA "
                  f"+ {undecided_margin_s:g}s)")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    console.print("monitor: stopped")
