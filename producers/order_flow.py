"""Publishing a simulated order flow: rate limiting, delivery counting and the run summary."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from producers import metrics
from producers.channels import ChannelSimConfig, decide
from producers.clients import wall_clock_ms
from producers.order_faults import BAD_REASONS, GARBAGE_ERRORS
from producers.orders import CONFLICT, DUPLICATE, OUTCOMES, VALID, Accounting, SimulatedOrder
from producers.producer import DeliveryReport
from producers.refund_flow import (
    REFUND_OUTCOMES,
    SCENARIOS,
    PlannedRefund,
    RefundAccounting,
    RefundPlanner,
)

# Carried in a header, never in the value: the kind must not change a payment's fingerprint.
KIND_HEADER: Final = "settle-sim-kind"


class Publisher(Protocol):
    """The two AvroProducer methods the flow needs (a fake in unit tests)."""

    def send(
        self, topic: str, key: str, record: Any, headers: dict[str, str] | None = None
    ) -> None: ...

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None,
        headers: dict[str, str] | None = None,
    ) -> None: ...


@dataclass(slots=True)
class FlowStats:
    """What a run did (sent, delivered) next to what the pipeline must do with it (expected)."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    first_error: str | None = None
    by_method: Counter[str] = field(default_factory=Counter)
    by_currency: Counter[str] = field(default_factory=Counter)
    expected: Accounting = field(default_factory=Accounting)
    # Refund requests sent (by scenario) and what the reconcile stage must decide for them.
    refunds: RefundAccounting = field(default_factory=RefundAccounting)
    refunds_unsent: int = 0  # planned, not sent (the run was interrupted)
    refunds_delivered: int = 0
    refund_topic: str | None = None
    # Valid payments the channel simulator will reverse, and their amounts per currency:
    # None when its settings are not known (a reversal is then not predictable).
    payment_reversals: int | None = None
    payment_reversed_minor: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    interrupted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_delivery(self, report: DeliveryReport) -> None:
        """Delivery-report callback (runs on the producer's poll, possibly another thread)."""
        with self._lock:
            if report.ok:
                if self.refund_topic is not None and report.topic == self.refund_topic:
                    self.refunds_delivered += 1
                else:
                    self.delivered += 1
            else:
                self.failed += 1
                self.first_error = self.first_error or f"{report.key}: {report.error}"

    @property
    def rate_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def reversals_known(self) -> bool:
        return self.payment_reversals is not None

    def to_dict(self) -> dict[str, Any]:
        known = self.reversals_known
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "by_method": dict(sorted(self.by_method.items())),
            "by_currency": dict(sorted(self.by_currency.items())),
            "expected": self.expected.to_dict(),
            # Reversals the channel simulator's settings decide (null: settings not known).
            "payment_reversals": None if not known else {
                "count": self.payment_reversals,
                "minor_by_currency": dict(sorted(self.payment_reversed_minor.items())),
            },
            "refunds": {**self.refunds.to_dict(), "unsent": self.refunds_unsent,
                        "delivered": self.refunds_delivered, "topic": self.refund_topic,
                        **({} if known else {"reversed": None,
                                             "reversed_minor_by_currency": None})},
        }


def publish_order(publisher: Publisher, topic: str, order: SimulatedOrder) -> None:
    """Send one order: a record through the Avro serializer, garbage as raw bytes."""
    headers = {KIND_HEADER: order.kind}
    metrics.ORDERS.labels(order.kind).inc()
    if order.record is not None:
        publisher.send(topic, order.key, order.record, headers=headers)
    else:
        publisher.send_raw(topic, order.key.encode("utf-8"), order.raw, headers=headers)


class RefundSender:
    """Sends planned refunds when due; a re-send repeats the very record sent before."""

    def __init__(self, publisher: Publisher | None, topic: str, planner: RefundPlanner,
                 stats: FlowStats, clock_ms: Callable[[], int]) -> None:
        self.publisher, self.topic, self.planner = publisher, topic, planner
        self.stats, self.clock_ms = stats, clock_ms
        self._sent: dict[int, dict[str, Any]] = {}

    def send_due(self) -> None:
        for refund in self.planner.due(self.clock_ms()):
            self.send(refund)

    def send(self, refund: PlannedRefund) -> None:
        if refund.same_as is not None and refund.same_as in self._sent:
            record = dict(self._sent[refund.same_as])
        else:
            record = {**refund.record, "requested_at": self.clock_ms()}
        self._sent[refund.seq] = record
        metrics.REFUNDS.labels(refund.scenario).inc()
        if self.publisher is not None:
            self.publisher.send(self.topic, refund.key, record,
                                headers={KIND_HEADER: f"refund-{refund.scenario}"})
        self.stats.refunds.add(refund)

    def wait_for_the_rest(self, sleep: Callable[[float], None]) -> None:
        """Send every refund still planned when it is due (a dry run sends them at once)."""
        if self.publisher is None:
            for refund in self.planner.drain():
                self.send(refund)
            return
        while True:
            self.send_due()
            due_ms = self.planner.next_due_ms()
            if due_ms is None:
                return
            sleep(min(0.5, max(0.0, (due_ms - self.clock_ms()) / 1000)))


def publish_orders(
    publisher: Publisher | None,
    topic: str,
    orders: Iterable[SimulatedOrder],
    stats: FlowStats,
    rate_per_s: float = 0.0,
    on_sent: Callable[[SimulatedOrder], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    refunds: RefundPlanner | None = None,
    refund_topic: str = "refunds.requested",
    clock_ms: Callable[[], int] = wall_clock_ms,
    channel: ChannelSimConfig | None = None,
) -> FlowStats:
    """Publish orders at up to `rate_per_s` (0: as fast as possible); None publisher = dry run.

    The pace is kept against the start time, not per record, so a slow send is caught up on
    instead of lowering the rate for the rest of the run. With `refunds`, each valid payment
    may get refunds (see producers.refund_flow), sent to `refund_topic` when due: between
    orders, then after the last order until the last refund is out (a dry run counts them
    without waiting). With the channel simulator's settings (`channel`), the valid payments it
    will reverse are counted (stats.payment_reversals; None without them).
    """
    started = monotonic()
    if channel is not None and stats.payment_reversals is None:
        stats.payment_reversals = 0
    sender = None
    if refunds is not None:
        sender = RefundSender(publisher, refund_topic, refunds, stats, clock_ms)
        stats.refund_topic = refund_topic  # before any delivery report can come
    try:
        for n, order in enumerate(orders):
            if rate_per_s > 0:
                delay_s = started + n / rate_per_s - monotonic()
                if delay_s > 0:
                    sleep(delay_s)
            if publisher is not None:
                publish_order(publisher, topic, order)
            stats.sent += 1
            stats.expected.add(order)
            if order.record is not None and order.kind == VALID:
                stats.by_method[order.record["method"]] += 1
                stats.by_currency[order.record["currency"]] += 1
                if channel is not None and decide(order.payment_id, channel).reversed:
                    stats.payment_reversals = (stats.payment_reversals or 0) + 1
                    stats.payment_reversed_minor[order.record["currency"]] += int(
                        order.record["amount_minor"])
                if refunds is not None:
                    refunds.on_payment(order.record, clock_ms())
            if on_sent is not None:
                on_sent(order)
            if sender is not None:
                sender.send_due()
        if sender is not None:
            sender.wait_for_the_rest(sleep)
    except KeyboardInterrupt:
        # Stop cleanly: what was sent is still flushed and summarised (expected covers it).
        stats.interrupted = True
    if refunds is not None:
        stats.refunds_unsent = len(refunds)
    stats.elapsed_s = monotonic() - started
    return stats


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def _counter_text(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.most_common()) or "-"


def summary_tables(stats: FlowStats, topic: str, dry_run: bool = False) -> list[Table]:
    """The run summary: delivery, mix of valid payments, injected input, expected outcomes."""
    run = Table(title="order flow" + (" (dry run: nothing published)" if dry_run else ""))
    run.add_column("metric")
    run.add_column("value", justify="right")
    run.add_row("topic", topic)
    sent = f"{stats.sent} (interrupted)" if stats.interrupted else str(stats.sent)
    run.add_row("sent", sent)
    run.add_row("delivered", "-" if dry_run else str(stats.delivered))
    if stats.failed:
        run.add_row("[red]failed[/]", f"[red]{stats.failed}[/]")
        run.add_row("first error", stats.first_error or "")
    run.add_row("elapsed", f"{stats.elapsed_s:.2f} s")
    run.add_row("rate achieved", f"{stats.rate_per_s:,.1f} /s")
    kinds = stats.expected.kinds
    run.add_row("valid", str(kinds[VALID]))
    run.add_row("duplicates", str(kinds[DUPLICATE]))
    run.add_row("conflicts", str(kinds[CONFLICT]))
    injected = sum(n for kind, n in kinds.items() if kind.startswith(("bad-", "garbage-")))
    run.add_row("bad injected", str(injected))
    run.add_row("payment reversals (channel)",
                "unknown: no channel settings" if stats.payment_reversals is None
                else str(stats.payment_reversals))

    mix = Table(title="valid payments by method and currency")
    mix.add_column("by method")
    mix.add_column("by currency")
    mix.add_row(_counter_text(stats.by_method), _counter_text(stats.by_currency))

    bad = Table(title="injected bad input")
    bad.add_column("kind")
    bad.add_column("count", justify="right")
    bad.add_column("expected reason / error")
    for kind, n in sorted(kinds.items()):
        if kind.startswith(("bad-", "garbage-")):
            bad.add_row(kind, str(n), _reason_of(kind))

    expected = Table(title="expected outcome at validate+route (in = sum of outcomes)")
    expected.add_column("outcome")
    expected.add_column("count", justify="right")
    expected.add_column("detail")
    for outcome in OUTCOMES:
        detail = _counter_text(stats.expected.channels) if outcome == "routed" else ""
        expected.add_row(outcome, str(stats.expected[outcome]), detail)
    expected.add_row("[bold]in[/]", f"[bold]{stats.expected.count}[/]",
                     "balanced" if stats.expected.balanced else "[red]unbalanced[/]")
    tables = [run, mix]
    if injected:
        tables.append(bad)
    tables.append(expected)
    if stats.refund_topic is not None:
        tables.append(refund_table(stats.refunds, stats.refunds_unsent,
                                   stats.reversals_known))
    return tables


def refund_table(refunds: RefundAccounting, unsent: int = 0,
                 reversals_known: bool = False) -> Table:
    """Refund requests sent by scenario, and what the reconcile stage must decide."""
    table = Table(title="refund requests by scenario (expected decision at reconcile)")
    table.add_column("scenario")
    table.add_column("sent", justify="right")
    for outcome in REFUND_OUTCOMES:
        table.add_column(outcome, justify="right")
    by: dict[str, Counter[str]] = {}
    for scenario in SCENARIOS:
        by[scenario] = Counter()
    for (scenario, outcome), n in refunds.by_scenario_outcome.items():
        by[scenario][outcome] += n
    for scenario in SCENARIOS:
        if refunds.scenarios[scenario]:
            table.add_row(scenario, str(refunds.scenarios[scenario]),
                          *(str(by[scenario][o]) for o in REFUND_OUTCOMES))
    table.add_row("[bold]all[/]", f"[bold]{refunds.count}[/]",
                  *(str(refunds.outcomes[o]) for o in REFUND_OUTCOMES))
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(refunds.reasons.items())) or "-"
    reversed_ = (f"; accepted the channel reverses: {refunds.reversed}" if reversals_known
                 else "")
    table.caption = (f"rejections: {reasons}{reversed_}"
                     + (f"; {unsent} planned, not sent" if unsent else ""))
    return table


def _reason_of(kind: str) -> str:
    return BAD_REASONS.get(kind) or GARBAGE_ERRORS.get(kind) or ""
