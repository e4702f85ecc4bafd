"""Row-level security tried directly in SQL, as the API's own login on seeded books.

A merchant's settings see exactly that merchant's rows in every table (counted against the
owner's independent count), unset or unknown settings see nothing, an analyst sees everything;
the API's login writes nothing; settle_reader and settle_writer cannot read api_keys while the
API's group can; settle_reader logins still see every row.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from infra.config import PostgresSettings, Secret, Settings
from settle.api_seed import SeedSummary, seed_books
from sinks.db import connect
from tests.support.api import api_login

pytestmark = pytest.mark.integration

MERCHANT = "mch_001"
OTHER = "mch_002"

# Tables with a merchant_id column (the restrictive policy compares it directly).
WITH_MERCHANT = ("payments", "reconciliation_exceptions", "refunds", "refund_exceptions",
                 "settlement_batches", "disputes", "dispute_rejections", "exception_cases")
# What a merchant owns of the others, as the owner counts it (no policy applies to the owner).
OWNED_BY = {
    "settlement_batch_items":
        "SELECT count(*) FROM settlement_batch_items i JOIN settlement_batches b USING (batch_id)"
        " WHERE b.merchant_id = %(m)s",
    "ledger_journals":
        "SELECT count(*) FROM ledger_journals j WHERE"
        " j.payment_id IN (SELECT payment_id FROM payments WHERE merchant_id = %(m)s)"
        " OR (j.kind = 'PAYOUT' AND j.source_id IN"
        "     (SELECT batch_id FROM settlement_batches WHERE merchant_id = %(m)s))",
    "ledger_entries":
        "SELECT count(*) FROM ledger_entries WHERE account IN"
        " ('payable:' || %(m)s, 'payout_due:' || %(m)s, 'dispute_hold:' || %(m)s)",
    "case_events":
        "SELECT count(*) FROM case_events e JOIN exception_cases c USING (case_id)"
        " WHERE c.merchant_id = %(m)s",
}
ALL_TABLES = (*WITH_MERCHANT, *OWNED_BY)


@pytest.fixture(scope="module")
def books(api_db: PostgresSettings) -> SeedSummary:
    with connect(api_db) as conn:
        return seed_books(conn, payments=400, merchants=3, days=5)


@pytest.fixture(scope="module")
def login(stack: Settings, api_db: PostgresSettings, books: SeedSummary) -> PostgresSettings:
    return api_login(stack, api_db)


def _owner_count(owner: PostgresSettings, table: str, merchant: str | None = None) -> int:
    with connect(owner) as conn:
        if merchant is None:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
        elif table in OWNED_BY:
            row = conn.execute(OWNED_BY[table].encode(), {"m": merchant}).fetchone()
        else:
            query = sql.SQL("SELECT count(*) FROM {} WHERE merchant_id = %s").format(
                sql.Identifier(table))
            row = conn.execute(query, (merchant,)).fetchone()
    assert row is not None
    return int(row[0])


def _scoped(conn: psycopg.Connection, scope: str | None, merchant: str | None) -> None:
    """As api/db.py does: settings local to the open transaction."""
    if scope is not None:
        conn.execute("SELECT set_config('settle.api_scope', %s, true),"
                     " set_config('settle.api_merchant', %s, true)", (scope, merchant or ""))


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def test_the_seed_gives_both_merchants_rows_in_every_table(
        api_db: PostgresSettings, books: SeedSummary) -> None:
    for table in ALL_TABLES:
        for merchant in (MERCHANT, OTHER):
            assert _owner_count(api_db, table, merchant) > 0, (table, merchant)
        assert _owner_count(api_db, table) > _owner_count(api_db, table, MERCHANT), table


@pytest.mark.parametrize("table", ALL_TABLES)
def test_a_merchant_sees_exactly_its_own_rows(api_db: PostgresSettings, login: PostgresSettings,
                                              table: str) -> None:
    expected = _owner_count(api_db, table, MERCHANT)
    with connect(login) as conn:
        _scoped(conn, "merchant", MERCHANT)
        assert _count(conn, table) == expected
        if table in WITH_MERCHANT:
            foreign = conn.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE merchant_id IS DISTINCT FROM %s").format(
                    sql.Identifier(table)), (MERCHANT,)).fetchone()
            assert foreign == (0,)


def test_a_merchant_asking_for_another_merchant_by_name_gets_nothing(
        api_db: PostgresSettings, login: PostgresSettings, books: SeedSummary) -> None:
    """The first layer (the query's own filter) forgotten or wrong: the policy still holds."""
    with connect(login) as conn:
        _scoped(conn, "merchant", MERCHANT)
        for table in WITH_MERCHANT:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE merchant_id = %s").format(
                sql.Identifier(table)), (OTHER,)).fetchone()
            assert rows == (0,), table
        other_payment = conn.execute(
            "SELECT count(*) FROM payments WHERE payment_id IN"
            " (SELECT payment_id FROM ledger_entries WHERE account = %s)",
            (f"payable:{OTHER}",)).fetchone()
        assert other_payment == (0,)


def test_a_merchant_sees_no_platform_account(login: PostgresSettings) -> None:
    with connect(login) as conn:
        _scoped(conn, "merchant", MERCHANT)
        accounts = {r[0] for r in conn.execute(
            "SELECT DISTINCT account FROM ledger_entries").fetchall()}
        balances = {r[0] for r in conn.execute(
            "SELECT account FROM account_balances").fetchall()}
    own = {f"payable:{MERCHANT}", f"payout_due:{MERCHANT}", f"dispute_hold:{MERCHANT}"}
    assert accounts and accounts <= own
    assert balances == accounts


def test_the_balance_view_runs_as_its_caller(api_db: PostgresSettings,
                                             login: PostgresSettings) -> None:
    with connect(api_db) as conn:
        everyone = conn.execute("SELECT count(*) FROM account_balances").fetchone()
    with connect(login) as conn:
        _scoped(conn, "analyst", None)
        assert conn.execute("SELECT count(*) FROM account_balances").fetchone() == everyone
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM account_balances").fetchone() == (0,)


@pytest.mark.parametrize(("scope", "merchant"), [
    (None, None),  # never set in this transaction
    ("merchant", None),  # a merchant scope without a merchant
    ("merchant", ""),
    ("root", MERCHANT),  # an unknown scope, whatever the merchant
    ("ANALYST", None),  # scopes are exact
    ("", MERCHANT),
])
def test_unset_or_unknown_settings_see_nothing(login: PostgresSettings, books: SeedSummary,
                                               scope: str | None, merchant: str | None) -> None:
    with connect(login) as conn:
        _scoped(conn, scope, merchant)
        for table in ALL_TABLES:
            assert _count(conn, table) == 0, table


def test_settings_end_with_their_transaction(login: PostgresSettings) -> None:
    with connect(login) as conn:
        _scoped(conn, "analyst", None)
        assert _count(conn, "payments") > 0
        conn.commit()
        for table in ALL_TABLES:
            assert _count(conn, table) == 0, table


def test_an_analyst_sees_every_row(api_db: PostgresSettings, login: PostgresSettings) -> None:
    with connect(login) as conn:
        _scoped(conn, "analyst", None)
        for table in ALL_TABLES:
            assert _count(conn, table) == _owner_count(api_db, table), table


WRITES = [
    "INSERT INTO payments (payment_id, state, result_id, decided_at)"
    " VALUES ('x', 'DECLINED', 'r', now())",
    "UPDATE payments SET state = 'DECLINED'",
    "DELETE FROM payments",
    "UPDATE ledger_entries SET amount_minor = amount_minor + 1",
    "DELETE FROM settlement_batch_items",
    "TRUNCATE ledger_journals",
    "INSERT INTO api_keys (key_id, key_sha256, scope) VALUES ('000000000000', repeat('0', 64),"
    " 'analyst')",
    "UPDATE api_keys SET revoked_at = NULL",
    "CREATE TABLE t_api (x int)",
    "ALTER TABLE payments DISABLE ROW LEVEL SECURITY",
    "DROP POLICY api_merchant ON payments",
]


@pytest.mark.parametrize("statement", WRITES)
def test_the_api_login_cannot_write(login: PostgresSettings, statement: str) -> None:
    with connect(login) as conn:
        _scoped(conn, "analyst", None)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.encode())


def test_the_api_login_is_no_superuser_no_bypass_and_in_its_group(
        login: PostgresSettings) -> None:
    with connect(login) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls, pg_has_role(current_user, 'settle_api_reader',"
            " 'MEMBER'), pg_has_role(current_user, 'settle_reader', 'MEMBER')"
            " FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == (False, False, True, True)


def test_the_api_group_reads_key_hashes(login: PostgresSettings, api_db: PostgresSettings) -> None:
    from tests.support.api import make_key

    make_key(api_db, MERCHANT)
    with connect(login) as conn:
        assert _count(conn, "api_keys") >= 1


@pytest.fixture()
def group_login(stack: Settings, api_db: PostgresSettings,
                request: pytest.FixtureRequest) -> Iterator[PostgresSettings]:
    """A throwaway LOGIN role in the group named by the test's parameter."""
    group = request.param
    name = f"t_{group.removeprefix('settle_')}_{uuid.uuid4().hex[:10]}"
    password = secrets.token_urlsafe(18)
    with connect(api_db, autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(name), sql.Literal(password), sql.Identifier(group)))
    try:
        yield replace(api_db, user=name, password=Secret(password))
    finally:
        with connect(api_db, autocommit=True) as owner:
            owner.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("group_login", ["settle_reader", "settle_writer"], indirect=True)
def test_api_keys_are_invisible_to_readers_and_writers(group_login: PostgresSettings) -> None:
    with connect(group_login) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM api_keys")


@pytest.mark.parametrize("group_login", ["settle_reader"], indirect=True)
def test_a_reader_login_still_sees_every_row(api_db: PostgresSettings,
                                             group_login: PostgresSettings) -> None:
    with connect(group_login) as conn:
        for table in ALL_TABLES:
            assert _count(conn, table) == _owner_count(api_db, table), table


def _journal(pid: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    journal: tuple[object, ...] = (f"J:{pid}", "PAYMENT", pid, pid, "CNY", 1000, 10, 990)
    entries: list[tuple[object, ...]] = [(f"J:{pid}", pid, "clearing:alipay", "DEBIT", 1000, "CNY"),
               (f"J:{pid}", pid, f"payable:{MERCHANT}", "CREDIT", 990, "CNY"),
               (f"J:{pid}", pid, "fee_revenue:alipay", "CREDIT", 10, "CNY")]
    return [journal], entries


JOURNAL_COLUMNS = ("journal_id", "kind", "source_id", "payment_id", "currency", "gross_minor",
                   "fee_minor", "net_minor")
JOURNAL_TYPES = ("text", "text", "text", "text", "text", "int8", "int8", "int8")
ENTRY_COLUMNS = ("journal_id", "payment_id", "account", "side", "amount_minor", "currency")
ENTRY_TYPES = ("text", "text", "text", "text", "int8", "text")


@pytest.mark.parametrize("group_login", ["settle_writer"], indirect=True)
def test_a_writer_login_copies_into_tables_under_row_level_security(
        api_db: PostgresSettings, group_login: PostgresSettings) -> None:
    """PostgreSQL refuses COPY FROM under row-level security: the sinks' copy_rows goes
    through a temporary table for a login that does not own the table, twice in one
    transaction too, and the deferred balance check still holds the journals."""
    from sinks.pg import _copies_directly, copy_rows

    pids = [f"p-rls-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with connect(group_login) as conn, conn.cursor() as cur:
        assert not _copies_directly(cur, "ledger_entries")
        for pid in pids:
            journals, entries = _journal(pid)
            copy_rows(cur, "ledger_journals", JOURNAL_COLUMNS, JOURNAL_TYPES, journals)
            copy_rows(cur, "ledger_entries", ENTRY_COLUMNS, ENTRY_TYPES, entries)
        conn.commit()
        journals, entries = _journal(f"p-rls-{uuid.uuid4().hex[:8]}")
        copy_rows(cur, "ledger_journals", JOURNAL_COLUMNS, JOURNAL_TYPES, journals)
        copy_rows(cur, "ledger_entries", ENTRY_COLUMNS, ENTRY_TYPES, entries[:2])  # unbalanced
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.commit()
    with connect(api_db) as conn, conn.cursor() as cur:
        assert _copies_directly(cur, "ledger_entries")  # the owner copies straight in
        rows = conn.execute("SELECT payment_id, count(*), min(posted_at) IS NOT NULL"
                            " FROM ledger_entries WHERE payment_id = ANY(%s) GROUP BY 1"
                            " ORDER BY 1", (sorted(pids),)).fetchall()
    assert rows == [(pid, 3, True) for pid in sorted(pids)]
