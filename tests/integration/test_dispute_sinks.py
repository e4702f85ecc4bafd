"""Disputes, exception cases and manual matches through the real sinks into PostgreSQL: each
dispute event posts once however often it is read, the books balance, holds come back to
zero, cases keep their whole history and their latest status, dispute items net in batches;
and migration 0006 over 0001-0005 rows, its constraints guarding the new rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from infra.admin import create_topics, delete_topics
from infra.config import PostgresSettings, Settings
from infra.registry import registry_client
from schemas.registry import RegistryClient
from schemas.topics import (
    CASE_EVENTS,
    DAY_MS,
    DISPUTE_RESULTS,
    PAYMENTS_DLQ,
    RECONCILIATION_RESULTS,
    SETTLEMENTS_BATCHES,
    TopicSpec,
)
from sinks.base import SourceRecord
from sinks.db import connect
from sinks.ledger_sink import LedgerWriter
from sinks.migrate import available, migrate
from sinks.settlement_sink import SettlementWriter
from tests.integration.test_db_roles import _login
from tests.integration.test_migrations import (
    _failing,
    _green_reversal_books,
    _migrate_to,
    fresh_db,
)
from tests.integration.test_sinks import assert_offsets_at_end, dead_letters, netted_batch
from tests.support.sinks import FEES, T0, Topics, publish, result, run_sink

pytestmark = pytest.mark.integration
__all__ = ["fresh_db"]  # the fixture, used by the migration tests below


@pytest.fixture()
def registry(stack: Settings) -> Iterator[RegistryClient]:
    with registry_client(stack) as client:
        yield client


@pytest.fixture()
def db(stack: Settings) -> Iterator[psycopg.Connection]:
    with connect(stack.postgres) as conn:
        migrate(conn)
        conn.autocommit = True
        yield conn


@pytest.fixture()
def topics(stack: Settings) -> Iterator[tuple[Topics, str, str]]:
    """(results, batches and dead letters; disputes.results; cases.events) of this test."""
    prefix = f"t-dispsink-{uuid.uuid4().hex[:8]}-"
    specs = [
        TopicSpec(RECONCILIATION_RESULTS, retention_ms=DAY_MS),
        TopicSpec(DISPUTE_RESULTS, retention_ms=DAY_MS),
        TopicSpec(CASE_EVENTS, retention_ms=DAY_MS),
        TopicSpec(SETTLEMENTS_BATCHES, retention_ms=DAY_MS, copartitioned=False),
        TopicSpec(PAYMENTS_DLQ, retention_ms=DAY_MS),
    ]
    create_topics(stack.kafka, specs=specs, name_prefix=prefix)
    yield (Topics(prefix + RECONCILIATION_RESULTS, prefix + SETTLEMENTS_BATCHES,
                  prefix + PAYMENTS_DLQ), prefix + DISPUTE_RESULTS, prefix + CASE_EVENTS)
    delete_topics(stack.kafka, [prefix + s.name for s in specs])


def dispute(pid: str, did: str, event: str, merchant: str, *, minute: int,
            amount: int = 3_000, fee: int = 0, withdrawn: bool = True, **extra: Any
            ) -> tuple[str, dict[str, Any]]:
    """A DisputeResult as the reconcile stage publishes it, keyed by payment_id."""
    status = {"WON": "WON", "LOST": "LOST"}.get(event, "OPENED")
    record = {
        "result_id": f"{pid}/{did}:{event}:e{minute}", "dispute_id": did, "payment_id": pid,
        "merchant_id": merchant, "order_id": f"o-{pid}", "channel": "CARD",
        "channel_dispute_id": f"cb-{did}", "event": event, "stage": "DISPUTE",
        "status": status, "amount_minor": amount, "currency": "CNY",
        "funds_withdrawn": withdrawn, "fee_minor": fee, "reasons": [], "reason_code": "4837",
        "respond_by": T0 + timedelta(days=10), "captured_minor": 10_000, "held_minor": 0,
        "disputed_lost_minor": 0, "refundable_minor": 0,
        "occurred_at": T0 + timedelta(minutes=minute),
        "decided_at": T0 + timedelta(minutes=minute, seconds=2), "detail": f"test {event}",
    }
    record.update(extra)
    return pid, record


def case_event(case: str, pid: str, kind: str, *, minute: int, action: str | None = None,
               **extra: Any) -> tuple[str, dict[str, Any]]:
    """A CaseEvent as the reconcile stage publishes it, keyed by payment_id."""
    status = {"PROPOSED": "AWAITING_APPROVAL", "RESOLVED": "RESOLVED"}.get(kind, "OPEN")
    record = {
        "event_id": f"{case}:{kind}:{action or 'open'}", "case_id": case, "payment_id": pid,
        "merchant_id": "m", "channel": "ALIPAY", "subject": "PAYMENT", "subject_id": pid,
        "outcome": "AMOUNT_MISMATCH", "opened_by": f"{pid}:AMOUNT_MISMATCH:c1", "kind": kind,
        "status": status, "resolution": None, "amount_minor": 9_500, "currency": "CNY",
        "action_id": action, "operator": None, "approver": None, "remark": None,
        "reason": None, "evidence": {"confirmed_amount_minor": "9500"},
        "occurred_at": T0 + timedelta(minutes=minute),
    }
    record.update(extra)
    return pid, record


def manual(pid: str, merchant: str, settled: int, fee: int, *, confirmed: bool
           ) -> tuple[str, dict[str, Any]]:
    """A MATCHED_MANUAL ReconciliationResult: force-matched (confirmed) or mark-received."""
    key, record = result(pid, "MATCHED_MANUAL", merchant=merchant, amount=10_000,
                         confirmed=settled if confirmed else None,
                         conf="c1" if confirmed else None, split=(fee, settled - fee),
                         minutes=30)
    record.update(terminal=True, settled_amount_minor=settled, case_id=f"CS-{pid}",
                  operator="alice", approver="bob" if confirmed else None)
    return key, record


def test_disputes_cases_and_manual_matches_post_once_through_both_sinks(
    stack: Settings, topics: tuple[Topics, str, str], registry: RegistryClient,
    db: psycopg.Connection,
) -> None:
    main, disputes_topic, cases_topic = topics
    run = uuid.uuid4().hex[:8]
    m = f"m-{run}"
    p1, p2, p3, p9 = (f"p-{run}-{n}" for n in (1, 2, 3, 9))
    cx, cy = f"CS-{p2}", f"CS-{p3}"
    publish(stack, registry, main.results, [
        result(p1, "MATCHED", merchant=m, channel="CARD", split=(180, 9_820)),
        result(p2, "AMOUNT_MISMATCH", merchant=m, confirmed=9_500),
        manual(p2, m, 9_500, 57, confirmed=True),  # force-match at the confirmed amount
        manual(p2, m, 9_500, 57, confirmed=True),  # the same result again
        result(p3, "MISSING_CONFIRMATION", merchant=m, conf=None),
        manual(p3, m, 10_000, 60, confirmed=False),  # mark-received at the expected amount
    ])
    publish(stack, registry, disputes_topic, [
        dispute(p1, "d1", "OPENED", m, minute=1),
        dispute(p1, "d1", "STAGE_CHANGED", m, minute=2, stage="PRE_ARBITRATION"),
        dispute(p1, "d1", "OPENED", m, minute=1),  # a replay: posts nothing
        dispute(p1, "d1", "LOST", m, minute=3, fee=1_500, stage="PRE_ARBITRATION"),
        dispute(p1, "d2", "OPENED", m, minute=4, amount=2_000, withdrawn=False),
        dispute(p1, "d2", "WON", m, minute=5, amount=2_000, withdrawn=False),
        dispute(p1, "d1", "WON", m, minute=6),  # won after lost: never posted
        dispute(p2, "d3", "LOST", m, minute=7, fee=100),  # lost, never held: never posted
        dispute(p9, "bad id", "REJECTED", m, minute=8, merchant_id=None, amount=-1,
                reasons=[{"code": "PAYMENT_UNKNOWN", "detail": "unknown"},
                         {"code": "DISPUTE_ID_INVALID", "detail": "pattern"}]),
        (p1, b"definitely not avro"),  # undecodable
    ])
    publish(stack, registry, cases_topic, [
        case_event(cx, p2, "OPENED", minute=10),
        case_event(cx, p2, "PROPOSED", minute=11, action="a1", resolution="FORCE_MATCH",
                   operator="alice", remark="statement shows 95.00"),
        case_event(cx, p2, "REFUSED", minute=12, action="a2", operator="alice",
                   reason="SAME_OPERATOR"),
        case_event(cx, p2, "RESOLVED", minute=13, action="a3", resolution="FORCE_MATCH",
                   operator="alice", approver="bob", remark="statement shows 95.00"),
        case_event(cx, p2, "RESOLVED", minute=13, action="a3", resolution="FORCE_MATCH",
                   operator="alice", approver="bob", remark="statement shows 95.00"),
        case_event(cx, p2, "PROPOSED", minute=9, action="a0", resolution="IGNORE",
                   operator="carol"),  # older than the row's last event: history only
        case_event(cy, p3, "OPENED", minute=10, outcome="MISSING_CONFIRMATION"),
        case_event(cy, p3, "RESOLVED", minute=14, action="b1", resolution="MARK_RECEIVED",
                   operator="alice", remark="bank credit 0301", outcome="MISSING_CONFIRMATION"),
        case_event(f"CS-{p9}", p9, "OPENED", minute=8, subject="DISPUTE", subject_id="bad id",
                   outcome="DISPUTE_REJECTED"),
    ])
    writer = LedgerWriter(FEES, dispute_topic=disputes_topic, case_topic=cases_topic)
    group = f"t-ledger-disp-{run}"
    for _ in range(2):  # the later runs replay everything from the start: nothing changes
        stats = run_sink(stack, registry, writer, main.results, main.dlq, group)
        assert stats.records == 6 + 10 + 9
        db.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (group,))
    run_sink(stack, registry, writer, main.results, main.dlq, group)
    for topic in (main.results, disputes_topic, cases_topic):
        assert_offsets_at_end(stack, db, group, topic)

    pids = [p1, p2, p3, p9]
    q = db.execute
    assert q("SELECT payment_id, state, amount_minor, case_id, operator, approver FROM payments"
             " WHERE payment_id = ANY(%s) ORDER BY 1", (pids,)).fetchall() == [
        (p1, "MATCHED", 10_000, None, None, None),
        (p2, "MATCHED_MANUAL", 10_000, cx, "alice", "bob"),
        (p3, "MATCHED_MANUAL", 10_000, cy, "alice", None)]
    assert q("SELECT journal_id, kind, source_id, gross_minor, fee_minor, net_minor"
             " FROM ledger_journals WHERE payment_id = ANY(%s) ORDER BY 1", (pids,)).fetchall() == [
        (f"DL:{p1}/d1", "DISPUTE_LOST", f"{p1}/d1", 4_500, 1_500, 3_000),
        (f"DO:{p1}/d1", "DISPUTE_OPEN", f"{p1}/d1", 3_000, 0, 3_000),
        (f"DO:{p1}/d2", "DISPUTE_OPEN", f"{p1}/d2", 2_000, 0, 2_000),
        (f"DW:{p1}/d2", "DISPUTE_WON", f"{p1}/d2", 2_000, 0, 2_000),
        (f"J:{p1}", "PAYMENT", p1, 10_000, 180, 9_820),
        (f"J:{p2}", "PAYMENT", p2, 9_500, 57, 9_443),
        (f"J:{p3}", "PAYMENT", p3, 10_000, 60, 9_940)]
    assert q("SELECT account, side, amount_minor FROM ledger_entries WHERE journal_id = %s"
             " ORDER BY 1, 2", (f"DO:{p1}/d1",)).fetchall() == [
        ("clearing:card", "CREDIT", 3_000), ("dispute_hold:" + m, "CREDIT", 3_000),
        ("dispute_receivable:card", "DEBIT", 3_000), ("payable:" + m, "DEBIT", 3_000)]
    assert q("SELECT account, side, amount_minor FROM ledger_entries WHERE journal_id = %s"
             " ORDER BY 1, 2", (f"DL:{p1}/d1",)).fetchall() == [
        ("clearing:card", "CREDIT", 1_500), ("dispute_hold:" + m, "DEBIT", 3_000),
        ("dispute_receivable:card", "CREDIT", 3_000), ("payable:" + m, "DEBIT", 1_500)]
    assert q("SELECT journal_id FROM ledger_entries WHERE payment_id = ANY(%s)"
             " GROUP BY journal_id HAVING sum(CASE WHEN side = 'DEBIT' THEN amount_minor"
             " ELSE -amount_minor END) <> 0", (pids,)).fetchall() == []
    balances: dict[str, int] = dict(q("SELECT account, credit_balance_minor FROM account_balances"
                      " WHERE account IN (%s, %s)", (f"dispute_hold:{m}", f"payable:{m}")
                      ).fetchall())
    # Holds balance: both disputes closed. payable: three payments' net, less the lost
    # dispute's amount and fee (the won one came back).
    assert balances == {f"dispute_hold:{m}": 0, f"payable:{m}": 9_820 + 9_443 + 9_940 - 4_500}

    assert q("SELECT dispute_id, state, status, stage, amount_minor, funds_withdrawn,"
             " fee_minor, opened_result_id IS NOT NULL, closed_result_id FROM disputes"
             " WHERE payment_id = ANY(%s) ORDER BY 2", (pids,)).fetchall() == [
        ("d1", "LOST", "LOST", "PRE_ARBITRATION", 3_000, True, 1_500, True,
         f"{p1}/d1:LOST:e3"),
        ("d2", "WON", "WON", "DISPUTE", 2_000, False, 0, True, f"{p1}/d2:WON:e5")]
    assert q("SELECT dispute_id, merchant_id, amount_minor,"
             " jsonb_path_query_array(reasons, '$[*].code') FROM dispute_rejections"
             " WHERE payment_id = ANY(%s)", (pids,)).fetchall() == [
        ("bad id", None, -1, ["PAYMENT_UNKNOWN", "DISPUTE_ID_INVALID"])]

    assert q("SELECT case_id, status, resolution, operator, approver, remark,"
             " opened_at IS NOT NULL, resolved_at IS NOT NULL, last_event_kind"
             " FROM exception_cases WHERE payment_id = ANY(%s) ORDER BY 1", (pids,)).fetchall() == [
        (cx, "RESOLVED", "FORCE_MATCH", "alice", "bob", "statement shows 95.00", True, True,
         "RESOLVED"),
        (cy, "RESOLVED", "MARK_RECEIVED", "alice", None, "bank credit 0301", True, True,
         "RESOLVED"),
        (f"CS-{p9}", "OPEN", None, None, None, None, True, False, "OPENED")]
    assert q("SELECT kind, action_id, reason, evidence FROM case_events WHERE case_id = %s"
             " ORDER BY occurred_at", (cx,)).fetchall() == [
        ("PROPOSED", "a0", None, {"confirmed_amount_minor": "9500"}),
        ("OPENED", None, None, {"confirmed_amount_minor": "9500"}),
        ("PROPOSED", "a1", None, {"confirmed_amount_minor": "9500"}),
        ("REFUSED", "a2", "SAME_OPERATOR", {"confirmed_amount_minor": "9500"}),
        ("RESOLVED", "a3", None, {"confirmed_amount_minor": "9500"})]

    letters = dead_letters(stack, registry, main.dlq)
    assert len(letters) == 9  # three per run (won after lost, lost unheld, garbage), 3 runs
    assert sorted({(d["reason"], d["source_topic"]) for d in letters}) == [
        ("BAD_MAGIC_BYTE", disputes_topic), ("DISPUTE_STATE_CONFLICT", disputes_topic)]
    assert all(d["stage"] == "ledger-sink" for d in letters)

    # The settlement sink nets the dispute items: payable is paid out to the last unit.
    items = [("PAYMENT", p1, p1, 10_000, 180), ("PAYMENT", p2, p2, 9_500, 57),
             ("PAYMENT", p3, p3, 10_000, 60),
             ("DISPUTE_HOLD", f"{p1}/d1", p1, -3_000, 0),
             ("DISPUTE_FEE", f"{p1}/d1", p1, -1_500, 0),
             ("DISPUTE_HOLD", f"{p1}/d2", p1, -2_000, 0),
             ("DISPUTE_RELEASE", f"{p1}/d2", p1, 2_000, 0)]
    netted = netted_batch(m, 0, 0, items)
    holds_alone = netted_batch(f"{m}-x", 0, 0, [("DISPUTE_HOLD", f"{p9}/d9", p9, -700, 0)])
    publish(stack, registry, main.batches, [netted, holds_alone, netted])
    run_sink(stack, registry, SettlementWriter(), main.batches, main.dlq, f"t-s-{run}")
    assert q("SELECT kind, COUNT(*) FROM settlement_batch_items WHERE batch_id = ANY(%s)"
             " GROUP BY 1 ORDER BY 1", ([netted[0], holds_alone[0]],)).fetchall() == [
        ("DISPUTE_FEE", 1), ("DISPUTE_HOLD", 3), ("DISPUTE_RELEASE", 1), ("PAYMENT", 3)]
    assert q("SELECT payment_count, refund_count, payout_minor, carried_out_minor"
             " FROM settlement_batches WHERE batch_id = ANY(%s) ORDER BY merchant_id",
             ([netted[0], holds_alone[0]],)).fetchall() == [
        (3, 0, 9_820 + 9_443 + 9_940 - 4_500, 0), (0, 0, 0, -700)]
    assert q("SELECT credit_balance_minor FROM account_balances WHERE account = %s",
             (f"payable:{m}",)).fetchone() == (0,)


# -- migration 0006 -----------------------------------------------------------------------------


def test_0006_migrates_0005_rows_and_the_books_stay_green(fresh_db: Settings) -> None:
    with connect(fresh_db.postgres) as conn:
        _migrate_to(conn, 5)
        _green_reversal_books(conn)
        conn.commit()
        assert _failing(conn) == []
        conn.commit()
        outcomes = migrate(conn)
        assert (6, "applied") in [(o.version, o.action) for o in outcomes]
        assert [o.version for o in outcomes] == [m.version for m in available()]
        conn.autocommit = False
        assert _failing(conn) == []
        assert conn.execute("SELECT DISTINCT case_id, operator, approver FROM payments"
                            ).fetchall() == [(None, None, None)]
        conn.rollback()


@pytest.fixture()
def conn(stack: Settings) -> Iterator[psycopg.Connection]:
    with connect(stack.postgres) as c:
        migrate(c)
        c.autocommit = False
        yield c
        c.rollback()


def _refused(conn: psycopg.Connection, statement: str, args: tuple[Any, ...] = ()) -> None:
    conn.execute("SAVEPOINT s")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(statement, args)
    conn.execute("ROLLBACK TO SAVEPOINT s")


def _dispute_journal(conn: psycopg.Connection, kind: str, pid: str, source: str, gross: int,
                     fee: int) -> None:
    conn.execute("INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
                 " gross_minor, fee_minor, net_minor) VALUES (%s, %s, %s, %s, 'CNY', %s, %s, %s)",
                 (f"{kind}:{source}", kind, source, pid, gross, fee, gross - fee))


def test_0006_admits_dispute_journals_and_items_and_guards_them(
        conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    _dispute_journal(conn, "DISPUTE_OPEN", pid, f"{pid}/d1", 700, 0)
    _dispute_journal(conn, "DISPUTE_LOST", pid, f"{pid}/d2", 850, 150)
    ins = ("INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
           " gross_minor, fee_minor, net_minor) VALUES (%s, %s, %s, %s, 'CNY', %s, %s, %s)")
    _refused(conn, ins, ("x1", "DISPUTE_OPEN", f"{pid}/d3", pid, 850, 150, 700))  # a fee
    _refused(conn, ins, ("x2", "DISPUTE_WON", "other/d4", pid, 700, 0, 700))  # not its source
    _refused(conn, ins, ("x3", "DISPUTE_ESCALATED", f"{pid}/d5", pid, 700, 0, 700))
    conn.execute("INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
                 " window_end, payment_count, gross_minor, fee_minor, net_minor, closed_at,"
                 " payout_minor, carried_out_minor) VALUES ('B:mx:CNY:0', 'mx', 'CNY',"
                 " '2026-03-01', '2026-03-02', 0, -150, 0, -150, now(), 0, -150)")
    item = ("INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id,"
            " gross_minor, fee_minor, net_minor, matched_at)"
            " VALUES ('B:mx:CNY:0', %s, %s, %s, %s, %s, %s, now())")
    conn.execute(item, ("DISPUTE_HOLD", f"{pid}/d1", pid, -700, 0, -700))
    conn.execute(item, ("DISPUTE_RELEASE", f"{pid}/d1", pid, 700, 0, 700))
    conn.execute(item, ("DISPUTE_FEE", f"{pid}/d2", pid, -150, 0, -150))
    _refused(conn, item, ("DISPUTE_HOLD", f"{pid}/d9", pid, 700, 0, 700))  # a positive hold
    _refused(conn, item, ("DISPUTE_FEE", f"{pid}/d9", pid, -151, -1, -150))  # a fee split
    _refused(conn, item, ("DISPUTE_RELEASE", f"{pid}/d9", pid, -5, 0, -5))
    _refused(conn, item, ("DISPUTE_HOLD", "other/d9", pid, -700, 0, -700))


def test_0006_disputes_cases_and_manual_payments_are_guarded(conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    pay = ("INSERT INTO payments (payment_id, merchant_id, channel, amount_minor, currency,"
           " state, result_id, decided_at, case_id, operator, approver)"
           " VALUES (%s, 'm1', 'alipay', 100, 'CNY', %s, 'r', now(), %s, %s, %s)")
    conn.execute(pay, (pid, "MATCHED_MANUAL", "CS-1", "alice", "bob"))
    _refused(conn, pay, (pid + "x", "MATCHED_MANUAL", None, "alice", None))  # no case
    _refused(conn, pay, (pid + "y", "MATCHED", None, "alice", None))  # an operator, no case

    row = ("INSERT INTO disputes (payment_id, dispute_id, merchant_id, channel,"
           " channel_dispute_id, stage, status, state, amount_minor, currency,"
           " funds_withdrawn, fee_minor, opened_at, closed_at, opened_result_id,"
           " closed_result_id, last_result_id, decided_at)"
           " VALUES (%s, %s, 'm1', 'card', 'cb', 'DISPUTE', %s, %s, 700, 'CNY', true, %s,"
           " %s, %s, %s, %s, 'last', now())")
    now = T0
    conn.execute(row, (pid, "d1", "OPENED", "OPEN", 0, now, None, "o1", None))
    conn.execute(row, (pid, "d2", "LOST", "LOST", 150, now, now, "o2", "c2"))
    conn.execute(row, (pid, "d3", "CANCELLED", "WON", 0, None, now, None, None))  # never held
    _refused(conn, row, (pid, "d4", "OPENED", "OPEN", 0, None, None, None, None))  # unheld
    _refused(conn, row, (pid, "d5", "LOST", "LOST", 0, now, now, "o5", None))  # no loss result
    _refused(conn, row, (pid, "d6", "WON", "WON", 150, now, now, "o6", "c6"))  # fee, not lost
    _refused(conn, row, (pid, "d7", "OPENED", "OPEN", 0, now, now, "o7", None))  # open, closed

    case = ("INSERT INTO exception_cases (case_id, payment_id, subject, subject_id, outcome,"
            " opened_by, status, resolution, operator, resolved_at, last_event_id,"
            " last_event_kind, last_event_at) VALUES (%s, %s, 'PAYMENT', %s, 'AMOUNT_MISMATCH',"
            " 'r', %s, %s, %s, %s, 'e', %s, now())")
    conn.execute(case, ("CS-a" + pid, pid, pid, "OPEN", None, None, None, "OPENED"))
    conn.execute(case, ("CS-b" + pid, pid, pid, "RESOLVED", "IGNORE", "alice", now, "RESOLVED"))
    _refused(conn, case, ("CS-c" + pid, pid, pid, "OPEN", "IGNORE", "alice", None, "REJECTED"))
    _refused(conn, case, ("CS-d" + pid, pid, pid, "RESOLVED", "IGNORE", None, now, "RESOLVED"))
    _refused(conn, case, ("CS-e" + pid, pid, pid, "OPEN", None, None, None, "REFUSED"))
    event = ("INSERT INTO case_events (event_id, case_id, payment_id, kind, status, reason,"
             " evidence, occurred_at) VALUES (%s, 'CS-1', %s, %s, 'OPEN', %s, %s, now())")
    conn.execute(event, ("e1" + pid, pid, "REFUSED", "SAME_OPERATOR", "{}"))
    _refused(conn, event, ("e2" + pid, pid, "REFUSED", None, "{}"))  # a refusal says why
    _refused(conn, event, ("e3" + pid, pid, "OPENED", None, "[]"))  # evidence is a map


# -- as the sinks' least-privileged login ------------------------------------------------------


@pytest.fixture()
def writer(stack: Settings) -> Iterator[PostgresSettings]:
    yield from _login(stack, "settle_writer")


def test_the_ledger_sink_writes_disputes_cases_and_manual_matches_as_a_writer_login(
        stack: Settings, writer: PostgresSettings) -> None:
    """Every row the new paths insert or move (disputes, rejections, cases, their events, a
    payment's manual match) within the columns migration 0006 grants settle_writer."""
    run = uuid.uuid4().hex[:10]
    m, pid = f"m-{run}", f"p-{run}"
    ledger = LedgerWriter(FEES, dispute_topic="disputes", case_topic="cases")
    first = [
        SourceRecord("results", 0, 0, None, b"", result(pid, "AMOUNT_MISMATCH", merchant=m,
                                                         confirmed=9_500)[1]),
        SourceRecord("disputes", 0, 0, None, b"", dispute(pid, "d1", "OPENED", m, minute=1)[1]),
        SourceRecord("disputes", 0, 1, None, b"", dispute(
            pid, "x", "REJECTED", m, minute=1,
            reasons=[{"code": "DISPUTE_AMOUNT_CHANGED", "detail": ""}])[1]),
        SourceRecord("cases", 0, 0, None, b"", case_event(f"CS-{run}", pid, "OPENED",
                                                          minute=1)[1]),
    ]
    second = [
        SourceRecord("results", 0, 1, None, b"", manual(pid, m, 9_500, 57, confirmed=True)[1]),
        SourceRecord("disputes", 0, 2, None, b"", dispute(
            pid, "d1", "STAGE_CHANGED", m, minute=2, stage="PRE_ARBITRATION")[1]),
        SourceRecord("disputes", 0, 3, None, b"", dispute(pid, "d1", "LOST", m, minute=3,
                                                          fee=100, stage="PRE_ARBITRATION")[1]),
        SourceRecord("cases", 0, 1, None, b"", case_event(
            f"CS-{run}", pid, "RESOLVED", minute=3, action="a1", resolution="FORCE_MATCH",
            operator="alice", approver="bob", remark="ok")[1]),
    ]
    with connect(writer) as conn:
        ledger.prepare(conn)
        conn.commit()
        for records in (first, second):
            out = ledger.write(conn, records)
            assert out.dead == [], out.dead
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            conn.commit()
        settlement = SettlementWriter()
        settlement.prepare(conn)
        _bid, record = netted_batch(m, 0, 0, [("PAYMENT", pid, pid, 9_500, 57),
                                              ("DISPUTE_HOLD", f"{pid}/d1", pid, -3_000, 0),
                                              ("DISPUTE_FEE", f"{pid}/d1", pid, -100, 0)])
        out = settlement.write(conn, [SourceRecord("batches", 0, 0, None, b"", record)])
        assert out.dead == [] and out.rows_by_table["settlement_batch_items"] == 3
        conn.commit()

    with connect(stack.postgres) as owner:
        assert owner.execute("SELECT state, case_id FROM payments WHERE payment_id = %s",
                             (pid,)).fetchone() == ("MATCHED_MANUAL", f"CS-{pid}")
        assert owner.execute("SELECT state, stage, fee_minor FROM disputes"
                             " WHERE payment_id = %s", (pid,)).fetchall() == [
            ("LOST", "PRE_ARBITRATION", 100)]
        assert owner.execute("SELECT status, resolution FROM exception_cases WHERE case_id = %s",
                             (f"CS-{run}",)).fetchone() == ("RESOLVED", "FORCE_MATCH")
        assert owner.execute("SELECT count(*) FROM dispute_rejections WHERE payment_id = %s",
                             (pid,)).fetchone() == (1,)
        assert owner.execute("SELECT credit_balance_minor FROM account_balances"
                             " WHERE account = %s", (f"payable:{m}",)).fetchone() == (0,)
