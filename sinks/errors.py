"""Errors raised by the PostgreSQL sinks, translated from psycopg at the adapter."""

from settlement.errors import SettleError


class SinkError(SettleError):
    """A sink could not do its work."""


class MigrationError(SinkError):
    """A migration could not be applied, or an applied one was edited."""


class DatabaseUnavailable(SinkError):
    """PostgreSQL cannot be reached (yet); the caller retries with backoff."""


class SchemaNotMigrated(SinkError):
    """A table the sink writes is missing: run `settle db migrate` first."""


class RetryableError(SinkError):
    """The batch could not be committed this time; it is rolled back and retried as it was."""


class DeadLetterFailed(RetryableError):
    """Dead letters could not be delivered to Kafka; the batch is rolled back and retried."""


class ConcurrentWriteConflict(RetryableError):
    """Another writer changed rows this batch depends on; a retry sees its effects."""


class SinkInvariantError(SinkError):
    """A record would break an invariant of the stored data; it is dead-lettered, never written."""


class InvalidRecord(SinkInvariantError):
    """A decoded record has a value the tables cannot hold or the domain forbids."""


class TerminalStateConflict(SinkInvariantError):
    """A MATCHED result for a payment that already has another terminal state: never posted."""


class PaymentInAnotherBatch(SinkInvariantError):
    """A settlement batch holds a payment that another batch already settled."""


class BatchContentConflict(SinkInvariantError):
    """A batch id arrived again with different contents than the batch already stored."""


class ReversalMismatch(SinkInvariantError):
    """A reversal whose journal would not mirror the posted original exactly (or whose original
    journal is not posted): never posted."""


class ReversalStateConflict(SinkInvariantError):
    """A reversal of a payment or refund that is not MATCHED (already reversed by another
    result, or never succeeded): never posted."""


class DisputeStateConflict(SinkInvariantError):
    """A dispute result that does not fit the stored dispute (a close without its hold, a
    second opening, a close of a closed dispute, other amounts): never posted."""
