"""Simulated disputes: which captured payments the channel disputes, the ChannelDispute records
of each (stages, decision, fee, timing), their determinism, and the simulator publishing them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from click.testing import CliRunner

from infra.config import load
from producers.channel_sim import ChannelSimulator
from producers.channels import FAULT_NONE, ChannelSimConfig, Decision, decide
from producers.cli import simulate
from producers.dispute_flow import (
    DAY_MS,
    DECISIONS,
    DisputeSimConfig,
    PlannedDispute,
    dispute_drawn,
    dispute_fee_minor,
    expected_dispute_events,
    plan_disputes,
    story,
    tally_disputes,
)
from producers.errors import SimulatorConfigError
from producers.merchants import load_merchants, sample_merchants_path
from producers.refund_flow import RefundMix, RefundPlanner
from schemas.codec import AvroDeserializer, AvroSerializer, to_epoch_ms
from schemas.registry import InMemoryRegistry
from settlement.disputes import (
    DISPUTE,
    DISPUTE_ID_PATTERN,
    LOST,
    LOST_STATUSES,
    OPENED,
    PRE_ARBITRATION,
    PRE_DISPUTE,
    WON,
)

NOW = 1_750_000_000_000
ALL = DisputeSimConfig(rate=1.0)  # every captured card payment disputed


def routed(n: int, channel: str = "CARD", amount: int = 12_345, currency: str = "USD"
           ) -> dict[str, Any]:
    return {"payment_id": f"pay-d-{n:07d}", "channel": channel, "amount_minor": amount,
            "currency": currency}


def plans(count: int, config: DisputeSimConfig = ALL, seed: int = 3, channel: str = "CARD"
          ) -> list[list[PlannedDispute]]:
    return [plan_disputes(routed(n, channel), NOW, seed, True, config) for n in range(count)]


def test_the_config_is_checked() -> None:
    for bad in ({"rate": 1.5}, {"late_share": -0.1}, {"open_delay_ms": -1},
                {"channels": ("ALIPAY",)}, {"decision_weights": {"MAYBE": 1}},
                {"decision_weights": {d: 0 for d in DECISIONS}}):
        with pytest.raises(SimulatorConfigError):
            DisputeSimConfig(**bad)
    assert DisputeSimConfig(channels=("card",)).channels == ("CARD",)
    assert ChannelSimConfig().disputes.rate == 0.02


def test_only_captured_card_and_unionpay_payments_are_disputed() -> None:
    assert plan_disputes(routed(1, "ALIPAY"), NOW, 3, True, ALL) == []
    assert plan_disputes(routed(1, "WECHAT_PAY"), NOW, 3, True, ALL) == []
    assert plan_disputes(routed(1), NOW, 3, False, ALL) == []
    assert plan_disputes(routed(1), NOW, 3, True, DisputeSimConfig(rate=0.0)) == []
    assert plan_disputes(routed(1, "UNIONPAY", currency="CNY"), NOW, 3, True, ALL)
    assert plan_disputes(routed(1), NOW, 3, True, ALL)
    assert not Decision(FAULT_NONE, False, None, reversed=True).captured
    assert not Decision(FAULT_NONE, True, "DO_NOT_HONOR").captured
    assert not Decision("late", False, None).captured
    assert Decision(FAULT_NONE, False, None).captured


def test_the_rate_is_roughly_respected_and_the_draw_is_per_payment() -> None:
    config = DisputeSimConfig(rate=0.02)
    disputed = sum(bool(p) for p in plans(20_000, config))
    assert 300 < disputed < 500
    for n in range(2_000):
        assert bool(plan_disputes(routed(n), NOW, 3, True, config)) == dispute_drawn(
            3, routed(n)["payment_id"], config)


def test_plans_are_deterministic_and_seeded() -> None:
    assert plans(200) == plans(200)
    assert [p[-1].record["status"] for p in plans(200)] != [
        p[-1].record["status"] for p in plans(200, seed=4)]
    later = plan_disputes(routed(7), NOW + 5_000, 3, True, ALL)
    first = plan_disputes(routed(7), NOW, 3, True, ALL)
    assert [p.record["event_id"] for p in later] == [p.record["event_id"] for p in first]
    assert [p.due_ms - 5_000 for p in later] == [p.due_ms for p in first]


def test_every_dispute_tells_a_consistent_story() -> None:
    config = ALL
    for planned in plans(400):
        records = [p.record for p in planned if not p.redelivery]
        copies = [p for p in planned if p.redelivery]
        # The records up to the decision; a contradiction may follow it (refused by the stage).
        decided = next(i for i, r in enumerate(records) if r["status"] != OPENED)
        first, *middle = records[:decided]
        last, after = records[decided], records[decided + 1:]
        for late_word in after:
            assert late_word["status"] == (WON if last["status"] in LOST_STATUSES else LOST)
            assert late_word["occurred_at"] == last["occurred_at"] + config.stage_gap_ms
        assert len(after) <= 1
        assert DISPUTE_ID_PATTERN.fullmatch(first["dispute_id"])
        for field in ("dispute_id", "channel_dispute_id", "payment_id", "channel", "amount_minor",
                      "currency", "funds_withdrawn", "reason_code"):
            assert len({r[field] for r in records}) == 1, field
        assert 0 < first["amount_minor"] <= 12_345
        assert len({r["event_id"] for r in records}) == len(records)
        opened = [first, *middle]
        assert all(r["status"] == OPENED and r["fee_minor"] == 0 for r in opened)
        assert [r["stage"] for r in opened] in (
            [DISPUTE], [PRE_DISPUTE, DISPUTE], [DISPUTE, PRE_ARBITRATION],
            [PRE_DISPUTE, DISPUTE, PRE_ARBITRATION])
        for r in opened:
            assert r["respond_by"] == r["occurred_at"] + config.respond_by_days * DAY_MS
        assert first["occurred_at"] - NOW in (config.open_delay_ms, config.late_open_ms)
        assert last["status"] in DECISIONS and last["stage"] == opened[-1]["stage"]
        assert last["respond_by"] is None
        assert last["occurred_at"] == opened[-1]["occurred_at"] + config.decide_delay_ms
        assert last["fee_minor"] == (dispute_fee_minor("USD")
                                     if last["status"] in ("LOST", "EXPIRED") else 0)
        assert [p.due_ms for p in planned if not p.redelivery] == [
            r["occurred_at"] for r in records]
        for copy in copies:
            assert copy.record == first and copy.due_ms > first["occurred_at"]


def test_a_sample_covers_every_decision_stage_and_timing() -> None:
    stories = [story(3, routed(n), ALL) for n in range(400)]
    assert set(Counter(s.decision for s in stories)) == set(DECISIONS)
    assert any(PRE_DISPUTE in s.stages for s in stories)
    assert any(PRE_ARBITRATION in s.stages for s in stories)
    for flag in ("late", "redelivered", "funds_withdrawn", "contradicted"):
        share = sum(getattr(s, flag) for s in stories) / len(stories)
        assert 0.02 < share < 0.8, flag
    assert any(s.amount_minor < 12_345 for s in stories)


def test_the_fee_is_in_the_currency_s_minor_units() -> None:
    assert dispute_fee_minor("USD") == 1_500
    assert dispute_fee_minor("JPY") == 2_000
    assert dispute_fee_minor("KWD") == 5_000
    assert dispute_fee_minor("GBP") == 1_500


def test_expected_events_follow_the_stages_and_the_decision() -> None:
    for s in (story(3, routed(n), ALL) for n in range(200)):
        events = expected_dispute_events(s)
        assert events[0] == "OPENED" and len(events) == len(s.stages) + 1 + s.contradicted
        if s.contradicted:  # the channel's contradiction of its decision is refused
            assert events[-1] == "REJECTED"
            events = events[:-1]
        assert set(events[1:-1]) <= {"STAGE_CHANGED"}
        assert events[-1] == ("LOST" if s.decision in LOST_STATUSES else "WON")


def test_the_tally_adds_up_what_the_books_should_show() -> None:
    payments = [routed(n, currency="CNY" if n % 2 else "USD") for n in range(300)]
    tally = tally_disputes(payments, 3, lambda pid: not pid.endswith("7"), ALL)
    stories = [(story(3, p, ALL), p["currency"]) for p in payments
               if not str(p["payment_id"]).endswith("7")]
    assert tally.disputes == len(stories) == sum(tally.decisions.values())
    for currency in ("CNY", "USD"):
        mine = [s for s, c in stories if c == currency]
        assert tally.opened_minor[currency] == sum(s.amount_minor for s in mine)
        assert (tally.released_minor[currency] + tally.lost_minor[currency]
                == tally.opened_minor[currency])
        assert tally.fee_minor[currency] == sum(s.fee_minor for s in mine)
    assert tally_disputes(payments, 3, lambda _pid: False, ALL).disputes == 0


def test_records_encode_as_channel_disputes() -> None:
    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, "channel.disputes", "ChannelDispute")
    decoder = AvroDeserializer(registry)
    for planned in plans(30):
        for p in planned:
            back = decoder.decode(ser.encode(p.record))
            assert to_epoch_ms(back.pop("occurred_at")) == p.record["occurred_at"]
            respond_by = back.pop("respond_by")
            assert (None if respond_by is None else to_epoch_ms(respond_by)) == (
                p.record["respond_by"])
            assert back == {k: v for k, v in p.record.items()
                            if k not in ("occurred_at", "respond_by")}


def test_refunds_leave_payments_that_may_be_disputed_alone() -> None:
    channel = ChannelSimConfig(seed=9, disputes=DisputeSimConfig(rate=0.5))
    planner = RefundPlanner(1, RefundMix(ratio=1.0, channel=channel))
    merchant = load_merchants(sample_merchants_path())[0]
    sent = {f"pay-r-{n}" for n in range(300)}
    for pid in sorted(sent):
        planner.on_payment({"payment_id": pid, "merchant_id": merchant.merchant_id,
                            "amount_minor": 5_000, "currency": "CNY"}, NOW)
    # (the unknown-payment scenario refunds an id never sent: not a payment at all)
    refunded = {str(r.record["payment_id"]) for r in planner.drain()} & sent
    assert refunded
    for pid in refunded:
        if decide(pid, channel).captured:
            assert not dispute_drawn(9, pid, channel.disputes), pid


class FakeMessage:
    def __init__(self, topic: str, value: bytes, offset: int) -> None:
        self._topic, self._value, self._offset = topic, value, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, topic: str, key: str, record: dict[str, Any]) -> None:
        self.sent.append((topic, key, record))


def test_the_simulator_publishes_disputes_after_the_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, "payments.routed.card", "RoutedPayment")
    config = ChannelSimConfig(seed=3, decline_rate=0.0, fault_rate=0.0, reversal_rate=0.0,
                              disputes=ALL)
    now = [NOW]
    sim = ChannelSimulator(load({}), registry, config, routed_topics=["payments.routed.card"],
                           clock=lambda: now[0], disputes_topic="x.channel.disputes")
    base = {"merchant_id": "m-1", "order_id": "o-1", "payer_id": "u-1", "method": "CARD",
            "interface": "APP", "region": "US", "created_at": NOW, "metadata": {},
            "rule_id": "r-1", "routed_at": NOW}
    for n in range(5):
        record = {**base, **routed(n)}
        assert sim._handle(FakeMessage("payments.routed.card", ser.encode(record), n))  # type: ignore[arg-type]
    producer = FakeProducer()
    now[0] = NOW + 3_600_000
    sim._publish_due(producer)  # type: ignore[arg-type]
    topics = Counter(topic for topic, _, _ in producer.sent)
    expected = sum(len(plan_disputes(routed(n), NOW, 3, True, ALL)) for n in range(5))
    assert topics == {"channel.confirmations": 5, "x.channel.disputes": expected}
    assert sim.stats.disputes.opened == {"CARD": 5}
    assert sim.stats.disputes.published == expected
    # Every record's offset is committable only once its disputes were sent too.
    assert sim._tracker.committable() == {("payments.routed.card", 0): 5}
    none = ChannelSimulator(load({}), registry, config, routed_topics=["payments.routed.card"],
                            clock=lambda: now[0], disputes_topic=None)
    none._handle(FakeMessage("payments.routed.card", ser.encode({**base, **routed(0)}), 0))  # type: ignore[arg-type]
    assert none.stats.scheduled == 1


def test_the_cli_turns_disputes_off_and_documents_them() -> None:
    result = CliRunner().invoke(simulate, ["channels", "--help"])
    assert result.exit_code == 0
    for flag in ("--no-disputes", "--dispute-rate", "--dispute-open-delay-ms",
                 "--dispute-late-open-ms", "--dispute-decide-delay-ms"):
        assert flag in result.output
    orders = CliRunner().invoke(simulate, ["orders", "--help"])
    assert "--channel-dispute-rate" in orders.output
