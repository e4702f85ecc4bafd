"""Reversals: the channel simulator's seeded decisions to take back a captured payment or a
refund, their REVERSED answers, and the order flow's plan and report around them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from producers.channels import (
    FAULT_NONE,
    PAYMENT_REVERSED,
    REFUND_REVERSED,
    REVERSED,
    ChannelSimConfig,
    Decision,
    decide,
    decide_refund,
    expected_refund_results,
    expected_results,
    plan_confirmations,
    plan_refund_confirmations,
    reversal_confirmation_id,
)
from producers.cli import simulate
from producers.errors import SimulatorConfigError
from producers.merchants import load_merchants, sample_merchants_path
from producers.order_flow import FlowStats, publish_orders
from producers.orders import VALID, generate_orders
from producers.refund_flow import ACCEPTED, RACE, REJECTED, RefundMix, RefundPlanner
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from settlement.reconciliation import MATCHED, SUCCEEDED

NOW = 1_750_000_000_000
MERCHANTS = load_merchants(sample_merchants_path())


def payment_ids(n: int) -> list[str]:
    return [f"pay-5-{i:08d}" for i in range(n)]


def routed_payment(payment_id: str, amount: int = 12_345) -> dict[str, Any]:
    return {"payment_id": payment_id, "channel": "ALIPAY", "amount_minor": amount,
            "currency": "CNY"}


def routed_refund(n: int, amount: int = 2_500) -> dict[str, Any]:
    return {"refund_id": f"rf-{n}", "payment_id": f"pay-{n // 3}", "merchant_id": "m-0001",
            "order_id": None, "channel": "CARD", "channel_txn_id": None, "amount_minor": amount,
            "currency": "USD", "reason": None, "requested_at": NOW, "routed_at": NOW}


# -- decisions ----------------------------------------------------------------------------------


def test_payment_reversals_are_seeded_deterministic_and_only_of_clean_captures() -> None:
    config = ChannelSimConfig(seed=3, fault_rate=0.2, decline_rate=0.1, reversal_rate=0.1)
    decisions = [decide(pid, config) for pid in payment_ids(20_000)]
    assert decisions == [decide(pid, config) for pid in payment_ids(20_000)]
    reversed_ = [d for d in decisions if d.reversed]
    assert all(d.fault == FAULT_NONE and not d.declined for d in reversed_)
    clean = [d for d in decisions if d.fault == FAULT_NONE and not d.declined]
    assert 0.085 < len(reversed_) / len(clean) < 0.115
    other = ChannelSimConfig(seed=4, fault_rate=0.2, decline_rate=0.1, reversal_rate=0.1)
    assert [d.reversed for d in decisions] != [
        decide(pid, other).reversed for pid in payment_ids(20_000)]


def test_reversals_leave_the_other_decisions_alone_and_rate_zero_turns_them_off() -> None:
    on = ChannelSimConfig(seed=8, fault_rate=0.3, decline_rate=0.2, reversal_rate=0.5,
                          refund_reversal_rate=0.5)
    off = ChannelSimConfig(seed=8, fault_rate=0.3, decline_rate=0.2, reversal_rate=0.0,
                           refund_reversal_rate=0.0)
    for pid in payment_ids(2_000):
        a, b = decide(pid, on), decide(pid, off)
        assert (a.fault, a.declined, a.decline_code) == (b.fault, b.declined, b.decline_code)
        assert not b.reversed
        ra, rb = decide_refund(pid, "rf-1", on), decide_refund(pid, "rf-1", off)
        assert (ra.fault, ra.declined, ra.decline_code) == (rb.fault, rb.declined,
                                                            rb.decline_code)
        assert not rb.reversed
        assert [p.record for p in plan_confirmations(routed_payment(pid), NOW, off)] == [
            p.record for p in plan_confirmations(routed_payment(pid), NOW, on)
            if p.record["status"] != REVERSED]


def test_refund_reversals_are_seeded_and_only_of_clean_successes() -> None:
    config = ChannelSimConfig(seed=2, refund_fault_rate=0.2, refund_decline_rate=0.1,
                              refund_reversal_rate=0.2)
    decisions = [decide_refund(f"pay-{n}", f"rf-{n}", config) for n in range(10_000)]
    reversed_ = [d for d in decisions if d.reversed]
    assert reversed_ and all(d.fault == FAULT_NONE and not d.declined for d in reversed_)
    clean = [d for d in decisions if d.fault == FAULT_NONE and not d.declined]
    assert 0.17 < len(reversed_) / len(clean) < 0.23
    # Keyed by payment and refund: another refund of the same payment decides anew.
    assert [decide_refund("pay-1", f"rf-{n}", config).reversed for n in range(200)].count(True)


def test_reversal_settings_are_checked() -> None:
    with pytest.raises(SimulatorConfigError):
        ChannelSimConfig(reversal_rate=1.5)
    with pytest.raises(SimulatorConfigError):
        ChannelSimConfig(refund_reversal_rate=-0.1)
    with pytest.raises(SimulatorConfigError):
        ChannelSimConfig(reversal_delay_ms=-1)


# -- the answers --------------------------------------------------------------------------------


def test_a_reversed_payment_is_answered_succeeded_then_reversed_for_the_full_amount() -> None:
    config = ChannelSimConfig(seed=1, fault_rate=0.0, decline_rate=0.0, reversal_rate=1.0,
                              reversal_delay_ms=4_000, latency_ms=50)
    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, "channel.confirmations", "ChannelConfirmation")
    de = AvroDeserializer(registry)
    for pid in payment_ids(50):
        answer, reversal = plan_confirmations(routed_payment(pid, 9_999), NOW, config)
        assert answer.record["status"] == SUCCEEDED and reversal.record["status"] == REVERSED
        assert reversal.record["amount_minor"] == answer.record["amount_minor"] == 9_999
        assert reversal.record["currency"] == "CNY" and reversal.record["decline_code"] is None
        assert reversal.record["confirmation_id"] == reversal_confirmation_id(pid)
        assert reversal.record["confirmation_id"] != answer.record["confirmation_id"]
        assert reversal.due_ms == answer.due_ms + 4_000 == reversal.record["confirmed_at"]
        assert reversal.key == pid and not reversal.is_refund
        decoded = de.decode(ser.encode(reversal.record))
        assert decoded["status"] == REVERSED and decoded["payment_id"] == pid
        assert expected_results(decide(pid, config)) == (MATCHED, PAYMENT_REVERSED)
    # Replayed later, the same ids (so the reversal dedupes downstream too).
    again = plan_confirmations(routed_payment("pay-5-00000001"), NOW + 60_000, config)
    first = plan_confirmations(routed_payment("pay-5-00000001"), NOW, config)
    assert [p.record["confirmation_id"] for p in again] == [
        p.record["confirmation_id"] for p in first]


def test_declined_or_faulted_payments_are_never_reversed() -> None:
    declined = ChannelSimConfig(fault_rate=0.0, decline_rate=1.0, reversal_rate=1.0)
    faulted = ChannelSimConfig(fault_rate=1.0, decline_rate=0.0, reversal_rate=1.0)
    for pid in payment_ids(300):
        for config in (declined, faulted):
            assert not decide(pid, config).reversed
            assert all(p.record["status"] != REVERSED
                       for p in plan_confirmations(routed_payment(pid), NOW, config))


def test_a_reversed_refund_is_answered_succeeded_then_reversed_for_its_amount() -> None:
    config = ChannelSimConfig(refund_fault_rate=0.0, refund_decline_rate=0.0,
                              refund_reversal_rate=1.0, reversal_delay_ms=2_000)
    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, "channel.refund_confirmations", "ChannelRefundConfirmation")
    de = AvroDeserializer(registry)
    for n in range(30):
        answer, reversal = plan_refund_confirmations(routed_refund(n, 700 + n), NOW, config)
        assert (answer.record["status"], reversal.record["status"]) == (SUCCEEDED, REVERSED)
        assert reversal.record["amount_minor"] == 700 + n
        assert reversal.record["confirmation_id"] != answer.record["confirmation_id"]
        assert reversal.record["channel_refund_id"] == answer.record["channel_refund_id"]
        assert reversal.due_ms == answer.due_ms + 2_000 and reversal.is_refund
        assert de.decode(ser.encode(reversal.record))["status"] == REVERSED
        decision = decide_refund(f"pay-{n // 3}", f"rf-{n}", config)
        assert expected_refund_results(decision) == (MATCHED, REFUND_REVERSED)
    assert expected_refund_results(Decision(FAULT_NONE, False, None)) == (MATCHED,)


# -- the order flow: no refunds of reversed payments, reversed refunds counted -----------------


def payment(n: int, amount: int = 10_000) -> dict[str, Any]:
    return {"payment_id": f"pay-9-{n:08d}", "merchant_id": "m-0001", "amount_minor": amount,
            "currency": "CNY"}


def plan_refunds(channel: ChannelSimConfig, count: int = 4_000) -> RefundPlanner:
    planner = RefundPlanner(1, RefundMix(ratio=0.3, channel=channel))
    for n in range(count):
        planner.on_payment(payment(n, 2 + n % 3_000), NOW + n)
    return planner


def test_the_planner_leaves_reversed_payments_without_refunds() -> None:
    channel = ChannelSimConfig(seed=6, reversal_rate=0.2, refund_reversal_rate=0.0)
    planner = plan_refunds(channel)
    refunds = planner.drain()
    refunded = {r.key for r in refunds}
    reversed_ = {payment(n)["payment_id"] for n in range(4_000)
                 if decide(payment(n)["payment_id"], channel).reversed}
    assert len(reversed_) > 400 and refunded and not refunded & reversed_
    assert planner.planned.reversed == 0 and not any(r.reversed for r in refunds)


def test_reversed_refunds_stay_accepted_and_are_counted_exactly() -> None:
    channel = ChannelSimConfig(seed=6, reversal_rate=0.0, refund_reversal_rate=0.3)
    planner = plan_refunds(channel)
    refunds = planner.drain()
    marked = [r for r in refunds if r.reversed]
    assert marked and all(r.expected == ACCEPTED for r in marked)
    for refund in refunds:
        decision = decide_refund(refund.key, refund.record["refund_id"], channel)
        assert refund.reversed == (refund.expected == ACCEPTED and decision.reversed)
    accounting = planner.planned
    assert accounting.balanced and accounting.reversed == len(marked)
    assert accounting.reversed_minor == Counter(
        {"CNY": sum(r.record["amount_minor"] for r in marked)})
    assert accounting.to_dict()["reversed"] == len(marked)
    # A race whose accepted refunds are reversed sends no racing request (its fate would
    # depend on when the reversal arrives); the other races keep theirs.
    races: dict[str, list[Any]] = {}
    for refund in refunds:
        if refund.scenario == RACE:
            races.setdefault(refund.key, []).append(refund)
    assert races
    kinds = Counter(any(r.reversed for r in group) for group in races.values())
    assert kinds[True] and kinds[False]
    for group in races.values():
        if any(r.reversed for r in group):
            assert all(r.expected == ACCEPTED for r in group)
        else:
            assert group[-1].expected == REJECTED


def test_the_order_flow_counts_the_payments_the_channel_reverses() -> None:
    channel = ChannelSimConfig(seed=2, reversal_rate=0.1)
    orders = list(generate_orders(4, 600, MERCHANTS, clock=lambda: NOW))
    stats = publish_orders(None, "p", orders, FlowStats(), channel=channel)
    valid = [o for o in orders if o.kind == VALID and o.record is not None]
    reversed_ = [o for o in valid if decide(o.payment_id, channel).reversed]
    assert reversed_ and stats.payment_reversals == len(reversed_)
    minor: Counter[str] = Counter()
    for order in reversed_:
        assert order.record is not None
        minor[order.record["currency"]] += order.record["amount_minor"]
    assert stats.to_dict()["payment_reversals"] == {
        "count": len(reversed_), "minor_by_currency": dict(sorted(minor.items()))}
    unknown = publish_orders(None, "p", orders, FlowStats())
    assert unknown.payment_reversals is None
    assert unknown.to_dict()["payment_reversals"] is None
    assert unknown.to_dict()["refunds"]["reversed"] is None


def test_cli_report_counts_reversals_with_the_channel_settings(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ["orders", "--count", "400", "--seed", "5", "--rate", "0", "--dry-run",
            "--refund-ratio", "0.3", "--channel-seed", "3", "--channel-reversal-rate", "0.1",
            "--channel-refund-reversal-rate", "0.2", "--report", str(report)]
    result = CliRunner().invoke(simulate, args, env={"SETTLE_SIGNATURES": "off"},
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["payment_reversals"]["count"] > 0
    assert data["refunds"]["reversed"] > 0
    assert data["refunds"]["reversed"] <= data["refunds"]["accepted"]
    assert data["mix"]["channel_reversal_rate"] == 0.1
    assert "payment reversals (channel)" in result.output
    without = tmp_path / "without.json"
    result = CliRunner().invoke(simulate, [*args[:8], "--report", str(without)],
                                env={"SETTLE_SIGNATURES": "off"})
    assert result.exit_code == 0, result.output
    assert json.loads(without.read_text())["payment_reversals"] is None
