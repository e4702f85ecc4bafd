"""Small PostgreSQL helpers shared by the writers: table checks and binary COPY into staging."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
    applies to every role but the owner, even though its policy for them is `true`). For
    such a login (a settle_writer member) the rows go through a temporary table of the same
    columns and one INSERT ... SELECT: same rows, same constraints and triggers. The owner's
    login copies straight in, as before.
    """
    if _row_security_active(cur, table):
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


def _row_security_active(cur: psycopg.Cursor, table: str) -> bool:
    """Whether row-level security applies to this session on `table` (asked every time: a
    migration may enable it while a sink runs; the staging tables never have it)."""
    row = cur.execute("SELECT row_security_active(%s::regclass)", (table,)).fetchone()
    return bool(row and row[0])


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
