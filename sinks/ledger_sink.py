"""Ledger sink writer: reconciliation.results to payments, ledger journals and exceptions."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from settlement.fees import FeeSchedule
from settlement.ledger import DEBIT
from settlement.reconciliation import MATCHED
from sinks.base import DeadRecord, SourceRecord, WriteResult, dead_from_rejections
from sinks.errors import TerminalStateConflict
from sinks.ledger_rows import (
    DEFAULT_FEES,
    EntryRow,
    ExceptionRow,
    JournalRow,
    LedgerRows,
    PaymentRow,
    build_ledger_rows,
    result_rows,
)
from sinks.pg import clear_staging, copy_rows, require_tables

__all__ = [
    "LedgerWriter",
    "build_ledger_rows",
    "result_rows",
]

TABLES = ("payments", "ledger_journals", "ledger_entries", "reconciliation_exceptions")

# Staging tables live per connection and empty themselves at every commit; the writer copies
# a batch's payments and exceptions into them and moves them with INSERT ... SELECT ... ON
# CONFLICT, so a replay is a no-op. Journals and their entries need no staging (see write).
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_payments (
    payment_id text, merchant_id text, channel text, amount_minor bigint, currency text,
    state text, late boolean, result_id text, created_at timestamptz, decided_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_recon_exceptions (
    result_id text, payment_id text, merchant_id text, channel text, outcome text,
    expected_amount_minor bigint, expected_currency text, confirmed_amount_minor bigint,
    confirmed_currency text, confirmation_id text, channel_txn_id text, detail text,
    decided_at timestamptz
) ON COMMIT DELETE ROWS;
"""

_CLEAR_STAGING = "DELETE FROM stage_payments; DELETE FROM stage_recon_exceptions"

# First terminal state wins; the one exception is a late MATCHED replacing
# MISSING_CONFIRMATION, which happens at most once because the state then is MATCHED.
_UPSERT_PAYMENTS = """
INSERT INTO payments (payment_id, merchant_id, channel, amount_minor, currency, state, late,
                      result_id, created_at, decided_at)
SELECT payment_id, merchant_id, channel, amount_minor, currency, state, late,
       result_id, created_at, decided_at
  FROM stage_payments
ON CONFLICT (payment_id) DO UPDATE
   SET state = EXCLUDED.state,
       late = EXCLUDED.late,
       result_id = EXCLUDED.result_id,
       decided_at = EXCLUDED.decided_at,
       merchant_id = COALESCE(EXCLUDED.merchant_id, payments.merchant_id),
       channel = COALESCE(EXCLUDED.channel, payments.channel),
       amount_minor = COALESCE(EXCLUDED.amount_minor, payments.amount_minor),
       currency = COALESCE(EXCLUDED.currency, payments.currency),
       updated_at = now()
 WHERE payments.state = 'MISSING_CONFIRMATION' AND EXCLUDED.state = 'MATCHED'
RETURNING payment_id, state
"""

_INSERT_EXCEPTIONS = """
INSERT INTO reconciliation_exceptions (result_id, payment_id, merchant_id, channel, outcome,
    expected_amount_minor, expected_currency, confirmed_amount_minor, confirmed_currency,
    confirmation_id, channel_txn_id, detail, decided_at)
SELECT result_id, payment_id, merchant_id, channel, outcome, expected_amount_minor,
       expected_currency, confirmed_amount_minor, confirmed_currency, confirmation_id,
       channel_txn_id, detail, decided_at
  FROM stage_recon_exceptions
ON CONFLICT (result_id) DO NOTHING
"""

_T, _B, _BOOL, _TS = "text", "int8", "bool", "timestamptz"
_JOURNAL_TYPES = (_T, _T, _T, _B, _B, _B)
_ENTRY_TYPES = (_T, _T, _T, _T, _B, _T)
_STAGES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("stage_payments", PaymentRow._fields, (_T, _T, _T, _B, _T, _T, _BOOL, _T, _TS, _TS)),
    ("stage_recon_exceptions", ExceptionRow._fields,
     (_T, _T, _T, _T, _T, _B, _T, _B, _T, _T, _T, _T, _TS)),
)


class LedgerWriter:
    """Writes a batch of ReconciliationResult records in the caller's transaction."""

    name = "ledger"
    stage = "ledger-sink"
    record_name = "ReconciliationResult"

    def __init__(self, fees: FeeSchedule = DEFAULT_FEES) -> None:
        # settings.sink.fees (SETTLE_FEES) in the sink process; the built-in schedule otherwise.
        self.fees = fees

    def prepare(self, conn: psycopg.Connection) -> None:
        require_tables(conn, (*TABLES, "sink_offsets"))
        conn.execute(_STAGING_DDL)

    def build(self, records: Sequence[SourceRecord]) -> LedgerRows:
        """The rows of decoded records (pure: the consumer may call it ahead, in a thread)."""
        return build_ledger_rows([r.record or {} for r in records], self.fees)

    def write(self, conn: psycopg.Connection, records: Sequence[SourceRecord],
              rows: LedgerRows | None = None) -> WriteResult:
        """Write the records' rows (`rows`: what build(records) returned, if already built)."""
        if rows is None:
            rows = self.build(records)
        result = WriteResult(dead=dead_from_rejections(records, rows.rejected))
        result.duplicates = rows.duplicates
        with conn.cursor() as cur:
            clear_staging(conn, cur, _CLEAR_STAGING)
            self._stage(cur, rows)
            changed = cur.execute(_UPSERT_PAYMENTS).fetchall()
            result.add_rows("payments", len(changed))
            matched_now = {pid for pid, state in changed if state == MATCHED}
            result.dead.extend(self._conflicts(cur, records, rows, matched_now))
            if matched_now:
                self._post(cur, rows, matched_now, result)
                result.posted = [(p.channel or "unknown", p.created_at) for p in rows.payments
                                 if p.payment_id in matched_now and p.created_at is not None]
            if rows.exceptions:
                cur.execute(_INSERT_EXCEPTIONS)
                result.add_rows("reconciliation_exceptions", cur.rowcount)
        return result

    @staticmethod
    def _post(cur: psycopg.Cursor, rows: LedgerRows, matched_now: set[str],
              result: WriteResult) -> None:
        """COPY the journals of payments that became MATCHED in this transaction, and their entries.

        Only this writer posts journals, and in the same transaction as the payment's move to
        MATCHED, which is final. So a payment the upsert has just moved to MATCHED has no
        journal yet, and its rows go straight into the ledger tables: a replayed result finds
        its payment MATCHED already and posts nothing. Should a journal exist all the same,
        the unique keys refuse the COPY, and the batch is written again record by record
        (the consumer's isolation), dead-lettering that record: never a second posting.
        """
        journals = [j for j in rows.journals if j.payment_id in matched_now]
        entries = [e for e in rows.entries if e.payment_id in matched_now]
        copy_rows(cur, "ledger_journals", JournalRow._fields, _JOURNAL_TYPES, journals)
        copy_rows(cur, "ledger_entries", EntryRow._fields, _ENTRY_TYPES, entries)
        debits = sum(1 for e in entries if e.side == DEBIT)
        result.add_rows("ledger_journals", len(journals))
        result.add_rows("ledger_entries", len(entries))
        result.postings_by_side = {"DEBIT": debits, "CREDIT": len(entries) - debits}

    @staticmethod
    def _stage(cur: psycopg.Cursor, rows: LedgerRows) -> None:
        batches: tuple[Sequence[Sequence[object]], ...] = (rows.payments, rows.exceptions)
        for (table, columns, types), batch in zip(_STAGES, batches, strict=True):
            if batch:
                copy_rows(cur, table, columns, types, batch)

    @staticmethod
    def _conflicts(
        cur: psycopg.Cursor,
        records: Sequence[SourceRecord],
        rows: LedgerRows,
        matched_now: set[str],
    ) -> list[DeadRecord]:
        """MATCHED results whose payment already holds another verdict: dead letters.

        A replayed MATCHED result finds its own result_id stored and is no conflict.
        """
        wanted = {p.payment_id: p.result_id for p in rows.payments if p.state == MATCHED}
        pending = [pid for pid in wanted if pid not in matched_now]
        if not pending:
            return []
        dead: list[DeadRecord] = []
        stored = cur.execute(
            "SELECT payment_id, state, result_id FROM payments WHERE payment_id = ANY(%s)",
            (pending,),
        ).fetchall()
        for payment_id, state, result_id in stored:
            if state == MATCHED and result_id == wanted[payment_id]:
                continue
            message = (
                f"MATCHED result {wanted[payment_id]} for payment {payment_id}, which is "
                f"already {state} by {result_id}: not posted"
            )
            source = records[rows.matched_index[payment_id]]
            dead.append(DeadRecord(source, TerminalStateConflict.__name__, message))
        return dead
