"""Unit tests of the sinks' pure row builders: balanced journals, stable keys, refusals."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.config import load
from schemas.errors import RegistryUnavailable
from settlement.fees import FeeSchedule
from settlement.reconciliation import OUTCOMES, TERMINAL_OUTCOMES
from sinks.base import DeadRecord, SourceRecord
from sinks.dead_letters import dead_letter_record
from sinks.errors import (
    ConcurrentWriteConflict,
    DatabaseUnavailable,
    DeadLetterFailed,
    SchemaNotMigrated,
)
from sinks.failures import RETRYABLE, cause
from sinks.ledger_rows import build_ledger_rows
from sinks.options import SinkOptions
from sinks.settlement_rows import build_settlement_rows

FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180")
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def result(pid: str = "p1", outcome: str = "MATCHED", *, conf: str | None = "c1",
           amount: int | None = 10_000, confirmed: int | None = None, currency: str = "CNY",
           channel: str | None = "ALIPAY", merchant: str | None = "m1", late: bool = False,
           split: tuple[int | None, int | None] | None = None, **extra: Any) -> dict[str, Any]:
    record = {
        "result_id": f"{pid}:{outcome}:{conf or '-'}",
        "payment_id": pid,
        "merchant_id": merchant,
        "channel": channel,
        "outcome": outcome,
        "terminal": outcome in TERMINAL_OUTCOMES,
        "late": late,
        "expected_amount_minor": amount,
        "expected_currency": currency if amount is not None else None,
        "confirmed_amount_minor": (amount if confirmed is None else confirmed) if conf else None,
        "confirmed_currency": currency if conf else None,
        "confirmation_id": conf,
        "channel_txn_id": f"tx-{conf}" if conf else None,
        "created_at": T0,
        "decided_at": T0 + timedelta(minutes=1),
        "detail": "",
        "fee_minor": split[0] if split else None,
        "net_minor": split[1] if split else None,
    }
    record.update(extra)
    return record


def signed_sums(entries: list[Any]) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for e in entries:
        sums[e.journal_id] += e.amount_minor if e.side == "DEBIT" else -e.amount_minor
    return dict(sums)


# -- ledger: journals ----------------------------------------------------------------------


def test_matched_without_split_posts_the_schedule_fee_balanced() -> None:
    rows = build_ledger_rows([result()], FEES)
    assert rows.rejected == []
    assert [tuple(j) for j in rows.journals] == [
        ("J:p1", "PAYMENT", "p1", "p1", "CNY", 10_000, 60, 9_940)]
    assert {(e.account, e.side, e.amount_minor) for e in rows.entries} == {
        ("clearing:alipay", "DEBIT", 10_000),
        ("payable:m1", "CREDIT", 9_940),
        ("fee_revenue:alipay", "CREDIT", 60),
    }
    assert signed_sums(rows.entries) == {"J:p1": 0}


def test_the_records_fee_split_wins_over_the_schedule() -> None:
    rows = build_ledger_rows([result(channel="CARD", split=(100, 9_900))], FEES)
    assert rows.journals[0][5:] == (10_000, 100, 9_900)  # not the schedule's 180 bps
    assert ("fee_revenue:card", "CREDIT", 100) in {
        (e.account, e.side, e.amount_minor) for e in rows.entries
    }


@pytest.mark.parametrize(("split", "accounts"), [
    ((0, 10_000), {"clearing:alipay", "payable:m1"}),
    ((10_000, 0), {"clearing:alipay", "fee_revenue:alipay"}),
])
def test_zero_legs_are_left_out_and_the_journal_still_balances(
    split: tuple[int, int], accounts: set[str]
) -> None:
    rows = build_ledger_rows([result(split=split)], FEES)
    assert {e.account for e in rows.entries} == accounts
    assert signed_sums(rows.entries) == {"J:p1": 0}


@pytest.mark.parametrize("bad", [
    result(split=(60, None)),  # half a split
    result(split=(60, 9_000)),  # fee + net != gross
    result(split=(-1, 10_001)),  # negative fee
    result(confirmed=9_999),  # MATCHED with unequal amounts
    result(merchant=None),  # nobody to pay
    result(channel=None),
    result(amount=0, confirmed=0),
    result(expected_currency="cny", confirmed_currency="cny"),
    result(outcome="SETTLED"),
    result(terminal=False),  # MATCHED is terminal
    result(decided_at=datetime(2026, 3, 1)),  # naive
    result(payment_id=""),
    result(detail="nul\x00byte"),
    result(expected_amount_minor=True),  # a bool is not an amount
])
def test_bad_results_are_rejected_never_written(bad: dict[str, Any]) -> None:
    rows = build_ledger_rows([result("ok"), bad], FEES)
    assert [r.position for r in rows.rejected] == [1]
    assert rows.rejected[0].error_type in {"InvalidRecord", "LedgerError", "FeeError"}
    assert [p.payment_id for p in rows.payments] == ["ok"]
    assert [j.payment_id for j in rows.journals] == ["ok"]


@given(
    gross=st.integers(min_value=1, max_value=10**15),
    channel=st.sampled_from(["ALIPAY", "WECHAT_PAY", "UNIONPAY", "CARD"]),
    fee_share=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
)
def test_every_journal_balances_and_splits_gross(
    gross: int, channel: str, fee_share: int | None
) -> None:
    split = None if fee_share is None else (gross * fee_share // 10_000,
                                            gross - gross * fee_share // 10_000)
    rows = build_ledger_rows(
        [result(amount=gross, channel=channel, split=split)], FEES
    )
    assert rows.rejected == []
    (journal,) = rows.journals
    assert journal.gross_minor == journal.fee_minor + journal.net_minor == gross
    assert signed_sums(rows.entries) == {journal.journal_id: 0}
    assert all(e.amount_minor > 0 for e in rows.entries)


# -- ledger: idempotency keys and terminal states ------------------------------------------


def test_keys_are_deterministic_and_duplicates_collapse() -> None:
    batch = [result(), result("p2", "DECLINED", confirmed=0), result(), result("p2", "DECLINED")]
    rows = build_ledger_rows(batch, FEES)
    assert rows == build_ledger_rows(batch, FEES)
    assert [j.journal_id for j in rows.journals] == ["J:p1"]
    assert [(p.payment_id, p.result_id) for p in rows.payments] == [
        ("p1", "p1:MATCHED:c1"), ("p2", "p2:DECLINED:c1")
    ]
    assert [e.result_id for e in rows.exceptions] == ["p2:DECLINED:c1"]
    assert rows.duplicates == 2


def test_late_match_replaces_missing_exactly_once() -> None:
    batch = [
        result("p1", "MISSING_CONFIRMATION", conf=None),
        result("p1", "MATCHED", conf="c7", late=True),
        result("p1", "MATCHED", conf="c8", late=True),
    ]
    rows = build_ledger_rows(batch, FEES)
    assert [(p.state, p.late, p.result_id) for p in rows.payments] == [
        ("MATCHED", True, "p1:MATCHED:c7")
    ]
    assert [j.payment_id for j in rows.journals] == ["p1"]
    assert [e.outcome for e in rows.exceptions] == ["MISSING_CONFIRMATION"]
    assert [(r.position, r.error_type) for r in rows.rejected] == [(2, "TerminalStateConflict")]
    assert rows.matched_index == {"p1": 1}


def test_first_terminal_state_wins_and_a_losing_match_is_refused() -> None:
    batch = [
        result("p1", "DECLINED", confirmed=0),
        result("p1", "MATCHED", conf="c2"),
        result("p1", "MISSING_CONFIRMATION", conf=None),
    ]
    rows = build_ledger_rows(batch, FEES)
    assert [p.state for p in rows.payments] == ["DECLINED"]
    assert rows.journals == [] and rows.entries == []
    assert [(r.position, r.error_type) for r in rows.rejected] == [(1, "TerminalStateConflict")]
    # The losing non-MATCHED verdict is still an exception on record.
    assert [e.outcome for e in rows.exceptions] == ["DECLINED", "MISSING_CONFIRMATION"]


@pytest.mark.parametrize("outcome", sorted(
    OUTCOMES - {"MATCHED", "MATCHED_MANUAL", "PAYMENT_REVERSED", "REFUND_REVERSED"}))
def test_every_non_matched_outcome_is_an_exception_row(outcome: str) -> None:
    rec = result("p1", outcome, confirmed=1, channel="WECHAT_PAY")
    rows = build_ledger_rows([rec], FEES)
    assert rows.rejected == []
    (exc,) = rows.exceptions
    assert (exc.result_id, exc.outcome, exc.channel) == (rec["result_id"], outcome, "wechat_pay")
    assert exc.confirmed_amount_minor == 1 and exc.decided_at == rec["decided_at"]
    assert [p.state for p in rows.payments] == ([outcome] if outcome in TERMINAL_OUTCOMES else [])
    assert rows.journals == []


def test_a_payment_reversal_is_its_mirror_journal_kept_once() -> None:
    rec = result("p1", "PAYMENT_REVERSED", conf="c9", split=(60, 9_940))
    rows = build_ledger_rows([rec, dict(rec)], FEES)
    assert rows.rejected == [] and rows.duplicates == 1
    assert rows.payments == [] and rows.exceptions == [] and rows.journals == []
    ((index, reversal),) = rows.reversals
    assert (index, reversal.result_id, reversal.payment_id, reversal.refund_id) == (
        0, rec["result_id"], "p1", None)
    posted = reversal.journal
    assert (posted.kind, posted.source_id, posted.journal_id) == ("PAYMENT_REVERSAL", "p1", "PR:p1")
    assert sorted((p.account, p.side, p.amount_minor) for p in posted.journal.postings) == [
        ("clearing:alipay", "CREDIT", 10_000), ("fee_revenue:alipay", "DEBIT", 60),
        ("payable:m1", "DEBIT", 9_940)]


@pytest.mark.parametrize("bad", [
    result("p1", "PAYMENT_REVERSED", split=(60, 9_939)),  # net != G - F
    result("p1", "PAYMENT_REVERSED", split=None),  # the split is published, never recomputed
    result("p1", "PAYMENT_REVERSED", split=(60, 9_940), confirmed=5_000),  # partial
    result("p1", "PAYMENT_REVERSED", split=(60, 9_940), merchant=None),
    result("p1", "PAYMENT_REVERSED", split=(60, 9_940), terminal=True),
    result("p1", "REFUND_REVERSED", split=(60, 9_940)),  # a refund's outcome
])
def test_a_bad_payment_reversal_is_rejected(bad: dict[str, Any]) -> None:
    rows = build_ledger_rows([bad], FEES)
    assert [r.position for r in rows.rejected] == [0]
    assert rows.reversals == [] and rows.exceptions == []


def refund(rid: str = "r1", outcome: str = "REFUND_REVERSED", *, amount: int = 3_000,
           split: tuple[int, int] = (18, 2_982), **extra: Any) -> dict[str, Any]:
    record = {
        "result_id": f"p1/{rid}:{outcome}:rc9", "refund_id": rid, "payment_id": "p1",
        "merchant_id": "m1", "order_id": "o1", "channel": "ALIPAY", "outcome": outcome,
        "terminal": outcome in TERMINAL_OUTCOMES, "late": False, "amount_minor": amount,
        "currency": "CNY", "confirmed_amount_minor": amount, "confirmed_currency": "CNY",
        "confirmation_id": "rc9", "channel_refund_id": "cr9",
        "fee_returned_minor": split[0], "net_minor": split[1], "captured_minor": 10_000,
        "refunded_minor": 0, "refundable_minor": 10_000, "requested_at": T0,
        "decided_at": T0 + timedelta(minutes=5), "detail": "",
    }
    record.update(extra)
    return record


def test_a_refund_reversal_is_its_mirror_journal_and_exceptions_are_rows() -> None:
    exception = refund("r2", "REVERSAL_EXCEPTION") | {"fee_returned_minor": None,
                                                      "net_minor": None}
    rows = build_ledger_rows([refund(), refund(), exception], FEES, refund_positions={0, 1, 2})
    assert rows.rejected == [] and rows.duplicates == 1 and rows.refunds == []
    ((index, reversal),) = rows.reversals
    assert (index, reversal.payment_id, reversal.refund_id) == (0, "p1", "r1")
    posted = reversal.journal
    assert (posted.kind, posted.source_id, posted.journal_id) == (
        "REFUND_REVERSAL", "p1/r1", "RR:p1/r1")
    assert sorted((p.account, p.side, p.amount_minor) for p in posted.journal.postings) == [
        ("clearing:alipay", "DEBIT", 3_000), ("fee_revenue:alipay", "CREDIT", 18),
        ("payable:m1", "CREDIT", 2_982)]
    assert [e.outcome for e in rows.refund_exceptions] == ["REVERSAL_EXCEPTION"]
    # A payment's REVERSAL_EXCEPTION is an exception row too, and moves nothing.
    other = build_ledger_rows([result("p1", "REVERSAL_EXCEPTION")], FEES)
    assert [e.outcome for e in other.exceptions] == ["REVERSAL_EXCEPTION"]
    assert other.payments == [] and other.reversals == []


@pytest.mark.parametrize("bad", [
    refund(split=(18, 2_981)), refund(amount=0, split=(0, 0)), refund(confirmed_amount_minor=1),
    refund(merchant_id=None), refund(outcome="PAYMENT_REVERSED"),
])
def test_a_bad_refund_reversal_is_rejected(bad: dict[str, Any]) -> None:
    rows = build_ledger_rows([bad], FEES, refund_positions={0})
    assert [r.position for r in rows.rejected] == [0]
    assert rows.reversals == [] and rows.refund_exceptions == []


def test_an_orphan_confirmation_needs_no_merchant_or_amount() -> None:
    rows = build_ledger_rows(
        [result("p1", "ORPHAN_CONFIRMATION", merchant=None, amount=None)], FEES
    )
    assert rows.rejected == [] and rows.payments == []
    assert rows.exceptions[0].merchant_id is None


def test_fee_schedule_comes_from_settle_fees() -> None:
    assert load({}).sink.fees.bps_for("card") == 180
    assert load({"SETTLE_FEES": "card=99"}).sink.fees.bps_for("card") == 99


# -- settlement batches --------------------------------------------------------------------


def batch(merchant: str = "m1", window: int = 0, items: tuple[tuple[str, int, int], ...] = (
        ("p1", 10_000, 60), ("p2", 5_000, 30)), **extra: Any) -> dict[str, Any]:
    start = T0 + timedelta(days=window)
    record = {
        "batch_id": f"B:{merchant}:CNY:{(start - EPOCH) // timedelta(milliseconds=1)}",
        "merchant_id": merchant, "currency": "CNY",
        "window_start": start, "window_end": start + timedelta(days=1),
        "payment_count": len(items),
        "gross_minor": sum(g for _, g, _ in items),
        "fee_minor": sum(f for _, _, f in items),
        "net_minor": sum(g - f for _, g, f in items),
        "closed_at": start + timedelta(days=1, minutes=10),
        "items": [{"payment_id": p, "gross_minor": g, "fee_minor": f, "net_minor": g - f,
                   "matched_at": start} for p, g, f in items],
    }
    record.update(extra)
    return record


def test_a_valid_batch_becomes_one_row_and_its_items() -> None:
    rows = build_settlement_rows([batch()])
    assert rows.rejected == []
    (b,) = rows.batches
    assert (b.payment_count, b.gross_minor, b.fee_minor, b.net_minor) == (2, 15_000, 90, 14_910)
    assert [(i.batch_id, i.payment_id, i.net_minor) for i in rows.items] == [
        (b.batch_id, "p1", 9_940), (b.batch_id, "p2", 4_970)
    ]


def _with_item(**changes: Any) -> dict[str, Any]:
    rec = batch()
    rec["items"] = [dict(rec["items"][0], **changes), rec["items"][1]]
    return rec


@pytest.mark.parametrize(("bad", "error_type"), [
    (batch(gross_minor=15_001), "BatchInvariantError"),  # totals != items' sums
    (batch(net_minor=14_900), "BatchInvariantError"),
    (batch(payment_count=3), "BatchInvariantError"),
    (batch(batch_id="B:other"), "BatchInvariantError"),  # id not derived from its key
    (batch(items=(), payment_count=0), "InvalidRecord"),  # an empty batch pays nobody
    (batch(currency="cny", batch_id=f"B:m1:cny:{(T0 - EPOCH) // timedelta(milliseconds=1)}"),
     "InvalidRecord"),
    (batch(window_end=T0), "InvalidRecord"),
    (_with_item(net_minor=1), "BatchError"),  # item fee + net != gross
    (batch(items=(("p1", 100, 1),)) | {"items": ["not an item"]}, "InvalidRecord"),
])
def test_inconsistent_batches_are_rejected_whole(bad: dict[str, Any], error_type: str) -> None:
    rows = build_settlement_rows([bad, batch(window=1, items=(("p9", 100, 1),))])
    assert [(r.position, r.error_type) for r in rows.rejected] == [(0, error_type)]
    assert [i.payment_id for i in rows.items] == ["p9"]


def _netted(items: list[tuple[str, str, str, int, int]], window: int = 0) -> dict[str, Any]:
    """A batch with payout of signed items (kind, item_id, payment_id, gross, fee)."""
    net = sum(g - f for *_, g, f in items)
    rec = batch(window=window, items=tuple((pid, g, f) for _, _, pid, g, f in items),
                payment_count=sum(k == "PAYMENT" for k, *_ in items),
                refund_count=sum(k == "REFUND" for k, *_ in items),
                carried_in_minor=0, payout_minor=max(net, 0), carried_out_minor=min(net, 0))
    for item, (kind, item_id, *_rest) in zip(rec["items"], items, strict=True):
        item.update(kind=kind, item_id=item_id)
    return rec


def test_reversal_items_are_signed_netted_and_counted_in_neither_count() -> None:
    rec = _netted([("PAYMENT", "p1", "p1", 10_000, 60),
                   ("PAYMENT_REVERSAL", "p2", "p2", -5_000, -30),
                   ("REFUND_REVERSAL", "p3/r1", "p3", 3_000, 18)])
    rows = build_settlement_rows([rec, _netted([("PAYMENT_REVERSAL", "p4", "p4", -700, -4)],
                                               window=1)])
    assert rows.rejected == []
    assert [(b.payment_count, b.refund_count, b.net_minor, b.payout_minor,
             b.carried_out_minor) for b in rows.batches] == [
        (1, 0, 9_940 - 4_970 + 2_982, 9_940 - 4_970 + 2_982, 0), (0, 0, -696, 0, -696)]
    assert sorted((i.kind, i.item_id) for i in rows.items) == [
        ("PAYMENT", "p1"), ("PAYMENT_REVERSAL", "p2"), ("PAYMENT_REVERSAL", "p4"),
        ("REFUND_REVERSAL", "p3/r1")]


@pytest.mark.parametrize(("items", "error_type"), [
    ([("PAYMENT_REVERSAL", "p2", "p2", 5_000, 30)], "InvalidRecord"),  # must be negative
    ([("PAYMENT_REVERSAL", "p2/r1", "p2", -5_000, -30)], "InvalidRecord"),  # id = payment_id
    ([("REFUND_REVERSAL", "p3/r1", "p3", -3_000, -18)], "InvalidRecord"),  # must be positive
    ([("REFUND_REVERSAL", "p3", "p3", 3_000, 18)], "RefundIdError"),  # id = refund source id
    ([("REFUND_REVERSAL", "p9/r1", "p3", 3_000, 18)], "InvalidRecord"),  # another payment's
])
def test_reversal_items_with_the_wrong_sign_or_id_are_rejected(
        items: list[tuple[str, str, str, int, int]], error_type: str) -> None:
    rows = build_settlement_rows([_netted(items)])
    assert [(r.position, r.error_type) for r in rows.rejected] == [(0, error_type)]


def test_a_batch_without_payout_holds_payments_only() -> None:
    rec = _netted([("PAYMENT", "p1", "p1", 10_000, 60),
                   ("REFUND_REVERSAL", "p3/r1", "p3", 3_000, 18)])
    del rec["payout_minor"]
    rows = build_settlement_rows([rec])
    assert [(r.position, r.error_type) for r in rows.rejected] == [(0, "BatchInvariantError")]


def test_a_reclosed_batch_is_a_duplicate_and_changed_contents_a_conflict() -> None:
    again = batch(closed_at=T0 + timedelta(days=2))
    changed = batch(items=(("p1", 10_000, 60),))
    rows = build_settlement_rows([batch(), again, changed])
    assert rows.duplicates == 1
    assert [(r.position, r.error_type) for r in rows.rejected] == [(2, "BatchContentConflict")]
    assert len(rows.batches) == 1 and len(rows.items) == 2


def test_a_payment_in_two_batches_rejects_the_later_batch_whole() -> None:
    later = batch(window=1, items=(("p3", 700, 4), ("p2", 5_000, 30)))
    rows = build_settlement_rows([batch(), later])
    assert [(r.position, r.error_type) for r in rows.rejected] == [(1, "PaymentInAnotherBatch")]
    assert "p2" in rows.rejected[0].message
    assert sorted(i.payment_id for i in rows.items) == ["p1", "p2"]  # no partial p3
    assert rows.batch_index == {rows.batches[0].batch_id: 0}


# -- dead letters and options --------------------------------------------------------------


def test_dead_letter_keeps_the_original_bytes_and_coordinates() -> None:
    src = SourceRecord("reconciliation.results", 3, 41, b"p1", b"\x01garbage")
    letter = dead_letter_record(DeadRecord(src, "BadMagicByte", "x" * 5000, "BAD_MAGIC_BYTE"),
                                "ledger-sink", 1_700_000_000_000)
    assert letter["source_partition"] == 3 and letter["source_offset"] == 41
    assert (letter["original_key"], letter["original_value"]) == (b"p1", b"\x01garbage")
    assert letter["stage"] == "ledger-sink" and letter["reason"] == "BAD_MAGIC_BYTE"
    assert len(letter["error_message"]) == 2000


def test_retry_backoff_doubles_and_is_capped() -> None:
    opts = SinkOptions(group_id="g", topic="t", retry_backoff_s=0.5, retry_backoff_s_max=4)
    assert [opts.backoff_s(n) for n in range(1, 6)] == [0.5, 1, 2, 4, 4]
    with pytest.raises(ValueError):
        SinkOptions(group_id="g", topic="t", batch_rows_max=0)


@pytest.mark.parametrize(("exc", "label"), [
    (psycopg.errors.SerializationFailure("x"), "serialization"),
    (psycopg.errors.AdminShutdown("x"), "postgres"),
    (DatabaseUnavailable("x"), "postgres"),
    (DeadLetterFailed("x"), "kafka"),
    (ConcurrentWriteConflict("x"), "conflict"),
    (RegistryUnavailable("x"), "registry"),
    (psycopg.errors.CheckViolation("x"), None),  # isolated record by record, not retried
    (SchemaNotMigrated("x"), None),  # stops the sink with the error
])
def test_failures_are_classified_for_retry_and_metrics(exc: Exception, label: str | None) -> None:
    assert isinstance(exc, RETRYABLE) is (label is not None)
    if label is not None:
        assert cause(exc) == label
