"""The order flow's refunds: seeded scenarios, amounts within what each expects, sent when due."""

from __future__ import annotations

from typing import Any

import pytest

from producers.channels import ChannelSimConfig, decide
from producers.errors import SimulatorConfigError
from producers.merchants import load_merchants, sample_merchants_path
from producers.order_flow import FlowStats, publish_orders
from producers.orders import VALID, generate_orders
from producers.refund_flow import (
    ACCEPTED,
    DECLINED,
    DEDUPLICATED,
    DUPLICATE_CONFLICT,
    LATE,
    PAYMENT_NOT_CAPTURED,
    PAYMENT_UNKNOWN,
    REFUND_EXCEEDS_REFUNDABLE,
    REJECTED,
    SCENARIOS,
    PlannedRefund,
    RefundMix,
    RefundPlanner,
)
from settlement.refund_model import valid_refund_id

MERCHANTS = load_merchants(sample_merchants_path())
NOW = 1_750_000_000_000


def payment(n: int, amount: int = 10_000) -> dict[str, Any]:
    return {"payment_id": f"pay-9-{n:08d}", "merchant_id": "m-0001", "amount_minor": amount,
            "currency": "CNY"}


def plan(seed: int = 1, count: int = 3_000, **mix: Any) -> list[PlannedRefund]:
    planner = RefundPlanner(seed, RefundMix(**{"ratio": 0.2, "late_delay_ms": 60_000, **mix}))
    for n in range(count):
        planner.on_payment(payment(n, 1 + n % 5_000), NOW + n)
    return planner.drain()


def test_same_seed_same_plan() -> None:
    assert plan(1) == plan(1)
    assert plan(1) != plan(2)


def test_every_scenario_keeps_its_promise_per_payment() -> None:
    channel = ChannelSimConfig(seed=4, decline_rate=0.1, fault_rate=0.05)
    refunds = plan(channel=channel)
    assert {r.scenario for r in refunds} == set(SCENARIOS)
    by_payment: dict[str, list[PlannedRefund]] = {}
    for refund in refunds:
        assert valid_refund_id(refund.record["refund_id"])
        assert refund.record["amount_minor"] > 0
        by_payment.setdefault(refund.key, []).append(refund)
    for payment_id, group in by_payment.items():
        scenario = group[0].scenario
        if scenario == "unknown":
            assert payment_id.endswith("-never-sent")
            assert [(r.expected, r.reason) for r in group] == [(REJECTED, PAYMENT_UNKNOWN)]
            continue
        captured = 1 + int(payment_id.rsplit("-", 1)[1]) % 5_000
        decision = decide(payment_id, channel)
        if scenario == DECLINED:
            assert decision.declined
            assert [r.reason for r in group] == [PAYMENT_NOT_CAPTURED]
            continue
        assert decision.fault == "none" and not decision.declined
        accepted = sum(r.record["amount_minor"] for r in group if r.expected == ACCEPTED)
        assert accepted <= captured
        if scenario == "full":
            assert accepted == captured
        if scenario == "over":
            assert group[0].record["amount_minor"] > captured
            assert group[0].reason == REFUND_EXCEEDS_REFUNDABLE
        if scenario == "race":
            assert accepted == captured and group[-1].reason == REFUND_EXCEEDS_REFUNDABLE
        if scenario == "resend":
            first, again = group
            assert (again.expected, again.same_as) == (DEDUPLICATED, first.seq)
            assert again.record == first.record
        if scenario == "conflict":
            first, other = group
            assert other.record["refund_id"] == first.record["refund_id"]
            assert other.record["amount_minor"] != first.record["amount_minor"]
            assert other.reason == DUPLICATE_CONFLICT
        if scenario == LATE:
            assert group[0].due_ms == NOW + int(payment_id.rsplit("-", 1)[1]) + 60_000
        else:
            assert all(r.due_ms >= NOW + 5_000 for r in group)


def test_without_channel_settings_no_declined_and_no_late_without_a_delay() -> None:
    scenarios = {r.scenario for r in plan(late_delay_ms=0)}
    assert DECLINED not in scenarios and LATE not in scenarios


def test_ratio_zero_plans_nothing_and_bad_mixes_are_refused() -> None:
    assert plan(ratio=0.0) == []
    with pytest.raises(SimulatorConfigError):
        RefundMix(ratio=2.0)
    with pytest.raises(SimulatorConfigError):
        RefundMix(weights={"bogus": 1})
    with pytest.raises(SimulatorConfigError):
        RefundMix(delay_ms=-1)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, topic: str, key: str, record: Any, headers: Any = None) -> None:
        self.sent.append((topic, key, dict(record)))

    def send_raw(self, topic: str, key: Any, value: Any, headers: Any = None) -> None:
        self.sent.append((topic, key, {}))


def test_publish_orders_sends_refunds_when_due_after_their_payment() -> None:
    clock = [NOW]

    def sleep(seconds: float) -> None:
        clock[0] += max(1, int(seconds * 1000))

    orders = list(generate_orders(3, 400, MERCHANTS, clock=lambda: clock[0]))
    planner = RefundPlanner(3, RefundMix(ratio=0.2, delay_ms=2_000))
    publisher, stats = FakePublisher(), FlowStats()
    publish_orders(publisher, "t.payments.requested", orders, stats, refunds=planner,
                   refund_topic="t.refunds.requested", clock_ms=lambda: clock[0], sleep=sleep,
                   monotonic=lambda: clock[0] / 1000)
    refunds = [(k, r) for t, k, r in publisher.sent if t == "t.refunds.requested"]
    assert refunds and stats.refunds.count == len(refunds) and stats.refunds_unsent == 0
    assert stats.refunds.balanced
    valid = {o.payment_id for o in orders if o.kind == VALID}
    for key, record in refunds:
        assert record["payment_id"] == key
        assert key in valid or key.endswith("-never-sent")
        assert record["requested_at"] >= NOW + 2_000
    # An identical re-send is the very record sent before.
    seen: dict[str, list[dict[str, Any]]] = {}
    for _key, record in refunds:
        seen.setdefault(record["refund_id"], []).append(record)
    resent = [group for group in seen.values() if len(group) == 2
              and group[0]["amount_minor"] == group[1]["amount_minor"]]
    assert stats.refunds.outcomes[DEDUPLICATED] == len(resent)
    assert all(a == b for a, b in resent)
    assert stats.to_dict()["refunds"]["count"] == len(refunds)


def test_dry_run_counts_refunds_without_waiting() -> None:
    stats = FlowStats()
    planner = RefundPlanner(3, RefundMix(ratio=0.2, delay_ms=10**9))
    publish_orders(None, "p", generate_orders(3, 400, MERCHANTS, clock=lambda: NOW), stats,
                   refunds=planner, clock_ms=lambda: NOW)
    assert stats.refunds.count > 0 and stats.refunds_unsent == 0
