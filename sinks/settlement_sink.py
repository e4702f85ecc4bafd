"""Settlement sink writer: settlements.batches to batches, items and payout journals."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from sinks import journal_staging
from sinks.base import DeadRecord, SourceRecord, WriteResult, dead_from_rejections
from sinks.errors import BatchContentConflict, ConcurrentWriteConflict, PaymentInAnotherBatch
from sinks.pg import clear_staging, copy_rows, require_tables
from sinks.settlement_rows import (
    BatchRow,
    ItemRow,
    SettlementRows,
    batch_rows,
    build_settlement_rows,
)

__all__ = ["SettlementWriter", "batch_rows", "build_settlement_rows"]

TABLES = ("settlement_batches", "settlement_batch_items", "ledger_journals", "ledger_entries")

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_settlement_batches (
    batch_id text, merchant_id text, currency text, window_start timestamptz,
    window_end timestamptz, payment_count int4, gross_minor bigint, fee_minor bigint,
    net_minor bigint, refund_count int4, carried_in_minor bigint, payout_minor bigint,
    carried_out_minor bigint, closed_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_settlement_items (
    batch_id text, kind text, item_id text, payment_id text, gross_minor bigint,
    fee_minor bigint, net_minor bigint, matched_at timestamptz
) ON COMMIT DELETE ROWS;
""" + journal_staging.STAGING_DDL

_CLEAR_STAGING = ("DELETE FROM stage_settlement_batches; DELETE FROM stage_settlement_items; "
                  + journal_staging.CLEAR_STAGING)

# An item (payment or refund) already settled in another batch, or a stored batch whose
# contents differ from this one (closed_at aside): either way the incoming batch is refused
# whole.
_CONFLICTS = """
SELECT s.batch_id, %(in_other)s::text,
       s.kind || ' ' || s.item_id || ' is already settled in batch ' || i.batch_id
  FROM stage_settlement_items s
  JOIN settlement_batch_items i USING (kind, item_id)
 WHERE i.batch_id <> s.batch_id
UNION ALL
SELECT s.batch_id, %(content)s::text,
       'stored batch ' || s.batch_id || ' has other totals, window or merchant'
  FROM stage_settlement_batches s
  JOIN settlement_batches b USING (batch_id)
 WHERE (b.merchant_id, b.currency::text, b.window_start, b.window_end, b.payment_count,
        b.gross_minor, b.fee_minor, b.net_minor, b.refund_count, b.carried_in_minor,
        b.payout_minor, b.carried_out_minor)
       IS DISTINCT FROM
       (s.merchant_id, s.currency, s.window_start, s.window_end, s.payment_count,
        s.gross_minor, s.fee_minor, s.net_minor, s.refund_count, s.carried_in_minor,
        s.payout_minor, s.carried_out_minor)
UNION ALL
SELECT s.batch_id, %(content)s::text,
       'stored batch ' || s.batch_id || ' has ' || s.kind || ' ' || s.item_id ||
       ' missing or with other amounts'
  FROM stage_settlement_items s
  JOIN settlement_batches b USING (batch_id)
  LEFT JOIN settlement_batch_items i
         ON i.kind = s.kind AND i.item_id = s.item_id AND i.batch_id = s.batch_id
 WHERE i.item_id IS NULL
    OR (i.payment_id, i.gross_minor, i.fee_minor, i.net_minor)
       IS DISTINCT FROM (s.payment_id, s.gross_minor, s.fee_minor, s.net_minor)
"""

_DROP_STAGED = (
    "DELETE FROM stage_settlement_batches WHERE batch_id = ANY(%s)",
    "DELETE FROM stage_settlement_items WHERE batch_id = ANY(%s)",
)

# Items only for batches inserted by this statement: a replayed batch adds nothing.
_INSERT = """
WITH batches AS (
    INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start, window_end,
                                    payment_count, gross_minor, fee_minor, net_minor,
                                    refund_count, carried_in_minor, payout_minor,
                                    carried_out_minor, closed_at)
    SELECT batch_id, merchant_id, currency, window_start, window_end, payment_count,
           gross_minor, fee_minor, net_minor, refund_count, carried_in_minor, payout_minor,
           carried_out_minor, closed_at
      FROM stage_settlement_batches
    ON CONFLICT (batch_id) DO NOTHING
    -- Every staged item of the batch: reversals count in neither payment_count nor
    -- refund_count (the record's counts), but are inserted all the same.
    RETURNING batch_id, (SELECT count(*) FROM stage_settlement_items s
                          WHERE s.batch_id = settlement_batches.batch_id) AS item_count
), items AS (
    INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id, gross_minor,
                                        fee_minor, net_minor, matched_at)
    SELECT s.batch_id, s.kind, s.item_id, s.payment_id, s.gross_minor, s.fee_minor,
           s.net_minor, s.matched_at
      FROM stage_settlement_items s JOIN batches b USING (batch_id)
    ON CONFLICT (kind, item_id) DO NOTHING
    RETURNING batch_id
)
SELECT (SELECT count(*) FROM batches),
       (SELECT COALESCE(sum(item_count), 0) FROM batches),
       (SELECT count(*) FROM items)
"""

_CONFLICT_TYPES = {
    "in_other": PaymentInAnotherBatch.__name__,
    "content": BatchContentConflict.__name__,
}
_BATCH_TYPES = ("text", "text", "text", "timestamptz", "timestamptz", "int4", "int8", "int8",
                "int8", "int4", "int8", "int8", "int8", "timestamptz")
_ITEM_TYPES = ("text", "text", "text", "text", "int8", "int8", "int8", "timestamptz")


class SettlementWriter:
    """Writes a batch of SettlementBatch records in the caller's transaction."""

    name = "settlement"
    stage = "settlement-sink"
    record_name = "SettlementBatch"

    def prepare(self, conn: psycopg.Connection) -> None:
        require_tables(conn, (*TABLES, "sink_offsets"))
        conn.execute(_STAGING_DDL)

    def build(self, records: Sequence[SourceRecord]) -> SettlementRows:
        """The rows of decoded records (pure: the consumer may call it ahead, in a thread)."""
        return build_settlement_rows([r.record or {} for r in records])

    def write(self, conn: psycopg.Connection, records: Sequence[SourceRecord],
              rows: SettlementRows | None = None) -> WriteResult:
        """Write the records' rows (`rows`: what build(records) returned, if already built)."""
        if rows is None:
            rows = self.build(records)
        result = WriteResult(dead=dead_from_rejections(records, rows.rejected))
        result.duplicates = rows.duplicates
        if not rows.batches:
            return result
        with conn.cursor() as cur:
            clear_staging(conn, cur, _CLEAR_STAGING)
            copy_rows(cur, "stage_settlement_batches", BatchRow._fields, _BATCH_TYPES,
                      rows.batches)
            copy_rows(cur, "stage_settlement_items", ItemRow._fields, _ITEM_TYPES, rows.items)
            refused: dict[str, tuple[str, str]] = {}
            conflicts = cur.execute(_CONFLICTS, _CONFLICT_TYPES).fetchall()
            for batch_id, error_type, message in conflicts:
                refused.setdefault(batch_id, (error_type, message))
            if refused:
                for statement in _DROP_STAGED:
                    cur.execute(statement, (list(refused),))
                result.dead.extend(
                    DeadRecord(records[rows.batch_index[bid]], error_type, message)
                    for bid, (error_type, message) in refused.items()
                )
            counts = cur.execute(_INSERT).fetchone()
            assert counts is not None  # an aggregate SELECT always returns one row
            batches, items_expected, items = counts
            if items != items_expected:
                # Another writer settled one of these payments since the conflict check;
                # rolling back and retrying lets the check see it and refuse the batch whole.
                raise ConcurrentWriteConflict(
                    f"{items_expected - items} batch item(s) were settled concurrently"
                )
            result.add_rows("settlement_batches", batches)
            result.add_rows("settlement_batch_items", items)
            self._post_payouts(cur, rows, set(refused), result)
        return result

    @staticmethod
    def _post_payouts(cur: psycopg.Cursor, rows: SettlementRows, refused: set[str],
                      result: WriteResult) -> None:
        """Post the PAYOUT journal of every batch written (or already stored) and not refused.

        In the batch's transaction: a stored batch has its journal already, and
        ON CONFLICT (kind, source_id) makes the replay post nothing.
        """
        journals = [j for j in rows.journals if j.source_id not in refused]
        ids = {j.journal_id for j in journals}
        entries = [e for e in rows.entries if e.journal_id in ids]
        posted, debits, credits = journal_staging.post_journals(cur, journals, entries)
        if posted:
            result.add_rows("ledger_journals", posted)
            result.add_rows("ledger_entries", debits + credits)
            sides = result.postings_by_side
            sides["DEBIT"] = sides.get("DEBIT", 0) + debits
            sides["CREDIT"] = sides.get("CREDIT", 0) + credits
