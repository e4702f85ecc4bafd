"""Refund and payout journals of ledger v2, and the batch carry, against simple models."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.ledger import balances
from settlement.postings_v2 import (
    KindJournal,
    PostingError,
    carry,
    mirror_mismatch,
    payment_journal,
    payment_reversal_journal,
    payout_journal,
    refund_journal,
    refund_reversal_journal,
)


@given(amount=st.integers(1, 10**12), data=st.data())
def test_a_refund_journal_balances_and_moves_r_f_and_net(amount: int, data: st.DataObject
                                                          ) -> None:
    fee = data.draw(st.integers(0, amount))
    posted = refund_journal("p1", "r1", "m1", "alipay", amount, fee, amount - fee, "CNY")
    assert (posted.kind, posted.source_id, posted.payment_id) == ("REFUND", "p1/r1", "p1")
    assert posted.journal_id == "RF:p1/r1"
    totals = balances(posted.journal.postings)
    assert sum(totals.values()) == 0
    assert totals.get(("payable:m1", "CNY"), 0) == amount - fee  # debit: the merchant owes it
    assert totals.get(("fee_revenue:alipay", "CNY"), 0) == fee
    assert totals[("clearing:alipay", "CNY")] == -amount


@pytest.mark.parametrize(("amount", "fee", "net"), [
    (0, 0, 0), (100, 10, 80), (100, -1, 101), (100, 101, -1), (True, 0, 1),
])
def test_a_refund_split_that_does_not_add_up_is_refused(amount: int, fee: int, net: int) -> None:
    with pytest.raises(PostingError):
        refund_journal("p1", "r1", "m1", "alipay", amount, fee, net, "CNY")


def test_a_payment_then_its_full_refund_nets_every_account_to_zero() -> None:
    pay = payment_journal("p1", "m1", "card", 10_000, 180, "CNY")
    back = refund_journal("p1", "r1", "m1", "card", 10_000, 180, 9_820, "CNY")
    totals = balances([*pay.journal.postings, *back.journal.postings])
    assert set(totals.values()) == {0}


def test_a_payout_moves_payable_to_payout_due_and_needs_a_positive_amount() -> None:
    posted = payout_journal("B:m1:CNY:0", "m1", "CNY", 500)
    assert (posted.kind, posted.source_id, posted.payment_id) == ("PAYOUT", "B:m1:CNY:0", None)
    assert balances(posted.journal.postings) == {("payable:m1", "CNY"): 500,
                                                 ("payout_due:m1", "CNY"): -500}
    with pytest.raises(PostingError):
        payout_journal("B:m1:CNY:0", "m1", "CNY", 0)


@given(nets=st.lists(st.integers(-10**6, 10**6), max_size=30))
def test_carry_forward_pays_exactly_the_positive_running_balance(nets: list[int]) -> None:
    carried, paid = 0, 0
    for net in nets:
        payout, carried_out = carry(net, carried)
        assert payout >= 0 and carried_out <= 0 and payout * carried_out == 0
        assert payout + carried_out == net + carried
        paid += payout
        carried = carried_out
    # What was paid plus what is still carried is every net, none paid twice.
    assert paid + carried == sum(nets)
    with pytest.raises(PostingError):
        carry(0, 1)


def _legs(posted: KindJournal) -> list[tuple[str, str, int]]:
    return [(p.account, p.side, p.amount_minor) for p in posted.journal.postings]


def _head(posted: KindJournal) -> tuple[str, str, int, int, int]:
    return (posted.kind, posted.currency, posted.gross_minor, posted.fee_minor,
            posted.net_minor)


@given(gross=st.integers(1, 10**12), data=st.data())
def test_a_payment_reversal_is_the_exact_mirror_of_the_payment_journal(
        gross: int, data: st.DataObject) -> None:
    fee = data.draw(st.integers(0, gross))
    payment = payment_journal("p1", "m1", "alipay", gross, fee, "CNY")
    reversal = payment_reversal_journal("p1", "m1", "alipay", gross, fee, gross - fee, "CNY")
    assert (reversal.kind, reversal.source_id, reversal.payment_id) == (
        "PAYMENT_REVERSAL", "p1", "p1")
    assert reversal.journal_id == "PR:p1"
    assert mirror_mismatch(_head(payment), _legs(payment), _head(reversal),
                           _legs(reversal)) is None
    # Together they leave every account where it was.
    totals = balances(payment.journal.postings + reversal.journal.postings)
    assert all(v == 0 for v in totals.values())


@given(amount=st.integers(1, 10**12), data=st.data())
def test_a_refund_reversal_is_the_exact_mirror_of_the_refund_journal(
        amount: int, data: st.DataObject) -> None:
    fee = data.draw(st.integers(0, amount))
    refund = refund_journal("p1", "r1", "m1", "alipay", amount, fee, amount - fee, "CNY")
    reversal = refund_reversal_journal("p1", "r1", "m1", "alipay", amount, fee, amount - fee,
                                       "CNY")
    assert (reversal.kind, reversal.source_id, reversal.payment_id) == (
        "REFUND_REVERSAL", "p1/r1", "p1")
    assert reversal.journal_id == "RR:p1/r1"
    assert mirror_mismatch(_head(refund), _legs(refund), _head(reversal),
                           _legs(reversal)) is None
    totals = balances(refund.journal.postings + reversal.journal.postings)
    assert all(v == 0 for v in totals.values())
    assert balances(reversal.journal.postings).get(("payable:m1", "CNY"), 0) == -(amount - fee)


@pytest.mark.parametrize(("gross", "fee", "net"), [
    (0, 0, 0), (100, 10, 80), (100, -1, 101), (100, 101, -1), (True, 0, 1), (100, 0, 99),
])
def test_a_reversal_split_that_does_not_add_up_is_refused(gross: int, fee: int,
                                                          net: int) -> None:
    with pytest.raises(PostingError):
        payment_reversal_journal("p1", "m1", "alipay", gross, fee, net, "CNY")
    with pytest.raises(PostingError):
        refund_reversal_journal("p1", "r1", "m1", "alipay", gross, fee, net, "CNY")


def test_a_reversal_that_is_not_the_mirror_says_how() -> None:
    payment = payment_journal("p1", "m1", "alipay", 10_000, 60, "CNY")
    refund = refund_journal("p1", "r1", "m1", "alipay", 3_000, 18, 2_982, "CNY")

    def mismatch(original: KindJournal, reversal: KindJournal) -> str | None:
        return mirror_mismatch(_head(original), _legs(original), _head(reversal),
                               _legs(reversal))

    other_fee = payment_reversal_journal("p1", "m1", "alipay", 10_000, 61, 9_939, "CNY")
    assert "differ" in (mismatch(payment, other_fee) or "")
    other_merchant = payment_reversal_journal("p1", "m2", "alipay", 10_000, 60, 9_940, "CNY")
    assert "swapped" in (mismatch(payment, other_merchant) or "")
    other_currency = payment_reversal_journal("p1", "m1", "alipay", 10_000, 60, 9_940, "USD")
    assert "currency" in (mismatch(payment, other_currency) or "")
    of_refund = refund_reversal_journal("p1", "r1", "m1", "alipay", 3_000, 18, 2_982, "CNY")
    assert mismatch(refund, of_refund) is None
    assert "cannot reverse" in (mismatch(payment, of_refund) or "")
    # A journal posted with the original's sides (not swapped) is no mirror.
    assert "swapped" in (mirror_mismatch(("PAYMENT", "CNY", 10_000, 60, 9_940), _legs(payment),
                                         ("PAYMENT_REVERSAL", "CNY", 10_000, 60, 9_940),
                                         _legs(payment)) or "")
