"""`settle merchants` and `settle simulate`: the producer commands (thin: parse, call, print)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from infra.config import Settings, load
from infra.keyring import KeyringError, configured_keyring
from infra.registry import registry_client
from producers import reports
from producers.channel_sim import DEFAULT_GROUP, ChannelSimulator, SimStats
from producers.channels import FAULTS, REFUND_FAULTS, ChannelSimConfig
from producers.clients import read_to_end, wall_clock_ms
from producers.dispute_flow import DisputeSimConfig
from producers.merchants import (
    check_entries,
    fold_merchant_records,
    load_merchants,
    publish_merchants,
    sample_merchants_path,
)
from producers.order_flow import FlowStats, progress_bar, publish_orders, summary_tables
from producers.orders import INJECTED_KINDS, OrderMix, SimulatedOrder, generate_orders
from producers.producer import AvroProducer
from producers.refund_flow import RefundMix, RefundPlanner
from producers.signing import RequestSigner
from schemas.contract import schema_str_for
from schemas.topics import (
    CHANNEL_CONFIRMATIONS,
    CHANNEL_DISPUTES,
    CHANNELS,
    MERCHANTS,
    PAYMENTS_REQUESTED,
    REFUND_CONFIRMATIONS,
    REFUNDS_REQUESTED,
    REFUNDS_ROUTED,
    value_subject,
)
from settlement.model import MERCHANT_STATUSES

console = Console(highlight=False)
F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_RATIO = click.FloatRange(0.0, 1.0)


def _prefix_from_settings(_ctx: click.Context, _param: click.Parameter, value: str | None
                          ) -> str:
    return _settings().runtime.topic_prefix if value is None else value


def topic_prefix_option(command: F) -> F:
    """--topic-prefix, defaulting to SETTLE_TOPIC_PREFIX like the stream processors."""
    return click.option(
        "--topic-prefix", default=None, callback=_prefix_from_settings,
        help="Prefix every topic name (isolated test runs; the workers read the same "
             "setting) [default: SETTLE_TOPIC_PREFIX].",
    )(command)


def _settings() -> Settings:
    return load()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@click.group("merchants")
def merchants() -> None:
    """Publish and inspect the merchant registry (the compacted `merchants` topic).

    Load merchants before simulating orders: validation rejects payments to merchants it
    has never seen (MERCHANT_UNKNOWN) and to SUSPENDED ones.
    """


@merchants.command("load")
@click.argument("file", type=_FILE, required=False)
@topic_prefix_option
def merchants_load(file: Path | None, topic_prefix: str) -> None:
    """Validate a merchants FILE (CSV or .json) and publish every merchant, keyed by id.

    Columns: merchant_id,name,status,settlement_currency (status ACTIVE or SUSPENDED,
    currency an ISO 4217 code). FILE defaults to the bundled demo sample. Every row is
    checked before anything is published; problems are reported with their line number.
    """
    path = file or sample_merchants_path()
    entries = load_merchants(path)
    topic = topic_prefix + MERCHANTS
    settings = _settings()
    with registry_client(settings) as registry, AvroProducer(
        settings.kafka, registry, client_id="merchants"
    ) as producer, progress_bar() as progress:
        task = progress.add_task("merchants", total=len(entries), rate="")
        publish_merchants(producer, entries, wall_clock_ms(), topic,
                          on_sent=lambda _e: progress.advance(task))
    console.print(reports.merchants_table(entries, f"published {len(entries)} merchants from "
                                          f"{path} to {topic}"))
    console.print(reports.merchant_mix(entries))


@merchants.command("upsert")
@click.option("--id", "merchant_id", required=True, help="Merchant id, e.g. m-0021.")
@click.option("--name", required=True, help="Display name.")
@click.option("--status", required=True, type=click.Choice(sorted(MERCHANT_STATUSES)),
              help="ACTIVE merchants take payments; SUSPENDED ones are rejected.")
@click.option("--currency", required=True, help="Settlement currency (ISO 4217, e.g. CNY).")
@topic_prefix_option
def merchants_upsert(
    merchant_id: str, name: str, status: str, currency: str, topic_prefix: str
) -> None:
    """Publish one merchant's new state (it supersedes older ones: newest updated_at wins)."""
    row = {"merchant_id": merchant_id, "name": name, "status": status,
           "settlement_currency": currency}
    entries = check_entries([("--options", row)])
    settings = _settings()
    with registry_client(settings) as registry, AvroProducer(
        settings.kafka, registry, client_id="merchants"
    ) as producer:
        publish_merchants(producer, entries, wall_clock_ms(), topic_prefix + MERCHANTS)
    console.print(reports.merchants_table(entries, f"upserted to {topic_prefix + MERCHANTS}"))


@merchants.command("list")
@click.option("--timeout-s", default=30.0, show_default=True,
              help="Give up reading the topic after this long.")
@topic_prefix_option
def merchants_list(timeout_s: float, topic_prefix: str) -> None:
    """Read the `merchants` topic from the beginning to its end and show each merchant's
    current state (newest updated_at per merchant_id; tombstones remove)."""
    settings = _settings()
    messages = read_to_end(settings.kafka, topic_prefix + MERCHANTS, timeout_s)
    with registry_client(settings) as registry:
        states, undecodable = fold_merchant_records(messages, registry)
    console.print(reports.merchant_states_table(states, len(messages)))
    if undecodable:
        console.print(f"[yellow]{undecodable} undecodable record(s) skipped[/]")


@click.group("simulate")
def simulate() -> None:
    """Simulators for the demo and tests: upstream order systems and payment channels."""


@simulate.command("orders")
@click.option("--count", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Records to publish, all kinds.")
@click.option("--rate", default=100.0, show_default=True, type=click.FloatRange(min=0),
              help="Records per second; 0 publishes as fast as possible.")
@click.option("--seed", type=int, default=None,
              help="Makes the run reproducible (payment_id pay-<seed>-<n>). Default: the clock, "
                   "printed so the run can be repeated. Rerunning a seed republishes its ids.")
@click.option("--merchants", "merchants_file", type=_FILE, default=None,
              help="Merchants file the orders are drawn from (default: the bundled sample; "
                   "load the same file with `settle merchants load`).")
@click.option("--bad-ratio", default=0.05, show_default=True, type=_RATIO,
              help="Share of injected bad input: invalid-but-decodable requests (rejected) and "
                   "wire garbage (dead-lettered), cycling through every kind.")
@click.option("--bad-kinds", default=",".join(INJECTED_KINDS), show_default=False,
              help=f"Comma-separated kinds to inject (default all): {', '.join(INJECTED_KINDS)}.")
@click.option("--duplicate-ratio", default=0.01, show_default=True, type=_RATIO,
              help="Share of identical re-sends of earlier payments (deduplicated).")
@click.option("--conflict-ratio", default=0.002, show_default=True, type=_RATIO,
              help="Share of earlier payment_ids re-sent with another amount (rejected).")
@click.option("--refund-ratio", default=0.03, show_default=True, type=_RATIO,
              help="Share of valid payments that get refunds (full, partial, several partials, "
                   "over-refund, re-send, conflict, race, unknown payment, declined payment, "
                   "late), signed with the merchant's key, to refunds.requested.")
@click.option("--refund-delay-ms", default=5_000, show_default=True,
              type=click.IntRange(min=0),
              help="Send a payment's refunds this long after it (only a MATCHED payment is "
                   "refundable: earlier ones are rejected PAYMENT_NOT_CAPTURED).")
@click.option("--refund-late-delay-ms", default=0, show_default=True,
              type=click.IntRange(min=0),
              help="Delay of the late scenario, past the payment's batch (window + grace); "
                   "0 leaves it out. The run waits for its last refund.")
@click.option("--channel-seed", type=int, default=None,
              help="The channel simulator's --seed: refunds then target only payments it "
                   "captures cleanly, and refunds of payments it declines are planned "
                   "(expected PAYMENT_NOT_CAPTURED). Default: no prediction.")
@click.option("--channel-decline-rate", default=0.05, show_default=True, type=_RATIO,
              help="The channel simulator's --decline-rate (with --channel-seed).")
@click.option("--channel-fault-rate", default=0.02, show_default=True, type=_RATIO,
              help="The channel simulator's --fault-rate (with --channel-seed).")
@click.option("--channel-refund-decline-rate", default=0.02, show_default=True, type=_RATIO,
              help="The channel simulator's --refund-decline-rate (with --channel-seed).")
@click.option("--channel-refund-fault-rate", default=0.02, show_default=True, type=_RATIO,
              help="The channel simulator's --refund-fault-rate (with --channel-seed).")
@click.option("--channel-reversal-rate", default=0.005, show_default=True, type=_RATIO,
              help="The channel simulator's --reversal-rate (with --channel-seed): payments it "
                   "reverses get no refunds and are counted in the report.")
@click.option("--channel-refund-reversal-rate", default=0.01, show_default=True, type=_RATIO,
              help="The channel simulator's --refund-reversal-rate (with --channel-seed): "
                   "accepted refunds it reverses are counted in the report.")
@click.option("--channel-dispute-rate", default=0.02, show_default=True, type=_RATIO,
              help="The channel simulator's --dispute-rate, 0 for its --no-disputes (with "
                   "--channel-seed): payments it may dispute get no refunds.")
@topic_prefix_option
@click.option("--dry-run", is_flag=True, help="Generate and summarise without publishing.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the run summary and expected accounting as JSON.")
def simulate_orders(
    count: int, rate: float, seed: int | None, merchants_file: Path | None, bad_ratio: float,
    bad_kinds: str, duplicate_ratio: float, conflict_ratio: float, refund_ratio: float,
    refund_delay_ms: int, refund_late_delay_ms: int, channel_seed: int | None,
    channel_decline_rate: float, channel_fault_rate: float, channel_refund_decline_rate: float,
    channel_refund_fault_rate: float, channel_reversal_rate: float,
    channel_refund_reversal_rate: float, channel_dispute_rate: float, topic_prefix: str,
    dry_run: bool, report_path: Path | None,
) -> None:
    """Publish a realistic, seed-reproducible flow of payment requests to payments.requested.

    Valid payments go to ACTIVE merchants (Zipf-like mix), with wallets dominant in CN and
    cards abroad, currencies matching the payer's region and long-tailed integer amounts.
    The summary ends with what validate+route must do with the run:
    in = routed + rejected + dead_lettered + deduplicated.
    Requests are signed with the keyring SETTLE_SIGNING_KEYRING names; with
    SETTLE_SIGNATURES=required the signature faults (unsigned, unknown key, another
    merchant's key, tampered after signing) are injected too. Refunds of a share of the
    valid payments follow on refunds.requested (see --refund-ratio); the summary counts them
    by scenario with the decision the reconcile stage must make.
    """
    seed = seed if seed is not None else time.time_ns() // 1_000_000 % 10**9
    entries = load_merchants(merchants_file or sample_merchants_path())
    topic = topic_prefix + PAYMENTS_REQUESTED
    settings = _settings()
    try:
        keyring = configured_keyring(settings)
    except KeyringError:
        if not dry_run:
            raise
        keyring = None
    mix = OrderMix(bad_ratio=bad_ratio, duplicate_ratio=duplicate_ratio,
                   conflict_ratio=conflict_ratio, bad_kinds=_csv(bad_kinds),
                   keyring=keyring if settings.signing.required else None)
    refund_topic = topic_prefix + REFUNDS_REQUESTED
    stats = FlowStats(refund_topic=refund_topic if refund_ratio > 0 else None)
    channel = None if channel_seed is None else ChannelSimConfig(
        seed=channel_seed, decline_rate=channel_decline_rate, fault_rate=channel_fault_rate,
        refund_decline_rate=channel_refund_decline_rate,
        refund_fault_rate=channel_refund_fault_rate, reversal_rate=channel_reversal_rate,
        refund_reversal_rate=channel_refund_reversal_rate,
        disputes=DisputeSimConfig(rate=channel_dispute_rate))
    refund_mix = RefundMix(ratio=refund_ratio, delay_ms=refund_delay_ms,
                           late_delay_ms=refund_late_delay_ms, channel=channel)
    planner = RefundPlanner(seed, refund_mix) if refund_ratio > 0 else None
    console.print(f"seed [bold]{seed}[/] · {count} records · "
                  f"{'unlimited' if rate == 0 else f'{rate:g}/s'} · topic {topic}")
    if dry_run:
        publish_orders(None, topic, generate_orders(seed, count, entries, mix), stats,
                       refunds=planner, refund_topic=refund_topic, channel=channel)
    else:
        from producers.metrics import serve

        serve(settings.runtime)  # /metrics on SETTLE_METRICS_PORT while it publishes
        with registry_client(settings) as registry:
            # Garbage built from a real body carries the real schema id, so only its one
            # intended defect makes it undecodable.
            schema_id = registry.register(value_subject(topic), schema_str_for("PaymentRequested"))
            orders = generate_orders(seed, count, entries, replace(mix, schema_id=schema_id))
            signer = RequestSigner(keyring) if keyring is not None else None
            with AvroProducer(settings.kafka, registry, client_id="order-sim",
                              on_delivery=stats.on_delivery, signer=signer) as producer, \
                    progress_bar() as progress:
                task = progress.add_task("orders", total=count, rate="")

                def advance(_order: SimulatedOrder) -> None:
                    elapsed_s = progress.tasks[task].elapsed or 0.0
                    shown = f"{stats.sent / elapsed_s:,.0f}/s" if elapsed_s else ""
                    progress.update(task, advance=1, rate=shown)

                publish_orders(producer, topic, orders, stats, rate, on_sent=advance,
                               refunds=planner, refund_topic=refund_topic, channel=channel)
    for table in summary_tables(stats, topic, dry_run):
        console.print(table)
    if report_path is not None:
        report = {"seed": seed, "count": count, "topic": topic, "rate_per_s": rate,
                  "mix": {"bad_ratio": bad_ratio, "duplicate_ratio": duplicate_ratio,
                          "conflict_ratio": conflict_ratio, "bad_kinds": list(mix.bad_kinds),
                          "refund_ratio": refund_ratio, "refund_delay_ms": refund_delay_ms,
                          "refund_late_delay_ms": refund_late_delay_ms,
                          "channel_seed": channel_seed,
                          **({} if channel is None else {
                              "channel_reversal_rate": channel.reversal_rate,
                              "channel_refund_reversal_rate": channel.refund_reversal_rate,
                              "channel_dispute_rate": channel.disputes.rate})},
                  **stats.to_dict()}
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"report written to {report_path}")
    if stats.failed:
        raise click.ClickException(f"{stats.failed} record(s) failed delivery: "
                                   f"{stats.first_error}")


@simulate.command("channels")
@click.option("--seed", default=0, show_default=True,
              help="Seeds the per-payment decisions (hash of seed and payment_id).")
@click.option("--latency-ms", default=50, show_default=True, type=click.IntRange(min=0),
              help="Typical answer latency; each payment gets 0.5x-1.5x of it.")
@click.option("--decline-rate", default=0.05, show_default=True, type=_RATIO,
              help="Share of payments the channel declines (FAILED with a decline code).")
@click.option("--fault-rate", default=0.02, show_default=True, type=_RATIO,
              help="Share of payments that get one injected fault.")
@click.option("--faults", default=",".join(FAULTS), show_default=True,
              help="Comma-separated faults to draw from.")
@click.option("--late-ms", default=20_000, show_default=True, type=click.IntRange(min=0),
              help="Delay of a late answer; set it beyond the reconciler's SLA.")
@click.option("--group", default=DEFAULT_GROUP, show_default=True, help="Consumer group.")
@click.option("--channels", "channel_names", default=",".join(CHANNELS), show_default=True,
              help="Channels to simulate (one routed topic each).")
@click.option("--idle-exit-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds without input (then send what is scheduled).")
@click.option("--max-records", type=click.IntRange(min=1), default=None,
              help="Stop after this many routed records (then send what is scheduled).")
@click.option("--refunds/--no-refunds", default=True, show_default=True,
              help="Also answer routed refunds (refunds.routed) on "
                   "channel.refund_confirmations; --no-refunds leaves them to another client.")
@click.option("--refund-decline-rate", default=0.02, show_default=True, type=_RATIO,
              help="Share of routed refunds the channel fails (FAILED with a decline code).")
@click.option("--refund-fault-rate", default=0.02, show_default=True, type=_RATIO,
              help="Share of routed refunds that get one injected fault.")
@click.option("--refund-faults", default=",".join(REFUND_FAULTS), show_default=True,
              help="Comma-separated refund faults to draw from.")
@click.option("--reversal-rate", default=0.005, show_default=True, type=_RATIO,
              help="Share of payments answered SUCCEEDED (without a fault) the channel later "
                   "reverses: a second confirmation, status REVERSED, full amount, its own "
                   "confirmation_id. 0 turns it off.")
@click.option("--refund-reversal-rate", default=0.01, show_default=True, type=_RATIO,
              help="Share of refunds answered SUCCEEDED (without a fault) that come back: a "
                   "second refund confirmation, status REVERSED, for the refund's amount. "
                   "0 turns it off.")
@click.option("--reversal-delay-ms", default=3_000, show_default=True,
              type=click.IntRange(min=0),
              help="A reversal comes this long after the SUCCEEDED answer it reverses.")
@click.option("--disputes/--no-disputes", default=True, show_default=True,
              help="Dispute a share of the captured card and UnionPay payments on "
                   "channel.disputes (opened, perhaps staged, then decided).")
@click.option("--dispute-rate", default=0.02, show_default=True, type=_RATIO,
              help="Share of the payments answered SUCCEEDED (no fault, not reversed) on "
                   "CARD and UNIONPAY that the payer disputes.")
@click.option("--dispute-open-delay-ms", default=2_000, show_default=True,
              type=click.IntRange(min=0),
              help="A dispute opens this long after the payment's SUCCEEDED answer.")
@click.option("--dispute-late-open-ms", default=12_000, show_default=True,
              type=click.IntRange(min=0),
              help="A quarter of the disputes open this long after it instead (set it past "
                   "the settlement window and its grace: they hit settled payments).")
@click.option("--dispute-decide-delay-ms", default=3_000, show_default=True,
              type=click.IntRange(min=0),
              help="A dispute is decided (won, lost, accepted, expired, cancelled) this long "
                   "after its last stage opened.")
@topic_prefix_option
def simulate_channels(
    seed: int, latency_ms: int, decline_rate: float, fault_rate: float, faults: str,
    late_ms: int, group: str, channel_names: str, idle_exit_s: float | None,
    max_records: int | None, refunds: bool, refund_decline_rate: float,
    refund_fault_rate: float, refund_faults: str, reversal_rate: float,
    refund_reversal_rate: float, reversal_delay_ms: int, disputes: bool, dispute_rate: float,
    dispute_open_delay_ms: int, dispute_late_open_ms: int, dispute_decide_delay_ms: int,
    topic_prefix: str,
) -> None:
    """Answer routed payments like the channel gateways would, on channel.confirmations.

    Consumes payments.routed.<channel> (read_committed, committing only after answering) and
    publishes a ChannelConfirmation per payment, keyed by payment_id, after the latency.
    Declines and faults (amount_mismatch, currency_mismatch, missing, duplicate, orphan,
    late) are decided by a hash of seed and payment_id, so a replay decides the same.
    Routed refunds of the simulated channels (refunds.routed, the channel in the record) are
    answered alike with a ChannelRefundConfirmation on channel.refund_confirmations (faults
    amount_mismatch, missing, duplicate: the same answer redelivered and a second one, late).
    A share of the clean SUCCEEDED payments and refunds are reversed --reversal-delay-ms
    later (status REVERSED, decided by the same hash). A share of the captured CARD and
    UNIONPAY payments are disputed on channel.disputes: OPENED (some at PRE_DISPUTE first,
    some escalated to PRE_ARBITRATION), then WON, LOST (with a fee), ACCEPTED, EXPIRED or
    CANCELLED, some after the payment's batch (--no-disputes turns them off).
    Runs until Ctrl-C, --idle-exit-s or --max-records, then prints per-channel and per-fault
    counts. The pipeline never depends on it: any client may publish confirmations.
    """
    unknown = sorted(set(_csv(channel_names)) - set(CHANNELS))
    if unknown:
        raise click.BadParameter(
            f"unknown channel(s) {', '.join(unknown)}", param_hint="--channels"
        )
    # `make down` and the demo stop processes with SIGTERM: treat it like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from producers.metrics import serve

    settings = _settings()
    serve(settings.runtime)  # /metrics on SETTLE_METRICS_PORT (producer and confirmation counters)
    config = ChannelSimConfig(
        seed=seed, latency_ms=latency_ms, decline_rate=decline_rate, fault_rate=fault_rate,
        faults=_csv(faults), late_ms=late_ms, refund_decline_rate=refund_decline_rate,
        refund_fault_rate=refund_fault_rate, refund_faults=_csv(refund_faults),
        reversal_rate=reversal_rate, refund_reversal_rate=refund_reversal_rate,
        reversal_delay_ms=reversal_delay_ms,
        disputes=DisputeSimConfig(
            rate=dispute_rate if disputes else 0.0, open_delay_ms=dispute_open_delay_ms,
            late_open_ms=dispute_late_open_ms, decide_delay_ms=dispute_decide_delay_ms),
    )
    routed = [f"{topic_prefix}payments.routed.{name}" for name in _csv(channel_names)]
    refunds_topic = topic_prefix + REFUNDS_ROUTED if refunds else None
    with registry_client(settings) as registry:
        simulator = ChannelSimulator(
            settings, registry, config, group=group, routed_topics=routed,
            confirmations_topic=topic_prefix + CHANNEL_CONFIRMATIONS,
            refunds_topic=refunds_topic,
            refund_confirmations_topic=topic_prefix + REFUND_CONFIRMATIONS,
            refund_channels=_csv(channel_names),
            disputes_topic=topic_prefix + CHANNEL_DISPUTES if disputes else None,
        )
        answering = [*routed, *([refunds_topic] if refunds_topic else [])]
        if disputes and config.disputes.rate > 0:
            answering.append(f"disputes to {topic_prefix + CHANNEL_DISPUTES}")
        console.print(f"answering {', '.join(answering)} as group {group} "
                      f"(seed {seed}); Ctrl-C to stop")
        with console.status("waiting for routed payments...") as status:

            def show(stats: SimStats, scheduled: int) -> None:
                status.update(f"consumed {stats.consumed_total} · published "
                              f"{sum(stats.published.values())} · refunds answered "
                              f"{sum(stats.refunds_published.values())} · dispute records "
                              f"{stats.disputes.published} · scheduled "
                              f"{scheduled}")

            stats = simulator.run(max_records=max_records, idle_exit_s=idle_exit_s,
                                  on_progress=show)
    for table in reports.channel_tables(stats, config):
        console.print(table)
