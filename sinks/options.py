"""A sink run's options (group, topics, batch limits, exits) and its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.topics import PAYMENTS_DLQ


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """How one sink consumes: its group, topics, batch limits and exit conditions."""

    group_id: str
    topic: str
    dlq_topic: str = PAYMENTS_DLQ
    batch_rows_max: int = 2000
    batch_wait_ms: int = 200
    idle_exit_s: float | None = None  # exit after this long without a record (tests, bench)
    max_records: int | None = None
    retry_backoff_s: float = 0.5
    # How long the group waits for a silent member (a killed sink) before reassigning its
    # partitions; None: librdkafka's default (45 s).
    session_timeout_ms: int | None = None
    retry_backoff_s_max: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_rows_max < 1 or self.batch_wait_ms < 0:
            raise ValueError("batch_rows_max must be >= 1 and batch_wait_ms >= 0")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError("max_records must be >= 1")

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff for retry number `attempt` (1-based), capped."""
        return min(self.retry_backoff_s * 2 ** (attempt - 1), self.retry_backoff_s_max)


@dataclass(slots=True)
class SinkStats:
    """What a run did; rates span the first record received to the last commit."""

    records: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    batches: int = 0
    retries: int = 0
    read_ahead: int = 0  # batches decoded (and their rows built) while the one before was written
    first_record_at: float | None = None
    last_commit_at: float | None = None
    rows_by_table: dict[str, int] = field(default_factory=dict)

    @property
    def busy_s(self) -> float:
        if self.first_record_at is None or self.last_commit_at is None:
            return 0.0
        return max(self.last_commit_at - self.first_record_at, 1e-9)

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.busy_s if self.busy_s else 0.0

    @property
    def records_per_s(self) -> float:
        return self.records / self.busy_s if self.busy_s else 0.0

    def summary(self) -> str:
        tables = ", ".join(f"{t} {n}" for t, n in sorted(self.rows_by_table.items())) or "none"
        return (
            f"{self.records} records in {self.batches} batches, {self.rows_written} rows written "
            f"({tables}), {self.dead_letters} dead letters, {self.duplicates} duplicates, "
            f"{self.retries} retries, {self.read_ahead} batches read ahead; "
            f"{self.rows_per_s:,.0f} rows/s, "
            f"{self.records_per_s:,.0f} records/s over {self.busy_s:.2f}s"
        )
