"""Unit and property tests for settlement.ledger: journals balance, balances sum to zero."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.errors import DomainError
from settlement.fees import FeeSchedule, net_minor
from settlement.ledger import (
    CREDIT,
    DEBIT,
    Journal,
    LedgerError,
    Posting,
    UnbalancedJournal,
    assert_balanced,
    balances,
    clearing_account,
    fee_revenue_account,
    journal_for_match,
    payable_account,
)

FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180,free=0,all=10000")
CHANNELS = ["alipay", "wechat_pay", "unionpay", "card", "free", "all", "unknown"]


def test_match_journal_example() -> None:
    journal = journal_for_match("p1", "m1", "card", 10_000, "CNY", FEES)
    assert journal.journal_id == "J:p1"
    assert journal.payment_id == "p1"
    assert [(p.account, p.side, p.amount_minor) for p in journal.postings] == [
        ("clearing:card", DEBIT, 10_000),
        ("payable:m1", CREDIT, 9_820),
        ("fee_revenue:card", CREDIT, 180),
    ]
    assert all(p.journal_id == "J:p1" and p.currency == "CNY" for p in journal.postings)


def test_zero_fee_leg_is_left_out() -> None:
    journal = journal_for_match("p1", "m1", "free", 500, "JPY", FEES)
    assert [(p.account, p.side, p.amount_minor) for p in journal.postings] == [
        ("clearing:free", DEBIT, 500),
        ("payable:m1", CREDIT, 500),
    ]
    # A fee that rounds to zero behaves the same way.
    assert len(journal_for_match("p2", "m1", "alipay", 1, "CNY", FEES).postings) == 2


def test_fee_equal_to_gross_leaves_out_the_payable_leg() -> None:
    journal = journal_for_match("p1", "m1", "all", 700, "CNY", FEES)
    assert [(p.account, p.side, p.amount_minor) for p in journal.postings] == [
        ("clearing:all", DEBIT, 700),
        ("fee_revenue:all", CREDIT, 700),
    ]
    assert (payable_account("m1"), "CNY") not in balances(journal.postings)


def test_replay_gives_the_same_journal() -> None:
    first = journal_for_match("p1", "m1", "card", 10_000, "CNY", FEES)
    assert journal_for_match("p1", "m1", "card", 10_000, "CNY", FEES) == first


@pytest.mark.parametrize("gross", [0, -5, True, 1.5])
def test_match_rejects_non_positive_gross(gross: object) -> None:
    with pytest.raises(LedgerError):
        journal_for_match("p1", "m1", "card", gross, "CNY", FEES)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount_minor": 0},
        {"amount_minor": -1},
        {"amount_minor": True},
        {"side": "debit"},
        {"currency": ""},
        {"account": ""},
    ],
)
def test_posting_rules(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {
        "journal_id": "J:p1",
        "account": "clearing:card",
        "side": DEBIT,
        "amount_minor": 1,
        "currency": "CNY",
    }
    values.update(kwargs)
    with pytest.raises(LedgerError) as info:
        Posting(**values)  # type: ignore[arg-type]
    assert isinstance(info.value, DomainError)


def test_unbalanced_and_inconsistent_journals_are_refused() -> None:
    debit = Posting("J:p1", clearing_account("card"), DEBIT, 100, "CNY")
    credit = Posting("J:p1", payable_account("m1"), CREDIT, 99, "CNY")
    with pytest.raises(UnbalancedJournal):
        Journal("J:p1", "p1", "CNY", (debit, credit))
    with pytest.raises(UnbalancedJournal):
        Journal("J:p1", "p1", "CNY", ())
    usd_credit = Posting("J:p1", payable_account("m1"), CREDIT, 100, "USD")
    with pytest.raises(UnbalancedJournal):
        Journal("J:p1", "p1", "CNY", (debit, usd_credit))
    other = Posting("J:p2", payable_account("m1"), CREDIT, 100, "CNY")
    with pytest.raises(UnbalancedJournal):
        Journal("J:p1", "p1", "CNY", (debit, other))


def test_journal_round_trips_and_is_checked_on_read_back() -> None:
    journal = journal_for_match("p1", "m1", "card", 10_000, "CNY", FEES)
    data = json.loads(json.dumps(journal.to_dict()))
    assert Journal.from_dict(data) == journal
    data["postings"][1]["amount_minor"] += 1
    with pytest.raises(UnbalancedJournal):
        Journal.from_dict(data)


def test_account_names() -> None:
    assert clearing_account("alipay") == "clearing:alipay"
    assert payable_account("m:1") == "payable:m:1"
    assert fee_revenue_account("card") == "fee_revenue:card"
    with pytest.raises(LedgerError):
        payable_account("")


matches = st.lists(
    st.tuples(
        st.sampled_from(["m1", "m2", "m3"]),
        st.sampled_from(CHANNELS),
        st.integers(min_value=1, max_value=10**12),
        st.sampled_from(["CNY", "JPY", "KWD"]),
    ),
    max_size=40,
)


@given(matches)
def test_books_balance_and_payables_equal_nets(
    payments: list[tuple[str, str, int, str]],
) -> None:
    journals = [
        journal_for_match(f"p{i}", merchant, channel, gross, currency, FEES)
        for i, (merchant, channel, gross, currency) in enumerate(payments)
    ]
    for journal in journals:
        assert_balanced(journal)
        assert all(p.amount_minor > 0 for p in journal.postings)
    totals = balances(p for j in journals for p in j.postings)

    per_currency: dict[str, int] = defaultdict(int)
    for (_account, currency), amount in totals.items():
        per_currency[currency] += amount
    assert all(amount == 0 for amount in per_currency.values())

    # The reference: what each merchant is owed and each channel owes, summed directly.
    owed: dict[tuple[str, str], int] = defaultdict(int)
    collected: dict[tuple[str, str], int] = defaultdict(int)
    for merchant, channel, gross, currency in payments:
        owed[(merchant, currency)] += net_minor(gross, FEES.bps_for(channel))
        collected[(channel, currency)] += gross
    for (merchant, currency), net in owed.items():
        assert -totals.get((payable_account(merchant), currency), 0) == net
    for (channel, currency), gross in collected.items():
        assert totals[(clearing_account(channel), currency)] == gross
