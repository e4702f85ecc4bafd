"""Migrations on the real PostgreSQL: idempotent, and the constraints guard the money."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from settle.config import Settings
from sinks.db import connect
from sinks.migrate import available, migrate

pytestmark = pytest.mark.integration


@pytest.fixture()
def conn(stack: Settings) -> Iterator[psycopg.Connection]:
    with connect(stack.postgres) as c:
        migrate(c)
        c.autocommit = False
        yield c
        c.rollback()


def test_migrations_apply_twice_without_error(stack: Settings) -> None:
    with connect(stack.postgres) as c:
        migrate(c)
        second = migrate(c)
        assert [o.action for o in second] == ["already applied"] * len(available())
        versions = [r[0] for r in c.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [m.version for m in available()]


def test_expected_tables_exist(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchall()
    names = {r[0] for r in rows}
    for table in ("ledger_entries", "ledger_journals", "settlement_batches",
                  "settlement_batch_items", "payments", "reconciliation_exceptions",
                  "sink_offsets", "schema_migrations"):
        assert table in names


def _journal(conn: psycopg.Connection, pid: str, gross: int, fee: int) -> str:
    jid = f"J:{pid}"
    conn.execute(
        "INSERT INTO ledger_journals (journal_id, payment_id, currency, gross_minor, fee_minor,"
        " net_minor) VALUES (%s, %s, 'CNY', %s, %s, %s)",
        (jid, pid, gross, fee, gross - fee),
    )
    return jid


def _entry(conn: psycopg.Connection, jid: str, pid: str, account: str, side: str,
           amount: int) -> None:
    conn.execute(
        "INSERT INTO ledger_entries (journal_id, payment_id, account, side, amount_minor,"
        " currency) VALUES (%s, %s, %s, %s, %s, 'CNY')",
        (jid, pid, account, side, amount),
    )


def test_balanced_journal_commits(conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    jid = _journal(conn, pid, 10000, 60)
    _entry(conn, jid, pid, "clearing:alipay", "DEBIT", 10000)
    _entry(conn, jid, pid, "payable:m1", "CREDIT", 9940)
    _entry(conn, jid, pid, "fee_revenue:alipay", "CREDIT", 60)
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred balance check runs now
    total = conn.execute(
        "SELECT SUM(CASE WHEN side='DEBIT' THEN amount_minor ELSE -amount_minor END)"
        " FROM ledger_entries WHERE journal_id = %s", (jid,)).fetchone()
    assert total == (0,)


def test_unbalanced_journal_is_refused_at_commit(conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    jid = _journal(conn, pid, 10000, 60)
    _entry(conn, jid, pid, "clearing:alipay", "DEBIT", 10000)
    _entry(conn, jid, pid, "payable:m1", "CREDIT", 9940)
    with pytest.raises(psycopg.errors.CheckViolation, match="unbalanced"):
        conn.commit()


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_postings_are_refused(conn: psycopg.Connection, amount: int) -> None:
    pid = f"p-{uuid.uuid4()}"
    jid = _journal(conn, pid, 10000, 0)
    with pytest.raises(psycopg.errors.CheckViolation):
        _entry(conn, jid, pid, "clearing:alipay", "DEBIT", amount)


def test_second_posting_on_same_account_side_is_refused(conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    jid = _journal(conn, pid, 100, 0)
    _entry(conn, jid, pid, "clearing:card", "DEBIT", 100)
    with pytest.raises(psycopg.errors.UniqueViolation):
        _entry(conn, jid, pid, "clearing:card", "DEBIT", 100)


def test_a_payment_can_be_in_only_one_batch(conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    for i, window in enumerate(("2026-01-01", "2026-01-02")):
        bid = f"b-{uuid.uuid4()}"
        conn.execute(
            "INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
            " window_end, payment_count, gross_minor, fee_minor, net_minor, closed_at)"
            " VALUES (%s, 'm1', 'CNY', %s::date, %s::date + 1, 1, 100, 1, 99, now())",
            (bid, window, window),
        )
        insert = (
            "INSERT INTO settlement_batch_items (batch_id, payment_id, gross_minor, fee_minor,"
            " net_minor, matched_at) VALUES (%s, %s, 100, 1, 99, now())"
        )
        if i == 0:
            conn.execute(insert, (bid, pid))
        else:
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(insert, (bid, pid))


def test_batch_totals_must_add_up(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
            " window_end, payment_count, gross_minor, fee_minor, net_minor, closed_at)"
            " VALUES (%s, 'm1', 'CNY', now(), now() + interval '1 day', 1, 100, 1, 98, now())",
            (f"b-{uuid.uuid4()}",),
        )
