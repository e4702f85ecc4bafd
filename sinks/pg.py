"""Small PostgreSQL helpers shared by the writers: table checks and binary COPY into staging."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import pq

from sinks.errors import SchemaNotMigrated


def require_tables(conn: psycopg.Connection, tables: Iterable[str]) -> None:
    """Fail clearly when the migrations have not been applied, instead of on the first batch."""
    missing = [
        table
        for table in tables
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() in (None, (None,))
    ]
    if missing:
        raise SchemaNotMigrated(
            f"PostgreSQL has no table {', '.join(missing)}: run `settle db migrate` first"
        )


def copy_rows(
    cur: psycopg.Cursor,
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    rows: Iterable[Sequence[object]],
) -> None:
    """Binary COPY rows into a table; the types name each column's PostgreSQL type.

    PostgreSQL refuses COPY FROM into a table whose row-level security applies to the
    session's role (migration 0007 enables it on the books for the API's role; it then
    applies to every role but the table's owner, even though its policy for them is `true`).
    So a login that neither owns the table nor bypasses row-level security (a settle_writer
    member) sends the rows through a temporary table of the same columns and one INSERT ...
    SELECT: same rows, same constraints and triggers. The owner's login, and every login's
    own temporary (staging) tables, copy straight in. Whether a login may is asked once per
    connection and table (ownership does not change while a sink runs).
    """
    if not _copies_directly(cur, table):
        stage = _rls_stage(cur, table)
        _copy(cur, stage, columns, types, rows)
        names = ", ".join(columns)
        cur.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage}".encode())
        cur.execute(f"DELETE FROM {stage}".encode())
        return
    _copy(cur, table, columns, types, rows)


def _copy(cur: psycopg.Cursor, table: str, columns: Sequence[str], types: Sequence[str],
          rows: Iterable[Sequence[object]]) -> None:
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


_DIRECT: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[str, bool]] = (
    weakref.WeakKeyDictionary())


def _copies_directly(cur: psycopg.Cursor, table: str) -> bool:
    """Whether row-level security can never apply to a connection's COPY into `table`: its
    role bypasses it, or owns the table (and the table does not force it on its owner)."""
    known = _DIRECT.setdefault(cur.connection, {})
    if table not in known:
        row = cur.execute(
            "SELECT r.rolbypassrls OR (pg_has_role(current_user, c.relowner, 'USAGE')"
            "                          AND NOT c.relforcerowsecurity)"
            "  FROM pg_class c, pg_roles r"
            " WHERE c.oid = %s::regclass AND r.rolname = current_user", (table,)).fetchone()
        known[table] = bool(row and row[0])
    return known[table]


def _rls_stage(cur: psycopg.Cursor, table: str) -> str:
    """A temporary table of `table`'s columns without their constraints or defaults (the
    INSERT applies both), created once per session and emptied at every commit."""
    stage = f"pg_temp.rls_stage_{table}"
    if cur.execute("SELECT to_regclass(%s)", (stage,)).fetchone() in (None, (None,)):
        cur.execute(f"CREATE TEMPORARY TABLE rls_stage_{table} ON COMMIT DELETE ROWS"
                    f" AS SELECT * FROM {table} WITH NO DATA".encode())
    return stage


def clear_staging(conn: psycopg.Connection, cur: psycopg.Cursor, statement: str) -> None:
    """Empty the (ON COMMIT DELETE ROWS) staging tables, unless no transaction is open yet.

    Outside a transaction they are empty: the last one ended with a commit, which emptied
    them, or a rollback, which undid what was staged. Inside one (the record-by-record
    isolation of a refused batch) an earlier write may have left rows: delete them.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        cur.execute(statement)
