"""Dispute journals (hold, release, loss with fee) and dispute batch items, against the
postings they must make and a model of what the merchant is owed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.batches import BatchError, BatchInvariantError, BatchItem, BatchTotals, OpenBatch
from settlement.ledger import CREDIT, DEBIT, Journal, Posting, balances
from settlement.postings_v2 import (
    KindJournal,
    PostingError,
    dispute_hold_account,
    dispute_lost_journal,
    dispute_open_journal,
    dispute_receivable_account,
    dispute_won_journal,
)
from settlement.refund_model import (
    ITEM_DISPUTE_FEE,
    ITEM_DISPUTE_HOLD,
    ITEM_DISPUTE_RELEASE,
    ITEM_REFUND,
    JOURNAL_DISPUTE_LOST,
    JOURNAL_DISPUTE_OPEN,
    JOURNAL_DISPUTE_WON,
    RefundIdError,
    dispute_source_id,
    split_source_id,
)
from settlement.windows import Window

WINDOW = Window(0, 10_000)


def legs(posted: KindJournal) -> set[tuple[str, str, int]]:
    return {(p.account, p.side, p.amount_minor) for p in posted.journal.postings}


def test_the_source_id_names_the_payment_and_the_dispute() -> None:
    assert dispute_source_id("pay/1", "dp_9") == "pay/1/dp_9"
    assert split_source_id("pay/1/dp_9") == ("pay/1", "dp_9")
    for payment_id, dispute_id in (("", "d"), ("p", ""), ("p", "d/1"), ("p", "d 1"),
                                   ("p", "x" * 129)):
        with pytest.raises(RefundIdError):
            dispute_source_id(payment_id, dispute_id)


def test_an_opened_dispute_holds_the_merchants_amount() -> None:
    posted = dispute_open_journal("p1", "d1", "m1", "card", 700, False, "CNY")
    assert (posted.kind, posted.source_id, posted.payment_id, posted.journal_id) == (
        JOURNAL_DISPUTE_OPEN, "p1/d1", "p1", "DO:p1/d1")
    assert (posted.gross_minor, posted.fee_minor, posted.net_minor) == (700, 0, 700)
    assert legs(posted) == {("payable:m1", DEBIT, 700), ("dispute_hold:m1", CREDIT, 700)}
    withdrawn = dispute_open_journal("p1", "d1", "m1", "card", 700, True, "CNY")
    assert legs(withdrawn) == {
        ("payable:m1", DEBIT, 700), ("dispute_hold:m1", CREDIT, 700),
        ("dispute_receivable:card", DEBIT, 700), ("clearing:card", CREDIT, 700)}
    assert (withdrawn.gross_minor, withdrawn.fee_minor, withdrawn.net_minor) == (700, 0, 700)


def test_a_won_dispute_releases_exactly_what_its_opening_held() -> None:
    for withdrawn in (False, True):
        opened = dispute_open_journal("p1", "d1", "m1", "unionpay", 700, withdrawn, "CNY")
        won = dispute_won_journal("p1", "d1", "m1", "unionpay", 700, withdrawn, "CNY")
        assert (won.kind, won.journal_id) == (JOURNAL_DISPUTE_WON, "DW:p1/d1")
        swapped = {(a, CREDIT if s == DEBIT else DEBIT, n) for a, s, n in legs(opened)}
        assert legs(won) == swapped
        totals = balances([*opened.journal.postings, *won.journal.postings])
        assert set(totals.values()) == {0}


@pytest.mark.parametrize("withdrawn", [False, True])
def test_a_lost_dispute_takes_the_held_amount_and_charges_the_fee(withdrawn: bool) -> None:
    lost = dispute_lost_journal("p1", "d1", "m1", "card", 700, withdrawn, 150, "CNY")
    assert (lost.kind, lost.journal_id) == (JOURNAL_DISPUTE_LOST, "DL:p1/d1")
    assert (lost.gross_minor, lost.fee_minor, lost.net_minor) == (850, 150, 700)
    if withdrawn:
        assert legs(lost) == {
            ("dispute_hold:m1", DEBIT, 700), ("dispute_receivable:card", CREDIT, 700),
            ("payable:m1", DEBIT, 150), ("clearing:card", CREDIT, 150)}
    else:  # one clearing credit of D + X: one entry per journal, account and side
        assert legs(lost) == {
            ("dispute_hold:m1", DEBIT, 700), ("payable:m1", DEBIT, 150),
            ("clearing:card", CREDIT, 850)}
    free = dispute_lost_journal("p1", "d1", "m1", "card", 700, withdrawn, 0, "CNY")
    assert (free.gross_minor, free.fee_minor, free.net_minor) == (700, 0, 700)
    assert ("payable:m1", DEBIT) not in {(a, s) for a, s, _ in legs(free)}


@given(amount=st.integers(1, 10**12), fee=st.integers(0, 10**9), withdrawn=st.booleans(),
       won=st.booleans())
def test_a_closed_dispute_leaves_no_hold_and_no_receivable(
        amount: int, fee: int, withdrawn: bool, won: bool) -> None:
    """Opened then won or lost: dispute_hold and dispute_receivable back at zero; the
    merchant's payable moved by exactly what its items net (hold -D, release +D, fee -X),
    the channel's clearing by what left us (nothing if won; D + X if lost)."""
    opened = dispute_open_journal("p1", "d1", "m1", "card", amount, withdrawn, "CNY")
    if won:
        closed = dispute_won_journal("p1", "d1", "m1", "card", amount, withdrawn, "CNY")
        items = [BatchItem.for_dispute_hold("p1", "d1", amount, 1),
                 BatchItem.for_dispute_release("p1", "d1", amount, 2)]
    else:
        closed = dispute_lost_journal("p1", "d1", "m1", "card", amount, withdrawn, fee, "CNY")
        items = [BatchItem.for_dispute_hold("p1", "d1", amount, 1)]
        if fee:
            items.append(BatchItem.for_dispute_fee("p1", "d1", fee, 2))
    totals = balances([*opened.journal.postings, *closed.journal.postings])
    assert sum(totals.values()) == 0
    assert totals.get((dispute_hold_account("m1"), "CNY"), 0) == 0
    assert totals.get((dispute_receivable_account("card"), "CNY"), 0) == 0
    # payable is a liability: debit-positive balance = what the merchant is no longer owed.
    assert -totals.get(("payable:m1", "CNY"), 0) == sum(i.net_minor for i in items)
    assert totals.get(("clearing:card", "CNY"), 0) == (0 if won else -(amount + fee))
    for posted in (opened, closed):  # every journal debits what it credits
        assert sum(p.signed_minor for p in posted.journal.postings) == 0


@pytest.mark.parametrize("args", [
    ("p1", "d1", "m1", "card", 0, False), ("p1", "d1", "m1", "card", -5, False),
    ("p1", "d1", "m1", "card", True, False), ("p1", "d1", "m1", "card", 7, "yes"),
    ("p1", "d/1", "m1", "card", 7, False), ("", "d1", "m1", "card", 7, False),
    ("p1", "d1", "", "card", 7, False),
])
def test_wrong_dispute_amounts_and_ids_post_nothing(args: tuple[Any, ...]) -> None:
    pid, did, merchant, channel, amount, withdrawn = args
    for build in (dispute_open_journal, dispute_won_journal):
        with pytest.raises((PostingError, ValueError)):
            build(pid, did, merchant, channel, amount, withdrawn, "CNY")
    with pytest.raises((PostingError, ValueError)):
        dispute_lost_journal(pid, did, merchant, channel, amount, withdrawn, 0, "CNY")
    with pytest.raises(PostingError):
        dispute_lost_journal("p1", "d1", "m1", "card", 7, False, -1, "CNY")


def test_a_dispute_journal_with_the_wrong_legs_or_amounts_is_refused() -> None:
    def journal(jid: str, *rows: tuple[str, str, int]) -> Journal:
        return Journal(jid, "p1", "CNY", tuple(Posting(jid, a, s, n, "CNY") for a, s, n in rows))

    hold = journal("DO:p1/d1", ("payable:m1", DEBIT, 10), ("dispute_hold:m1", CREDIT, 10))
    assert KindJournal(JOURNAL_DISPUTE_OPEN, "p1/d1", "p1", 10, 0, 10, hold)
    for kind, gross, fee, net in ((JOURNAL_DISPUTE_OPEN, 20, 10, 10),  # a fee on an opening
                                  (JOURNAL_DISPUTE_OPEN, 11, 0, 11),  # gross not its debits
                                  (JOURNAL_DISPUTE_LOST, 20, 10, 10)):  # no fee posted
        with pytest.raises(PostingError):
            KindJournal(kind, "p1/d1", "p1", gross, fee, net, hold)
    # Channel-side debits beyond D, or a channel pair on a loss: refused.
    lopsided = journal("DO:p1/d1", ("payable:m1", DEBIT, 10), ("dispute_hold:m1", CREDIT, 10),
                       ("dispute_receivable:card", DEBIT, 20), ("clearing:card", CREDIT, 20))
    with pytest.raises(PostingError):
        KindJournal(JOURNAL_DISPUTE_OPEN, "p1/d1", "p1", 10, 0, 10, lopsided)
    paired = journal("DL:p1/d1", ("dispute_hold:m1", DEBIT, 10), ("clearing:card", CREDIT, 10),
                     ("dispute_receivable:card", DEBIT, 10), ("clearing:x", CREDIT, 10))
    with pytest.raises(PostingError):
        KindJournal(JOURNAL_DISPUTE_LOST, "p1/d1", "p1", 10, 0, 10, paired)


def test_dispute_items_are_signed_feeless_and_named_by_their_source() -> None:
    hold = BatchItem.for_dispute_hold("p-1", "d-1", 700, 5)
    release = BatchItem.for_dispute_release("p-1", "d-1", 700, 6)
    fee = BatchItem.for_dispute_fee("p-1", "d-1", 150, 7)
    assert [(i.kind, i.item_id, i.payment_id, i.gross_minor, i.fee_minor, i.net_minor)
            for i in (hold, release, fee)] == [
        (ITEM_DISPUTE_HOLD, "p-1/d-1", "p-1", -700, 0, -700),
        (ITEM_DISPUTE_RELEASE, "p-1/d-1", "p-1", 700, 0, 700),
        (ITEM_DISPUTE_FEE, "p-1/d-1", "p-1", -150, 0, -150)]
    refund = BatchItem.for_refund("p-1", "d-1", 700, 0, 700, 5)  # same source id, a refund
    assert len({hold.identity, release.identity, fee.identity, refund.identity}) == 4
    assert refund.kind == ITEM_REFUND
    for build in (BatchItem.for_dispute_hold, BatchItem.for_dispute_release,
                  BatchItem.for_dispute_fee):
        for amount in (0, -1, True, 1.5):
            with pytest.raises(BatchError):
                build("p-1", "d-1", amount, 5)  # type: ignore[arg-type]
        with pytest.raises(BatchError):
            build("p-1", "d/1", 5, 5)
    for bad in (
        ("p-1", -700, -1, -699, 0, ITEM_DISPUTE_HOLD, "p-1/d-1"),  # a fee split on a hold
        ("p-1", 700, 0, 700, 0, ITEM_DISPUTE_HOLD, "p-1/d-1"),  # a positive hold
        ("p-1", -700, 0, -700, 0, ITEM_DISPUTE_RELEASE, "p-1/d-1"),  # a negative release
        ("p-1", 150, 0, 150, 0, ITEM_DISPUTE_FEE, "p-1/d-1"),  # a fee paid to the merchant
        ("p-1", -700, 0, -700, 0, ITEM_DISPUTE_HOLD, "p-2/d-1"),  # another payment's
        ("p-1", -700, 0, -700, 0, ITEM_DISPUTE_HOLD, "p-1"),  # not a source id
    ):
        with pytest.raises(BatchError):
            BatchItem(*bad)
    assert BatchItem.from_dict(json.loads(json.dumps(fee.to_dict()))) == fee


def test_dispute_items_net_in_batches_and_count_by_kind() -> None:
    items = [BatchItem(f"p-{n}", 1_000, 6, 994, 1) for n in range(2)]
    items += [BatchItem.for_dispute_hold("p-0", "d-1", 700, 2),
              BatchItem.for_dispute_fee("p-0", "d-1", 150, 3),
              BatchItem.for_dispute_hold("p-1", "d-2", 300, 3),
              BatchItem.for_dispute_release("p-1", "d-2", 300, 4)]
    totals = BatchTotals.new("m1", "CNY", WINDOW)
    batch = OpenBatch.new("m1", "CNY", WINDOW)
    for item in items:
        totals, batch = totals.add(item), batch.add(item)
    assert (totals.dispute_hold_count, totals.dispute_release_count,
            totals.dispute_fee_count, totals.item_count) == (2, 1, 1, 6)
    assert totals == BatchTotals.of(batch)
    assert BatchTotals.from_dict(json.loads(json.dumps(totals.to_dict()))) == totals
    closed = totals.close(12_000, items, carried_in_minor=-100)
    # Payments 1988, hold -700, fee -150, hold -300 and its release +300: net 1138.
    assert (closed.payment_count, closed.refund_count, closed.net_minor, closed.fee_minor,
            closed.payout_minor, closed.carried_out_minor) == (2, 0, 1138, 12, 1038, 0)
    assert closed.count(ITEM_DISPUTE_HOLD) == 2
    with pytest.raises(BatchInvariantError):
        totals.close(12_000, items[:-1], 0)  # a release lost on the way
    # A batch of a dispute's hold alone is negative and carried to the next one.
    alone = BatchTotals.new("m1", "CNY", WINDOW).add(items[2]).close(12_000, [items[2]], 0)
    assert (alone.payout_minor, alone.carried_out_minor) == (0, -700)
    base = BatchTotals.new("m1", "CNY", WINDOW).to_dict()
    for bad in ({"dispute_hold_count": 1, "gross_minor": 10, "fee_minor": 0, "net_minor": 10},
                {"dispute_release_count": 1, "gross_minor": -10, "fee_minor": 0,
                 "net_minor": -10},
                {"dispute_fee_count": 1, "gross_minor": 0, "fee_minor": 0, "net_minor": 0},
                {"dispute_fee_count": -1}):
        with pytest.raises(BatchError):
            BatchTotals.from_dict({**base, **bad})
