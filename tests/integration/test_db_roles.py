"""Least-privilege roles on the real PostgreSQL: what settle_reader and settle_writer may do."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from infra.admin import create_topics, delete_topics
from infra.config import PostgresSettings, Secret, Settings
from infra.registry import registry_client
from schemas.topics import DAY_MS, PAYMENTS_DLQ, RECONCILIATION_RESULTS, TopicSpec
from sinks.base import SourceRecord
from sinks.db import connect, drop_database, drop_database_plain
from sinks.errors import DatabaseUnavailable
from sinks.ledger_sink import LedgerWriter
from sinks.migrate import migrate
from sinks.offsets import load_offsets, save_offsets
from sinks.offsets_consumer import OffsetsConsumer
from sinks.options import SinkOptions
from sinks.settlement_sink import SettlementWriter
from tests.support.sinks import FEES, Topics, batch, publish, result, run_sink

pytestmark = pytest.mark.integration

LEDGER_TABLES = ("ledger_journals", "ledger_entries")
# The API's key hashes: the owner writes them, only settle_api_reader reads them (0007).
OWNER_ONLY = ("api_keys",)
APPEND_ONLY = (*LEDGER_TABLES, "reconciliation_exceptions", "settlement_batches",
               "settlement_batch_items")


def _login(stack: Settings, group: str | None) -> Iterator[PostgresSettings]:
    """A throwaway LOGIN role (random name and password) in `group`, dropped afterwards."""
    name = f"t_{(group or 'nobody').removeprefix('settle_')}_{uuid.uuid4().hex[:10]}"
    password = secrets.token_urlsafe(18)
    with connect(stack.postgres, autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
        if group:
            owner.execute(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(group), sql.Identifier(name)))
    try:
        yield replace(stack.postgres, user=name, password=Secret(password))
    finally:
        with connect(stack.postgres, autocommit=True) as owner:
            # Its sessions are closed by now; nothing it created outlives them (temp tables).
            owner.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture()
def reader(stack: Settings) -> Iterator[PostgresSettings]:
    yield from _login(stack, "settle_reader")


@pytest.fixture()
def writer(stack: Settings) -> Iterator[PostgresSettings]:
    yield from _login(stack, "settle_writer")


@pytest.fixture()
def sink_topics(stack: Settings) -> Iterator[Topics]:
    prefix = f"t-roles-{uuid.uuid4().hex[:8]}-"
    specs = [TopicSpec(RECONCILIATION_RESULTS, retention_ms=DAY_MS),
             TopicSpec(PAYMENTS_DLQ, retention_ms=DAY_MS)]
    create_topics(stack.kafka, specs=specs, name_prefix=prefix)
    yield Topics(prefix + RECONCILIATION_RESULTS, "", prefix + PAYMENTS_DLQ)
    delete_topics(stack.kafka, [prefix + s.name for s in specs])


@pytest.fixture()
def outsider(stack: Settings) -> Iterator[PostgresSettings]:
    yield from _login(stack, None)


def _relations(stack: Settings) -> dict[str, str]:
    """Every table and view of the public schema, with its kind."""
    with connect(stack.postgres) as conn:
        rows = conn.execute(
            "SELECT table_name, table_type FROM information_schema.tables"
            " WHERE table_schema = 'public'").fetchall()
    return dict(rows)


def _denied(conn: psycopg.Connection, statement: str) -> None:
    """The statement fails for lack of privilege (and leaves the connection usable)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute(statement.encode())


def test_group_roles_exist_and_cannot_log_in(stack: Settings) -> None:
    with connect(stack.postgres) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname IN ('settle_writer', 'settle_reader') ORDER BY 1").fetchall()
    assert rows == [("settle_reader", False, False, False, False),
                    ("settle_writer", False, False, False, False)]


def test_reader_selects_every_table_and_view_but_writes_nothing(
    stack: Settings, reader: PostgresSettings
) -> None:
    relations = _relations(stack)
    assert "account_balances" in relations and "ledger_entries" in relations
    with connect(reader, autocommit=True) as conn:
        for name in relations:
            if name in OWNER_ONLY:
                _denied(conn, f"SELECT count(*) FROM {name}")
                continue
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
        for name, kind in relations.items():
            if kind != "BASE TABLE":
                continue
            _denied(conn, f"INSERT INTO {name} DEFAULT VALUES")
            column = "key_id" if name in OWNER_ONLY else _first_column(conn, name)
            _denied(conn, f"UPDATE {name} SET {column} = NULL WHERE false")
            _denied(conn, f"DELETE FROM {name} WHERE false")
            _denied(conn, f"TRUNCATE {name}")
        _denied(conn, "CREATE TABLE t_reader (x int)")
        # No temporary tables either: the reader has CONNECT on the database and nothing else.
        _denied(conn, "CREATE TEMP TABLE t_reader (x int)")


def _first_column(conn: psycopg.Connection, table: str) -> str:
    row = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s"
                       " ORDER BY ordinal_position LIMIT 1", (table,)).fetchone()
    assert row is not None
    return str(row[0])


def test_writer_appends_a_balanced_journal_and_moves_offsets_but_rewrites_nothing(
    stack: Settings, writer: PostgresSettings
) -> None:
    pid = f"p-{uuid.uuid4()}"
    jid = f"J:{pid}"
    group = f"t-roles-{uuid.uuid4()}"
    with connect(writer) as conn:
        conn.execute("INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id,"
                     " currency, gross_minor, fee_minor, net_minor)"
                     " VALUES (%s, 'PAYMENT', %s, %s, 'CNY', 10000, 60, 9940)", (jid, pid, pid))
        for account, side, amount in (("clearing:alipay", "DEBIT", 10000),
                                      ("payable:m1", "CREDIT", 9940),
                                      ("fee_revenue:alipay", "CREDIT", 60)):
            conn.execute("INSERT INTO ledger_entries (journal_id, payment_id, account, side,"
                         " amount_minor, currency) VALUES (%s, %s, %s, %s, %s, 'CNY')",
                         (jid, pid, account, side, amount))
        save_offsets(conn, group, "topic", {0: 5})
        conn.commit()
        save_offsets(conn, group, "topic", {0: 9})  # the upsert's UPDATE branch
        conn.commit()
        assert load_offsets(conn, group, "topic", [0]) == {0: 9}
        conn.commit()

        conn.autocommit = True
        for table in APPEND_ONLY:
            _denied(conn, f"DELETE FROM {table} WHERE false")
            _denied(conn, f"UPDATE {table} SET {_first_column(conn, table)} = NULL WHERE false")
            _denied(conn, f"TRUNCATE {table}")
        _denied(conn, f"UPDATE ledger_entries SET amount_minor = 1 WHERE journal_id = '{jid}'")
        _denied(conn, f"DELETE FROM ledger_entries WHERE journal_id = '{jid}'")
        _denied(conn, "DELETE FROM sink_offsets WHERE false")
        _denied(conn, "DELETE FROM payments WHERE false")
        _denied(conn, "UPDATE payments SET payment_id = payment_id WHERE false")  # the key
        _denied(conn, "DROP TABLE ledger_entries")
        _denied(conn, "ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey")
        _denied(conn, "CREATE TABLE t_writer (x int)")
        _denied(conn, "SELECT * FROM schema_migrations")

    with connect(stack.postgres) as owner:
        stored = owner.execute("SELECT count(*), sum(amount_minor) FROM ledger_entries"
                               " WHERE journal_id = %s", (jid,)).fetchone()
    assert stored == (3, 20000)


def test_a_login_in_no_group_cannot_connect(outsider: PostgresSettings) -> None:
    with pytest.raises(DatabaseUnavailable, match="permission denied for database"):
        connect(outsider, timeout_s=5).close()


def test_the_owner_still_changes_the_schema_after_the_roles_migration(stack: Settings) -> None:
    with connect(stack.postgres) as conn:
        conn.execute("CREATE TABLE t_owner_probe (x int)")
        conn.execute("DROP TABLE t_owner_probe")
        conn.rollback()


def _src(topic: str, offset: int, record: dict[str, object]) -> SourceRecord:
    return SourceRecord(topic, 0, offset, None, b"", record)


def test_the_sink_writers_work_as_a_writer_login(
    stack: Settings, writer: PostgresSettings
) -> None:
    """The sinks' own write path: staging tables, upserts, offsets, one commit per batch."""
    run = uuid.uuid4().hex[:10]
    p_matched, p_late = f"p-{run}-matched", f"p-{run}-late"
    group = f"t-roles-ledger-{run}"
    ledger = LedgerWriter(FEES)
    first = [result(p_matched, "MATCHED")[1], result(p_late, "MISSING_CONFIRMATION", conf=None)[1]]
    second = [result(p_late, "MATCHED", late=True, minutes=5)[1]]  # updates the payment row
    with connect(writer) as conn:
        ledger.prepare(conn)
        conn.commit()
        for offset, records in ((0, first), (2, second)):
            out = ledger.write(conn, [_src("results", offset + i, r)
                                      for i, r in enumerate(records)])
            assert out.dead == []
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            save_offsets(conn, group, "results", {0: offset + len(records)})
            conn.commit()

        settlement = SettlementWriter()
        settlement.prepare(conn)
        _bid, record = batch(f"m-{run}", 0, [(p_matched, 10_000, 60), (p_late, 10_000, 60)])
        out = settlement.write(conn, [_src("batches", 0, record)])
        assert out.dead == [] and out.rows_by_table == {"settlement_batches": 1,
                                                        "settlement_batch_items": 2}
        save_offsets(conn, group, "batches", {0: 1})
        conn.commit()

    with connect(stack.postgres) as owner:
        states: dict[str, str] = dict(owner.execute("SELECT payment_id, state FROM payments"
                                    " WHERE payment_id = ANY(%s)", ([p_matched, p_late],)))
        entries = owner.execute("SELECT count(*) FROM ledger_entries WHERE payment_id = ANY(%s)",
                                ([p_matched, p_late],)).fetchone()
        offsets: dict[str, int] = dict(owner.execute("SELECT topic, next_offset FROM sink_offsets"
                                     " WHERE consumer_group = %s", (group,)))
    assert states == {p_matched: "MATCHED", p_late: "MATCHED"}
    assert entries == (6,)
    assert offsets == {"results": 3, "batches": 1}


def test_a_sink_runs_as_the_sink_login_setting(
    stack: Settings, writer: PostgresSettings, sink_topics: Topics
) -> None:
    """SETTLE_SINK_PG_USER/_PASSWORD: the whole sink loop (resume from sink_offsets, write,
    save offsets, commit) as the writer login; migrations keep the owner's login."""
    pg = replace(stack.postgres, sink_user=writer.user, sink_password=writer.password)
    settings = replace(stack, postgres=pg)
    run = uuid.uuid4().hex[:10]
    group = f"t-roles-sink-{run}"
    records = [result(f"p-{run}-{i}", outcome) for i, outcome in
               enumerate(("MATCHED", "DECLINED", "MATCHED"))]
    with registry_client(stack) as registry:
        publish(stack, registry, sink_topics.results, records)
        # Stop after the 3 records, not after 3 s of silence: a loaded machine can take
        # longer than that between the assignment and the first fetch (seen in CI).
        stats = run_sink(settings, registry, LedgerWriter(FEES), sink_topics.results,
                         sink_topics.dlq, group, max_records=3, idle_exit_s=60.0)
    assert (stats.records, stats.dead_letters) == (3, 0)
    with connect(stack.postgres) as owner:
        entries = owner.execute("SELECT count(*) FROM ledger_entries WHERE payment_id LIKE %s",
                                (f"p-{run}-%",)).fetchone()
        offsets = owner.execute("SELECT sum(next_offset) FROM sink_offsets"
                                " WHERE consumer_group = %s", (group,)).fetchone()
    assert entries == (6,) and offsets == (3,)
    with registry_client(stack) as registry:
        # The connection every batch of that run went through: the writer's login.
        sink = OffsetsConsumer(settings, registry, LedgerWriter(FEES),
                               SinkOptions(group_id=group, topic=sink_topics.results,
                                           dlq_topic=sink_topics.dlq))
        try:
            row = sink._connection().execute("SELECT current_user").fetchone()
        finally:
            sink._close()
    assert row == (writer.user,)
    with connect(settings.postgres) as owner:  # `settle db migrate` still uses the owner
        assert owner.execute("SELECT current_user").fetchone() == (stack.postgres.user,)


def test_concurrent_migrations_of_several_databases(stack: Settings) -> None:
    """Roles are cluster-wide and grants per database: parallel migrations all succeed."""
    names = [f"{stack.postgres.dbname}_roles_{i}" for i in range(3)]
    errors: list[BaseException] = []

    def run(dbname: str) -> None:
        try:
            with connect(replace(stack.postgres, dbname=dbname)) as conn:
                migrate(conn)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with connect(stack.postgres, autocommit=True) as admin:
        for name in names:
            drop_database(admin, name)
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            threads = [threading.Thread(target=run, args=(n,)) for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            for name in names:
                with connect(replace(stack.postgres, dbname=name)) as conn:
                    granted = conn.execute(
                        "SELECT has_table_privilege('settle_writer', 'ledger_entries', 'INSERT'),"
                        " has_table_privilege('settle_writer', 'ledger_entries', 'DELETE'),"
                        " has_table_privilege('settle_reader', 'account_balances', 'SELECT')"
                    ).fetchone()
                assert granted == (True, False, True)
        finally:
            for name in names:
                drop_database(admin, name)


def test_drop_database_plain_closes_own_sessions(stack: Settings) -> None:
    """The fallback when FORCE is refused (an autovacuum worker in the database): our role's
    sessions in it are terminated and the plain DROP succeeds; the open session is dead."""
    name = f"t_drop_{uuid.uuid4().hex[:10]}"
    with connect(stack.postgres, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            held = connect(replace(stack.postgres, dbname=name), autocommit=True)
            held.execute("SELECT 1")
            drop_database_plain(admin, name)
            gone = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                                 [name]).fetchone()
            assert gone == (0,)
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")
            held.close()
        finally:
            drop_database(admin, name)
            drop_database(admin, name)  # IF EXISTS: a second drop is harmless
