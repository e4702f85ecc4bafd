"""Dispute decisions: every transition of the table in docs/disputes.md, every reason code,
idempotent redelivery, and the book's amounts (held, lost, refundable) around refunds."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from settlement import disputes as dp
from settlement import refunds as rf
from settlement.reconciliation import PAYMENT_REVERSED, REVERSAL_EXCEPTION
from settlement.refund_model import RefundRequest

T0 = 1_764_000_000_000
POLICY = rf.RefundPolicy(sla_ms=1000)


def book(captured: int = 10_000, fee: int = 60, **kw: object) -> rf.RefundBook:
    values: dict[str, object] = dict(payment_id="p1", merchant_id="m1", channel="card",
                                     currency="CNY", captured_minor=captured, fee_minor=fee,
                                     captured_at_ms=T0, order_id="o1", channel_txn_id="t1")
    values.update(kw)
    return rf.RefundBook(**values)  # type: ignore[arg-type]


def news(status: str = "OPENED", event_id: str = "e1", amount: int = 3000,
         dispute_id: str = "d1", **kw: object) -> dp.DisputeNews:
    values: dict[str, object] = dict(
        event_id=event_id, dispute_id=dispute_id, channel="card", channel_dispute_id="cd-1",
        payment_id="p1", stage="DISPUTE", status=status, amount_minor=amount, currency="CNY",
        occurred_at_ms=T0 - 5, funds_withdrawn=True, fee_minor=1500, reason_code="10.4",
        respond_by_ms=T0 + 7 * 86_400_000)
    values.update(kw)
    return dp.DisputeNews(**values)  # type: ignore[arg-type]


def apply(b: rf.RefundBook | None, n: dp.DisputeNews, known: bool = False,
          ) -> tuple[rf.RefundBook, list[dp.DisputeOutcome]]:
    new, outs = dp.on_dispute(b, n, T0, payment_known=known)
    assert new is not None
    return new, outs


def events(outs: list[dp.DisputeOutcome]) -> list[str]:
    return [o.event for o in outs]


def refund(b: rf.RefundBook, rid: str, amount: int) -> rf.RefundBook:
    d = rf.decide_request(b, RefundRequest(rid, "p1", "m1", amount, "CNY", T0), T0, POLICY)
    assert d.book is not None and d.accepted is not None, d.rejections
    return d.book


# -- transitions ----------------------------------------------------------------------------


def test_opened_holds_the_amount_and_counts_it_against_refunds() -> None:
    b, [out] = apply(book(), news())
    assert out.event == dp.EVENT_OPENED and out.result_id == "p1/d1:OPENED:e1"
    assert (out.amount_minor, out.fee_minor, out.funds_withdrawn) == (3000, 0, True)
    assert (out.held_minor, out.disputed_lost_minor, out.refundable_minor) == (3000, 0, 7000)
    assert (out.captured_minor, out.merchant_id, out.order_id) == (10_000, "m1", "o1")
    assert (out.reason_code, out.respond_by_ms, out.occurred_at_ms, out.decided_at_ms) == (
        "10.4", T0 + 7 * 86_400_000, T0 - 5, T0)
    assert b.held_minor == 3000 and b.reserved_minor == 3000 and b.refundable_minor == 7000
    [d] = b.disputes
    assert (d.state, d.stage, d.seen_event_ids, d.closed_at_ms) == (dp.OPEN, "DISPUTE",
                                                                    ("e1",), None)
    over = rf.decide_request(b, RefundRequest("r1", "p1", "m1", 7001, "CNY", T0), T0, POLICY)
    assert [r.code for r in over.rejections] == [rf.REFUND_EXCEEDS_REFUNDABLE]
    assert rf.decide_request(b, RefundRequest("r1", "p1", "m1", 7000, "CNY", T0), T0,
                             POLICY).accepted is not None


def test_an_open_dispute_changes_stage_then_is_won_and_released() -> None:
    b, _ = apply(book(), news())
    b, [out] = apply(b, news("OPENED", "e2", stage="PRE_ARBITRATION", respond_by_ms=T0 + 1,
                             reason_code=None))
    assert out.event == dp.EVENT_STAGE_CHANGED and out.stage == "PRE_ARBITRATION"
    assert out.held_minor == 3000 and out.respond_by_ms == T0 + 1
    assert out.reason_code == "10.4"  # kept when the record leaves it out
    assert b.disputes[0].stage == "PRE_ARBITRATION" and b.held_minor == 3000
    b, [out] = apply(b, news("WON", "e3", fee_minor=0))
    assert out.event == dp.EVENT_WON and out.result_id == "p1/d1:WON:e3"
    assert (out.held_minor, out.disputed_lost_minor, out.refundable_minor) == (0, 0, 10_000)
    assert b.disputes[0].state == dp.STATE_WON and b.disputes[0].closed_at_ms == T0
    assert b.disputes[0].seen_event_ids == ("e1", "e2", "e3")


@pytest.mark.parametrize("status", ["WON", "CANCELLED"])
def test_won_or_cancelled_releases(status: str) -> None:
    b, _ = apply(book(), news())
    b, [out] = apply(b, news(status, "e2"))
    assert out.event == dp.EVENT_WON and out.status == status and out.fee_minor == 0
    assert b.refundable_minor == 10_000


@pytest.mark.parametrize("status", ["LOST", "ACCEPTED", "EXPIRED"])
def test_lost_accepted_or_expired_takes_the_amount_and_charges_the_fee(status: str) -> None:
    b, _ = apply(book(), news())
    b, [out] = apply(b, news(status, "e2", fee_minor=1500))
    assert out.event == dp.EVENT_LOST and out.fee_minor == 1500 and out.status == status
    assert (out.held_minor, out.disputed_lost_minor, out.refundable_minor) == (0, 3000, 7000)
    [d] = b.disputes
    assert (d.state, d.fee_minor) == (dp.STATE_LOST, 1500)


def test_funds_withdrawn_is_kept_as_the_dispute_opened() -> None:
    b, _ = apply(book(), news(funds_withdrawn=False))
    _, [out] = apply(b, news("LOST", "e2", funds_withdrawn=True))
    assert out.funds_withdrawn is False  # decides the channel side of every posting


@pytest.mark.parametrize("status", ["LOST", "ACCEPTED", "EXPIRED"])
def test_a_dispute_first_seen_lost_posts_its_opening_and_its_loss(status: str) -> None:
    b, outs = apply(book(), news(status, fee_minor=250))
    assert events(outs) == [dp.EVENT_OPENED, dp.EVENT_LOST]
    assert [o.result_id for o in outs] == ["p1/d1:OPENED:e1", "p1/d1:LOST:e1"]
    assert [o.fee_minor for o in outs] == [0, 250]
    assert [(o.held_minor, o.disputed_lost_minor) for o in outs] == [(3000, 0), (0, 3000)]
    assert b.disputed_lost_minor == 3000 and b.held_minor == 0


@pytest.mark.parametrize("status", ["WON", "CANCELLED"])
def test_a_dispute_first_seen_won_moves_nothing(status: str) -> None:
    b, [out] = apply(book(), news(status))
    assert out.event == dp.EVENT_STAGE_CHANGED and "nothing was held" in out.detail
    assert b.disputes[0].state == dp.STATE_WON and b.refundable_minor == 10_000
    _, [again] = apply(b, news("LOST", "e2"))
    assert again.reason_codes == [dp.DISPUTE_ALREADY_CLOSED]


def test_a_lost_dispute_with_no_fee_charges_none() -> None:
    b, _ = apply(book(), news())
    _, [out] = apply(b, news("LOST", "e2", fee_minor=0))
    assert out.event == dp.EVENT_LOST and out.fee_minor == 0


def test_several_disputes_on_one_payment_add_up() -> None:
    b, _ = apply(book(), news(amount=4000))
    b, _ = apply(b, news(dispute_id="d2", event_id="f1", amount=6000))
    assert b.held_minor == 10_000 and b.refundable_minor == 0
    _, [out] = apply(b, news(dispute_id="d3", event_id="g1", amount=1))
    assert out.reason_codes == [dp.DISPUTE_EXCEEDS_DISPUTABLE]
    b, _ = apply(b, news("WON", "e2", amount=4000))
    b, _ = apply(b, news("LOST", "f2", dispute_id="d2", amount=6000))
    assert (b.held_minor, b.disputed_lost_minor, b.refundable_minor) == (0, 6000, 4000)


# -- idempotency ----------------------------------------------------------------------------


def test_the_same_event_id_again_yields_nothing() -> None:
    b, _ = apply(book(), news())
    assert apply(b, news()) == (b, [])
    b, _ = apply(b, news("LOST", "e2"))
    assert apply(b, news("LOST", "e2")) == (b, [])
    assert apply(b, news("WON", "e2")) == (b, [])  # the event id names the news


def test_a_rejected_event_of_a_known_dispute_is_remembered() -> None:
    b, _ = apply(book(), news())
    b2, [out] = apply(b, news("OPENED", "e2", amount=2999))
    assert out.reason_codes == [dp.DISPUTE_AMOUNT_CHANGED] and out.amount_minor == 2999
    assert b2.held_minor == 3000 and b2.disputes[0].seen_event_ids == ("e1", "e2")
    assert apply(b2, news("OPENED", "e2", amount=2999)) == (b2, [])


def test_seen_event_ids_are_bounded() -> None:
    b, _ = apply(book(), news())
    for n in range(dp.SEEN_EVENT_IDS_MAX + 4):
        b, [out] = apply(b, news("OPENED", f"s{n}"))
        assert out.event == dp.EVENT_STAGE_CHANGED
    assert len(b.disputes[0].seen_event_ids) == dp.SEEN_EVENT_IDS_MAX
    assert b.disputes[0].seen_event_ids[-1] == f"s{dp.SEEN_EVENT_IDS_MAX + 3}"


# -- rejections -----------------------------------------------------------------------------


def test_unknown_and_uncaptured_payments() -> None:
    b, [out] = dp.on_dispute(None, news(), T0, payment_known=False)
    assert b is None and out.reason_codes == [dp.PAYMENT_UNKNOWN]
    assert out.event == dp.EVENT_REJECTED and out.result_id == "p1/d1:REJECTED:e1"
    assert (out.merchant_id, out.captured_minor, out.held_minor, out.refundable_minor) == (
        None, None, 0, 0)
    _, [out] = dp.on_dispute(None, news(), T0, payment_known=True)
    assert out.reason_codes == [dp.PAYMENT_NOT_CAPTURED]


@pytest.mark.parametrize(("change", "code"), [
    ({"dispute_id": "d/1"}, dp.DISPUTE_ID_INVALID),
    ({"dispute_id": ""}, dp.DISPUTE_ID_INVALID),
    ({"dispute_id": "x" * 129}, dp.DISPUTE_ID_INVALID),
    ({"channel": "alipay"}, dp.CHANNEL_MISMATCH),
    ({"currency": "USD"}, dp.CURRENCY_MISMATCH),
    ({"amount": 0}, dp.AMOUNT_NOT_POSITIVE),
    ({"amount": -1}, dp.AMOUNT_NOT_POSITIVE),
    ({"fee_minor": -1}, dp.FEE_NEGATIVE),
    ({"amount": 10_001}, dp.DISPUTE_EXCEEDS_DISPUTABLE),
])
def test_each_rule_has_its_reason(change: dict[str, object], code: str) -> None:
    b = book()
    new, [out] = apply(b, news(**change))  # type: ignore[arg-type]
    assert out.event == dp.EVENT_REJECTED and out.reason_codes == [code]
    assert new == b and new.held_minor == 0
    assert out.fee_minor == 0 and out.detail


def test_several_broken_rules_are_all_listed() -> None:
    _, [out] = apply(book(), news(channel="alipay", currency="USD", fee_minor=-3, amount=0))
    assert out.reason_codes == [dp.CHANNEL_MISMATCH, dp.CURRENCY_MISMATCH,
                                dp.AMOUNT_NOT_POSITIVE, dp.FEE_NEGATIVE]


def test_a_reversed_payment_cannot_be_disputed() -> None:
    b, outcome, _ = rf.on_payment_reversal(book(), rf.PaymentReversal("rv", "card", 10_000,
                                                                      "CNY"), T0)
    assert outcome == PAYMENT_REVERSED
    _, [out] = apply(b, news())
    assert out.reason_codes == [dp.PAYMENT_REVERSED]


def test_a_fully_refunded_payment_cannot_be_disputed() -> None:
    b = refund(book(), "r1", 10_000)
    _, [out] = apply(b, news(amount=1))
    assert out.reason_codes == [dp.DISPUTE_EXCEEDS_DISPUTABLE]
    assert "disputable 0" in out.detail
    # A declined refund frees the amount again.
    b, _ = rf.on_confirmation(b, rf.RefundConfirmation("c1", "card", "r1", "p1", "cr", "FAILED",
                                                       10_000, "CNY", T0), T0, POLICY)
    assert b is not None
    _, [out] = apply(b, news(amount=10_000))
    assert out.event == dp.EVENT_OPENED


@pytest.mark.parametrize(("first", "then"), [
    ("WON", "LOST"), ("LOST", "WON"), ("LOST", "LOST"), ("WON", "WON"), ("EXPIRED", "OPENED"),
    ("CANCELLED", "ACCEPTED"),
])
def test_a_closed_dispute_refuses_any_new_event(first: str, then: str) -> None:
    b, _ = apply(book(), news())
    b, _ = apply(b, news(first, "e2"))
    before = (b.held_minor, b.disputed_lost_minor, b.refundable_minor)
    b, [out] = apply(b, news(then, "e3"))
    assert out.reason_codes == [dp.DISPUTE_ALREADY_CLOSED]
    assert (b.held_minor, b.disputed_lost_minor, b.refundable_minor) == before
    assert apply(b, news(then, "e3")) == (b, [])


def test_an_amount_change_on_a_closed_dispute_names_both() -> None:
    b, _ = apply(book(), news("LOST"))
    _, [out] = apply(b, news("WON", "e2", amount=1))
    assert out.reason_codes == [dp.DISPUTE_AMOUNT_CHANGED, dp.DISPUTE_ALREADY_CLOSED]


def test_a_dispute_of_another_payments_book_is_a_caller_bug() -> None:
    with pytest.raises(dp.DisputeError):
        dp.on_dispute(book(payment_id="p2"), news(), T0)


# -- the book -------------------------------------------------------------------------------


def test_a_payment_reversal_with_a_dispute_open_or_lost_is_an_exception() -> None:
    reversal = rf.PaymentReversal("rv", "card", 10_000, "CNY")
    b, _ = apply(book(), news())
    same, outcome, detail = rf.on_payment_reversal(b, reversal, T0)
    assert (same, outcome) == (b, REVERSAL_EXCEPTION) and "disputes" in detail
    lost, _ = apply(b, news("LOST", "e2"))
    assert rf.on_payment_reversal(lost, reversal, T0)[1] == REVERSAL_EXCEPTION
    won, _ = apply(b, news("WON", "e2"))
    after, outcome, _ = rf.on_payment_reversal(won, reversal, T0)
    assert outcome == PAYMENT_REVERSED and after.refundable_minor == 0


def test_the_book_with_disputes_round_trips_and_reads_old_books() -> None:
    b, _ = apply(refund(book(), "r1", 1000), news())
    b, _ = apply(b, news("LOST", "f1", dispute_id="d2", amount=500, fee_minor=25))
    assert rf.RefundBook.from_dict(b.to_dict()) == b
    old = {k: v for k, v in book().to_dict().items() if k != "disputes"}
    assert rf.RefundBook.from_dict(old).disputes == ()
    broken = b.to_dict()
    broken["disputes"][0]["amount_minor"] = 99_999  # reserved > captured
    with pytest.raises(rf.RefundInvariantError):
        rf.RefundBook.from_dict(broken)


def test_disputes_and_outcomes_check_their_invariants() -> None:
    b, [out] = apply(book(), news())
    [d] = b.disputes
    with pytest.raises(dp.DisputeInvariantError):
        replace(d, fee_minor=5)  # a fee only when lost
    with pytest.raises(dp.DisputeInvariantError):
        replace(d, state=dp.STATE_WON)  # closed without a close time
    with pytest.raises(dp.DisputeInvariantError):
        replace(out, result_id="other")
    with pytest.raises(dp.DisputeInvariantError):
        replace(out, event=dp.EVENT_REJECTED)  # rejected without reasons
    with pytest.raises(rf.RefundInvariantError):
        b.with_dispute(replace(d, dispute_id="d2")).with_dispute(
            replace(d, dispute_id="d3", amount_minor=7001))
    with pytest.raises(dp.DisputeError):
        dp.Dispute.from_dict({"dispute_id": "d1"})


@pytest.mark.parametrize(("change", "field"), [
    ({"event_id": ""}, "event_id"), ({"stage": "APPEAL"}, "stage"),
    ({"status": "CHALLENGED"}, "status"), ({"amount": 1.5}, "amount_minor"),
    ({"funds_withdrawn": 1}, "funds_withdrawn"), ({"payment_id": ""}, "payment_id"),
    ({"respond_by_ms": "soon"}, "respond_by_ms"),
])
def test_unreadable_records_are_refused_on_construction(change: dict[str, object],
                                                        field: str) -> None:
    with pytest.raises(dp.DisputeError, match=field):
        news(**change)  # type: ignore[arg-type]


def test_an_open_dispute_keeps_the_book_and_a_closed_one_lets_it_go() -> None:
    b, _ = apply(book(), news())
    assert rf.evict_at_ms(b, POLICY) is None
    b, _ = apply(b, news("WON", "e2"))
    assert rf.evict_at_ms(b, POLICY) == T0 + POLICY.max_age_ms + POLICY.retain_ms


def test_the_readme_lists_every_dispute_reason_code_and_no_other() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text("utf-8")
    section = readme.split("### Disputes", 1)[1].split("\n### ", 1)[0]
    listed = re.findall(r"^\| `([A-Z_]+)` \|", section, re.M)
    assert len(listed) == len(set(listed))
    assert set(listed) == dp.DISPUTE_REASON_CODES
