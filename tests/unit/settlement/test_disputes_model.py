"""Refunds and disputes on one book against a small reference model: in any order of refund
requests and answers, timers, dispute records (new, redelivered, impossible) and payment
reversals, what is refundable, held and lost never goes wrong, reserved never passes captured,
and every dispute event moves money at most once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from settlement import disputes as dp
from settlement import refunds as rf
from settlement.reconciliation import (
    DECLINED,
    DUPLICATE_CONFIRMATION,
    LATE_CONFIRMATION,
    MATCHED,
    PAYMENT_REVERSED,
    REFUND_REVERSED,
    REVERSAL_EXCEPTION,
)
from settlement.refund_model import RefundRequest

T0 = 1_764_000_000_000
POLICY = rf.RefundPolicy(sla_ms=1000)
DISPUTE_IDS = ("d1", "d2")
# OPENED more often than the rest, so open disputes live long enough to be won.
STATUSES = ("OPENED", "OPENED", "OPENED", "WON", "LOST", "ACCEPTED", "EXPIRED", "CANCELLED")
WINS = {"WON", "CANCELLED"}


@dataclass
class ModelDispute:
    amount: int
    state: str  # OPEN / WON / LOST
    seen: list[str] = field(default_factory=list)  # the last 16, as the book keeps them

    def remember(self, event_id: str) -> None:
        self.seen = [*self.seen, event_id][-dp.SEEN_EVENT_IDS_MAX:]


@dataclass
class Model:
    captured: int
    refunds: dict[str, list] = field(default_factory=dict)  # rid -> [amount, state, late_seen]
    disputes: dict[str, ModelDispute] = field(default_factory=dict)
    reversed: bool = False

    @property
    def reserved(self) -> int:
        return (sum(a for a, s, _ in self.refunds.values() if s in ("PENDING", "OK", "EXC"))
                + sum(d.amount for d in self.disputes.values() if d.state in ("OPEN", "LOST")))

    @property
    def refundable(self) -> int:
        return 0 if self.reversed else self.captured - self.reserved

    @property
    def held(self) -> int:
        return sum(d.amount for d in self.disputes.values() if d.state == "OPEN")

    @property
    def lost(self) -> int:
        return sum(d.amount for d in self.disputes.values() if d.state == "LOST")

    @property
    def refunded(self) -> int:
        return sum(a for a, s, _ in self.refunds.values() if s == "OK")

    def dispute(self, did: str, eid: str, status: str, amount: int, fee: int,
                ) -> list[str] | None:
        """The events the record should yield (["REJECTED", codes...] for a rejection), or
        None when it must yield nothing."""
        d = self.disputes.get(did)
        if d is not None and eid in d.seen:
            return None
        codes = []
        if self.reversed:
            codes.append(dp.PAYMENT_REVERSED)
        if amount <= 0:
            codes.append(dp.AMOUNT_NOT_POSITIVE)
        if fee < 0:
            codes.append(dp.FEE_NEGATIVE)
        if d is not None:
            if amount != d.amount:
                codes.append(dp.DISPUTE_AMOUNT_CHANGED)
            if d.state != "OPEN":
                codes.append(dp.DISPUTE_ALREADY_CLOSED)
        elif not self.reversed and amount > self.refundable:
            codes.append(dp.DISPUTE_EXCEEDS_DISPUTABLE)
        if codes:
            if d is not None:
                d.remember(eid)
            return ["REJECTED", *codes]
        won, opened = status in WINS, status == "OPENED"
        if d is None:
            d = self.disputes[did] = ModelDispute(amount, "WON" if won else "OPEN")
            d.remember(eid)
            if won:
                return ["STAGE_CHANGED"]
            if opened:
                return ["OPENED"]
            d.state = "LOST"
            return ["OPENED", "LOST"]
        d.remember(eid)
        if opened:
            return ["STAGE_CHANGED"]
        d.state = "WON" if won else "LOST"
        return [d.state]


ops = st.lists(st.one_of(
    st.tuples(st.just("request"), st.integers(-5, 12_000)),
    st.tuples(st.just("answer"), st.integers(0, 12),
              st.sampled_from(["SUCCEEDED", "FAILED", "OFF"])),
    st.tuples(st.just("refund_reversal"), st.integers(0, 12)),
    st.tuples(st.just("tick"), st.integers(0, 3000)),
    st.tuples(st.just("dispute"), st.sampled_from(DISPUTE_IDS), st.sampled_from(STATUSES),
              # None: the dispute's own amount (most records repeat it), else 100.
              st.one_of(st.none(), st.none(), st.none(), st.integers(1, 400),
                        st.integers(-2, 12_000)),
              st.integers(-1, 500),
              # None: a new event id; else a redelivery of one sent before.
              st.one_of(st.none(), st.none(), st.integers(0, 20))),
    # The channel decides an open dispute (its own amount, a new event id).
    st.tuples(st.just("decide"), st.integers(0, 3),
              st.sampled_from(("WON", "CANCELLED", "LOST", "ACCEPTED", "EXPIRED")),
              st.integers(0, 500)),
    # Rarer than the rest: once reversed, a payment takes no refund nor dispute.
    st.tuples(st.just("payment_reversal"), st.integers(0, 3)),
), max_size=50)


@settings(max_examples=400, deadline=None)
@given(ops, st.integers(1, 12_000), st.data())
def test_refunds_and_disputes_agree_with_a_reference_model(
        steps: list[tuple], captured: int, data: st.DataObject) -> None:
    fee = data.draw(st.integers(0, captured))
    b = rf.RefundBook(payment_id="p1", merchant_id="m1", channel="card", currency="CNY",
                      captured_minor=captured, fee_minor=fee, captured_at_ms=T0)
    model = Model(captured)
    now = T0
    used: dict[str, list[str]] = {did: [] for did in DISPUTE_IDS}  # event ids sent so far
    money: Counter[str] = Counter()  # result_id of every money event published
    held_by_events = lost_by_events = 0
    for n, step in enumerate(steps):
        now += 10
        kind = step[0]
        if kind == "request":
            rid, amount = f"r{n}", step[1]
            d = rf.decide_request(b, RefundRequest(rid, "p1", "m1", amount, "CNY", now), now,
                                  POLICY)
            fits = not model.reversed and 0 < amount <= model.refundable
            assert (d.accepted is not None) == fits, (d.rejections, model)
            if fits:
                model.refunds[rid] = [amount, "PENDING", False]
                assert d.book is not None
                b = d.book
        elif kind == "answer" and model.refunds:
            rid = sorted(model.refunds)[step[1] % len(model.refunds)]
            amount, state, late_seen = model.refunds[rid]
            status = step[2]
            conf = rf.RefundConfirmation(
                f"c{n}", "card", rid, "p1", f"cr-{rid}",
                "FAILED" if status == "FAILED" else "SUCCEEDED",
                amount + 1 if status == "OFF" else amount, "CNY", now)
            new, [result] = rf.on_confirmation(b, conf, now, POLICY)
            assert new is not None
            if state == "PENDING":
                model.refunds[rid][1] = {"SUCCEEDED": "OK", "FAILED": "FAIL"}.get(status, "EXC")
            elif state == "MISSING" and not late_seen:
                model.refunds[rid][2] = True
                if status == "SUCCEEDED" and amount <= model.refundable:
                    model.refunds[rid][1] = "OK"
                    assert result.outcome == MATCHED
                else:
                    assert result.outcome == LATE_CONFIRMATION
            else:
                assert result.outcome == DUPLICATE_CONFIRMATION
            if status == "FAILED" and state == "PENDING":
                assert result.outcome == DECLINED
            b = new
        elif kind == "refund_reversal" and model.refunds:
            rid = sorted(model.refunds)[step[1] % len(model.refunds)]
            amount, state, _ = model.refunds[rid]
            new, [result] = rf.on_confirmation(b, rf.RefundConfirmation(
                f"rv{n}", "card", rid, "p1", f"cr-{rid}", "REVERSED", amount, "CNY", now),
                now, POLICY)
            assert new is not None
            if state == "OK":
                assert result.outcome == REFUND_REVERSED
                model.refunds[rid][1] = "REV"
            else:
                assert result.outcome == REVERSAL_EXCEPTION
            b = new
        elif kind == "tick":
            now += step[1]
            b, results = rf.on_tick(b, now, POLICY)
            for result in results:
                assert model.refunds[result.refund_id][1] == "PENDING"
                model.refunds[result.refund_id][1] = "MISSING"
        elif kind in ("dispute", "decide"):
            if kind == "decide":
                open_ids = sorted(k for k, d in model.disputes.items() if d.state == "OPEN")
                if not open_ids:
                    continue
                _, pick, status, fee_minor = step
                did, amount_or_none, reuse = open_ids[pick % len(open_ids)], None, None
            else:
                _, did, status, amount_or_none, fee_minor, reuse = step
            known = model.disputes.get(did)
            amount = amount_or_none if amount_or_none is not None else (
                known.amount if known is not None else 100)
            if reuse is not None and used[did]:
                eid = used[did][reuse % len(used[did])]
            else:
                eid = f"{did}-e{n}"
                used[did].append(eid)
            news = dp.DisputeNews(
                event_id=eid, dispute_id=did, channel="card", channel_dispute_id=f"c-{did}",
                payment_id="p1", stage="DISPUTE", status=status, amount_minor=amount,
                currency="CNY", occurred_at_ms=now, fee_minor=fee_minor)
            expected = model.dispute(did, eid, status, amount, fee_minor)
            new, outcomes = dp.on_dispute(b, news, now)
            assert new is not None
            if expected is None:
                assert outcomes == [] and new == b
            elif expected[0] == "REJECTED":
                [out] = outcomes
                assert out.event == "REJECTED" and out.reason_codes == expected[1:]
            else:
                assert [o.event for o in outcomes] == expected
            for out in outcomes:
                if out.event in dp.MONEY_EVENTS:
                    money[out.result_id] += 1
                    sign = {"OPENED": 1, "WON": -1, "LOST": -1}[out.event]
                    held_by_events += sign * out.amount_minor
                    if out.event == "LOST":
                        lost_by_events += out.amount_minor
                        assert out.fee_minor == max(fee_minor, 0)
                    else:
                        assert out.fee_minor == 0
            if outcomes:
                last = outcomes[-1]
                assert (last.held_minor, last.disputed_lost_minor, last.refundable_minor) == (
                    model.held, model.lost, model.refundable)
            b = new
        elif kind == "payment_reversal" and step[1] == 0:
            new, outcome, _ = rf.on_payment_reversal(
                b, rf.PaymentReversal(f"pr{n}", "card", captured, "CNY"), now)
            if not model.reversed and model.reserved == 0:
                assert outcome == PAYMENT_REVERSED
                model.reversed = True
            else:
                assert outcome == REVERSAL_EXCEPTION and new == b
            b = new
        # The book as the stage stores and reads it back after every write.
        b = rf.RefundBook.from_dict(b.to_dict())
        assert b.reserved_minor == model.reserved <= captured
        assert b.refundable_minor == model.refundable >= 0
        assert b.held_minor == model.held == held_by_events
        assert b.disputed_lost_minor == model.lost == lost_by_events
        assert b.refunded_minor == model.refunded
        assert all(count == 1 for count in money.values())
