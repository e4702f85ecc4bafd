"""Errors raised by the PostgreSQL sinks, translated from psycopg at the adapter."""

from settlement.errors import SettleError


class SinkError(SettleError):
    """A sink could not do its work."""


class MigrationError(SinkError):
    """A migration could not be applied, or an applied one was edited."""


class DatabaseUnavailable(SinkError):
    """PostgreSQL cannot be reached (yet); the caller retries with backoff."""
