"""`settle report batches|transactions|summary`: the API's list exports as CSV or Parquet."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from settle.cli.common import err_console, settings


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
                     show_default=True, help="CSV (PostgreSQL's COPY) or Parquet (pyarrow)."),
        click.option("--merchant", default=None, help="One merchant's rows (default: all)."),
        click.option("--currency", default=None, help="One currency's rows (ISO 4217 code)."),
        click.option("--from", "since", default=None,
                     help="From this date (its midnight in --tz) or ISO 8601 date-time "
                          "(naive: UTC), inclusive."),
        click.option("--to", "until", default=None,
                     help="Up to this date or date-time, exclusive."),
        click.option("--tz", default=None,
                     help="IANA zone of the dates [default: SETTLE_API_REPORT_TZ, the "
                          "settlement cut-off zone]."),
        click.option("--out", "out", default=None,
                     help="Output file [default: ./<report>.<format>]; '-' writes CSV to "
                          "standard output."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group("report")
def report() -> None:
    """Export what the API's lists show, from the command line, as CSV or Parquet.

    Each report runs the same query as the API's `Accept: text/csv` export of its list, so
    the columns and rows are the same: money as integer minor units (`<name>_minor`) beside
    a `currency` column. Reads with the SETTLE_PG_* login in one read-only snapshot; a
    progress bar shows on a terminal.
    """


@report.command("batches")
@_common
def batches_cmd(**opts: Any) -> None:
    """Settlement batches (GET /v1/settlement_batches), newest window first; --from/--to
    bound the window's start."""
    _run("batches", opts)


@report.command("transactions")
@_common
@click.option("--kind", default=None, help="One journal kind (PAYMENT, REFUND, PAYOUT, ...).")
@click.option("--account", type=click.Choice(["payable", "payout_due", "dispute_hold"]),
              default=None, help="One account type.")
def transactions_cmd(**opts: Any) -> None:
    """Balance transactions (GET /v1/balance_transactions): every posting on merchants'
    accounts, newest first; --from/--to bound the posting time."""
    _run("transactions", opts)


@report.command("summary")
@_common
@click.option("--group-by", "group_by", default="day", show_default=True,
              help="Comma list of day, merchant, channel, outcome, currency (currency is "
                   "always added).")
def summary_cmd(**opts: Any) -> None:
    """Payment counts and amounts per group (GET /v1/reports/summary); days in --tz;
    --from/--to bound the payment's creation."""
    _run("summary", opts)


def _run(name: str, opts: dict[str, Any]) -> None:
    from settle.reports import (
        ReportError,
        ReportRequest,
        parse_bound,
        parse_group_by,
        parse_zone,
        run_report,
    )
    from sinks.db import connect

    s = settings()
    fmt: str = opts["fmt"]
    try:
        tz = parse_zone(opts["tz"] or s.api.report_tz)
        filters = {k: opts[k] for k in ("kind", "account") if opts.get(k) is not None}
        req = ReportRequest(
            report=name, merchant=opts["merchant"], currency=opts["currency"],
            since=parse_bound("--from", opts["since"], tz),
            until=parse_bound("--to", opts["until"], tz), tz=tz,
            group_by=parse_group_by(opts.get("group_by")), filters=filters)
    except ReportError as exc:
        raise click.BadParameter(str(exc)) from exc
    if req.since is not None and req.until is not None and req.since >= req.until:
        raise click.BadParameter("--to must be after --from")
    out_arg: str = opts["out"] or f"{name}.{fmt}"
    if out_arg == "-" and fmt != "csv":
        raise click.BadParameter("Parquet goes to a file: give --out PATH")
    out: Path | Any = sys.stdout.buffer if out_arg == "-" else Path(out_arg)
    show = err_console.is_terminal
    with connect(s.postgres) as conn:
        if not show:
            result = run_report(conn, req, fmt, out)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                          transient=True) as bar:
                task = bar.add_task(f"{name} report", total=None)
                result = run_report(
                    conn, req, fmt, out,
                    progress=lambda n: bar.update(task, completed=n),
                    on_total=lambda total: bar.update(task, total=total))
    where = "standard output" if result.path is None else str(result.path)
    err_console.print(f"{name}: {result.rows:,} rows, {len(result.columns)} columns "
                      f"({fmt}) to {where}")
