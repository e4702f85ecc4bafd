"""Refund decisions against a reference model: the cap under racing and failing refunds, fees
given back with cumulative rounding, idempotency, timers."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement import refunds as rf
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    DECLINED,
    DUPLICATE_CONFIRMATION,
    LATE_CONFIRMATION,
    MATCHED,
    MISSING_CONFIRMATION,
    ORPHAN_CONFIRMATION,
    PAYMENT_REVERSED,
    REFUND_REVERSED,
    REVERSAL_EXCEPTION,
)
from settlement.refund_model import RefundRequest

T0 = 1_764_000_000_000
POLICY = rf.RefundPolicy(sla_ms=1000)


def book(captured: int = 10_000, fee: int = 60, **kw: object) -> rf.RefundBook:
    values: dict[str, object] = dict(payment_id="p1", merchant_id="m1", channel="card",
                                     currency="CNY", captured_minor=captured, fee_minor=fee,
                                     captured_at_ms=T0, order_id="o1", channel_txn_id="t1")
    values.update(kw)
    return rf.RefundBook(**values)  # type: ignore[arg-type]


def request(refund_id: str = "r1", amount: int = 1000, **kw: object) -> RefundRequest:
    values: dict[str, object] = dict(refund_id=refund_id, payment_id="p1", merchant_id="m1",
                                     amount_minor=amount, currency="CNY", requested_at_ms=T0)
    values.update(kw)
    return RefundRequest(**values)  # type: ignore[arg-type]


def answer(refund_id: str = "r1", amount: int = 1000, status: str = "SUCCEEDED",
           cid: str | None = None, **kw: object) -> rf.RefundConfirmation:
    values: dict[str, object] = dict(
        confirmation_id=cid or f"c-{refund_id}", channel="card", refund_id=refund_id,
        payment_id="p1", channel_refund_id=f"cr-{refund_id}", status=status,
        amount_minor=amount, currency="CNY", confirmed_at_ms=T0)
    values.update(kw)
    return rf.RefundConfirmation(**values)  # type: ignore[arg-type]


def codes(decision: rf.RequestDecision) -> set[str]:
    return {r.code for r in decision.rejections}


# -- fee given back -------------------------------------------------------------------------


@given(st.integers(1, 10**12), st.data())
def test_cumulative_fee_never_exceeds_the_fee_and_a_full_refund_returns_it(
        captured: int, data: st.DataObject) -> None:
    fee = data.draw(st.integers(0, captured))
    parts = data.draw(st.lists(st.integers(1, captured), max_size=12))
    refunded = 0
    total = 0
    for part in parts:
        if refunded + part > captured:
            break
        f = rf.fee_returned(fee, captured, refunded, part)
        assert 0 <= f <= part
        refunded += part
        total += f
        # Each running total is the exact proportion, rounded half up once.
        assert total == int(Fraction(fee * refunded, captured) + Fraction(1, 2))
    assert total <= fee
    rest = captured - refunded
    total += rf.fee_returned(fee, captured, refunded, rest)
    assert total == fee


def test_fee_policy_keep_returns_nothing_and_overdrawing_is_refused() -> None:
    assert rf.fee_returned(60, 10_000, 0, 10_000, rf.FEE_KEEP) == 0
    assert rf.fee_returned(60, 10_000, 0, 5_000) == 30
    with pytest.raises(rf.RefundInvariantError):
        rf.fee_returned(60, 10_000, 9_000, 1_001)
    with pytest.raises(rf.RefundError):
        rf.fee_returned(60, 10_000, 0, 1, "half")


# -- requests -------------------------------------------------------------------------------


def test_accepts_within_refundable_and_reserves_pending_amounts() -> None:
    d1 = rf.decide_request(book(), request("r1", 6000), T0 + 5, POLICY)
    assert d1.accepted is not None and d1.book is not None
    assert d1.book.refundable_minor == 4000
    # A second refund racing for more than what is left loses, though the first is pending.
    d2 = rf.decide_request(d1.book, request("r2", 4001), T0 + 6, POLICY)
    assert codes(d2) == {rf.REFUND_EXCEEDS_REFUNDABLE}
    d3 = rf.decide_request(d1.book, request("r2", 4000), T0 + 6, POLICY)
    assert d3.accepted is not None and d3.book is not None and d3.book.refundable_minor == 0


def test_identical_resend_is_a_duplicate_and_another_body_a_conflict() -> None:
    d1 = rf.decide_request(book(), request("r1", 100), T0, POLICY)
    assert d1.book is not None
    again = rf.decide_request(d1.book, request("r1", 100, signature="x"), T0 + 1, POLICY)
    assert again.duplicate and again.book is d1.book
    other = rf.decide_request(d1.book, request("r1", 101), T0 + 1, POLICY)
    assert codes(other) == {rf.DUPLICATE_CONFLICT}


@pytest.mark.parametrize(("change", "code"), [
    ({"amount_minor": 0}, rf.AMOUNT_NOT_POSITIVE),
    ({"amount_minor": -5}, rf.AMOUNT_NOT_POSITIVE),
    ({"currency": "USD"}, rf.CURRENCY_DIFFERS),
    ({"merchant_id": "m2"}, rf.MERCHANT_MISMATCH),
    ({"refund_id": "a/b"}, rf.REFUND_ID_INVALID),
    ({"refund_id": ""}, rf.REFUND_ID_INVALID),
    ({"amount_minor": 10_001}, rf.REFUND_EXCEEDS_REFUNDABLE),
])
def test_each_rule_has_its_reason(change: dict[str, object], code: str) -> None:
    decision = rf.decide_request(book(), replace(request(), **change), T0, POLICY)
    assert code in codes(decision) and decision.accepted is None


def test_unknown_uncaptured_old_and_too_many() -> None:
    assert codes(rf.decide_request(None, request(), T0, POLICY)) == {rf.PAYMENT_UNKNOWN}
    assert codes(rf.decide_request(None, request(), T0, POLICY, payment_known=True)) == {
        rf.PAYMENT_NOT_CAPTURED}
    old = T0 + rf.DEFAULT_MAX_AGE_MS + 1
    assert codes(rf.decide_request(book(), request(), old, POLICY)) == {rf.REFUND_WINDOW_EXPIRED}
    policy = rf.RefundPolicy(max_refunds=50, max_refunds_by_channel={"card": 2})
    b = book()
    for n in range(2):
        d = rf.decide_request(b, request(f"r{n}", 1), T0, policy)
        assert d.book is not None
        b = d.book
    assert codes(rf.decide_request(b, request("r9", 1), T0, policy)) == {rf.MAX_REFUNDS_REACHED}
    sig = rf.Rejection("SIGNATURE_INVALID", "forged")
    assert codes(rf.decide_request(book(), request(), T0, POLICY, signature_failure=sig)) == {
        "SIGNATURE_INVALID"}


# -- answers and timers ---------------------------------------------------------------------


def accepted(*amounts: int) -> rf.RefundBook:
    b = book()
    for n, amount in enumerate(amounts, 1):
        d = rf.decide_request(b, request(f"r{n}", amount), T0, POLICY)
        assert d.book is not None and d.accepted is not None
        b = d.book
    return b


def test_matched_declined_mismatch_duplicate_orphan() -> None:
    b = accepted(5000, 3000, 2000)
    b1, [ok] = rf.on_confirmation(b, answer("r1", 5000), T0 + 10, POLICY)
    assert ok.outcome == MATCHED and ok.refund is not None and ok.refund.fee_returned_minor == 30
    assert b1 is not None and b1.refunded_minor == 5000
    b2, [no] = rf.on_confirmation(b1, answer("r2", 3000, "FAILED"), T0 + 11, POLICY)
    assert no.outcome == DECLINED and b2 is not None and b2.refundable_minor == 3000
    b3, [mm] = rf.on_confirmation(b2, answer("r3", 1999), T0 + 12, POLICY)
    assert mm.outcome == AMOUNT_MISMATCH and b3 is not None and b3.refundable_minor == 3000
    b4, [dup] = rf.on_confirmation(b3, answer("r1", 5000, cid="c-again"), T0 + 13, POLICY)
    assert dup.outcome == DUPLICATE_CONFIRMATION and b4 is not None
    assert rf.on_confirmation(b4, answer("r1", 5000, cid="c-again"), T0 + 14, POLICY)[1] == []
    _, [orphan] = rf.on_confirmation(b4, answer("zz", 1), T0 + 15, POLICY)
    assert orphan.outcome == ORPHAN_CONFIRMATION
    _, [unknown] = rf.on_confirmation(None, answer("r1", 1), T0 + 15, POLICY)
    assert unknown.outcome == ORPHAN_CONFIRMATION and unknown.refund is None


def test_missing_frees_the_amount_and_a_late_success_only_fits_if_still_refundable() -> None:
    b = accepted(6000)
    assert rf.deadline_ms(b, POLICY) == T0 + 1000
    b, [missing] = rf.on_tick(b, T0 + 1000, POLICY)
    assert missing.outcome == MISSING_CONFIRMATION and b.refundable_minor == 10_000
    late_book, [late] = rf.on_confirmation(b, answer("r1", 6000), T0 + 2000, POLICY)
    assert late.outcome == MATCHED and late.late and late_book is not None
    assert late_book.refunded_minor == 6000
    # Another refund took the freed amount first: the late success cannot be taken.
    d = rf.decide_request(b, request("r2", 5000), T0 + 1500, POLICY)
    assert d.book is not None
    b2, [late2] = rf.on_confirmation(d.book, answer("r1", 6000), T0 + 2000, POLICY)
    assert late2.outcome == LATE_CONFIRMATION and b2 is not None and b2.refunded_minor == 0


def test_book_round_trips_and_is_checked_on_read_back() -> None:
    b, _ = rf.on_confirmation(accepted(100, 200), answer("r1", 100), T0 + 1, POLICY)
    assert b is not None
    assert rf.RefundBook.from_dict(b.to_dict()) == b
    broken = b.to_dict()
    broken["refunds"][1]["amount_minor"] = 99_999  # reserved > captured
    with pytest.raises(rf.RefundInvariantError):
        rf.RefundBook.from_dict(broken)
    with pytest.raises(rf.RefundError):
        rf.RefundBook.from_dict({**b.to_dict(), "v": 99})


# -- reversals ------------------------------------------------------------------------------


def test_a_reversed_refund_is_refundable_again_and_gives_its_fee_back() -> None:
    b, _ = rf.on_confirmation(accepted(5000), answer("r1", 5000), T0 + 1, POLICY)
    assert b is not None and b.fee_returned_minor == 30
    b2, [rev] = rf.on_confirmation(b, answer("r1", 5000, "REVERSED", cid="rv"), T0 + 2, POLICY)
    assert rev.outcome == REFUND_REVERSED and not rev.terminal
    assert rev.refund is not None and rev.refund.fee_returned_minor == 30  # the mirror
    assert b2 is not None and (b2.refunded_minor, b2.refundable_minor) == (0, 10_000)
    assert b2.fee_returned_minor == 0
    assert rf.on_confirmation(b2, answer("r1", 5000, "REVERSED", cid="rv"), T0 + 3,
                              POLICY)[1] == []  # redelivered
    _, [again] = rf.on_confirmation(b2, answer("r1", 5000, "REVERSED", cid="rv2"), T0 + 3,
                                    POLICY)
    assert again.outcome == REVERSAL_EXCEPTION
    pending = accepted(100)
    _, [early] = rf.on_confirmation(pending, answer("r1", 100, "REVERSED"), T0 + 1, POLICY)
    assert early.outcome == REVERSAL_EXCEPTION


def test_a_payment_reversal_takes_the_whole_capture_once_and_only_without_refunds() -> None:
    rev = rf.PaymentReversal("c-rev", "card", 10_000, "CNY")
    b, outcome, _ = rf.on_payment_reversal(book(), rev, T0 + 1)
    assert outcome == PAYMENT_REVERSED and b.refundable_minor == 0
    assert rf.on_payment_reversal(b, rev, T0 + 2)[1] == ""  # the same answer again
    assert rf.on_payment_reversal(b, replace(rev, confirmation_id="c-2"), T0 + 2)[1] == (
        REVERSAL_EXCEPTION)
    d = rf.decide_request(b, request("r1", 1), T0 + 3, POLICY)
    assert codes(d) == {rf.PAYMENT_WAS_REVERSED}
    for bad in (replace(rev, amount_minor=9_999), replace(rev, currency="USD"),
                replace(rev, channel="alipay")):
        assert rf.on_payment_reversal(book(), bad, T0)[1] == REVERSAL_EXCEPTION
    assert rf.on_payment_reversal(accepted(1), rev, T0)[1] == REVERSAL_EXCEPTION


def test_fees_catch_up_after_a_reversal_and_never_pass_the_fee() -> None:
    # G = 3, F = 1: refunds of 1 give back 0 then 1; the second is reversed; the last refund
    # of 2 then gives back exactly what is missing, never more than F in total.
    b = book(captured=3, fee=1)
    for n, amount in ((1, 1), (2, 1)):
        d = rf.decide_request(b, request(f"r{n}", amount), T0, POLICY)
        assert d.book is not None
        b, _ = rf.on_confirmation(d.book, answer(f"r{n}", amount), T0, POLICY)
        assert b is not None
    assert [r.fee_returned_minor for r in b.refunds] == [0, 1]
    b, _ = rf.on_confirmation(b, answer("r2", 1, "REVERSED", cid="rv"), T0, POLICY)
    assert b is not None and b.fee_returned_minor == 0
    d = rf.decide_request(b, request("r3", 2), T0, POLICY)
    assert d.book is not None
    b, _ = rf.on_confirmation(d.book, answer("r3", 2), T0, POLICY)
    assert b is not None and b.refunded_minor == 3 and b.fee_returned_minor == 1


# -- reference model ------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("request"), st.integers(-5, 12_000)),
    st.tuples(st.just("answer"), st.integers(0, 12), st.sampled_from(
        ["SUCCEEDED", "FAILED", "OFF"]), st.booleans()),
    st.tuples(st.just("tick"), st.integers(0, 3000)),
    st.tuples(st.just("reverse"), st.integers(0, 12)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 12_000), st.data())
def test_book_agrees_with_a_reference_model(steps: list[tuple], captured: int,
                                            data: st.DataObject) -> None:
    fee = data.draw(st.integers(0, captured))
    b = book(captured=captured, fee=fee)
    now = T0
    # The model: refund id -> [amount, state]; states PENDING / OK / FAIL / EXC.
    model: dict[str, list] = {}
    returned = 0
    reversed_any = False
    for step in steps:
        now += 10
        if step[0] == "request":
            rid = f"r{len(model) + 100}"
            amount = step[1]
            reserved = sum(a for a, s in model.values() if s in ("PENDING", "OK", "EXC"))
            d = rf.decide_request(b, request(rid, amount), now, POLICY)
            fits = 0 < amount <= captured - reserved
            assert (d.accepted is not None) == fits
            if fits:
                model[rid] = [amount, "PENDING"]
                assert d.book is not None
                b = d.book
        elif step[0] == "answer" and model:
            rid = sorted(model)[step[1] % len(model)]
            amount, state = model[rid]
            status, off = step[2], step[3] and step[2] == "OFF"
            cid = f"c{now}"
            conf = answer(rid, amount + 1 if status == "OFF" else amount,
                          "FAILED" if status == "FAILED" else "SUCCEEDED", cid=cid)
            new, results = rf.on_confirmation(b, conf, now, POLICY)
            assert new is not None
            [result] = results
            if state == "PENDING":
                expected = {"SUCCEEDED": MATCHED, "FAILED": DECLINED, "OFF": AMOUNT_MISMATCH}
                assert result.outcome == expected[status]
                model[rid][1] = {MATCHED: "OK", DECLINED: "FAIL"}.get(result.outcome, "EXC")
                if result.outcome == MATCHED:
                    assert result.refund is not None
                    returned += result.refund.fee_returned_minor or 0
            elif state == "MISSING" and status == "SUCCEEDED" and result.outcome == MATCHED:
                model[rid][1] = "OK"
                assert result.refund is not None
                returned += result.refund.fee_returned_minor or 0
            del off
            b = new
        elif step[0] == "reverse" and model:
            rid = sorted(model)[step[1] % len(model)]
            amount, state = model[rid]
            new, [result] = rf.on_confirmation(
                b, answer(rid, amount, "REVERSED", cid=f"rv{now}"), now, POLICY)
            assert new is not None
            if state == "OK":
                assert result.outcome == REFUND_REVERSED and result.refund is not None
                returned -= result.refund.fee_returned_minor or 0
                model[rid][1] = "REV"
                reversed_any = True
            else:
                assert result.outcome == REVERSAL_EXCEPTION
            b = new
        elif step[0] == "tick":
            now += step[1]
            b, results = rf.on_tick(b, now, POLICY)
            for result in results:
                assert model[result.refund_id][1] == "PENDING"
                model[result.refund_id][1] = "MISSING"
        reserved = sum(a for a, s in model.values() if s in ("PENDING", "OK", "EXC"))
        refunded = sum(a for a, s in model.values() if s == "OK")
        assert b.reserved_minor == reserved <= captured
        assert b.refunded_minor == refunded <= captured
        assert b.fee_returned_minor == returned <= fee
        exact = int(Fraction(fee * refunded, captured) + Fraction(1, 2))
        # Exact without reversals; after one, the total catches up, never above the exact one
        # once more is refunded... and never above F.
        assert returned == exact or reversed_any
        if refunded == captured:
            assert returned == fee or reversed_any


def test_the_stored_deadline_is_the_books() -> None:
    b = accepted(100, 200)
    assert rf.stored_deadline_ms(b.to_dict(), POLICY) == rf.deadline_ms(b, POLICY) == T0 + 1000
    done, _ = rf.on_tick(b, T0 + 1000, POLICY)
    assert rf.stored_deadline_ms(done.to_dict(), POLICY) is None


def test_the_readme_lists_every_refund_reason_code_and_no_other() -> None:
    import re
    from pathlib import Path

    from settlement.signing import SIGNATURE_REASON_CODES

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text("utf-8")
    section = readme.split("### Refunds", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \|", section, re.M)
    listed = [code for row in rows for code in re.findall(r"`([A-Z_]+)`", row)]
    assert len(listed) == len(set(listed))
    assert set(listed) == rf.REFUND_REASON_CODES | SIGNATURE_REASON_CODES
