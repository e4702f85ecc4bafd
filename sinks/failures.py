"""Which failures a sink retries, which it isolates record by record, and their metric causes."""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaException

from schemas.errors import RegistryUnavailable
from sinks.errors import ConcurrentWriteConflict, DatabaseUnavailable, RetryableError

# Roll back and retry the same batch: nothing is wrong with the records themselves.
RETRYABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # connection lost, admin shutdown, serialization, deadlock
    psycopg.InterfaceError,
    DatabaseUnavailable,
    RetryableError,
    RegistryUnavailable,
    KafkaException,
)

# The database refused the data: find the records responsible, one savepoint each.
DATA_ERRORS: tuple[type[psycopg.Error], ...] = (psycopg.IntegrityError, psycopg.DataError)


RETRY_CAUSES = ("serialization", "postgres", "registry", "conflict", "kafka")


def cause(exc: BaseException) -> str:
    """A bounded label for settle_sink_retries_total."""
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return "serialization"
    if isinstance(exc, psycopg.Error | DatabaseUnavailable):
        return "postgres"
    if isinstance(exc, RegistryUnavailable):
        return "registry"
    if isinstance(exc, ConcurrentWriteConflict):
        return "conflict"
    return "kafka"


def first_line(exc: BaseException) -> str:
    """The error's first line, for one-line logs."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
