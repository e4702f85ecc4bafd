"""`settle chaos`: a seeded random fault schedule on the real stack, then both audits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click
from rich.table import Table

from settle.cli.common import console, settings, unwind_on_sigterm


@click.command("chaos")
@click.option("--seed", type=int, required=True, help="Seed of the fault schedule and the flow.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=30), default=300,
              show_default=True, help="Seconds of traffic (faults come within them).")
@click.option("--rate", "rate_per_s", type=click.FloatRange(min=1), default=100,
              show_default=True, help="Payment requests published per second.")
@click.option("--dry-run", is_flag=True, help="Print the schedule and exit.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where the JSON figures go [default: <SETTLE_RUN_DIR>/chaos].")
def chaos(seed: int, duration_s: float, rate_per_s: float, dry_run: bool,
          out_dir: Path | None) -> None:
    """Run the pipeline for DURATION seconds of traffic while injecting seeded random faults.

    \b
    Faults: SIGKILL of a worker (validate, reconcile, settle) or a sink (ledger,
    settlement) and its restart; a Kafka broker restart; PostgreSQL stopped for seconds;
    the schema registry stopped (at start-up and/or mid-run); one of two workers of a stage
    stopped and started again (rebalance); a storm of bad input mixed into the flow.
    The same seed gives the same schedule (printed first). The pipeline runs isolated
    (its own topics and database); the service faults act on the stack named by the
    SETTLE_* settings through deploy/stack.sh, so never point it at a shared stack.
    At the end the pipeline drains and both audits run: exit 0 only when both are green,
    with no duplicate, no loss and in = out.
    """
    from settle.chaos import STORM, random_plan, run_plan

    unwind_on_sigterm()

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    plan = random_plan(seed, duration_s, rate_per_s)
    schedule = Table(title=f"fault schedule, seed {seed}: {plan.count:,} payments over "
                           f"{duration_s:g}s at {rate_per_s:g}/s")
    schedule.add_column("at s", justify="right")
    schedule.add_column("fault")
    if plan.registry_down_at_start_s:
        schedule.add_row("0", f"registry down at start for {plan.registry_down_at_start_s:g}s")
    for fault in plan.faults:
        schedule.add_row(f"{fault.at_s:g}", fault.describe())
    console.print(schedule)
    if dry_run:
        return
    s = settings()
    with tempfile.TemporaryDirectory(prefix="settle-chaos-") as tmp:
        report = run_plan(s, Path(tmp), plan, say=lambda m: console.print(f"[dim]{m}[/]"),
                          report_dir=out_dir or s.run_dir / "chaos")
    table = Table(title=f"chaos seed {seed}: faults")
    for col in ("fault", "at s", "healed s", "progress while down", "recovery s"):
        table.add_column(col, justify="left" if col == "fault" else "right")
    for f in report.faults:
        recovery = (f"{f.recovery_s:.1f}" if f.recovery_s is not None
                    else "n/a" if f.kind == STORM else "[red]not recovered[/]")
        table.add_row(f.fault, f"{f.at_s:g}",
                      "-" if f.healed_at_s is None else f"{f.healed_at_s:g}",
                      "-" if f.progress_while_down is None else str(f.progress_while_down),
                      recovery)
    console.print(table)
    totals = Table(title="totals")
    totals.add_column("figure")
    totals.add_column("value", justify="right")
    ok_mark = {True: "[green]✓[/]", False: "[red]✗[/]"}
    for name, value in (
        ("payments in", f"{report.payments_in:,}"),
        ("routed (expected)", f"{report.routed_expected:,}"),
        ("payments settled (terminal state)", f"{report.payments_settled:,}"),
        ("MATCHED / batched", f"{report.matched:,} / {report.batched:,}"),
        ("duplicates", str(report.duplicates)),
        ("lost", str(report.lost)),
        ("in = out", ok_mark[report.in_equals_out]),
        ("audit ingest", ok_mark[report.ingest_balanced]),
        ("audit books", ok_mark[report.books_ok]),
        ("processes that crashed", str(len(report.unexpected_exits))),
        ("total time", f"{report.total_s:g}s"),
    ):
        totals.add_row(name, value)
    console.print(totals)
    for check in report.failed_checks:
        console.print(f"[red]✗ {check}[/]")
    for exit_ in report.unexpected_exits:
        console.print(f"[red]crashed: {exit_.splitlines()[0]}[/]")
    if not report.ok:
        raise SystemExit(1)
