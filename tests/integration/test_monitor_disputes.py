"""Dispute and case invariants on PostgreSQL: green books with holds, releases, losses, a
manual match and cases, then each break, counted by `settle monitor` and named by `settle audit
books` (both run the SQL of settle.books_sql); and the dispute and case gauges.

Rows are written as the sinks write them (migration 0006: disputes, exception_cases,
case_events; DISPUTE_* journals storing gross = D + X, fee = X, net = D; signed dispute items)
in a database of the test's own.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from infra.config import Settings
from schemas.topics import CHANNELS
from settle.audit_books import BooksAudit, check_database
from settle.books_gauges import (
    AGE_LABELS,
    CASE_OUTCOME_LABELS,
    DEADLINE_LABELS,
    STAGES,
    read_gauges,
)
from settle.monitor import INVARIANTS, check_books
from sinks.db import connect, drop_database
from sinks.migrate import migrate

pytestmark = pytest.mark.integration

HORIZON_S = 3600.0
PREFIX = {"PAYMENT": "J:", "PAYOUT": "P:", "DISPUTE_OPEN": "DO:", "DISPUTE_WON": "DW:",
          "DISPUTE_LOST": "DL:"}


@pytest.fixture()
def db(stack: Settings) -> Iterator[psycopg.Connection]:
    name = f"{stack.postgres.dbname}_it_disp_{uuid.uuid4().hex[:8]}"
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
          legs: list[tuple[str, str, int]], gross: int, fee: int, net: int) -> None:
    jid = PREFIX[kind] + source
    conn.execute("INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
                 " gross_minor, fee_minor, net_minor) VALUES (%s, %s, %s, %s, 'CNY', %s, %s, %s)",
                 (jid, kind, source, pid, gross, fee, net))
    for account, side, amount in legs:
        conn.execute("INSERT INTO ledger_entries (journal_id, payment_id, account, side,"
                     " amount_minor, currency) VALUES (%s, %s, %s, %s, %s, 'CNY')",
                     (jid, pid, account, side, amount))


def _payment(conn: psycopg.Connection, pid: str, gross: int, fee: int,
             settled: int | None = None, case_id: str | None = None) -> None:
    """A MATCHED payment, or (with a case) a MATCHED_MANUAL one settled at `settled`."""
    state = "MATCHED_MANUAL" if case_id else "MATCHED"
    conn.execute("INSERT INTO payments (payment_id, merchant_id, channel, amount_minor,"
                 " currency, state, result_id, decided_at, case_id, operator) VALUES (%s, 'm1',"
                 " 'card', %s, 'CNY', %s, %s, now(), %s, %s)",
                 (pid, gross, state, f"{pid}:r", case_id, "alice" if case_id else None))
    g = settled or gross
    _post(conn, "PAYMENT", pid, pid, [("clearing:card", "DEBIT", g),
                                      ("payable:m1", "CREDIT", g - fee),
                                      ("fee_revenue:card", "CREDIT", fee)], g, fee, g - fee)


def _dispute(conn: psycopg.Connection, pid: str, did: str, amount: int, withdrawn: bool,
             state: str, fee: int = 0, held: bool = True) -> None:
    """A dispute row and its journals, as the ledger sink writes them for its results."""
    source = f"{pid}/{did}"
    status = {"OPEN": "OPENED", "WON": "WON", "LOST": "LOST"}[state]
    conn.execute(
        "INSERT INTO disputes (payment_id, dispute_id, merchant_id, channel, channel_dispute_id,"
        " stage, status, state, amount_minor, currency, funds_withdrawn, fee_minor, respond_by,"
        " opened_at, closed_at, opened_result_id, closed_result_id, last_result_id, decided_at)"
        " VALUES (%s, %s, 'm1', 'CARD', %s, 'DISPUTE', %s, %s, %s, 'CNY', %s, %s,"
        " now() + interval '1 day', %s, %s, %s, %s, %s, now())",
        (pid, did, f"cb-{did}", status, state, amount, withdrawn, fee,
         "now" if held else None, None if state == "OPEN" else "now",
         f"{source}:OPENED:e1" if held else None,
         f"{source}:{state}:e2" if held and state != "OPEN" else None,
         f"{source}:{status}:e2"))
    if not held:
        return
    channel = [("dispute_receivable:card", "DEBIT", amount), ("clearing:card", "CREDIT", amount)]
    _post(conn, "DISPUTE_OPEN", source, pid, [
        ("payable:m1", "DEBIT", amount), ("dispute_hold:m1", "CREDIT", amount),
        *(channel if withdrawn else [])], amount, 0, amount)
    if state == "WON":
        back = [("clearing:card", "DEBIT", amount),
                ("dispute_receivable:card", "CREDIT", amount)]
        _post(conn, "DISPUTE_WON", source, pid, [
            ("dispute_hold:m1", "DEBIT", amount), ("payable:m1", "CREDIT", amount),
            *(back if withdrawn else [])], amount, 0, amount)
    elif state == "LOST":
        gone = "dispute_receivable:card" if withdrawn else "clearing:card"
        legs = [("dispute_hold:m1", "DEBIT", amount), (gone, "CREDIT", amount)]
        if fee:
            legs += [("payable:m1", "DEBIT", fee)]
            legs = [(a, s, n + fee) if a == "clearing:card" and s == "CREDIT" else (a, s, n)
                    for a, s, n in legs]
            if gone != "clearing:card":
                legs += [("clearing:card", "CREDIT", fee)]
        _post(conn, "DISPUTE_LOST", source, pid, legs, amount + fee, fee, amount)


def _batch(conn: psycopg.Connection, day: int, carried_in: int,
           items: list[tuple[str, str, str, int, int]]) -> int:
    """A closed batch with its payout journal; items are (kind, item_id, payment_id, gross,
    fee), signed. Returns its carried_out."""
    bid = f"B:m1:CNY:{day}"
    gross, fee = sum(i[3] for i in items), sum(i[4] for i in items)
    net = gross - fee
    payout, carried_out = max(net + carried_in, 0), min(net + carried_in, 0)
    conn.execute("INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
                 " window_end, payment_count, refund_count, gross_minor, fee_minor, net_minor,"
                 " carried_in_minor, payout_minor, carried_out_minor, closed_at) VALUES"
                 " (%s, 'm1', 'CNY', '2026-03-01'::date + %s, '2026-03-01'::date + %s + 1, %s,"
                 " 0, %s, %s, %s, %s, %s, %s, now())",
                 (bid, day, day, sum(i[0] == "PAYMENT" for i in items), gross, fee, net,
                  carried_in, payout, carried_out))
    for kind, item_id, pid, g, f in items:
        conn.execute("INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id,"
                     " gross_minor, fee_minor, net_minor, matched_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, now())",
                     (bid, kind, item_id, pid, g, f, g - f))
    if payout > 0:
        _post(conn, "PAYOUT", bid, None, [("payable:m1", "DEBIT", payout),
                                          ("payout_due:m1", "CREDIT", payout)],
              payout, 0, payout)
    return carried_out


def _case(conn: psycopg.Connection, case_id: str, pid: str, outcome: str, amount: int,
          status: str, resolution: str | None = None,
          events: tuple[tuple[str, str | None], ...] = ()) -> None:
    """An exception case row and its events ((kind, resolution) after OPENED)."""
    resolved = status == "RESOLVED"
    steps = (("OPENED", None), *events)
    conn.execute(
        "INSERT INTO exception_cases (case_id, payment_id, merchant_id, channel, subject,"
        " subject_id, outcome, opened_by, amount_minor, currency, status, resolution, operator,"
        " remark, opened_at, resolved_at, last_event_id, last_event_kind, last_event_at)"
        " VALUES (%s, %s, 'm1', 'card', 'PAYMENT', %s, %s, %s, %s, 'CNY', %s, %s, %s, %s,"
        " now() - interval '4 days', %s, %s, %s, now())",
        (case_id, pid, pid, outcome, f"{pid}:x", amount, status, resolution,
         "alice" if resolution else None, "checked" if resolution else None,
         "now" if resolved else None, f"{case_id}:{steps[-1][0]}", steps[-1][0]))
    for n, (kind, res) in enumerate(steps):
        conn.execute(
            "INSERT INTO case_events (event_id, case_id, payment_id, kind, status, resolution,"
            " action_id, operator, occurred_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
            " now() - make_interval(hours => %s))",
            (f"{case_id}:{kind}:{n}", case_id, pid, kind,
             {"OPENED": "OPEN", "PROPOSED": "AWAITING_APPROVAL", "REJECTED": "OPEN",
              "RESOLVED": "RESOLVED"}[kind], res, None if kind == "OPENED" else f"a{n}",
             None if kind == "OPENED" else "alice", 10 - n))


def _green(conn: psycopg.Connection) -> None:
    """m1 (card, CNY): p1 and p2 paid out in batch 0. On p1: d1 (withdrawn) held and won, d2
    held and lost with a 1,500 fee, d5 lost without fee; on p2: d3 (withdrawn) open and not
    batched yet, d4 first seen won (nothing held). p3 force-matched at 6,900 (expected 7,000)
    by case CS-1; CS-2 open, CS-3 awaiting approval, and a refusal naming no case."""
    _payment(conn, "p1", 10_000, 60)
    _payment(conn, "p2", 5_000, 30)
    carried = _batch(conn, 0, 0, [("PAYMENT", "p1", "p1", 10_000, 60),
                                  ("PAYMENT", "p2", "p2", 5_000, 30)])
    _dispute(conn, "p1", "d1", 2_000, True, "WON")
    _dispute(conn, "p1", "d2", 3_000, False, "LOST", fee=1_500)
    _dispute(conn, "p1", "d5", 500, True, "LOST")
    carried = _batch(conn, 1, carried, [
        ("DISPUTE_HOLD", "p1/d1", "p1", -2_000, 0), ("DISPUTE_RELEASE", "p1/d1", "p1", 2_000, 0),
        ("DISPUTE_HOLD", "p1/d2", "p1", -3_000, 0), ("DISPUTE_HOLD", "p1/d5", "p1", -500, 0)])
    assert carried == -3_500
    _payment(conn, "p3", 7_000, 41, settled=6_900, case_id="CS-1")
    _case(conn, "CS-1", "p3", "AMOUNT_MISMATCH", 6_900, "RESOLVED", "FORCE_MATCH",
          (("RESOLVED", "FORCE_MATCH"),))
    carried = _batch(conn, 2, carried, [("DISPUTE_FEE", "p1/d2", "p1", -1_500, 0),
                                        ("PAYMENT", "p3", "p3", 6_900, 41)])
    assert carried == 0
    _dispute(conn, "p2", "d3", 1_000, True, "OPEN")
    _dispute(conn, "p2", "d4", 800, False, "WON", held=False)
    _case(conn, "CS-2", "p4", "MISSING_CONFIRMATION", 4_000, "OPEN")
    _case(conn, "CS-3", "p5", "MISSING_CONFIRMATION", 2_000_000, "AWAITING_APPROVAL",
          "MARK_RECEIVED", (("PROPOSED", "MARK_RECEIVED"),))
    conn.execute("INSERT INTO case_events (event_id, case_id, payment_id, kind, status, action_id,"
                 " operator, reason, occurred_at) VALUES ('CS-X:REFUSED:a9', 'CS-X', 'p9',"
                 " 'REFUSED', 'OPEN', 'a9', 'bob', 'CASE_UNKNOWN', now())")
    conn.commit()


def _drained(conn: psycopg.Connection) -> None:
    """The green books once d3's hold is batched too (what `settle audit books` expects)."""
    _batch(conn, 3, 0, [("DISPUTE_HOLD", "p2/d3", "p2", -1_000, 0)])
    conn.commit()


def _broken(conn: psycopg.Connection) -> dict[str, int]:
    books = check_books(conn, HORIZON_S)
    assert set(books) == set(INVARIANTS)
    return {name: n for name, n in books.items() if n}


def _audit_failing(conn: psycopg.Connection) -> dict[str, str]:
    audit = BooksAudit()
    check_database(conn, audit)
    return {c.name: c.detail for c in audit.checks if not c.ok}


HOLDS = "dispute_hold:<m> = Σ OPEN disputes"
RECEIVABLES = "dispute_receivable:<ch> = Σ withdrawn"
POSTED_ONCE = "every dispute event posted once"
HELD_FIRST = "nothing disputed paid out while open"
MANUAL = "a MATCHED_MANUAL payment"
CASES = "every RESOLVED case has exactly one RESOLVED event"
DISPUTES_BATCHED = "every DISPUTE_OPEN, DISPUTE_WON and DISPUTE_LOST"
ITEMS = "every PAYMENT journal in one batch item"
TOTALS = "Σ gross = Σ net + Σ fee"
PAYMENT_JOURNALS = "a PAYMENT journal for every MATCHED"


def _names(failing: dict[str, str]) -> set[str]:
    known = (HOLDS, RECEIVABLES, POSTED_ONCE, HELD_FIRST, MANUAL, CASES, DISPUTES_BATCHED, ITEMS,
             TOTALS, PAYMENT_JOURNALS)
    return {next((k for k in known if name.startswith(k)), name) for name in failing}


def test_green_dispute_books_break_nothing_and_the_audit_agrees_once_drained(
        db: psycopg.Connection) -> None:
    _green(db)
    assert _broken(db) == {}
    # d3's hold waits for its batch: the audit (no horizon) says so, and nothing else
    assert _names(_audit_failing(db)) == {DISPUTES_BATCHED}
    _drained(db)
    assert _broken(db) == {}
    assert _audit_failing(db) == {}


def test_the_gauges_read_open_disputes_holds_and_cases(db: psycopg.Connection) -> None:
    _green(db)
    g = read_gauges(db)
    # Every channel and stage (and deadline bucket) reads, 0 where nothing is open, so a
    # panel or an alert sees "none" rather than no data.
    assert {k: n for k, n in g.disputes_open.items() if n} == {("card", "DISPUTE"): 1}
    assert len(g.disputes_open) == len(CHANNELS) * len(STAGES)
    assert {k: n for k, n in g.disputes_by_deadline.items() if n} == {("card", "0-2d"): 1}
    assert len(g.disputes_by_deadline) == len(CHANNELS) * len(DEADLINE_LABELS)
    assert 86_000 < g.soonest_respond_by_s["card"] <= 86_400
    assert g.soonest_respond_by_s["alipay"] == math.inf  # none open: no deadline ahead
    assert g.held_minor == {"CNY": 1_000}
    assert {k: n for k, n in g.cases_open.items() if n} == {("MISSING_CONFIRMATION", "3-7d"): 2}
    assert len(g.cases_open) == len(CASE_OUTCOME_LABELS) * len(AGE_LABELS)
    assert g.oldest_case_age_s["MISSING_CONFIRMATION"] >= 4 * 86_400
    assert g.oldest_case_age_s["AMOUNT_MISMATCH"] == 0.0  # none open
    assert {o: n for o, n in g.awaiting_approval.items() if n} == {"MISSING_CONFIRMATION": 1}
    assert g.awaiting_approval["DISPUTE_REJECTED"] == 0
    assert 9 * 3600 <= g.oldest_awaiting_s["MISSING_CONFIRMATION"] < 9 * 3600 + 60


@pytest.mark.parametrize(("breakage", "broken", "audit"), [
    # the open dispute's row says 1,200 while its journals held 1,000
    ("UPDATE disputes SET amount_minor = 1200 WHERE dispute_id = 'd3'",
     {"dispute_holds_balance": 1, "dispute_receivables_balance": 1,
      "dispute_events_posted_once": 1}, {HOLDS, RECEIVABLES, POSTED_ONCE}),
    # the open dispute marked won without its DISPUTE_WON journal: still held in the ledger
    ("UPDATE disputes SET state = 'WON', status = 'WON', closed_at = now(),"
     " closed_result_id = 'x' WHERE dispute_id = 'd3'",
     {"dispute_holds_balance": 1, "dispute_receivables_balance": 1,
      "dispute_events_posted_once": 1}, {HOLDS, RECEIVABLES, POSTED_ONCE}),
    # a lost dispute's DISPUTE_LOST journal gone: its amount is still on hold, its fee item
    # settles no journal
    ("DELETE FROM ledger_entries WHERE journal_id = 'DL:p1/d2';"
     " DELETE FROM ledger_journals WHERE journal_id = 'DL:p1/d2'",
     {"dispute_holds_balance": 1, "dispute_events_posted_once": 1, "batches_match_ledger": 1},
     {HOLDS, POSTED_ONCE, ITEMS}),
    # dispute journals without their disputes row
    ("DELETE FROM disputes WHERE dispute_id = 'd5'",
     {"dispute_events_posted_once": 2}, {POSTED_ONCE}),
    # a release batched before its hold: the hold moved to the later batch
    ("UPDATE settlement_batch_items SET batch_id = 'B:m1:CNY:2'"
     " WHERE kind = 'DISPUTE_HOLD' AND item_id = 'p1/d1'",
     {"disputes_held_before_released": 1, "batch_totals_match_items": 2},
     {HELD_FIRST, TOTALS}),
    # a fee item for another amount than its journal's fee (nor its batch's)
    ("UPDATE settlement_batch_items SET gross_minor = -1400, net_minor = -1400"
     " WHERE kind = 'DISPUTE_FEE'",
     {"batches_match_ledger": 1, "batch_totals_match_items": 1}, {ITEMS, TOTALS}),
    # the manual match's case resolved otherwise (its RESOLVED event says FORCE_MATCH)
    ("UPDATE exception_cases SET resolution = 'IGNORE' WHERE case_id = 'CS-1'",
     {"manual_matches_posted": 1, "cases_resolved_once": 1}, {MANUAL, CASES}),
    # the manual match's journal is not at the case's amount
    ("UPDATE exception_cases SET amount_minor = 7000 WHERE case_id = 'CS-1'",
     {"manual_matches_posted": 1}, {MANUAL}),
    # the manual match without its PAYMENT journal
    ("DELETE FROM ledger_entries WHERE journal_id = 'J:p3';"
     " DELETE FROM ledger_journals WHERE journal_id = 'J:p3'",
     {"journal_iff_matched": 1, "manual_matches_posted": 1, "batches_match_ledger": 1},
     {PAYMENT_JOURNALS, MANUAL, ITEMS}),
    # a case resolved twice
    ("INSERT INTO case_events (event_id, case_id, payment_id, kind, status, resolution,"
     " action_id, operator, occurred_at) VALUES ('CS-1:RESOLVED:again', 'CS-1', 'p3',"
     " 'RESOLVED', 'RESOLVED', 'FORCE_MATCH', 'a7', 'bob', now())",
     {"cases_resolved_once": 1}, {CASES}),
    # a case RESOLVED without its event, and an event of a case without a row
    ("DELETE FROM case_events WHERE event_id = 'CS-1:RESOLVED:1';"
     " INSERT INTO case_events (event_id, case_id, payment_id, kind, status, occurred_at)"
     " VALUES ('CS-9:OPENED:0', 'CS-9', 'p9', 'OPENED', 'OPEN', now())",
     {"cases_resolved_once": 2}, {CASES}),
])
def test_each_break_is_counted_by_the_monitor_and_named_by_the_audit(
        db: psycopg.Connection, breakage: str, broken: dict[str, int], audit: set[str]) -> None:
    _green(db)
    _drained(db)
    for statement in breakage.split(";"):
        db.execute(statement.encode())
    db.commit()
    assert _broken(db) == broken
    failing = _audit_failing(db)
    assert _names(failing) == audit, failing
    for name, detail in failing.items():
        assert detail, name  # a readable line: what is off, and by how much


def test_an_unbatched_hold_waits_for_the_horizon_then_breaks(db: psycopg.Connection) -> None:
    _green(db)
    db.execute("UPDATE ledger_journals SET posted_at = now() - interval '2 hours'"
               " WHERE journal_id = 'DO:p2/d3'")
    db.commit()
    assert _broken(db) == {"disputes_settled_in_time": 1}


def test_a_manual_match_waits_for_its_case_within_the_horizon(db: psycopg.Connection) -> None:
    _green(db)
    db.execute("DELETE FROM case_events WHERE event_id = 'CS-1:RESOLVED:1'")
    db.execute("UPDATE exception_cases SET status = 'OPEN', resolution = NULL, operator = NULL,"
               " remark = NULL, resolved_at = NULL WHERE case_id = 'CS-1'")
    db.commit()
    assert _broken(db) == {}  # its RESOLVED event is on its way
    db.execute("UPDATE payments SET decided_at = now() - interval '2 hours'"
               " WHERE payment_id = 'p3'")
    db.commit()
    assert _broken(db) == {"manual_matches_posted": 1}


def test_audit_lines_name_the_offender(db: psycopg.Connection) -> None:
    _green(db)
    _drained(db)
    db.execute("UPDATE disputes SET amount_minor = 1200 WHERE dispute_id = 'd3'")
    db.commit()
    failing = _audit_failing(db)
    holds = next(d for n, d in failing.items() if n.startswith(HOLDS))
    assert holds == "1 off: m1/CNY: dispute_hold 1000, OPEN disputes 1200, journals 1000"
    posted = next(d for n, d in failing.items() if n.startswith(POSTED_ONCE))
    assert posted.startswith("1 off: dispute p2/d3: OPEN with 1 DISPUTE_OPEN, 0 DISPUTE_WON,"
                             " 0 DISPUTE_LOST, 1 for another amount")
