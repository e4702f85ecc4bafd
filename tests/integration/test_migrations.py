"""Migrations on the real PostgreSQL: idempotent, and the constraints guard the money."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from infra.config import Settings
from sinks.db import connect, drop_database
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


def _post_journals(conn: psycopg.Connection, first: int, count: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ledger_journals (journal_id, payment_id, currency, gross_minor,"
            " fee_minor, net_minor) VALUES (%s, %s, 'CNY', 1000, 10, 990)",
            [(f"j{n}", f"p{n}") for n in range(first, first + count)])
        cur.executemany(
            "INSERT INTO ledger_entries (journal_id, payment_id, account, side, amount_minor,"
            " currency) VALUES (%s, %s, %s, %s, %s, 'CNY')",
            [row for n in range(first, first + count) for row in (
                (f"j{n}", f"p{n}", "clearing:card", "DEBIT", 1000),
                (f"j{n}", f"p{n}", "payable:m1", "CREDIT", 990),
                (f"j{n}", f"p{n}", "fee_revenue:card", "CREDIT", 10))])


# The balance check's query (0001's ledger_check_journal_balanced), as PL/pgSQL caches it.
_CHECK_QUERY = (
    "SELECT COALESCE(SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE -amount_minor END), 0),"
    " COUNT(DISTINCT currency) FROM ledger_entries WHERE journal_id = $1")


def _generic_plan(conn: psycopg.Connection) -> str:
    """The plan cached for the check's query once PL/pgSQL settles on a generic plan."""
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE balance_check (text) AS {_CHECK_QUERY}")
    try:
        rows = conn.execute("EXPLAIN EXECUTE balance_check ('j1')").fetchall()
    finally:
        conn.execute("DEALLOCATE balance_check")
    return "\n".join(str(r[0]) for r in rows)


def test_balance_check_keeps_its_index_after_an_analyze_of_a_nearly_empty_ledger(
    stack: Settings,
) -> None:
    # A new ledger ANALYZEd (as autovacuum does) after its first journals: a plan made then,
    # and kept by the sink's long-lived session, must not be a sequential scan.
    name = f"{stack.postgres.dbname}_it_plan_{uuid.uuid4().hex[:8]}"
    with connect(stack.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(replace(stack.postgres, dbname=name)) as c:
            migrate(c)
            c.autocommit = False  # SET LOCAL below needs a transaction
            _post_journals(c, 0, 3)
            c.commit()
            c.execute("ANALYZE ledger_entries")
            c.commit()
            # The hazard: on such a ledger the planner's generic plan is a sequential scan,
            # which the check would then run once per entry row however large the table grows.
            assert "Seq Scan on ledger_entries" in _generic_plan(c)
            c.rollback()
            # 0003: the function plans with enable_seqscan off, so its cached plan is the index.
            config = c.execute("SELECT proconfig FROM pg_proc"
                               " WHERE proname = 'ledger_check_journal_balanced'").fetchone()
            assert config == (["enable_seqscan=off"],)
            c.execute("SET LOCAL enable_seqscan = off")
            assert "Index Scan using ledger_entries_journal_idx" in _generic_plan(c)
            c.rollback()
            # And the check itself still refuses an unbalanced journal and passes a balanced one.
            _post_journals(c, 100, 50)
            c.execute("SET CONSTRAINTS ALL IMMEDIATE")
            c.commit()
    finally:
        with connect(stack.postgres, autocommit=True) as admin:
            drop_database(admin, name)
