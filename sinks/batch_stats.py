"""What a committed batch adds to the sink run's stats and to the sink's metrics."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sinks import metrics
from sinks.base import DeadRecord, WriteResult
from sinks.options import SinkStats


def count_committed(stats: SinkStats, sink: str, records: int, result: WriteResult,
                    dead: list[DeadRecord], commit_s: float) -> None:
    """Count a batch of `records` records whose rows and offsets were just committed."""
    stats.records += records
    stats.batches += 1
    stats.rows_written += result.rows_written
    stats.dead_letters += len(dead)
    stats.duplicates += result.duplicates
    stats.last_commit_at = time.monotonic()
    for table, count in result.rows_by_table.items():
        stats.rows_by_table[table] = stats.rows_by_table.get(table, 0) + count
    metrics.RECORDS.labels(sink, "written").inc(records - len(dead))
    metrics.RECORDS.labels(sink, "dead_lettered").inc(len(dead))
    metrics.BATCH_ROWS.labels(sink).observe(result.rows_written)
    metrics.COMMIT_SECONDS.labels(sink).observe(commit_s)
    for side, count in result.postings_by_side.items():
        metrics.LEDGER_POSTINGS.labels(side).inc(count)
    if result.posted:
        now = datetime.now(UTC)
        for channel, created_at in result.posted:
            metrics.E2E_LATENCY.labels(channel).observe(
                max((now - created_at).total_seconds(), 0.0))
    for item in dead:
        metrics.DEAD_LETTERS.labels(sink, item.error_type).inc()
