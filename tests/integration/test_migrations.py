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
        "INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
        " gross_minor, fee_minor, net_minor) VALUES (%s, 'PAYMENT', %s, %s, 'CNY', %s, %s, %s)",
        (jid, pid, pid, gross, fee, gross - fee),
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
            "INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id,"
            " gross_minor, fee_minor, net_minor, matched_at)"
            " VALUES (%s, 'PAYMENT', %s, %s, 100, 1, 99, now())"
        )
        if i == 0:
            conn.execute(insert, (bid, pid, pid))
        else:
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(insert, (bid, pid, pid))


def test_a_journal_kind_and_source_post_once(conn: psycopg.Connection) -> None:
    pid = f"p-{uuid.uuid4()}"
    _journal(conn, pid, 100, 0)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
            " gross_minor, fee_minor, net_minor) VALUES (%s, 'PAYMENT', %s, %s, 'CNY', 100, 0,"
            " 100)", (f"J2:{pid}", pid, pid))


def test_batch_carry_arithmetic_is_checked(conn: psycopg.Connection) -> None:
    insert = (
        "INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
        " window_end, payment_count, refund_count, gross_minor, fee_minor, net_minor,"
        " carried_in_minor, payout_minor, carried_out_minor, closed_at) VALUES"
        " (%s, 'm1', 'CNY', %s::timestamptz, %s::timestamptz + interval '1 day', 1, 1,"
        " %s, %s, %s, %s, %s, %s, now())")
    start = "2031-01-01"
    # net -500 with 200 carried in from before: pays 0, carries -700.
    conn.execute(insert, (f"b-{uuid.uuid4()}", start, start, -510, -10, -500, -200, 0, -700))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(insert, (f"b-{uuid.uuid4()}", "2031-01-02", "2031-01-02", -510, -10,
                              -500, -200, 0, -500))


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
            "INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
            " gross_minor, fee_minor, net_minor) VALUES (%s, 'PAYMENT', %s, %s, 'CNY', 1000,"
            " 10, 990)",
            [(f"j{n}", f"p{n}", f"p{n}") for n in range(first, first + count)])
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
            # By journal_id: 0004's primary key (journal_id, account, side) serves it as well.
            plan = _generic_plan(c)
            assert ("Index Scan using ledger_entries_journal_idx" in plan
                    or "Index Scan using ledger_entries_pkey" in plan), plan
            c.rollback()
            # And the check itself still refuses an unbalanced journal and passes a balanced one.
            _post_journals(c, 100, 50)
            c.execute("SET CONSTRAINTS ALL IMMEDIATE")
            c.commit()
    finally:
        with connect(stack.postgres, autocommit=True) as admin:
            drop_database(admin, name)


# -- ledger v2 (0004) over a database holding 0001-0003 rows, and the books audit ----------


@pytest.fixture()
def fresh_db(stack: Settings) -> Iterator[Settings]:
    """A database of its own, with no migration applied; dropped afterwards."""
    name = f"{stack.postgres.dbname}_it_v2_{uuid.uuid4().hex[:8]}"
    with connect(stack.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield replace(stack, postgres=replace(stack.postgres, dbname=name))
    finally:
        with connect(stack.postgres, autocommit=True) as admin:
            drop_database(admin, name)


def _migrate_to(conn: psycopg.Connection, version: int) -> None:
    """Apply the migrations up to `version` as migrate() records them (an older release)."""
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT"
                 " NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    for mig in available():
        if mig.version <= version:
            conn.execute(mig.sql.encode())
            conn.execute("INSERT INTO schema_migrations (version, name, checksum)"
                         " VALUES (%s, %s, %s)", (mig.version, mig.name, mig.checksum))
    conn.commit()


def _v1_payment(conn: psycopg.Connection, pid: str, merchant: str, gross: int, fee: int,
                state: str = "MATCHED") -> None:
    """A payment as the 0001-0003 ledger sink wrote it (one journal per payment)."""
    conn.execute("INSERT INTO payments (payment_id, merchant_id, channel, amount_minor,"
                 " currency, state, result_id, decided_at) VALUES (%s, %s, 'alipay', %s, 'CNY',"
                 " %s, %s, '2026-03-01T08:00Z')", (pid, merchant, gross, state, f"{pid}:r"))
    if state != "MATCHED":
        return
    jid = f"J:{pid}"
    conn.execute("INSERT INTO ledger_journals (journal_id, payment_id, currency, gross_minor,"
                 " fee_minor, net_minor) VALUES (%s, %s, 'CNY', %s, %s, %s)",
                 (jid, pid, gross, fee, gross - fee))
    for account, side, amount in (("clearing:alipay", "DEBIT", gross),
                                  (f"payable:{merchant}", "CREDIT", gross - fee),
                                  ("fee_revenue:alipay", "CREDIT", fee)):
        conn.execute("INSERT INTO ledger_entries (journal_id, payment_id, account, side,"
                     " amount_minor, currency) VALUES (%s, %s, %s, %s, %s, 'CNY')",
                     (jid, pid, account, side, amount))


def _v1_batch(conn: psycopg.Connection, merchant: str, day: int,
              items: list[tuple[str, int, int]]) -> None:
    bid = f"B:{merchant}:CNY:{day}"
    gross, fee = sum(g for _, g, _ in items), sum(f for _, _, f in items)
    conn.execute("INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
                 " window_end, payment_count, gross_minor, fee_minor, net_minor, closed_at)"
                 " VALUES (%s, %s, 'CNY', '2026-03-01'::date + %s, '2026-03-01'::date + %s + 1,"
                 " %s, %s, %s, %s, now())",
                 (bid, merchant, day, day, len(items), gross, fee, gross - fee))
    for pid, g, f in items:
        conn.execute("INSERT INTO settlement_batch_items (batch_id, payment_id, gross_minor,"
                     " fee_minor, net_minor, matched_at) VALUES (%s, %s, %s, %s, %s, now())",
                     (bid, pid, g, f, g - f))


def _audit(conn: psycopg.Connection) -> dict[str, bool]:
    from settle.audit_books import BooksAudit, check_database

    audit = BooksAudit()
    check_database(conn, audit)
    return {c.name: c.ok for c in audit.checks}


def _failing(conn: psycopg.Connection) -> list[str]:
    return [name for name, ok in _audit(conn).items() if not ok]


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


def _refund(conn: psycopg.Connection, pid: str, rid: str, merchant: str, amount: int,
            fee: int) -> None:
    conn.execute("INSERT INTO refunds (payment_id, refund_id, merchant_id, channel, amount_minor,"
                 " currency, state, result_id, fee_returned_minor, net_minor, decided_at)"
                 " VALUES (%s, %s, %s, 'alipay', %s, 'CNY', 'MATCHED', %s, %s, %s, now())",
                 (pid, rid, merchant, amount, f"{pid}/{rid}:r", fee, amount - fee))
    _post(conn, "REFUND", f"{pid}/{rid}", pid, [
        (f"payable:{merchant}", "DEBIT", amount - fee), ("fee_revenue:alipay", "DEBIT", fee),
        ("clearing:alipay", "CREDIT", amount)], fee=fee)


def _v2_batch(conn: psycopg.Connection, merchant: str, day: int, carried_in: int,
              items: list[tuple[str, str, str, int, int]]) -> tuple[int, int]:
    """A batch with payout; items (kind, item_id, payment_id, gross, fee) signed. Posts the
    payout journal as the settlement sink does; returns (payout, carried_out)."""
    bid = f"B:{merchant}:CNY:{day}"
    gross, fee = sum(i[3] for i in items), sum(i[4] for i in items)
    net = gross - fee
    payout, carried_out = max(net + carried_in, 0), min(net + carried_in, 0)
    conn.execute("INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
                 " window_end, payment_count, refund_count, gross_minor, fee_minor, net_minor,"
                 " carried_in_minor, payout_minor, carried_out_minor, closed_at) VALUES"
                 " (%s, %s, 'CNY', '2026-03-01'::date + %s, '2026-03-01'::date + %s + 1, %s, %s,"
                 " %s, %s, %s, %s, %s, %s, now())",
                 (bid, merchant, day, day, sum(i[0] == "PAYMENT" for i in items),
                  sum(i[0] == "REFUND" for i in items), gross, fee, net, carried_in, payout,
                  carried_out))
    for kind, item_id, pid, g, f in items:
        conn.execute("INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id,"
                     " gross_minor, fee_minor, net_minor, matched_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, now())",
                     (bid, kind, item_id, pid, g, f, g - f))
    if payout > 0:
        _post(conn, "PAYOUT", bid, None, [(f"payable:{merchant}", "DEBIT", payout),
                                          (f"payout_due:{merchant}", "CREDIT", payout)])
    return payout, carried_out


def test_0004_migrates_rows_in_place_and_the_books_stay_green(fresh_db: Settings) -> None:
    with connect(fresh_db.postgres) as conn:
        _migrate_to(conn, 3)
        _v1_payment(conn, "p1", "m1", 10_000, 60)
        _v1_payment(conn, "p2", "m1", 5_000, 30)
        _v1_payment(conn, "p3", "m1", 7_000, 42)  # matched, not batched yet
        _v1_payment(conn, "p4", "m1", 9_000, 0, state="DECLINED")
        _v1_batch(conn, "m1", 0, [("p1", 10_000, 60), ("p2", 5_000, 30)])
        conn.commit()

        assert [o.action for o in migrate(conn)][-1] == "applied"
        conn.autocommit = False
        assert conn.execute("SELECT journal_id, kind, source_id, payment_id FROM ledger_journals"
                            " ORDER BY 1").fetchall() == [
            ("J:p1", "PAYMENT", "p1", "p1"), ("J:p2", "PAYMENT", "p2", "p2"),
            ("J:p3", "PAYMENT", "p3", "p3")]
        assert conn.execute("SELECT kind, item_id, payment_id FROM settlement_batch_items"
                            " ORDER BY 2").fetchall() == [("PAYMENT", "p1", "p1"),
                                                          ("PAYMENT", "p2", "p2")]
        assert conn.execute("SELECT payout_minor, carried_in_minor, carried_out_minor,"
                            " refund_count FROM settlement_batches").fetchall() == [(None, 0, 0, 0)]
        # Only p3 is not batched: the audit reports it and nothing else.
        assert _failing(conn) == ["every PAYMENT journal in one batch item; items = their journals"]

        # After the migration: a refund of p1 (already settled in the old batch), then a batch
        # with payout that nets p3 against it.
        _refund(conn, "p1", "r1", "m1", 3_000, 18)
        assert set(_failing(conn)) == {
            "every PAYMENT journal in one batch item; items = their journals",
            "every REFUND journal in exactly one batch item"}
        payout, carried = _v2_batch(conn, "m1", 1, 0, [
            ("PAYMENT", "p3", "p3", 7_000, 42), ("REFUND", "p1/r1", "p1", -3_000, -18)])
        assert (payout, carried) == (6_958 - 2_982, 0)
        conn.commit()
        assert _failing(conn) == []


def _green_v2_books(conn: psycopg.Connection) -> None:
    """m1: p1 paid and batched with payout, p2 refunded in full after, netted to a carry."""
    for pid, gross, fee in (("p1", 10_000, 60), ("p2", 5_000, 30)):
        conn.execute("INSERT INTO payments (payment_id, merchant_id, channel, amount_minor,"
                     " currency, state, result_id, decided_at) VALUES (%s, 'm1', 'alipay', %s,"
                     " 'CNY', 'MATCHED', %s, now())", (pid, gross, f"{pid}:r"))
        _post(conn, "PAYMENT", pid, pid, [("clearing:alipay", "DEBIT", gross),
                                          ("payable:m1", "CREDIT", gross - fee),
                                          ("fee_revenue:alipay", "CREDIT", fee)], fee=fee)
    _v2_batch(conn, "m1", 0, 0, [("PAYMENT", "p1", "p1", 10_000, 60),
                                 ("PAYMENT", "p2", "p2", 5_000, 30)])
    _refund(conn, "p1", "r1", "m1", 10_000, 60)  # full refund after settlement
    _refund(conn, "p2", "r1", "m1", 1_000, 6)
    _, carried = _v2_batch(conn, "m1", 1, 0, [("REFUND", "p1/r1", "p1", -10_000, -60),
                                              ("REFUND", "p2/r1", "p2", -1_000, -6)])
    assert carried == -(9_940 + 994)


@pytest.mark.parametrize(("breakage", "failing"), [
    (None, set()),
    # a refund journal above what the payment captured
    ("UPDATE ledger_journals SET gross_minor = 10001, net_minor = 9941"
     " WHERE journal_id = 'RF:p1/r1'",
     {"per payment Σ succeeded refunds - Σ refund reversals ≤ captured (and Σ fee returned ≤ fee)",
      "Σ gross = Σ net + Σ fee (journals and batches, counts by kind)",
      "a REFUND journal (same R and f) for every succeeded refund and only for them",
      "every PAYMENT journal in one batch item; items = their journals"}),
    # a succeeded refund that no batch nets
    ("DELETE FROM settlement_batch_items WHERE item_id = 'p2/r1'",
     {"every REFUND journal in exactly one batch item",
      "Σ gross = Σ net + Σ fee (journals and batches, counts by kind)",
      "payable = carried balance + open items (+ pre-payout batches), per merchant"}),
    # a payout never posted to the ledger
    ("DELETE FROM ledger_entries WHERE journal_id = 'P:B:m1:CNY:0';"
     " DELETE FROM ledger_journals WHERE journal_id = 'P:B:m1:CNY:0'",
     {"payable = carried balance + open items (+ pre-payout batches), per merchant",
      "Σ batch payouts = payout_due balance (per merchant, currency)"}),
    # an unbalanced journal (the deferred trigger would refuse it at commit)
    ("UPDATE ledger_entries SET amount_minor = amount_minor + 1"
     " WHERE journal_id = 'J:p2' AND side = 'DEBIT'",
     {"Σdebits = Σcredits per currency", "Σdebits = Σcredits per journal",
      "Σ gross = Σ net + Σ fee (journals and batches, counts by kind)"}),
    # a MATCHED refund row without its journal
    ("UPDATE refunds SET fee_returned_minor = 7, net_minor = 993 WHERE payment_id = 'p2'",
     {"a REFUND journal (same R and f) for every succeeded refund and only for them"}),
])
def test_books_audit_finds_each_broken_invariant(fresh_db: Settings, breakage: str | None,
                                                 failing: set[str]) -> None:
    with connect(fresh_db.postgres) as conn:
        migrate(conn)
        conn.autocommit = False
        _green_v2_books(conn)
        conn.commit()
        assert _failing(conn) == []
        if breakage is not None:
            # Inside the transaction: the deferred balance trigger would refuse some at commit.
            for statement in breakage.split(";"):
                conn.execute(statement.encode())
        assert set(_failing(conn)) == failing
        conn.rollback()


# -- reversals (0005) over 0001-0004 rows, and the books audit's reversal checks -----------


def test_0005_migrates_0004_rows_and_the_books_stay_green(fresh_db: Settings) -> None:
    with connect(fresh_db.postgres) as conn:
        _migrate_to(conn, 4)
        _green_v2_books(conn)
        conn.commit()
        assert _failing(conn) == []
        conn.commit()
        assert [o.action for o in migrate(conn)][-1] == "applied"
        conn.autocommit = False
        assert _failing(conn) == []
        assert conn.execute("SELECT DISTINCT state, reversal_result_id FROM refunds"
                            ).fetchall() == [("MATCHED", None)]
        # After the migration: p3 paid and reversed, both in the next batch.
        _reversed_payment(conn, "p3", 7_000, 42)
        _v2_batch(conn, "m1", 2, -(9_940 + 994), [
            ("PAYMENT", "p3", "p3", 7_000, 42), ("PAYMENT_REVERSAL", "p3", "p3", -7_000, -42)])
        conn.commit()
        assert _failing(conn) == []


def _reversed_payment(conn: psycopg.Connection, pid: str, gross: int, fee: int) -> None:
    conn.execute("INSERT INTO payments (payment_id, merchant_id, channel, amount_minor, currency,"
                 " state, result_id, decided_at, reversal_result_id, reversed_at) VALUES"
                 " (%s, 'm1', 'alipay', %s, 'CNY', 'REVERSED', %s, now(), %s, now())",
                 (pid, gross, f"{pid}:r", f"{pid}:rev"))
    legs = [("clearing:alipay", "DEBIT", gross), ("payable:m1", "CREDIT", gross - fee),
            ("fee_revenue:alipay", "CREDIT", fee)]
    _post(conn, "PAYMENT", pid, pid, legs, fee=fee)
    swapped = [(a, "CREDIT" if side == "DEBIT" else "DEBIT", n) for a, side, n in legs]
    _post(conn, "PAYMENT_REVERSAL", pid, pid, swapped, fee=fee)


def _green_reversal_books(conn: psycopg.Connection) -> None:
    """_green_v2_books, then p3 paid and reversed, and p1's refund reversed (its net comes back
    to m1), all netted in a third batch."""
    _green_v2_books(conn)
    _reversed_payment(conn, "p3", 7_000, 42)
    conn.execute("UPDATE refunds SET state = 'REVERSED', reversal_result_id = 'x',"
                 " reversed_at = now() WHERE payment_id = 'p1' AND refund_id = 'r1'")
    _post(conn, "REFUND_REVERSAL", "p1/r1", "p1", [
        ("clearing:alipay", "DEBIT", 10_000), ("payable:m1", "CREDIT", 9_940),
        ("fee_revenue:alipay", "CREDIT", 60)], fee=60)
    _v2_batch(conn, "m1", 2, -(9_940 + 994), [
        ("PAYMENT", "p3", "p3", 7_000, 42), ("PAYMENT_REVERSAL", "p3", "p3", -7_000, -42),
        ("REFUND_REVERSAL", "p1/r1", "p1", 10_000, 60)])


MIRROR = "every reversal journal mirrors its PAYMENT or REFUND journal exactly"
REVERSAL_ROWS = "a reversal journal for every REVERSED payment and refund and only for them"
REVERSAL_BATCHED = "every PAYMENT_REVERSAL and REFUND_REVERSAL journal in exactly one batch item"
ITEMS = "every PAYMENT journal in one batch item; items = their journals"
PAYABLE = "payable = carried balance + open items (+ pre-payout batches), per merchant"
TOTALS = "Σ gross = Σ net + Σ fee (journals and batches, counts by kind)"


@pytest.mark.parametrize(("breakage", "failing"), [
    (None, set()),
    # a payment reversal that moves a fee the payment never withheld
    ("UPDATE ledger_entries SET amount_minor = 43 WHERE journal_id = 'PR:p3'"
     " AND account = 'fee_revenue:alipay';"
     " UPDATE ledger_entries SET amount_minor = 6957 WHERE journal_id = 'PR:p3'"
     " AND account = 'payable:m1'",
     {MIRROR, PAYABLE}),
    # a reversal posted on the same sides as its original
    ("UPDATE ledger_entries SET side = CASE side WHEN 'DEBIT' THEN 'CREDIT' ELSE 'DEBIT' END"
     " WHERE journal_id = 'RR:p1/r1'",
     {MIRROR, PAYABLE}),
    # a REVERSED payment without its reversal journal
    ("DELETE FROM settlement_batch_items WHERE kind = 'PAYMENT_REVERSAL';"
     " DELETE FROM ledger_entries WHERE journal_id = 'PR:p3';"
     " DELETE FROM ledger_journals WHERE journal_id = 'PR:p3'",
     {REVERSAL_ROWS, TOTALS, PAYABLE}),
    # a refund reversal no batch settles
    ("DELETE FROM settlement_batch_items WHERE kind = 'REFUND_REVERSAL'",
     {REVERSAL_BATCHED, TOTALS, PAYABLE}),
    # a refund reversal item with the wrong sign's amounts
    ("UPDATE settlement_batch_items SET gross_minor = 9000, net_minor = 8940"
     " WHERE kind = 'REFUND_REVERSAL'",
     {ITEMS, TOTALS}),
    # the reversed payment keeps a succeeded refund
    ("INSERT INTO refunds (payment_id, refund_id, merchant_id, channel, amount_minor, currency,"
     " state, result_id, fee_returned_minor, net_minor, decided_at) VALUES ('p3', 'r1', 'm1',"
     " 'alipay', 100, 'CNY', 'MATCHED', 'p3/r1:r', 0, 100, now());"
     " INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
     " gross_minor, fee_minor, net_minor) VALUES ('RF:p3/r1', 'REFUND', 'p3/r1', 'p3', 'CNY',"
     " 100, 0, 100);"
     " INSERT INTO ledger_entries (journal_id, payment_id, account, side, amount_minor,"
     " currency) VALUES ('RF:p3/r1', 'p3', 'payable:m1', 'DEBIT', 100, 'CNY'),"
     " ('RF:p3/r1', 'p3', 'clearing:alipay', 'CREDIT', 100, 'CNY')",
     {"a reversed payment has no succeeded refund left",
      "every REFUND journal in exactly one batch item"}),
])
def test_books_audit_finds_each_broken_reversal_invariant(
        fresh_db: Settings, breakage: str | None, failing: set[str]) -> None:
    with connect(fresh_db.postgres) as conn:
        migrate(conn)
        conn.autocommit = False
        _green_reversal_books(conn)
        conn.commit()
        assert _failing(conn) == []
        if breakage is not None:
            for statement in breakage.split(";"):
                conn.execute(statement.encode())
        assert failing <= set(_failing(conn)), _failing(conn)
        assert set(_failing(conn)) == failing
        conn.rollback()
