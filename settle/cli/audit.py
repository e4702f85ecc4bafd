"""`settle audit ...`: invariant checks read from the topics (and later PostgreSQL)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from settle.cli.common import console, settings


@click.group("audit")
def audit() -> None:
    """Check the pipeline's promises from its outputs, not from its own counters."""


@audit.command("ingest")
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Keep re-reading outputs for up to this many seconds while the pipeline drains.")
@click.option("--show", "show_max", type=int, default=10, show_default=True,
              help="How many unaccounted records to list.")
def audit_ingest_cmd(wait_s: float, show_max: int) -> None:
    """Prove read = routed + rejected + dead-lettered + deduplicated for payments.requested
    and refunds.requested, and that every record of channel.disputes and cases.actions was
    answered.

    Every output of the validate stage names its input (topic/partition/offset) in a header;
    the audit joins them. Exit code 1 when any input is unaccounted for or placed twice.
    """
    from schemas import topics as t
    from settle.audit_ingest import audit_ingest

    with console.status("reading payments.requested and the ingest outputs..."):
        result = audit_ingest(
            settings().kafka, t.PAYMENTS_REQUESTED, t.ROUTED_TOPICS, t.PAYMENTS_REJECTED,
            t.PAYMENTS_DLQ, wait_s=wait_s,
        )
    table = Table(title="ingest accounting (from topic contents)")
    table.add_column("bucket")
    table.add_column("records", justify="right")
    table.add_row("read from payments.requested", f"{result.read:,}")
    for topic, n in sorted(result.routed_by_topic.items()):
        table.add_row(f"  routed → {topic}", f"{n:,}")
    table.add_row("routed", f"{result.routed:,}")
    table.add_row("rejected", f"{result.rejected:,}")
    table.add_row("dead-lettered", f"{result.dead_lettered:,}")
    table.add_row("deduplicated", f"{result.deduplicated:,}")
    table.add_row("unaccounted", f"{len(result.unaccounted):,}")
    table.add_row("placed in several buckets", f"{len(result.in_several_places):,}")
    table.add_row("same id, different body, no output", f"{len(result.bad_duplicates):,}")
    table.add_row("replayed outputs (at-least-once, harmless)", f"{result.replayed_outputs:,}")
    console.print(table)
    total = result.routed + result.rejected + result.dead_lettered + result.deduplicated
    mark = "[green]✓[/]" if result.balanced else "[bold red]✗[/]"
    console.print(f"{mark} read {result.read:,} = routed + rejected + dead-lettered + "
                  f"deduplicated = {total:,}")
    for ref in (result.unaccounted + result.in_several_places + result.bad_duplicates)[:show_max]:
        console.print(f"  [red]{ref}[/]")
    refunds = _audit_refund_requests(wait_s, show_max)
    answered = _audit_answers(wait_s, show_max)
    if not (result.balanced and refunds and answered):
        sys.exit(1)


def _audit_answers(wait_s: float, show_max: int) -> bool:
    """channel.disputes and cases.actions: every record answered (a DisputeResult of its
    event, a CaseEvent of its action) or dead-lettered."""
    from infra.registry import registry_client
    from schemas import topics as t
    from schemas.codec import AvroDeserializer
    from settle.audit_ingest import audit_case_actions, audit_disputes

    s = settings()
    with registry_client(s) as registry, console.status(
            "reading channel.disputes, cases.actions and their answers..."):
        decode = AvroDeserializer(registry).decode
        audits = {
            "channel.disputes → disputes.results": audit_disputes(
                s.kafka, t.CHANNEL_DISPUTES, t.DISPUTE_RESULTS, t.PAYMENTS_DLQ, decode,
                wait_s=wait_s),
            "cases.actions → cases.events": audit_case_actions(
                s.kafka, t.CASE_ACTIONS, t.CASE_EVENTS, t.PAYMENTS_DLQ, decode, wait_s=wait_s),
        }
    ok = True
    for name, audit in audits.items():
        mark = "[green]✓[/]" if audit.balanced else "[bold red]✗[/]"
        console.print(f"{mark} {name}: read {audit.read:,} = answered {audit.answered:,} + "
                      f"dead-lettered {audit.dead_lettered:,} ({audit.answers:,} answers)")
        for ref in audit.unanswered[:show_max]:
            console.print(f"  [red]unanswered {ref}[/]")
        ok = ok and audit.balanced
    return ok


def _audit_refund_requests(wait_s: float, show_max: int) -> bool:
    """refunds.requested: read = routed + rejected + dead-lettered + identical re-sends."""
    from infra.registry import registry_client
    from schemas import topics as t
    from schemas.codec import AvroDeserializer
    from settle.audit_ingest import audit_refunds, refund_body_identity

    s = settings()
    with registry_client(s) as registry, console.status(
            "reading refunds.requested and the reconcile stage's refund outputs..."):
        decoder = AvroDeserializer(registry)
        result = audit_refunds(
            s.kafka, t.REFUNDS_REQUESTED, t.REFUNDS_ROUTED, t.REFUNDS_REJECTED, t.PAYMENTS_DLQ,
            identity=refund_body_identity(decoder.decode), wait_s=wait_s,
        )
    table = Table(title="refund request accounting (from topic contents)")
    table.add_column("bucket")
    table.add_column("records", justify="right")
    for name, n in (("read from refunds.requested", result.read), ("routed", result.routed),
                    ("rejected", result.rejected), ("dead-lettered", result.dead_lettered),
                    ("identical re-sends dropped", result.duplicates),
                    ("unaccounted", len(result.unaccounted)),
                    ("placed in several buckets", len(result.in_several_places)),
                    ("replayed outputs (at-least-once, harmless)", result.replayed_outputs)):
        table.add_row(name, f"{n:,}")
    console.print(table)
    total = result.routed + result.rejected + result.dead_lettered + result.duplicates
    mark = "[green]✓[/]" if result.balanced else "[bold red]✗[/]"
    console.print(f"{mark} read {result.read:,} = routed + rejected + dead-lettered + "
                  f"re-sends = {total:,}")
    for ref in (result.unaccounted + result.in_several_places)[:show_max]:
        console.print(f"  [red]{ref}[/]")
    return result.balanced


@audit.command("books")
def audit_books_cmd() -> None:
    """Check the books: balanced journals, refunds within captures, batches = ledger.

    Reads PostgreSQL and the reconciliation.results and settlements.batches topics. Run it
    once the pipeline has drained and the settlement windows have closed. Exit code 1 on
    any breach; a table either way.
    """
    from infra.registry import registry_client
    from schemas.codec import AvroDeserializer
    from schemas.topics import ROUTED_TOPICS
    from settle.audit_books import audit_books
    from sinks.db import connect

    s = settings()
    with console.status("auditing the books..."), connect(s.postgres) as conn:
        result = audit_books(s, conn, AvroDeserializer(registry_client(s)),
                             routed_topics=ROUTED_TOPICS)
    print_books(result)
    if not result.ok:
        sys.exit(1)


def print_books(result: Any) -> None:
    """Render a BooksAudit: the invariants, then the figures behind them."""
    from settlement.currencies import format_minor

    table = Table(title="invariants")
    table.add_column("")
    table.add_column("check")
    table.add_column("detail")
    for c in result.checks:
        table.add_row("[green]✓[/]" if c.ok else "[bold red]✗[/]", c.name, c.detail)
    console.print(table)
    states = result.figures.get("payments_by_state", {})
    if states:
        t = Table(title="payments by terminal state")
        t.add_column("state")
        t.add_column("payments", justify="right")
        for state, n in sorted(states.items()):
            t.add_row(state, f"{n:,}")
        console.print(t)
    ledger = result.figures.get("ledger_by_currency", [])
    if ledger:
        t = Table(title="ledger totals")
        for col in ("currency", "debits", "credits"):
            t.add_column(col, justify="right")
        for cur, d, k in ledger:
            t.add_row(cur, format_minor(d, cur), format_minor(k, cur))
        console.print(t)
    refunds = result.figures.get("refunds_by_state", {})
    if refunds:
        t = Table(title="refunds by terminal state")
        t.add_column("state")
        t.add_column("refunds", justify="right")
        for state, n in sorted(refunds.items()):
            t.add_row(state, f"{n:,}")
        console.print(t)
    batches = result.figures.get("batches_per_merchant", [])
    if batches:
        t = Table(title="settlement batches per merchant")
        for col in ("merchant", "currency", "batches", "payments", "refunds", "gross", "fee",
                    "net", "paid out", "carried"):
            t.add_column(col, justify="right")
        for m, cur, n, count, refund_count, gross, fee, net, payout, carried in batches:
            t.add_row(m, cur, str(n), f"{count:,}", f"{refund_count:,}",
                      format_minor(int(gross), cur), format_minor(int(fee), cur),
                      format_minor(int(net), cur), format_minor(int(payout), cur),
                      format_minor(int(carried), cur))
        console.print(t)
