"""`settle bench ...`: throughput of a stage on the real stack (never part of the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from settle.cli.common import console, settings, unwind_on_sigterm


@click.group("bench")
def bench() -> None:
    """Benchmarks on the real stack; reports go to .bench/ (JSON and a table)."""
    unwind_on_sigterm()


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
    excluded); CPU is the worker's user+system time over the same span, and so are its
    garbage collector's pauses (read from its /metrics).
    """
    from settle.bench import bench_validate

    report = bench_validate(settings(), count, runs, seed, bad_ratio, out_dir,
                            progress=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title=f"validate+route, {count:,} payments per run")
    for col in ("run", "records/s", "steady s", "CPU s", "CPU s / 1,000", "GC pause s",
                "peak RSS MiB", "start-up s"):
        table.add_column(col, justify="right")
    run_rows: list[dict[str, Any]] = report["runs"]  # type: ignore[assignment]
    for i, r in enumerate(run_rows, 1):
        gc = "-" if r.get("gc_pause_s") is None else str(r["gc_pause_s"])
        table.add_row(str(i), f"{r['records_per_s']:,.0f}", str(r["steady_s"]), str(r["cpu_s"]),
                      str(r["cpu_s_per_1000"]), gc, str(r["rss_mib_peak"]),
                      str(r["startup_s"]))
    console.print(table)
    console.print(f"median {report['records_per_s_median']:,.0f} records/s, "
                  f"{report['cpu_s_per_1000_median']} CPU s per 1,000 payments; "
                  f"report in {out_dir / 'validate.json'}")


@bench.command("placement")
@click.option("--count", type=int, default=20_000, show_default=True,
              help="Payments per run.")
@click.option("--runs", type=int, default=2, show_default=True,
              help="Pairs of runs (murmur2, then CRC32, alternated); medians count.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path(".bench"),
              show_default=True)
def bench_placement_cmd(count: int, runs: int, seed: int, out_dir: Path) -> None:
    """What a third party's partitioner costs validate and reconcile.

    The same requests and confirmations published with murmur2 (the pipeline's own
    partitioner) and with librdkafka's default CRC32, whose misplaced records each stage
    moves to their payment_id's partition; records/s and CPU per 1,000 payments side by
    side, and the extra CPU per moved record.
    """
    from settle.benchmarks.placement import run_placement

    report, path = run_placement(settings(), count, runs, seed, out_dir,
                                 lambda m: console.print(f"[dim]{m}[/]"))
    click.echo(report.markdown())
    console.print(f"report: {path}")


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


def _suite_options(f: Any) -> Any:
    """The options every suite command shares."""
    opts = [
        click.option("--count", type=click.IntRange(min=100), default=None,
                     help="Payment requests preloaded per run [default 20,000; --quick 5,000]."),
        click.option("--runs", type=click.IntRange(min=1), default=None,
                     help="Runs per figure; the report gives the median [default 3; --quick 1]."),
        click.option("--quick", is_flag=True,
                     help="Short runs for development (rough figures, same code paths)."),
        click.option("--seed", type=int, default=1, show_default=True),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path(".bench"),
                     show_default=True, help="Where reports, logs and the Quix venv go."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _latency_options(f: Any) -> Any:
    f = click.option("--reference-rate", type=click.IntRange(min=0), default=None,
                     help="Also measure p50/p99 at this rate even when the search stopped "
                          "below it [default 1,000]; 0 skips it.")(f)
    f = click.option("--refine", type=click.IntRange(min=0), default=None,
                     help="Bisection steps between the highest rate that held p99 ≤ 1 s and "
                          "the first that did not (multiples of 25) [default 1; --quick 0].")(f)
    f = click.option("--rates", default=None,
                     help="Comma-separated rates to try, ascending [default 125, 250, 500, 1000, "
                          "2000, ... 16000; --quick 500,1000,2000].")(f)
    return click.option("--duration", type=click.FloatRange(min=1), default=None,
                        help="Seconds of load per latency run [default 20; --quick 8].")(f)


def _run_suite(name: str, parts: tuple[str, ...], count: int | None, runs: int | None,
               quick: bool, seed: int, out_dir: Path, duration: float | None = None,
               rates: str | None = None, refine: int | None = None,
               reference_rate: int | None = None) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from settle.benchmarks.suite import Options, machine, run_parts, write_report

    given: dict[str, Any] = {"seed": seed, "out_dir": out_dir,
                             "quix_venv": out_dir / "quix-venv"}
    if count is not None:
        given["count"] = count
    if runs is not None:
        given["runs"] = runs
    if duration is not None:
        given["duration_s"] = duration
    if refine is not None:
        given["refine"] = refine
    if reference_rate is not None:
        given["reference_rate"] = reference_rate
    if rates:
        try:
            given["rates"] = tuple(int(r) for r in rates.split(",") if r.strip())
        except ValueError as exc:
            raise click.BadParameter(f"--rates wants integers, got {rates!r}") from exc
    opts = Options.quick(**given) if quick else Options(**given)
    info = machine()
    s = settings()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"bench {name}", total=None)

        def say(message: str) -> None:
            progress.update(task, description=message)
            progress.console.print(f"[dim]{message}[/]")

        raw = run_parts(s, parts, opts, say)
    json_path, md_path, table = write_report(name, raw, opts, info)
    click.echo(table)  # markdown: unwrapped, whatever the terminal's width
    console.print(f"reports: {json_path}, {md_path}")


@bench.command("limits")
@_suite_options
def bench_limits_cmd(count: int | None, runs: int | None, quick: bool, seed: int,
                     out_dir: Path) -> None:
    """The passthrough limits on preloaded payment requests (same broker, same records).

    A: a bare confluent-kafka consumer -> producer copying raw bytes (keys, headers and the
    producer settings of every stage kept); B: our AvroDeserializer -> AvroSerializer in
    between. Records/s from the first record consumed until the output's end offsets say
    every record is in.
    """
    _run_suite("limits", ("limits",), count, runs, quick, seed, out_dir)


@bench.command("stages")
@_suite_options
def bench_stages_cmd(count: int | None, runs: int | None, quick: bool, seed: int,
                     out_dir: Path) -> None:
    """Each stage's real process alone on a preloaded input, against limit A.

    validate+route, reconcile, settle, the ledger sink (with the raw COPY beside it) and the
    settlement sink; records/s from first to last output, CPU seconds per 1,000 payments
    (the process tree's, from /proc) and peak RSS (VmHWM).
    """
    _run_suite("stages", ("limits", "stages", "copy"), count, runs, quick, seed, out_dir)


@bench.command("copy")
@_suite_options
def bench_copy_cmd(count: int | None, runs: int | None, quick: bool, seed: int,
                   out_dir: Path) -> None:
    """Ledger sink rows/s beside a raw binary COPY of the same rows into the same tables.

    The COPY goes into a fresh, migrated database of its own (constraints, indexes and the
    deferred balance trigger kept, since the sink pays them too), in one transaction.
    """
    _run_suite("copy", ("copy",), count, runs, quick, seed, out_dir)


@bench.command("peer")
@_suite_options
def bench_peer_cmd(count: int | None, runs: int | None, quick: bool, seed: int,
                   out_dir: Path) -> None:
    """validate+route against the same logic in Quix Streams, on the same requests.

    The peer runs from its own virtualenv (OUT/quix-venv, created on first use with
    `python -m venv` and pip: Quix Streams pins an older confluent-kafka, so it never goes
    into the project's environment).
    """
    _run_suite("peer", ("peer",), count, runs, quick, seed, out_dir)


@bench.command("latency")
@_suite_options
@_latency_options
def bench_latency_cmd(count: int | None, runs: int | None, quick: bool, seed: int,
                      out_dir: Path, duration: float | None, rates: str | None,
                      refine: int | None, reference_rate: int | None) -> None:
    """Whole pipeline at fixed rates: p50/p99 created_at -> ledger commit.

    Rates are tried in ascending order until the median p99 exceeds 1 s (or the load
    generator cannot hold the rate), then bisected (--refine) between the last that held and
    the first that did not; reports the highest rate that held and p50/p99 at the reference
    rate (1,000 payments/s). COUNT is unused here (rate x duration payments per run).
    """
    _run_suite("latency", ("latency",), count, runs, quick, seed, out_dir, duration, rates,
               refine, reference_rate)


@bench.command("all")
@_suite_options
@_latency_options
def bench_all_cmd(count: int | None, runs: int | None, quick: bool, seed: int,
                  out_dir: Path, duration: float | None, rates: str | None,
                  refine: int | None, reference_rate: int | None) -> None:
    """Every benchmark; OUT/report.json (every run) and OUT/report.md (the table + machine).

    Takes a while (about half an hour with the defaults): run it on a quiet machine.
    """
    from settle.benchmarks.suite import PARTS

    _run_suite("report", PARTS, count, runs, quick, seed, out_dir, duration, rates, refine,
               reference_rate)


@bench.command("refunds-cpu")
@click.option("--count", type=click.IntRange(min=100), default=20_000, show_default=True,
              help="Payments per run.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternated runs each way; the median counts.")
@click.option("--ratio", type=click.FloatRange(0.001, 1), default=0.05, show_default=True,
              help="Share of the payments refunded (a request and a SUCCEEDED answer each).")
def bench_refunds_cpu_cmd(count: int, runs: int, ratio: float) -> None:
    """CPU of the refund path in the reconcile processor alone: no broker, no faust.

    The same payments with and without refunds of a share of them, side by side in one
    process: CPU per 1,000 payments both ways and CPU per refund.
    """
    from settle.benchmarks.refunds_cpu import bench_refunds_cpu, format_report

    click.echo(format_report(bench_refunds_cpu(count, runs, ratio)))


@bench.command("validate-cpu")
@click.option("--count", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Inputs per run.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs (after one warm-up); the median counts.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--bad-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of injected bad input (0: valid signed payments only).")
@click.option("--duplicate-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of byte-identical re-sends.")
@click.option("--profile", "profile_top", type=click.IntRange(min=0), default=0,
              show_default=True, help="Also print the top N functions of a cProfile run.")
def bench_validate_cpu_cmd(count: int, runs: int, seed: int, bad_ratio: float,
                           duplicate_ratio: float, profile_top: int) -> None:
    """CPU per record of the validate+route processor alone: no broker, no faust.

    Pre-encoded signed requests (wire format) go straight into IngestProcessor.process with an
    in-memory registry and a dict as the seen store; every outcome is checked against the
    simulator's expectation. Also runnable as `python -m settle.benchmarks.validate_cpu`.
    """
    from settle.benchmarks.validate_cpu import bench_validate_cpu, format_report

    click.echo(format_report(bench_validate_cpu(count, runs, seed, bad_ratio, duplicate_ratio,
                                                profile_top)))


@bench.command("api")
@click.option("--payments", type=click.IntRange(min=100), default=1_000_000, show_default=True,
              help="Payments seeded into the bench database.")
@click.option("--merchants", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--days", type=click.IntRange(min=2), default=14, show_default=True,
              help="Settlement days seeded (the last one still open).")
@click.option("--clients", type=click.IntRange(min=1), default=32, show_default=True,
              help="Concurrent client requests.")
@click.option("--requests", type=click.IntRange(min=1), default=2_000, show_default=True,
              help="Timed requests per endpoint (after one warm-up request per client).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--database", default=None,
              help="Use this already seeded bench database (from --keep) instead of seeding.")
@click.option("--keep", is_flag=True, help="Keep the seeded bench database (name printed).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path(".bench"),
              show_default=True)
def bench_api_cmd(payments: int, merchants: int, days: int, clients: int, requests: int,
                  seed: int, database: str | None, keep: bool, out_dir: Path) -> None:
    """The HTTP API on a large book: p50/p99 per endpoint, and CSV export rows/s.

    Seeds a fresh database (settle.api_seed: every state, refunds, disputes, cases, batches),
    serves it with `settle api serve`, and times the payments list and detail, balances,
    balance transactions, batches list and detail and the summary with CLIENTS concurrent
    requests, each with the key of the merchant it asks about; then the CSV export of two
    lists to its last byte beside a raw COPY of the same query as the API's login. Report:
    OUT/api.json and a table.
    """
    from settle.benchmarks.api import ApiBenchOptions, run_api_bench

    opts = ApiBenchOptions(payments=payments, merchants=merchants, days=days, clients=clients,
                           requests=requests, seed=seed, database=database, keep=keep,
                           out_dir=out_dir)
    report, path = run_api_bench(settings(), opts,
                                 lambda m: console.print(f"[dim]{m}[/]"))
    db = report["database"]
    table = Table(title=f"API, {db['payments']:,} payments, {clients} clients, "
                        f"{requests:,} requests per endpoint")
    for col in ("endpoint", "p50 ms", "p99 ms", "max ms", "req/s", "errors"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    for r in report["endpoints"]:
        table.add_row(r["endpoint"], f"{r['p50_ms']:,.1f}", f"{r['p99_ms']:,.1f}",
                      f"{r['max_ms']:,.1f}", f"{r['requests_per_s']:,.0f}", str(r["errors"]))
    console.print(table)
    exports = Table(title="CSV export vs raw COPY of the same query (rows/s)")
    for col in ("export", "rows", "HTTP rows/s", "COPY rows/s", "HTTP / COPY"):
        exports.add_column(col, justify="left" if col == "export" else "right")
    for e in report["exports"]:
        exports.add_row(e["export"], f"{e['http']['rows']:,}", f"{e['http']['rows_per_s']:,}",
                        f"{e['raw_copy']['rows_per_s']:,}", str(e["http_vs_copy"]))
    console.print(exports)
    if db.get("seed_s") is not None:
        console.print(f"seeded in {db['seed_s']:,} s")
    if db.get("kept"):
        console.print(f"bench database kept: {db['database']} (reuse with --database)")
    console.print(f"report: {path}")
