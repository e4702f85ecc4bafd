"""PostgreSQL connections for sinks and audits, from the project's settings."""

from __future__ import annotations

import psycopg

from settle.config import PostgresSettings
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
