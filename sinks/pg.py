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
    """Binary COPY rows into a (staging) table; the types name each column's PostgreSQL type."""
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def clear_staging(conn: psycopg.Connection, cur: psycopg.Cursor, statement: str) -> None:
    """Empty the (ON COMMIT DELETE ROWS) staging tables, unless no transaction is open yet.

    Outside a transaction they are empty: the last one ended with a commit, which emptied
    them, or a rollback, which undid what was staged. Inside one (the record-by-record
    isolation of a refused batch) an earlier write may have left rows: delete them.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        cur.execute(statement)
