"""`settle demo`: the main job, end to end, with a readable summary."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from infra import config
from settle.cli.common import console, settings


@click.command("demo")
@click.option("--count", type=int, default=5000, show_default=True,
              help="Payment requests to simulate.")
@click.option("--rate", type=float, default=500.0, show_default=True,
              help="Requests per second.")
@click.option("--seed", type=int, default=None,
              help="Seed of the order flow and the channel faults (default: the clock).")
@click.option("--bad-ratio", type=float, default=0.02, show_default=True,
              help="Share of bad input among the requests.")
@click.option("--timeout", "timeout_s", type=float, default=240.0, show_default=True,
              help="Seconds to wait for the pipeline to drain and the books to balance.")
def demo(count: int, rate: float, seed: int | None, bad_ratio: float, timeout_s: float) -> None:
    """Run the whole pipeline on the local stack and audit the books.

    Brings the stack up if it is not, creates topics, registers schemas, applies migrations,
    loads merchants, creates a signing keyring under the run folder when SETTLE_SIGNING_KEYRING
    is not set, starts every worker (validate, reconcile, settle, two sinks and the
    channel-gateway simulator), publishes a simulated order flow with bad input and channel
    faults, waits until the pipeline drains and every settlement window has closed, then
    prints payments by terminal state, batches per merchant, ledger totals and the
    invariants. It also asks the HTTP API (`settle api serve`, started with the workers)
    every endpoint with a new merchant key and an analyst key, prints its URL and the
    merchant key, and saves the merchant's statement page rendered in headless Chromium as
    <run folder>/demo/statement.png. Everything is left running; `make down` stops it.
    """
    from infra.registry import registry_client
    from schemas import topics as t
    from schemas.codec import AvroDeserializer
    from settle import demo as d
    from settle.audit_ingest import audit_ingest
    from settle.cli.audit import print_books

    seed = seed if seed is not None else int(time.time())
    s = settings()
    plan = d.DemoPlan(count=count, rate_per_s=rate, seed=seed, bad_ratio=bad_ratio,
                      drain_timeout_s=timeout_s, api_port=s.api.port)
    console.rule("[bold]1. the stack")
    d.stack_up()
    console.rule("[bold]2. topics, schemas, tables, merchants")
    d.settle_cmd("topics", "create")
    d.settle_cmd("schemas", "register")
    d.settle_cmd("db", "migrate")
    d.settle_cmd("merchants", "load")
    # Every child process (workers, simulator) inherits the keyring through the environment.
    signing = d.signing_env(s)
    os.environ.update(signing)
    console.print(f"  request signatures {s.signing.mode}"
                  + (f", keyring {signing['SETTLE_SIGNING_KEYRING']}" if signing else ""))
    console.rule("[bold]3. the pipeline")
    d.start_pipeline(s, plan, lambda m: console.print(f"  {m}"))
    console.rule(f"[bold]4. {count:,} payment requests (seed {seed})")
    report = d.expected_report_path(s.run_dir)
    report.parent.mkdir(parents=True, exist_ok=True)
    refunds_before = d.refunds_decided(s)
    d.settle_cmd("simulate", "orders", "--count", str(count), "--rate", str(rate),
                 "--seed", str(seed), "--bad-ratio", str(bad_ratio), "--report", str(report),
                 *plan.refund_args())
    console.rule("[bold]5. draining: reconcile, post, settle")
    decoder = AvroDeserializer(registry_client(s))
    started = time.monotonic()
    with console.status("waiting for the books to balance...") as status:
        def show(counts: dict[str, int]) -> None:
            status.update(
                f"{time.monotonic() - started:5.0f}s  payments decided {counts['payments']:,}  "
                f"journals {counts['journals']:,}  exceptions {counts['exceptions']:,}  "
                f"batches {counts['batches']:,} ({counts['batched']:,} payments settled)")

        # Every accepted refund decided too (the database may hold earlier runs' refunds).
        books = d.wait_for_books(s, decoder, timeout_s, show,
                                 refunds=refunds_before + d.expected_refunds(report))
    console.rule("[bold]6. disputes and exception cases")
    still_open = d.wait_disputes_closed(s, 60.0)
    if still_open:
        console.print(f"  {still_open} disputes still open after 60s (their decisions come "
                      "later; their amounts stay held)")
    if _resolve_some_cases(s):
        with console.status("waiting for the resolutions to settle...") as status:
            def show_again(counts: dict[str, int]) -> None:
                status.update(f"journals {counts['journals']:,}  batches "
                              f"{counts['batches']:,} ({counts['batched']:,} items)")

            books = d.wait_for_books(s, decoder, timeout_s, show_again,
                                     refunds=refunds_before + d.expected_refunds(report))
    console.rule("[bold]7. the HTTP API and the statement page")
    api_ok, keys = _api_look(s)
    console.rule("[bold]8. summary")
    ingest = audit_ingest(s.kafka, t.PAYMENTS_REQUESTED, t.ROUTED_TOPICS, t.PAYMENTS_REJECTED,
                          t.PAYMENTS_DLQ)
    total = ingest.routed + ingest.rejected + ingest.dead_lettered + ingest.deduplicated
    mark = "[green]✓[/]" if ingest.balanced else "[bold red]✗[/]"
    console.print(f"{mark} ingest: read {ingest.read:,} = routed {ingest.routed:,} + rejected "
                  f"{ingest.rejected:,} + dead-lettered {ingest.dead_lettered:,} + "
                  f"deduplicated {ingest.deduplicated:,} = {total:,}")
    print_books(books)
    refunds_ok = _refunds_summary(s, decoder)
    disputes_ok = _disputes_summary(s, decoder)
    observable = _observability(s)
    ok = ingest.balanced and books.ok and refunds_ok and disputes_ok and observable and api_ok
    console.print(("[bold green]all invariants ✓[/]" if ok else "[bold red]invariants ✗[/]")
                  + f" after {time.monotonic() - started:.0f}s of draining")
    console.rule("[bold]the stack keeps running")
    console.print(f"  Kafka         {s.kafka.bootstrap_servers}")
    console.print(f"  registry      {config.safe_url(s.registry.url)}")
    console.print(f"  PostgreSQL    {s.postgres.describe()}")
    console.print(f"  Prometheus    {config.safe_url(s.prometheus_url)}")
    _print_api(s, keys)
    console.print(f"  logs          {s.run_dir / 'logs'}")
    console.print("  `settle audit books`, `settle audit ingest` re-check; `make down` stops all.")
    console.print("  dashboard     deploy/grafana/dashboards/settle-pipeline.json (README)")
    if not ok:
        sys.exit(1)


def _api_look(s: Any) -> tuple[bool, Any]:
    """Keys for the busiest merchant and an analyst, every endpoint asked, another
    merchant's data refused, the statement page rendered in headless Chromium."""
    from rich.table import Table

    from settle import demo_api as da

    base = da.api_url(s)
    log = s.run_dir / "logs" / "api.log"
    if not da.wait_healthy(base):
        console.print(f"[bold red]✗[/] the API at {base} does not answer /healthz (log {log})")
        return False, None
    keys = da.create_demo_keys(s)
    if keys is None:
        console.print("[bold red]✗[/] no merchant in the books: no key to show")
        return False, None
    console.print(f"  API {base} (docs {base}/docs, statement page {base}/statement, "
                  f"log {log})")
    console.print(f"  merchant key for {keys.merchant} (shown once; `settle api keys list`, "
                  f"`... revoke`):\n    [bold]{keys.merchant_key}[/]")
    console.print(f"  analyst key (every merchant):\n    {keys.analyst_key}")
    if keys.revoked:
        console.print(f"  {keys.revoked} key(s) of an earlier demo revoked")
    report = da.look_at_api(s, keys, s.run_dir / "demo" / "statement.png")
    mark = {True: "[green]✓[/]", False: "[bold red]✗[/]"}
    table = Table(title=f"the API as {keys.merchant}'s merchant key (and the analyst's)")
    for name in ("", "request", "key", "status", "answer"):
        table.add_column(name)
    for probe in report.probes:
        status = str(probe.status) if probe.ok else f"{probe.status} (want {probe.expected})"
        table.add_row(mark[probe.ok], probe.what, probe.key, status, probe.rows)
    console.print(table)
    if report.screenshot is not None:
        console.print(f"{mark[True]} statement page of {keys.merchant} rendered in headless "
                      f"Chromium: {report.screenshot}")
    else:
        console.print(f"{mark[False]} the statement page did not render: "
                      f"{report.screenshot_error}")
    bad = [p for p in report.probes if not p.ok]
    console.print(f"{mark[report.ok]} API: {len(report.probes) - len(bad)}/"
                  f"{len(report.probes)} requests answered as expected")
    return report.ok, keys


def _print_api(s: Any, keys: Any) -> None:
    from settle import demo_api as da

    base = da.api_url(s)
    console.print(f"  API           {base}  (docs /docs, statement page /statement)")
    if keys is not None:
        console.print(f"  merchant key  {keys.merchant_key}  ({keys.merchant})")


def _refunds_summary(s: Any, decoder: Any) -> bool:
    """Refund requests accounted for, refunds by outcome, batches that netted refunds and
    carried balances, and the money recomputed from the topics against the books."""
    from rich.table import Table

    from schemas import topics as t
    from settle.audit_ingest import audit_refunds, refund_body_identity
    from settle.recompute import recompute
    from sinks.db import connect

    audit = audit_refunds(s.kafka, t.REFUNDS_REQUESTED, t.REFUNDS_ROUTED, t.REFUNDS_REJECTED,
                          t.PAYMENTS_DLQ, identity=refund_body_identity(decoder.decode))
    mark = {True: "[green]✓[/]", False: "[bold red]✗[/]"}
    total = audit.routed + audit.rejected + audit.dead_lettered + audit.duplicates
    console.print(f"{mark[audit.balanced]} refund requests: read {audit.read:,} = routed "
                  f"{audit.routed:,} + rejected {audit.rejected:,} + dead-lettered "
                  f"{audit.dead_lettered:,} + identical re-sends {audit.duplicates:,} = {total:,}")
    with connect(s.postgres, autocommit=True) as conn:
        money = recompute(s, conn, decoder, t.RECONCILIATION_RESULTS, t.REFUND_RESULTS,
                          t.SETTLEMENTS_BATCHES)
        reasons = conn.execute("SELECT outcome, COUNT(*) FROM refund_exceptions "
                               "GROUP BY 1 ORDER BY 1").fetchall()
    table = Table(title="refund results (refunds.results)")
    table.add_column("outcome")
    table.add_column("results", justify="right")
    for outcome, n in sorted(money.refund_outcomes.items()):
        table.add_row(outcome, f"{n:,}")
    console.print(table)
    if reasons:
        console.print("  refund exceptions in PostgreSQL: "
                      + ", ".join(f"{o} {n:,}" for o, n in reasons))
    money_table = Table(title="money per currency: topics vs ledger vs batches (minor units)")
    for name in ("currency", "payments net", "refunds net", "owed", "batched", "paid out",
                 "payout_due", "carried", "payable"):
        money_table.add_column(name, justify="right")
    for currency, row in money.totals().items():
        money_table.add_row(currency, *(f"{row[k]:,}" for k in (
            "payments_net", "refunds_net", "owed", "batched_net", "payouts", "payout_due",
            "carried", "payable")))
    console.print(money_table)
    console.print(f"  {money.negative_batches:,} batches netted below 0, "
                  f"{money.carried_batches:,} paid 0 and carried a balance, "
                  f"{money.absorbing_batches:,} took a carried balance in; "
                  f"{money.payment_reversals:,} payments and {money.refund_reversals:,} "
                  "refunds reversed by their channels")
    bad = money.mismatches()
    console.print(f"{mark[not bad]} money recomputed from the topics = ledger = batches for "
                  f"{len(money.keys) - len(bad):,}/{len(money.keys):,} merchant+currency keys"
                  + (f" (differ: {sorted(bad.items())[:3]})" if bad else ""))
    return audit.balanced and not bad


def _resolve_some_cases(s: Any) -> bool:
    """Resolve a few open cases through `settle cases`, as operators would: a force-match,
    a mark-received (each approved by a second operator when above the limit), and a bulk
    close with its dry run first. True when anything was sent."""
    from settle import demo as d
    from settle.cases_tool import AWAITING_APPROVAL, CaseFilter, fetch_case, fetch_cases
    from sinks.db import connect

    with connect(s.postgres, autocommit=True) as conn:
        open_cases = fetch_cases(conn, CaseFilter(statuses=("OPEN",)))
    if not open_cases:
        console.print("  no open exception cases")
        return False
    d.settle_cmd("cases", "list", "--status", "open", "--limit", "8", check=False)
    chosen: dict[str, Any] = {}
    for case in open_cases:
        if case.subject == "PAYMENT" and case.outcome in ("AMOUNT_MISMATCH",
                                                           "MISSING_CONFIRMATION"):
            chosen.setdefault(case.outcome, case)
    actions = {"AMOUNT_MISMATCH": ("force-match", "the channel's bill shows the confirmed "
                                                   "amount received"),
               "MISSING_CONFIRMATION": ("mark-received", "funds found on the bank statement")}
    for outcome, case in sorted(chosen.items()):
        action, remark = actions[outcome]
        console.print(f"  [bold]{action}[/] {case.case_id} ({outcome}, {case.payment_id})")
        d.settle_cmd("cases", "resolve", case.case_id, "--action", action, "--remark", remark,
                     "--operator", "demo-alice", "--wait", check=False)
        with connect(s.postgres, autocommit=True) as conn:
            waiting = fetch_case(conn, case.case_id).status == AWAITING_APPROVAL
        if waiting:
            d.settle_cmd("cases", "approve", case.case_id, "--remark", "checked the evidence",
                         "--operator", "demo-bob", "--wait", check=False)
    bulk = ("--where-outcome", "CURRENCY_MISMATCH", "--action", "close-no-funds",
            "--remark", "currency mismatch: refunded by the channel, nothing to settle",
            "--operator", "demo-alice")
    d.settle_cmd("cases", "resolve", *bulk, "--dry-run", check=False)
    d.settle_cmd("cases", "resolve", *bulk, "--yes", "--wait", check=False)
    # The bulk resolutions above the limit wait for the second operator.
    with connect(s.postgres, autocommit=True) as conn:
        proposed = fetch_cases(conn, CaseFilter(statuses=(AWAITING_APPROVAL,)))
    for case in proposed[:5]:
        d.settle_cmd("cases", "approve", case.case_id, "--remark", "checked the bill",
                     "--operator", "demo-bob", "--wait", check=False)
    return True


def _disputes_summary(s: Any, decoder: Any) -> bool:
    """Disputes by state with what they hold, released and took; cases by status and
    resolution; every dispute record and case action answered."""
    from rich.table import Table

    from schemas import topics as t
    from settle.audit_ingest import audit_case_actions, audit_disputes
    from sinks.db import connect

    mark = {True: "[green]✓[/]", False: "[bold red]✗[/]"}
    with connect(s.postgres, autocommit=True) as conn:
        rows = conn.execute("""
            SELECT currency, state, COUNT(*), SUM(amount_minor), SUM(fee_minor)
              FROM disputes GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
        cases = conn.execute("""
            SELECT status, COALESCE(resolution, '-'), COUNT(*) FROM exception_cases
             GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
        manual = conn.execute(
            "SELECT COUNT(*) FROM payments WHERE state = 'MATCHED_MANUAL'").fetchone()
    table = Table(title="disputes (minor units)")
    for name in ("currency", "state", "disputes", "amount", "fees"):
        table.add_column(name, justify="right")
    for currency, state, n, amount, fee in rows:
        label = {"OPEN": "OPEN (held)", "WON": "WON (released)", "LOST": "LOST (taken)"}
        table.add_row(currency, label.get(state, state), f"{n:,}", f"{int(amount or 0):,}",
                      f"{int(fee or 0):,}" if state == "LOST" else "")
    console.print(table)
    case_table = Table(title="exception cases")
    for name in ("status", "resolution", "cases"):
        case_table.add_column(name)
    for status, resolution, n in cases:
        case_table.add_row(status, resolution, f"{n:,}")
    console.print(case_table)
    console.print(f"  {int(manual[0]) if manual else 0:,} payments settled by an operator "
                  "(MATCHED_MANUAL)")
    disputes = audit_disputes(s.kafka, t.CHANNEL_DISPUTES, t.DISPUTE_RESULTS, t.PAYMENTS_DLQ,
                              decoder.decode)
    actions = audit_case_actions(s.kafka, t.CASE_ACTIONS, t.CASE_EVENTS, t.PAYMENTS_DLQ,
                                 decoder.decode)
    console.print(f"{mark[disputes.balanced]} dispute records: read {disputes.read:,} = "
                  f"answered {disputes.answered:,} + dead-lettered {disputes.dead_lettered:,}")
    console.print(f"{mark[actions.balanced]} case actions: read {actions.read:,} = answered "
                  f"{actions.answered:,} + dead-lettered {actions.dead_lettered:,}")
    return disputes.balanced and actions.balanced


def _observability(s: Any) -> bool:
    """Prometheus scrapes every pipeline process; every rule and dashboard query works."""
    from settle import observability as o

    deadline = time.monotonic() + 60
    while True:
        try:
            active = [t for t in o.targets(s.prometheus_url) if t["labels"].get("job") == "settle"
                      and "run" not in t["labels"]]
        except OSError as exc:
            console.print(f"[bold red]✗[/] Prometheus at {s.prometheus_url} unreachable: {exc}")
            return False
        down = sorted(t["labels"].get("process", "?") for t in active if t["health"] != "up")
        if (active and not down) or time.monotonic() >= deadline:
            break
        time.sleep(2)
    results = o.check_queries(s.prometheus_url, o.all_queries())
    rules = [r for r in results if r.query.source == "rule"]
    panels = [r for r in results if r.query.source == "dashboard"]
    empty = [r.query.name for r in panels if not r.passed]
    broken = [r.query.name for r in rules if not r.ok]
    mark = {True: "[green]✓[/]", False: "[bold red]✗[/]"}
    console.print(f"{mark[bool(active) and not down]} Prometheus: {len(active) - len(down)}/"
                  f"{len(active)} pipeline targets up" + (f" (down: {', '.join(down)})"
                                                          if down else ""))
    console.print(f"{mark[not broken]} {len(rules) - len(broken)}/{len(rules)} rule "
                  f"expressions evaluate; {mark[not empty]} {len(panels) - len(empty)}/"
                  f"{len(panels)} dashboard queries return data"
                  + (f" (empty: {'; '.join(empty[:5])})" if empty else ""))
    return bool(active) and not down and not broken and not empty
