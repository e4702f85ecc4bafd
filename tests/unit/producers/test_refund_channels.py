"""The channel simulator's answers to routed refunds: deterministic, with the payment faults."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from producers.channels import (
    FAULT_AMOUNT_MISMATCH,
    FAULT_DUPLICATE,
    FAULT_LATE,
    FAULT_MISSING,
    FAULT_NONE,
    REFUND_FAULTS,
    ChannelSimConfig,
    Decision,
    decide_refund,
    expected_refund_results,
    plan_refund_confirmations,
)
from producers.errors import SimulatorConfigError
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from settlement.reconciliation import (
    DUPLICATE_CONFIRMATION,
    FAILED,
    MATCHED,
    MISSING_CONFIRMATION,
    SUCCEEDED,
)

NOW = 1_750_000_000_000


def routed(n: int, amount_minor: int = 2_500) -> dict[str, Any]:
    return {"refund_id": f"rf-{n}", "payment_id": f"pay-{n // 3}", "merchant_id": "m-0001",
            "order_id": "o-1", "channel": "ALIPAY", "channel_txn_id": "ALI1",
            "amount_minor": amount_minor, "currency": "CNY", "reason": None,
            "requested_at": NOW - 10, "routed_at": NOW - 5}


def first_with(fault: str, config: ChannelSimConfig) -> dict[str, Any]:
    return next(r for r in map(routed, range(20_000))
                if decide_refund(r["payment_id"], r["refund_id"], config).fault == fault)


def test_plan_is_deterministic_and_seeded() -> None:
    config = ChannelSimConfig(seed=3, refund_fault_rate=0.3, refund_decline_rate=0.2)
    for n in range(200):
        a = plan_refund_confirmations(routed(n), NOW, config)
        b = plan_refund_confirmations(routed(n), NOW + 1000, config)
        assert [p.record["confirmation_id"] for p in a] == [
            p.record["confirmation_id"] for p in b]
        assert [p.due_ms - NOW for p in a] == [p.due_ms - NOW - 1000 for p in b]
    other = ChannelSimConfig(seed=4, refund_fault_rate=0.3, refund_decline_rate=0.2)
    assert [decide_refund(f"p{n}", "r", config) for n in range(200)] != [
        decide_refund(f"p{n}", "r", other) for n in range(200)]


def test_rates_are_roughly_respected() -> None:
    config = ChannelSimConfig(refund_fault_rate=0.2, refund_decline_rate=0.1)
    decisions = [decide_refund(f"pay-{n}", "rf-1", config) for n in range(5_000)]
    faults = Counter(d.fault for d in decisions)
    assert 0.17 < 1 - faults[FAULT_NONE] / 5_000 < 0.23
    assert set(faults) <= {FAULT_NONE, *REFUND_FAULTS}
    assert 0.07 < sum(d.declined for d in decisions) / 5_000 < 0.13
    assert all(d.decline_code for d in decisions if d.declined)


def test_clean_answer_refunds_the_routed_amount() -> None:
    config = ChannelSimConfig(refund_fault_rate=0.0, refund_decline_rate=0.0, latency_ms=50,
                              refund_reversal_rate=0.0)
    [planned] = plan_refund_confirmations(routed(1), NOW, config)
    record = planned.record
    assert (record["status"], record["amount_minor"], record["currency"]) == (
        SUCCEEDED, 2_500, "CNY")
    assert (record["refund_id"], record["payment_id"], planned.key) == ("rf-1", "pay-0", "pay-0")
    assert NOW + 25 <= planned.due_ms <= NOW + 75 and record["confirmed_at"] == planned.due_ms
    assert planned.is_refund and record["decline_code"] is None


def test_declined_refunds_fail_with_a_code() -> None:
    config = ChannelSimConfig(refund_fault_rate=0.0, refund_decline_rate=1.0)
    [planned] = plan_refund_confirmations(routed(1), NOW, config)
    assert planned.record["status"] == FAILED and planned.record["decline_code"]


@pytest.fixture(scope="module")
def codec() -> tuple[AvroSerializer, AvroDeserializer]:
    registry = InMemoryRegistry()
    return (AvroSerializer(registry, "channel.refund_confirmations",
                           "ChannelRefundConfirmation"), AvroDeserializer(registry))


def test_each_fault_shapes_the_answers(codec: tuple[AvroSerializer, AvroDeserializer]) -> None:
    ser, de = codec
    config = ChannelSimConfig(refund_fault_rate=1.0, refund_decline_rate=0.0, late_ms=20_000,
                              duplicate_gap_ms=500)
    assert plan_refund_confirmations(first_with(FAULT_MISSING, config), NOW, config) == []
    late = plan_refund_confirmations(first_with(FAULT_LATE, config), NOW, config)
    assert [p.due_ms for p in late] == [NOW + 20_000]
    mismatch = first_with(FAULT_AMOUNT_MISMATCH, config)
    [off] = plan_refund_confirmations(mismatch, NOW, config)
    assert off.record["amount_minor"] != mismatch["amount_minor"]
    assert abs(off.record["amount_minor"] - mismatch["amount_minor"]) <= 26
    first, again, second = plan_refund_confirmations(first_with(FAULT_DUPLICATE, config), NOW,
                                                     config)
    assert again.record == first.record  # a redelivery: same confirmation_id, dropped
    assert second.record["confirmation_id"] != first.record["confirmation_id"]
    assert first.due_ms < again.due_ms < second.due_ms == first.due_ms + 500
    for planned in (*late, off, first, again, second):
        decoded = de.decode(ser.encode(planned.record))
        assert {k: v for k, v in decoded.items() if k != "confirmed_at"} == {
            k: v for k, v in planned.record.items() if k != "confirmed_at"}


def test_only_refund_faults_are_accepted() -> None:
    with pytest.raises(SimulatorConfigError, match="unknown refund fault"):
        ChannelSimConfig(refund_faults=("orphan",))
    with pytest.raises(SimulatorConfigError):
        ChannelSimConfig(refund_fault_rate=1.5)
    assert ChannelSimConfig(refund_faults=("late", "missing")).refund_faults == (
        FAULT_MISSING, FAULT_LATE)


def test_expected_refund_results() -> None:
    assert expected_refund_results(Decision(FAULT_NONE, False, None)) == (MATCHED,)
    assert expected_refund_results(Decision(FAULT_DUPLICATE, False, None)) == (
        MATCHED, DUPLICATE_CONFIRMATION)
    assert expected_refund_results(Decision(FAULT_MISSING, False, None)) == (
        MISSING_CONFIRMATION,)
