"""`settle bench ...`: throughput of a stage on the real stack (never part of the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from settle.cli.common import console, settings


@click.group("bench")
def bench() -> None:
    """Benchmarks on the real stack; reports go to .bench/ (JSON and a table)."""


@bench.command("validate")
@click.option("--count", type=int, default=100_000, show_default=True,
              help="Payments preloaded per run.")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs; the median counts.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--bad-ratio", type=float, default=0.05, show_default=True,
              help="Share of injected bad input (rejections and dead letters).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path(".bench"),
              show_default=True)
def bench_validate_cmd(count: int, runs: int, seed: int, bad_ratio: float, out_dir: Path) -> None:
    """Drain COUNT preloaded payments through one validate+route worker, RUNS times.

    Records/s are timed from the worker's first output to its last expected one (start-up
    excluded); CPU is the worker's user+system time over the same span.
    """
    from settle.bench import bench_validate

    report = bench_validate(settings(), count, runs, seed, bad_ratio, out_dir,
                            progress=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title=f"validate+route, {count:,} payments per run")
    for col in ("run", "records/s", "steady s", "CPU s", "CPU s / 1,000", "peak RSS MiB",
                "start-up s"):
        table.add_column(col, justify="right")
    run_rows: list[dict[str, Any]] = report["runs"]  # type: ignore[assignment]
    for i, r in enumerate(run_rows, 1):
        table.add_row(str(i), f"{r['records_per_s']:,.0f}", str(r["steady_s"]), str(r["cpu_s"]),
                      str(r["cpu_s_per_1000"]), str(r["rss_mib_peak"]), str(r["startup_s"]))
    console.print(table)
    console.print(f"median {report['records_per_s_median']:,.0f} records/s, "
                  f"{report['cpu_s_per_1000_median']} CPU s per 1,000 payments; "
                  f"report in {out_dir / 'validate.json'}")


@bench.command("e2e")
@click.option("--count", type=int, default=10_000, show_default=True,
              help="Payments per run.")
@click.option("--rate", type=float, default=0.0, show_default=True,
              help="Publish rate per second (0: as fast as possible, a burst).")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs; the median counts.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path(".bench"),
              show_default=True)
def bench_e2e_cmd(count: int, rate: float, runs: int, seed: int, out_dir: Path) -> None:
    """Whole pipeline on isolated topics and database: payments/s and created_at -> ledger.

    Throughput is COUNT over the span from the first publish to the last ledger commit;
    latency is created_at to the ledger commit of payments matched on time (late matches
    wait for the channel by design and are left out).
    """
    import json
    import statistics

    from settle.e2e import run_e2e

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for run in range(runs):
        r = run_e2e(settings(), out_dir / f"e2e-run{run + 1}", count, seed + run,
                    rate_per_s=rate, say=lambda m: console.print(f"[dim]{m}[/]"))
        if not (r.books.ok and r.ingest.balanced):
            raise click.ClickException(f"run {run + 1}: invariants failed: {r.books.checks}")
        rows.append({"payments_per_s": r.payments_per_s, "p50_ms": r.latency_ms_p50,
                     "p99_ms": r.latency_ms_p99, "drain_s": r.drain_s,
                     "states": r.states, "expected": r.expected.to_dict()})
        console.print(f"run {run + 1}: {r.payments_per_s:,.0f} payments/s, p50 "
                      f"{r.latency_ms_p50} ms, p99 {r.latency_ms_p99} ms")
    report = {
        "count": count, "rate": rate, "runs": rows,
        "payments_per_s_median": statistics.median(r["payments_per_s"] for r in rows),
        "p50_ms_median": statistics.median(r["p50_ms"] for r in rows),
        "p99_ms_median": statistics.median(r["p99_ms"] for r in rows),
    }
    (out_dir / f"e2e-{count}-{int(rate)}.json").write_text(json.dumps(report, indent=2))
    console.print(f"median {report['payments_per_s_median']:,.0f} payments/s, p50 "
                  f"{report['p50_ms_median']} ms, p99 {report['p99_ms_median']} ms")
