"""COPY buffers for the seeded books: rows as PostgreSQL text lines, written table by table."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg

# Columns of every table the seed writes, in COPY order. The tables are written in this order
# (a journal before its entries, a batch before its items: the foreign keys).
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "payments": (
        "payment_id", "merchant_id", "channel", "amount_minor", "currency", "state", "late",
        "result_id", "created_at", "decided_at", "updated_at", "order_id",
        "reversal_result_id", "reversed_at", "case_id", "operator", "approver"),
    "reconciliation_exceptions": (
        "result_id", "payment_id", "merchant_id", "channel", "outcome",
        "expected_amount_minor", "expected_currency", "confirmed_amount_minor",
        "confirmed_currency", "confirmation_id", "channel_txn_id", "detail", "decided_at",
        "recorded_at"),
    "refunds": (
        "payment_id", "refund_id", "merchant_id", "channel", "order_id", "amount_minor",
        "currency", "state", "late", "result_id", "fee_returned_minor", "net_minor",
        "requested_at", "decided_at", "updated_at", "reversal_result_id", "reversed_at"),
    "refund_exceptions": (
        "result_id", "payment_id", "refund_id", "merchant_id", "channel", "outcome",
        "amount_minor", "currency", "confirmed_amount_minor", "confirmed_currency",
        "confirmation_id", "channel_refund_id", "detail", "decided_at", "recorded_at"),
    "disputes": (
        "payment_id", "dispute_id", "merchant_id", "order_id", "channel", "channel_dispute_id",
        "stage", "status", "state", "amount_minor", "currency", "funds_withdrawn", "fee_minor",
        "reason_code", "respond_by", "opened_at", "closed_at", "opened_result_id",
        "closed_result_id", "last_result_id", "decided_at", "updated_at"),
    "dispute_rejections": (
        "result_id", "payment_id", "dispute_id", "merchant_id", "channel",
        "channel_dispute_id", "stage", "status", "amount_minor", "currency", "funds_withdrawn",
        "fee_minor", "reasons", "reason_code", "detail", "occurred_at", "decided_at",
        "recorded_at"),
    "exception_cases": (
        "case_id", "payment_id", "merchant_id", "channel", "subject", "subject_id", "outcome",
        "opened_by", "amount_minor", "currency", "status", "resolution", "operator",
        "approver", "remark", "opened_at", "resolved_at", "last_event_id", "last_event_kind",
        "last_event_at", "updated_at"),
    "case_events": (
        "event_id", "case_id", "payment_id", "kind", "status", "resolution", "action_id",
        "operator", "approver", "remark", "reason", "amount_minor", "currency", "evidence",
        "occurred_at", "recorded_at"),
    "ledger_journals": (
        "journal_id", "kind", "source_id", "payment_id", "currency", "gross_minor",
        "fee_minor", "net_minor", "posted_at"),
    "ledger_entries": (
        "journal_id", "payment_id", "account", "side", "amount_minor", "currency",
        "posted_at"),
    "settlement_batches": (
        "batch_id", "merchant_id", "currency", "window_start", "window_end", "payment_count",
        "refund_count", "gross_minor", "fee_minor", "net_minor", "carried_in_minor",
        "payout_minor", "carried_out_minor", "closed_at", "recorded_at"),
    "settlement_batch_items": (
        "batch_id", "kind", "item_id", "payment_id", "gross_minor", "fee_minor", "net_minor",
        "matched_at"),
}
TABLES: Final = tuple(COLUMNS)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CHUNK_LINES: Final = 20_000


def ts(ms: int) -> str:
    """Epoch milliseconds as an exact RFC 3339 UTC timestamp."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat()


def _field(value: object) -> str:
    # Every text the seed writes is its own (ids, codes, JSON without backslashes): none needs
    # COPY's escaping, which `Buffers.add` asserts cheaply on the whole line.
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    return str(value)


class Buffers:
    """Rows per table as COPY text lines, flushed in foreign-key order."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {t: [] for t in TABLES}
        self.written: Counter[str] = Counter()

    def add(self, table: str, *values: object) -> None:
        line = "\t".join(map(_field, values))
        if "\n" in line or "\\" in line.replace("\\N", ""):
            raise ValueError(f"{table}: a value needs COPY escaping: {line!r}")
        if len(values) != len(COLUMNS[table]):
            raise ValueError(f"{table}: {len(values)} values for {len(COLUMNS[table])} columns")
        self.lines[table].append(line)

    def pending(self) -> int:
        return sum(len(lines) for lines in self.lines.values())

    def flush(self, conn: psycopg.Connection, tables: tuple[str, ...] = TABLES) -> None:
        """COPY the buffered rows of `tables` (in TABLES order) and forget them."""
        with conn.cursor() as cur:
            for table in TABLES:
                lines = self.lines[table]
                if table not in tables or not lines:
                    continue
                columns = ", ".join(COLUMNS[table])
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for start in range(0, len(lines), _CHUNK_LINES):
                        chunk = lines[start:start + _CHUNK_LINES]
                        copy.write("\n".join(chunk) + "\n")
                self.written[table] += len(lines)
                self.lines[table] = []
