"""`settle audit ...`: invariant checks read from the topics (and later PostgreSQL)."""

from __future__ import annotations

import sys

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
    """Prove read = routed + rejected + dead-lettered + deduplicated for payments.requested.

    Every output of the validate stage names its input (topic/partition/offset) in a header;
    the audit joins them. Exit code 1 when any input is unaccounted for or placed twice.
    """
    from settle import topics as t
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
    if not result.balanced:
        sys.exit(1)
