"""What a sink writer receives and returns: decoded records with their Kafka coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import psycopg

from schemas.dead_letters import Failure


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One Kafka record: where it came from, its raw bytes, and its decoded value (if any)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    record: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Rejection(NamedTuple):
    """A record of a batch that must not be written; it becomes a dead letter."""

    position: int  # index in the batch handed to the row builder
    error_type: str  # the error's class name; its reason code is derived from it
    message: str


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """A source record on its way to the dead-letter topic, with the error.

    `error_type` is the error's class name and `reason` its stable code; an empty `reason`
    stands for the code derived from the class name (see schemas.dead_letters).
    """

    source: SourceRecord
    error_type: str
    message: str
    reason: str = ""

    @classmethod
    def of(cls, source: SourceRecord, error: BaseException, message: str | None = None
           ) -> DeadRecord:
        failure = Failure.of(error)
        return cls(source, failure.error_type,
                   failure.message if message is None else message, failure.reason)

    @property
    def failure(self) -> Failure:
        return Failure(self.error_type, self.message, self.reason)


@dataclass(slots=True)
class WriteResult:
    """What one writer call did: rows written per table and records refused."""

    rows_by_table: dict[str, int] = field(default_factory=dict)
    dead: list[DeadRecord] = field(default_factory=list)
    duplicates: int = 0
    # Ledger postings inserted, per side (DEBIT/CREDIT); part of rows_by_table already.
    postings_by_side: dict[str, int] = field(default_factory=dict)
    # (channel, created_at) of each payment posted to the ledger now, for end-to-end latency.
    posted: list[tuple[str, datetime]] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        return sum(self.rows_by_table.values())

    def add_rows(self, table: str, count: int) -> None:
        self.rows_by_table[table] = self.rows_by_table.get(table, 0) + max(count, 0)

    def add_postings(self, debits: int, credits: int) -> None:
        """Count ledger entries written, per side (their rows are counted by add_rows)."""
        sides = self.postings_by_side
        sides["DEBIT"] = sides.get("DEBIT", 0) + debits
        sides["CREDIT"] = sides.get("CREDIT", 0) + credits

    def merge(self, other: WriteResult) -> None:
        for table, count in other.rows_by_table.items():
            self.add_rows(table, count)
        self.dead.extend(other.dead)
        self.duplicates += other.duplicates
        for side, count in other.postings_by_side.items():
            self.postings_by_side[side] = self.postings_by_side.get(side, 0) + count
        self.posted.extend(other.posted)


class Writer(Protocol):
    """A sink's table writer; it runs inside the transaction the consumer loop commits."""

    name: str  # short label for metrics: "ledger", "settlement"
    stage: str  # dead-letter stage: "ledger-sink"
    record_name: str  # the contract record the topic carries, used as the reader schema

    def prepare(self, conn: psycopg.Connection) -> None:
        """Set up a fresh connection (temp staging tables, checks); committed by the caller."""
        ...

    def write(self, conn: psycopg.Connection, records: Sequence[SourceRecord]) -> WriteResult:
        """Write the rows of decoded records; never commits. Refused records come back dead.

        A writer may also define ``build(records)``, the pure part (rows from records), and
        accept its result as a third argument of ``write``: the consumer then builds the
        next batch's rows in a helper thread while this one is written.
        """
        ...


def dead_from_rejections(
    records: Sequence[SourceRecord], rejections: Sequence[Rejection]
) -> list[DeadRecord]:
    """Map the row builders' rejections back to the source records they came from."""
    return [DeadRecord(records[r.position], r.error_type, r.message) for r in rejections]
