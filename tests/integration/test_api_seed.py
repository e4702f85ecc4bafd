"""Seeded books (settle.api_seed) on the real PostgreSQL: every migration constraint and trigger
accepts them, `settle audit books`' database checks pass, every state is there, and the same
seed writes the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from infra.config import PostgresSettings, Settings
from settle import books_sql as q
from settle.api_seed import SeedSummary, seed_books
from settle.audit_books import BooksAudit, check_database
from sinks.db import connect
from tests.support.api import create_api_database, drop_api_database

pytestmark = pytest.mark.integration

START = datetime(2025, 6, 1, 16, 0, tzinfo=UTC)  # 2025-06-02 00:00 in Asia/Shanghai
SEED_ARGS = {"payments": 600, "merchants": 4, "seed": 11, "start": START, "days": 5}


@pytest.fixture(scope="module")
def seeded(api_db: PostgresSettings) -> tuple[PostgresSettings, SeedSummary]:
    progress: list[int] = []
    with connect(api_db) as conn:
        summary = seed_books(conn, **SEED_ARGS, progress=progress.append)  # type: ignore[arg-type]
    assert progress and progress[-1] == 600 and progress == sorted(progress)
    return api_db, summary


@pytest.fixture(scope="module")
def seeded_open(stack: Settings) -> Iterator[tuple[PostgresSettings, SeedSummary]]:
    """The same books with the last day's window still open (its journals unbatched)."""
    owner = create_api_database(stack, prefix="settle_seed")
    try:
        with connect(owner) as conn:
            summary = seed_books(conn, **SEED_ARGS, open_days=1)  # type: ignore[arg-type]
        yield owner, summary
    finally:
        drop_api_database(stack, owner)


def _audit(owner: PostgresSettings) -> BooksAudit:
    audit = BooksAudit()
    with connect(owner) as conn:
        check_database(conn, audit)
    return audit


def test_seeded_books_pass_every_database_check_of_the_books_audit(
        seeded: tuple[PostgresSettings, SeedSummary]) -> None:
    owner, _summary = seeded
    audit = _audit(owner)
    failed = [f"{c.name}: {c.detail}" for c in audit.checks if not c.ok]
    assert not failed
    assert len(audit.checks) >= 15  # journals, payments, refunds, reversals, batches, disputes,
    # balances and cases were all checked


def test_every_state_outcome_and_kind_is_seeded(
        seeded: tuple[PostgresSettings, SeedSummary]) -> None:
    owner, summary = seeded
    with connect(owner) as conn:
        def values(sql: str) -> set[str]:
            return {r[0] for r in conn.execute(sql)}

        assert values("SELECT DISTINCT state FROM payments") == {
            "MATCHED", "MATCHED_MANUAL", "DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH",
            "MISSING_CONFIRMATION", "REVERSED"}
        assert values("SELECT DISTINCT kind FROM ledger_journals") == {
            "PAYMENT", "REFUND", "PAYOUT", "PAYMENT_REVERSAL", "REFUND_REVERSAL",
            "DISPUTE_OPEN", "DISPUTE_WON", "DISPUTE_LOST"}
        assert values("SELECT DISTINCT kind FROM settlement_batch_items") == {
            "PAYMENT", "REFUND", "PAYMENT_REVERSAL", "REFUND_REVERSAL", "DISPUTE_HOLD",
            "DISPUTE_RELEASE", "DISPUTE_FEE"}
        assert values("SELECT DISTINCT state FROM refunds") == {
            "MATCHED", "REVERSED", "DECLINED", "MISSING_CONFIRMATION", "AMOUNT_MISMATCH"}
        assert values("SELECT DISTINCT state FROM disputes") == {"OPEN", "WON", "LOST"}
        assert values("SELECT DISTINCT status FROM exception_cases") == {
            "OPEN", "AWAITING_APPROVAL", "RESOLVED"}
        assert values("SELECT DISTINCT resolution FROM exception_cases"
                      " WHERE resolution IS NOT NULL") == {
            "FORCE_MATCH", "MARK_RECEIVED", "CLOSE_NO_FUNDS", "IGNORE", "AUTO_MATCHED"}
        assert values("SELECT DISTINCT subject FROM exception_cases") == {
            "PAYMENT", "REFUND", "DISPUTE"}
        assert values("SELECT DISTINCT kind FROM case_events") == {
            "OPENED", "PROPOSED", "REJECTED", "RESOLVED", "REFUSED"}
        assert {"DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH", "MISSING_CONFIRMATION",
                "DUPLICATE_CONFIRMATION", "ORPHAN_CONFIRMATION", "REVERSAL_EXCEPTION"} <= values(
            "SELECT DISTINCT outcome FROM reconciliation_exceptions")
        assert values("SELECT DISTINCT channel FROM payments") == {
            "alipay", "wechat_pay", "unionpay", "card"}
        # The 0 and 3 exponents are there, and the late match and lost dispute without fee.
        assert {"JPY", "KWD", "CNY"} <= values("SELECT DISTINCT currency FROM payments")
        assert conn.execute("SELECT count(*) FROM payments WHERE late").fetchone() != (0,)
        assert conn.execute("SELECT count(*) FROM disputes WHERE state = 'LOST'"
                            " AND fee_minor = 0").fetchone() != (0,)
        assert conn.execute("SELECT count(*) FROM dispute_rejections").fetchone() != (0,)
        # A batch whose net went negative pays nothing and carries the rest.
        assert conn.execute(
            "SELECT payout_minor, carried_out_minor < 0 FROM settlement_batches"
            " WHERE batch_id = %s", (summary.examples["batch:carried"],)).fetchone() == (0, True)
        # Every merchant has batches on more than one day, each paid out or carried.
        per_merchant = conn.execute(
            "SELECT merchant_id, count(DISTINCT window_start) FROM settlement_batches"
            " GROUP BY 1 ORDER BY 1").fetchall()
        rows = {t: n for t, n in conn.execute(
            "SELECT 'payments', count(*) FROM payments UNION ALL"
            " SELECT 'ledger_entries', count(*) FROM ledger_entries")}
    assert [m for m, _ in per_merchant] == list(summary.merchants)
    assert all(days > 1 for _, days in per_merchant)
    assert summary.rows["payments"] == rows["payments"] == 600
    assert summary.rows["ledger_entries"] == rows["ledger_entries"]
    assert sum(summary.payments_by_state.values()) == 600
    assert summary.examples["payment:MATCHED_MANUAL"].startswith("pay_")
    assert {"batch", "case:OPEN", "dispute:OPEN", "refund:MATCHED"} <= set(summary.examples)


def test_the_database_refuses_what_the_seed_must_not_write(
        seeded: tuple[PostgresSettings, SeedSummary]) -> None:
    """The seed passes because its rows are right, not because the checks are off: the same
    database still refuses an unbalanced journal and a batch whose payout breaks its carry."""
    owner, summary = seeded
    with connect(owner) as conn:
        conn.execute("INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id,"
                     " currency, gross_minor, fee_minor, net_minor)"
                     " VALUES ('J:x', 'PAYMENT', 'x', 'x', 'CNY', 100, 0, 100)")
        conn.execute("INSERT INTO ledger_entries (journal_id, payment_id, account, side,"
                     " amount_minor, currency) VALUES ('J:x', 'x', 'clearing:card', 'DEBIT',"
                     " 100, 'CNY')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.commit()
        batch = summary.examples["batch"]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE settlement_batches SET payout_minor = payout_minor + 1"
                         " WHERE batch_id = %s", (batch,))
        conn.rollback()


def _table_digest(conn: psycopg.Connection, sql: str) -> str:
    row = conn.execute(f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM ({sql}) t"
                       ).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


_SAME_TABLES = ("payments", "reconciliation_exceptions", "refunds", "refund_exceptions",
                "disputes", "dispute_rejections", "exception_cases", "case_events")


def test_the_same_seed_writes_the_same_rows_and_an_open_day_stays_unbatched(
        seeded: tuple[PostgresSettings, SeedSummary],
        seeded_open: tuple[PostgresSettings, SeedSummary]) -> None:
    (closed, summary), (opened, open_summary) = seeded, seeded_open
    last_day = open_summary.end.timestamp() - 86_400
    with connect(closed) as a, connect(opened) as b:
        for table in _SAME_TABLES:
            sql = f"SELECT * FROM {table}"
            assert _table_digest(a, sql) == _table_digest(b, sql), table
        non_payout = "SELECT * FROM ledger_journals WHERE kind <> 'PAYOUT'"
        assert _table_digest(a, non_payout) == _table_digest(b, non_payout)
        before = (f"SELECT * FROM settlement_batches"
                  f" WHERE window_start < to_timestamp({last_day})")
        assert _table_digest(a, before) == _table_digest(b, before)
        assert b.execute(f"SELECT count(*) FROM settlement_batches"
                         f" WHERE window_start >= to_timestamp({last_day})").fetchone() == (0,)
        # Unbatched: exactly the settling journals posted on the open day.
        unbatched = b.execute(q.UNBATCHED_JOURNALS.replace("%(horizon)s", "0")
                              ).fetchall()
        open_day = b.execute(
            f"SELECT count(*) FROM ledger_journals j WHERE {q.SETTLES_AS_ITEM}"
            f" AND j.posted_at >= to_timestamp({last_day})").fetchone()
        assert open_day is not None and len(unbatched) == open_day[0] > 0
        # The payable invariant holds with the open items counted.
        assert b.execute(q.PAYABLE_MISMATCHES).fetchall() == []
    audit = _audit(opened)
    failed = {c.name for c in audit.checks if not c.ok}
    assert failed and all("batch item" in name for name in failed)
    assert summary.rows["payments"] == open_summary.rows["payments"]


def test_bad_arguments_are_refused_before_anything_is_written(
        seeded: tuple[PostgresSettings, SeedSummary]) -> None:
    owner, _summary = seeded
    with connect(owner) as conn:
        for bad in ({"payments": 0}, {"payments": 5, "days": 0},
                    {"payments": 5, "open_days": 9, "days": 2},
                    {"payments": 5, "start": datetime(2025, 1, 1)}):
            with pytest.raises(ValueError):
                seed_books(conn, **bad)
