"""CPU of the refund path in the reconcile processor alone: no broker, no faust.

The same payments (routed payment + SUCCEEDED confirmation each) go through ReconcileProcessor
with an in-memory registry and a dict as its table, once without refunds and once with a
refund request and the channel's SUCCEEDED answer for a share of them, side by side in one
process. Reported: CPU per 1,000 payments both ways, and CPU per refund (request + answer).
Runnable as `settle bench refunds-cpu` or `python -m settle.benchmarks.refunds_cpu`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from schemas.codec import AvroSerializer
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.fees import FeeSchedule
from settlement.reconciliation import ReconPolicy
from stream_processors.reconcile import ReconcileProcessor

T0 = 1_764_000_000_000
FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180")
CHANNELS = ("alipay", "wechat_pay", "unionpay", "card")


@dataclass(frozen=True, slots=True)
class RefundCpu:
    payments: int
    refunds: int
    runs: int
    without_s_per_1000: float  # CPU s per 1,000 payments, no refunds
    with_s_per_1000: float  # CPU s per 1,000 payments, `refunds` of them refunded
    per_refund_us: float  # CPU µs per refund (request + answer)


Records = list[tuple[str, bytes, bytes]]


def _inputs(count: int, ratio: float) -> tuple[InMemoryRegistry, Records, Records]:
    """Encoded payments (routed + confirmation) and refunds (request + answer) of every
    `1 / ratio`-th payment, with the registry that knows their schemas."""
    registry = InMemoryRegistry()
    topics = TopicNames()
    routed = {ch: AvroSerializer(registry, topics.routed(ch), "RoutedPayment") for ch in CHANNELS}
    confs = AvroSerializer(registry, topics.confirmations, "ChannelConfirmation")
    requests = AvroSerializer(registry, topics.refunds_requested, "RefundRequested")
    answers = AvroSerializer(registry, topics.refund_confirmations, "ChannelRefundConfirmation")
    payments: Records = []
    refunds: Records = []
    every = max(1, round(1 / ratio)) if ratio > 0 else 0
    for n in range(count):
        pid, ch = f"p-{n:08d}", CHANNELS[n % len(CHANNELS)]
        key = pid.encode()
        payments.append((topics.routed(ch), key, routed[ch].encode({
            "payment_id": pid, "merchant_id": f"m-{n % 50}", "order_id": f"o-{n}",
            "payer_id": "u", "amount_minor": 10_000 + n % 997, "currency": "CNY",
            "method": ch.upper(), "interface": "APP", "region": "CN", "created_at": T0,
            "metadata": {}, "channel": ch.upper(), "rule_id": "r", "routed_at": T0})))
        payments.append((topics.confirmations, key, confs.encode({
            "confirmation_id": f"c-{n}", "channel": ch.upper(), "channel_txn_id": f"t-{n}",
            "payment_id": pid, "status": "SUCCEEDED", "amount_minor": 10_000 + n % 997,
            "currency": "CNY", "confirmed_at": T0, "decline_code": None})))
        if every and n % every == 0:
            refunds.append((topics.refunds_requested, key, requests.encode({
                "refund_id": f"r-{n}", "payment_id": pid, "merchant_id": f"m-{n % 50}",
                "amount_minor": 5_000, "currency": "CNY", "reason": None,
                "requested_at": T0, "metadata": {}, "signature_key_id": None,
                "signature": None})))
            refunds.append((topics.refund_confirmations, key, answers.encode({
                "confirmation_id": f"rc-{n}", "channel": ch.upper(), "refund_id": f"r-{n}",
                "payment_id": pid, "channel_refund_id": f"cr-{n}", "status": "SUCCEEDED",
                "amount_minor": 5_000, "currency": "CNY", "confirmed_at": T0,
                "decline_code": None})))
    return registry, payments, refunds


def _run(registry: Any, records: Records) -> float:
    store: dict[str, Any] = {}
    policy = ReconPolicy({}, 600_000, 600_000, 600_000)
    proc = ReconcileProcessor(registry, store, policy, FEES, TopicNames(), "ticks",
                              clock=lambda: T0 + 1000)
    started = time.process_time()
    for offset, (topic, key, value) in enumerate(records):
        decision = proc.process(key, value, topic, 0, offset)
        if decision.outcome != "applied":
            raise RuntimeError(f"{topic}@{offset}: {decision.outcome}")
    return time.process_time() - started


def bench_refunds_cpu(count: int = 20_000, runs: int = 3, ratio: float = 0.05) -> RefundCpu:
    registry, payments, refunds = _inputs(count, ratio)
    _run(registry, payments[: min(len(payments), 2000)])  # warm-up
    without, with_ = [], []
    for _ in range(runs):  # alternated, so drift hits both sides alike
        without.append(_run(registry, payments))
        with_.append(_run(registry, payments + refunds))
    w0, w1 = statistics.median(without), statistics.median(with_)
    n_refunds = len(refunds) // 2
    return RefundCpu(count, n_refunds, runs, round(w0 / count * 1000, 4),
                     round(w1 / count * 1000, 4),
                     round((w1 - w0) / max(n_refunds, 1) * 1e6, 1))


def format_report(r: RefundCpu) -> str:
    extra = (r.with_s_per_1000 - r.without_s_per_1000) / r.without_s_per_1000 * 100
    return "\n".join([
        f"reconcile processor alone, {r.payments:,} payments, {r.refunds:,} refunded "
        f"(request + SUCCEEDED answer each), median of {r.runs} alternated runs:",
        f"  CPU s per 1,000 payments without refunds: {r.without_s_per_1000:.4f}",
        f"  CPU s per 1,000 payments with refunds:    {r.with_s_per_1000:.4f} "
        f"(+{extra:.1f} %)",
        f"  CPU per refund (request + answer):        {r.per_refund_us:,.1f} µs",
    ])


if __name__ == "__main__":
    print(format_report(bench_refunds_cpu()))
