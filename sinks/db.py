"""PostgreSQL connections for sinks and audits, from the project's settings."""

from __future__ import annotations

import psycopg
from psycopg import sql

from infra.config import PostgresSettings
from sinks.errors import DatabaseUnavailable


def connect(
    settings: PostgresSettings, *, autocommit: bool = False, timeout_s: int = 10
) -> psycopg.Connection:
    """Open a connection; connection failures become ``DatabaseUnavailable`` (password masked)."""
    try:
        return psycopg.connect(
            settings.conninfo(),
            autocommit=autocommit,
            connect_timeout=timeout_s,
            application_name="settle",
        )
    except psycopg.OperationalError as exc:
        # psycopg's message never contains the password, but say where we tried in our words.
        raise DatabaseUnavailable(f"cannot connect to {settings.describe()}: {exc}") from exc


def drop_database(conn: psycopg.Connection, dbname: str) -> None:
    """Drop `dbname` (autocommit connection to another database), closing its sessions first.

    ``DROP DATABASE ... WITH (FORCE)`` refuses, for a role that is not superuser, when an
    autovacuum worker is in the database (PostgreSQL 15 checks the worker's role like a
    session's: InsufficientPrivilege). A plain DROP stops autovacuum workers itself, so then
    our own role's sessions are terminated and the plain DROP is used.
    """
    try:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(dbname)))
    except psycopg.errors.InsufficientPrivilege:
        drop_database_plain(conn, dbname)


def drop_database_plain(conn: psycopg.Connection, dbname: str) -> None:
    """Terminate this role's sessions in `dbname`, then a plain DROP (it waits out autovacuum)."""
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()",
        [dbname])
    # A terminated session leaves the proc array shortly after; DROP waits up to 5 s for it.
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
