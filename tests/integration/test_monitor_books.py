"""settle monitor's books invariants on PostgreSQL (ledger v2): green books, then each break.

The rows are written as the sinks write them (payments, refunds, journals by kind, signed batch
items, batches with carried balances and their payout journals) in a database of the test's
own, and each invariant must count exactly what breaks it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from infra.config import Settings
from settle.monitor import INVARIANTS, check_books
from sinks.db import connect, drop_database
from sinks.migrate import migrate

pytestmark = pytest.mark.integration

HORIZON_S = 3600.0


@pytest.fixture()
def db(stack: Settings) -> Iterator[psycopg.Connection]:
    name = f"{stack.postgres.dbname}_it_mon_{uuid.uuid4().hex[:8]}"
    with connect(stack.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(replace(stack.postgres, dbname=name)) as conn:
            migrate(conn)
            conn.autocommit = False
            yield conn
    finally:
        with connect(stack.postgres, autocommit=True) as admin:
            drop_database(admin, name)


def _post(conn: psycopg.Connection, kind: str, source: str, pid: str | None,
          legs: list[tuple[str, str, int]], fee: int = 0) -> None:
    jid = {"REFUND": "RF:", "PAYOUT": "P:", "PAYMENT": "J:", "PAYMENT_REVERSAL": "PR:",
           "REFUND_REVERSAL": "RR:"}[kind] + source
    gross = sum(a for _, side, a in legs if side == "DEBIT")
    conn.execute("INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
                 " gross_minor, fee_minor, net_minor) VALUES (%s, %s, %s, %s, 'CNY', %s, %s, %s)",
                 (jid, kind, source, pid, gross, fee, gross - fee))
    for account, side, amount in legs:
        conn.execute("INSERT INTO ledger_entries (journal_id, payment_id, account, side,"
                     " amount_minor, currency) VALUES (%s, %s, %s, %s, %s, 'CNY')",
                     (jid, pid, account, side, amount))


def _payment(conn: psycopg.Connection, pid: str, gross: int, fee: int,
             decided: str = "now()") -> None:
    conn.execute("INSERT INTO payments (payment_id, merchant_id, channel, amount_minor,"
                 " currency, state, result_id, decided_at) VALUES (%s, 'm1', 'alipay', %s,"
                 f" 'CNY', 'MATCHED', %s, {decided})", (pid, gross, f"{pid}:r"))
    _post(conn, "PAYMENT", pid, pid, [("clearing:alipay", "DEBIT", gross),
                                      ("payable:m1", "CREDIT", gross - fee),
                                      ("fee_revenue:alipay", "CREDIT", fee)], fee=fee)


def _refund(conn: psycopg.Connection, pid: str, rid: str, amount: int, fee: int,
            decided: str = "now()") -> None:
    conn.execute("INSERT INTO refunds (payment_id, refund_id, merchant_id, channel, amount_minor,"
                 " currency, state, result_id, fee_returned_minor, net_minor, decided_at)"
                 " VALUES (%s, %s, 'm1', 'alipay', %s, 'CNY', 'MATCHED', %s, %s, %s,"
                 f" {decided})", (pid, rid, amount, f"{pid}/{rid}:r", fee, amount - fee))
    _post(conn, "REFUND", f"{pid}/{rid}", pid, [
        ("payable:m1", "DEBIT", amount - fee), ("fee_revenue:alipay", "DEBIT", fee),
        ("clearing:alipay", "CREDIT", amount)], fee=fee)


def _batch(conn: psycopg.Connection, day: int, carried_in: int,
           items: list[tuple[str, str, str, int, int]]) -> int:
    """A closed batch with its payout journal, as the settlement sink writes it; items are
    (kind, item_id, payment_id, gross, fee), signed. Returns its carried_out."""
    bid = f"B:m1:CNY:{day}"
    gross, fee = sum(i[3] for i in items), sum(i[4] for i in items)
    net = gross - fee
    payout, carried_out = max(net + carried_in, 0), min(net + carried_in, 0)
    conn.execute("INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
                 " window_end, payment_count, refund_count, gross_minor, fee_minor, net_minor,"
                 " carried_in_minor, payout_minor, carried_out_minor, closed_at) VALUES"
                 " (%s, 'm1', 'CNY', '2026-03-01'::date + %s, '2026-03-01'::date + %s + 1, %s,"
                 " %s, %s, %s, %s, %s, %s, %s, now())",
                 (bid, day, day, sum(i[0] == "PAYMENT" for i in items),
                  sum(i[0] == "REFUND" for i in items), gross, fee, net, carried_in, payout,
                  carried_out))
    for kind, item_id, pid, g, f in items:
        conn.execute("INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id,"
                     " gross_minor, fee_minor, net_minor, matched_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, now())",
                     (bid, kind, item_id, pid, g, f, g - f))
    if payout > 0:
        _post(conn, "PAYOUT", bid, None, [("payable:m1", "DEBIT", payout),
                                          ("payout_due:m1", "CREDIT", payout)])
    return carried_out


def _green(conn: psycopg.Connection) -> None:
    """m1: p1, p2 paid out in batch 0; p1 refunded in full and p2 in part after, netted into
    batch 1 (negative: pays 0, carries); p3 paid and p2 refunded again, both still open."""
    _payment(conn, "p1", 10_000, 60)
    _payment(conn, "p2", 5_000, 30)
    carried = _batch(conn, 0, 0, [("PAYMENT", "p1", "p1", 10_000, 60),
                                  ("PAYMENT", "p2", "p2", 5_000, 30)])
    _refund(conn, "p1", "r1", 10_000, 60)
    _refund(conn, "p2", "r1", 1_000, 6)
    carried = _batch(conn, 1, carried, [("REFUND", "p1/r1", "p1", -10_000, -60),
                                        ("REFUND", "p2/r1", "p2", -1_000, -6)])
    assert carried == -(9_940 + 994)
    _payment(conn, "p3", 7_000, 42)
    _refund(conn, "p2", "r2", 500, 3)
    conn.commit()


def _broken(conn: psycopg.Connection) -> dict[str, int]:
    books = check_books(conn, HORIZON_S)
    assert set(books) == set(INVARIANTS)
    return {name: n for name, n in books.items() if n}


def test_green_books_break_nothing(db: psycopg.Connection) -> None:
    _green(db)
    assert _broken(db) == {}


@pytest.mark.parametrize(("breakage", "broken"), [
    # a refund above what its payment captured (the journal still balanced)
    ("UPDATE ledger_journals SET gross_minor = 4600, net_minor = 4597"
     " WHERE journal_id = 'RF:p2/r2';"
     " UPDATE refunds SET amount_minor = 4600, net_minor = 4597 WHERE refund_id = 'r2';"
     " UPDATE ledger_entries SET amount_minor = 4597 WHERE journal_id = 'RF:p2/r2'"
     " AND account = 'payable:m1';"
     " UPDATE ledger_entries SET amount_minor = 4600 WHERE journal_id = 'RF:p2/r2'"
     " AND account = 'clearing:alipay'",
     {"refunds_within_capture": 1, "payable_matches_batches": 0}),
    # a succeeded refund no batch nets, decided longer ago than the horizon
    ("UPDATE refunds SET decided_at = now() - interval '2 hours' WHERE refund_id = 'r2'",
     {"refunds_settled_in_time": 1}),
    # a payment no batch nets, decided longer ago than the horizon
    ("UPDATE payments SET decided_at = now() - interval '2 hours' WHERE payment_id = 'p3'",
     {"matched_settled_in_time": 1}),
    # a batched refund item taken out of its batch (its batch's totals no longer add up, and
    # payable now counts it open: both disagree)
    ("DELETE FROM settlement_batch_items WHERE item_id = 'p2/r1'",
     {"batch_totals_match_items": 1, "payable_matches_batches": 1}),
    # a payout never posted to the ledger
    ("DELETE FROM ledger_entries WHERE journal_id = 'P:B:m1:CNY:0';"
     " DELETE FROM ledger_journals WHERE journal_id = 'P:B:m1:CNY:0'",
     {"payable_matches_batches": 1, "payout_due_matches_payouts": 1}),
    # a payout posted twice as much as the batch paid
    ("UPDATE ledger_entries SET amount_minor = amount_minor * 2"
     " WHERE journal_id = 'P:B:m1:CNY:0'",
     {"payable_matches_batches": 1, "payout_due_matches_payouts": 1}),
    # an unbalanced journal (payable moves with its open item: that check still agrees)
    ("UPDATE ledger_entries SET amount_minor = amount_minor + 1"
     " WHERE journal_id = 'RF:p2/r2' AND side = 'DEBIT' AND account = 'payable:m1'",
     {"journals_balanced": 1, "currencies_balanced": 1}),
    # a succeeded refund without its journal
    ("DELETE FROM ledger_entries WHERE journal_id = 'RF:p2/r2';"
     " DELETE FROM ledger_journals WHERE journal_id = 'RF:p2/r2'",
     {"journal_iff_matched": 1}),
    # a refund item whose amounts are not its journal's (nor its batch's)
    ("UPDATE settlement_batch_items SET gross_minor = -1001, net_minor = -995"
     " WHERE item_id = 'p2/r1'",
     {"batches_match_ledger": 1, "batch_totals_match_items": 1}),
])
def test_each_break_is_counted_by_its_invariant(db: psycopg.Connection, breakage: str,
                                                broken: dict[str, int]) -> None:
    _green(db)
    db.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_balanced")
    for statement in breakage.split(";"):
        db.execute(statement.encode())
    db.commit()
    assert _broken(db) == {k: v for k, v in broken.items() if v}


def test_a_batch_written_before_its_item_is_posted_is_not_a_payable_mismatch(
        db: psycopg.Connection) -> None:
    # The settlement sink may write a batch before the ledger sink posts one of its refunds:
    # batches_match_ledger counts the item until the journal arrives; payable does not.
    _green(db)
    db.execute("INSERT INTO refunds (payment_id, refund_id, merchant_id, channel, amount_minor,"
               " currency, state, result_id, fee_returned_minor, net_minor, decided_at)"
               " VALUES ('p3', 'r1', 'm1', 'alipay', 700, 'CNY', 'MATCHED', 'x', 4, 696, now())")
    _batch(db, 2, -(9_940 + 994), [("REFUND", "p3/r1", "p3", -700, -4)])
    db.commit()
    assert _broken(db) == {"batches_match_ledger": 1, "journal_iff_matched": 1}
    _post(db, "REFUND", "p3/r1", "p3", [("payable:m1", "DEBIT", 696),
                                        ("fee_revenue:alipay", "DEBIT", 4),
                                        ("clearing:alipay", "CREDIT", 700)], fee=4)
    db.commit()
    assert _broken(db) == {}


def test_a_refund_posted_before_its_payment_waits_for_the_horizon(
        db: psycopg.Connection) -> None:
    _green(db)
    _refund(db, "p9", "r1", 100, 1)  # the PAYMENT journal of p9 is not posted yet
    db.commit()
    assert _broken(db) == {}
    db.execute("UPDATE ledger_journals SET posted_at = now() - interval '2 hours'"
               " WHERE journal_id = 'RF:p9/r1'")
    db.commit()
    assert _broken(db) == {"refunds_within_capture": 1}


def _green_reversals(conn: psycopg.Connection) -> None:
    """_green, then p4 paid and reversed by its channel, and p2's refund r2 reversed: the
    mirrors are open items of payable like their originals."""
    _green(conn)
    _payment(conn, "p4", 3_000, 18)
    conn.execute("UPDATE payments SET state = 'REVERSED', reversal_result_id = 'p4:v',"
                 " reversed_at = now() WHERE payment_id = 'p4'")
    _post(conn, "PAYMENT_REVERSAL", "p4", "p4", [
        ("clearing:alipay", "CREDIT", 3_000), ("payable:m1", "DEBIT", 2_982),
        ("fee_revenue:alipay", "DEBIT", 18)], fee=18)
    conn.execute("UPDATE refunds SET state = 'REVERSED', reversal_result_id = 'r2:v',"
                 " reversed_at = now() WHERE payment_id = 'p2' AND refund_id = 'r2'")
    _post(conn, "REFUND_REVERSAL", "p2/r2", "p2", [
        ("clearing:alipay", "DEBIT", 500), ("payable:m1", "CREDIT", 497),
        ("fee_revenue:alipay", "CREDIT", 3)], fee=3)
    conn.commit()


def test_green_books_with_reversals_break_nothing(db: psycopg.Connection) -> None:
    _green_reversals(db)
    assert _broken(db) == {}
    # Batched with their signs, they still agree.
    _batch(db, 2, -(9_940 + 994), [
        ("PAYMENT", "p3", "p3", 7_000, 42), ("PAYMENT", "p4", "p4", 3_000, 18),
        ("PAYMENT_REVERSAL", "p4", "p4", -3_000, -18), ("REFUND", "p2/r2", "p2", -500, -3),
        ("REFUND_REVERSAL", "p2/r2", "p2", 500, 3)])
    db.commit()
    assert _broken(db) == {}


@pytest.mark.parametrize(("breakage", "broken"), [
    # a reversal posted on its original's sides: balanced, but no mirror
    ("UPDATE ledger_entries SET side = CASE side WHEN 'DEBIT' THEN 'CREDIT' ELSE 'DEBIT' END"
     " WHERE journal_id = 'PR:p4'",
     {"reversals_mirror_originals": 1}),
    # a refund reversal whose stored amounts are not its refund's
    ("UPDATE ledger_journals SET fee_minor = 4, net_minor = 496 WHERE journal_id = 'RR:p2/r2'",
     {"reversals_mirror_originals": 1}),
    # a REVERSED payment without its reversal journal
    ("DELETE FROM ledger_entries WHERE journal_id = 'PR:p4';"
     " DELETE FROM ledger_journals WHERE journal_id = 'PR:p4'",
     {"journal_iff_matched": 1}),
    # a reversed refund row that is MATCHED again while its reversal stays posted
    ("UPDATE refunds SET state = 'MATCHED', reversal_result_id = NULL, reversed_at = NULL"
     " WHERE refund_id = 'r2'",
     {"journal_iff_matched": 1}),
    # the reversed payment keeps a succeeded refund
    ("INSERT INTO refunds (payment_id, refund_id, merchant_id, channel, amount_minor, currency,"
     " state, result_id, fee_returned_minor, net_minor, decided_at) VALUES ('p4', 'r1', 'm1',"
     " 'alipay', 100, 'CNY', 'MATCHED', 'x', 0, 100, now());"
     " INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
     " gross_minor, fee_minor, net_minor) VALUES ('RF:p4/r1', 'REFUND', 'p4/r1', 'p4', 'CNY',"
     " 100, 0, 100);"
     " INSERT INTO ledger_entries (journal_id, payment_id, account, side, amount_minor,"
     " currency) VALUES ('RF:p4/r1', 'p4', 'payable:m1', 'DEBIT', 100, 'CNY'),"
     " ('RF:p4/r1', 'p4', 'clearing:alipay', 'CREDIT', 100, 'CNY')",
     {"reversed_payments_unrefunded": 1}),
    # a reversal posted longer ago than the horizon and still in no batch
    ("UPDATE ledger_journals SET posted_at = now() - interval '2 hours'"
     " WHERE journal_id = 'RR:p2/r2'",
     {"reversals_settled_in_time": 1}),
])
def test_each_reversal_break_is_counted_by_its_invariant(
        db: psycopg.Connection, breakage: str, broken: dict[str, int]) -> None:
    _green_reversals(db)
    for statement in breakage.split(";"):
        db.execute(statement.encode())
    db.commit()
    assert _broken(db) == broken


def test_net_refunds_within_capture_take_reversals_off(db: psycopg.Connection) -> None:
    _green_reversals(db)
    # p2 captured 5 000: r1 1 000 + r2 500 (reversed) + r3 4 000 = 4 500 net, within it.
    _refund(db, "p2", "r3", 4_000, 24)
    db.commit()
    assert _broken(db) == {}
    _refund(db, "p2", "r4", 1_000, 6)  # 5 500 net: above the capture
    db.commit()
    assert _broken(db) == {"refunds_within_capture": 1}
