"""Rich tables the producer commands print: merchants, and the channel simulator's summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from rich.table import Table

from producers.channel_sim import SimStats
from producers.channels import (
    FAULT_NONE,
    FAULTS,
    REFUND_FAULTS,
    ChannelSimConfig,
    Decision,
    expected_refund_results,
    expected_results,
)
from producers.merchants import MerchantEntry, MerchantState


def _status(status: str) -> str:
    return status if status == "ACTIVE" else f"[yellow]{status}[/]"


def merchants_table(entries: Sequence[MerchantEntry], title: str) -> Table:
    table = Table(title=title)
    for column in ("merchant_id", "name", "status", "currency"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.merchant_id, entry.name, _status(entry.status),
                      entry.settlement_currency)
    return table


def merchant_mix(entries: Sequence[MerchantEntry]) -> Table:
    table = Table(title="summary")
    table.add_column("merchants", justify="right")
    table.add_column("by status")
    table.add_column("by settlement currency")
    statuses = Counter(e.status for e in entries)
    currencies = Counter(e.settlement_currency for e in entries)
    table.add_row(
        str(len(entries)),
        ", ".join(f"{k} {v}" for k, v in statuses.most_common()),
        ", ".join(f"{k} {v}" for k, v in currencies.most_common()),
    )
    return table


def merchant_states_table(states: Mapping[str, MerchantState], records_read: int) -> Table:
    table = Table(title=f"merchants: {len(states)} current (from {records_read} records)")
    for column in ("merchant_id", "name", "status", "currency", "updated (UTC)", "p/offset"):
        table.add_column(column, no_wrap=column != "name")
    for merchant_id in sorted(states):
        state = states[merchant_id]
        updated = datetime.fromtimestamp(state.updated_at_ms // 1000, UTC)
        table.add_row(
            merchant_id, state.entry.name, _status(state.entry.status),
            state.entry.settlement_currency, updated.strftime("%Y-%m-%d %H:%M"),
            f"{state.partition}/{state.offset}",
        )
    return table


def channel_tables(stats: SimStats, config: ChannelSimConfig) -> list[Table]:
    """Totals, then per channel, then per fault with the reconciliation it should cause."""
    totals = Table(title="channel simulator")
    totals.add_column("metric")
    totals.add_column("value", justify="right")
    published = sum(stats.published.values())
    answered = (published + sum(stats.refunds_published.values())
                + stats.disputes.published)
    rows = [
        ("stopped", stats.stop_reason or "-"),
        ("routed records consumed", str(stats.consumed_total)),
        ("undecodable (skipped)", str(stats.undecodable)),
        ("confirmations scheduled", str(stats.scheduled)),
        ("confirmations published", str(published)),
        ("refund answers published", str(sum(stats.refunds_published.values()))),
        ("payment reversals published", str(sum(stats.reversals.values()))),
        ("refund reversals published", str(sum(stats.refund_reversals.values()))),
        ("dispute records published", str(stats.disputes.published)),
        ("delivered", str(stats.delivered)),
        ("orphan confirmations", str(stats.orphans)),
        ("offset commits", str(stats.commits)),
        ("commits refused (retried)", str(stats.refused_commits)),
        ("elapsed", f"{stats.elapsed_s:.1f} s"),
    ]
    if stats.failed:
        rows.append(("[red]failed delivery[/]", f"[red]{stats.failed}: {stats.first_error}[/]"))
    if stats.consumer_error:
        rows.append(("[yellow]consumer error[/]", f"[yellow]{stats.consumer_error}[/]"))
    for name, value in rows:
        totals.add_row(name, value)
    unsent = stats.scheduled - answered
    if unsent:
        totals.add_row("[yellow]scheduled, not sent[/]", f"[yellow]{unsent}[/]")

    channels = Table(title="per channel")
    for column in ("channel", "routed", "declined", "confirmations", "reversed"):
        channels.add_column(column, justify="right" if column != "channel" else "left")
    for channel in sorted(set(stats.consumed) | set(stats.published)):
        channels.add_row(channel, str(stats.consumed[channel]), str(stats.declined[channel]),
                         str(stats.published[channel]), str(stats.reversals[channel]))

    faults = Table(title=f"per fault (seed {config.seed}, fault rate {config.fault_rate:g}, "
                         f"decline rate {config.decline_rate:g}, reversal rate "
                         f"{config.reversal_rate:g})")
    faults.add_column("fault")
    faults.add_column("payments", justify="right")
    faults.add_column("expected reconciliation (not declined)")
    for fault in (FAULT_NONE, *FAULTS):
        count = stats.faults[fault]
        if count or fault in config.faults:
            outcome = " then ".join(expected_results(Decision(fault, False, None)))
            faults.add_row(fault, str(count), outcome)
    if config.reversal_rate > 0 or stats.reversals:
        faults.add_row("(reversed)", str(sum(stats.reversals.values())),
                       " then ".join(expected_results(Decision(FAULT_NONE, False, None, True))))
    tables = [totals, channels, faults]
    if stats.refunds_consumed or stats.refunds_published:
        tables.extend(refund_tables(stats, config))
    if stats.disputes.published:
        tables.append(dispute_table(stats, config))
    return tables


def dispute_table(stats: SimStats, config: ChannelSimConfig) -> Table:
    """Disputes opened per channel, and their records per stage and status."""
    counts, disputes = stats.disputes, config.disputes
    table = Table(title=f"disputes (rate {disputes.rate:g} of captured "
                        f"{', '.join(disputes.channels)} payments)")
    table.add_column("records")
    table.add_column("count", justify="right")
    for channel, n in sorted(counts.opened.items()):
        table.add_row(f"disputes opened on {channel}", str(n))
    for key, n in sorted(counts.records.items()):
        table.add_row(key, str(n))
    table.add_row("redelivered (same event_id, no new result)", str(counts.redelivered))
    return table


def refund_tables(stats: SimStats, config: ChannelSimConfig) -> list[Table]:
    """Routed refunds per channel, then per fault with the refund result it should cause."""
    channels = Table(title="refunds per channel")
    for column in ("channel", "routed refunds", "failed", "answers", "reversed"):
        channels.add_column(column, justify="right" if column != "channel" else "left")
    for channel in sorted(set(stats.refunds_consumed) | set(stats.refunds_published)):
        channels.add_row(channel, str(stats.refunds_consumed[channel]),
                         str(stats.refunds_declined[channel]),
                         str(stats.refunds_published[channel]),
                         str(stats.refund_reversals[channel]))
    faults = Table(title=f"refunds per fault (fault rate {config.refund_fault_rate:g}, "
                         f"decline rate {config.refund_decline_rate:g}, reversal rate "
                         f"{config.refund_reversal_rate:g})")
    faults.add_column("fault")
    faults.add_column("refunds", justify="right")
    faults.add_column("expected refund result (not failed)")
    for fault in (FAULT_NONE, *REFUND_FAULTS):
        count = stats.refund_faults[fault]
        if count or fault in config.refund_faults:
            outcome = " then ".join(expected_refund_results(Decision(fault, False, None)))
            faults.add_row(fault, str(count), outcome)
    if config.refund_reversal_rate > 0 or stats.refund_reversals:
        faults.add_row("(reversed)", str(sum(stats.refund_reversals.values())),
                       " then ".join(expected_refund_results(
                           Decision(FAULT_NONE, False, None, True))))
    return [channels, faults]
