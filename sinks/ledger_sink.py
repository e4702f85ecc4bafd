"""Ledger sink writer: payment, refund and dispute results and case events to payments,
refunds, disputes, journals, exceptions and exception cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import psycopg

from settlement.fees import FeeSchedule
from settlement.ledger import DEBIT
from settlement.reconciliation import MATCHED, MATCHED_MANUAL
from sinks import journal_staging, ledger_disputes, ledger_reversals
from sinks.base import DeadRecord, SourceRecord, WriteResult, dead_from_rejections
from sinks.errors import TerminalStateConflict
from sinks.ledger_rows import (
    DEFAULT_FEES,
    ENTRY_TYPES,
    JOURNAL_TYPES,
    POSTING_STATES,
    EntryRow,
    ExceptionRow,
    JournalRow,
    LedgerRows,
    PaymentRow,
    build_ledger_rows,
    result_rows,
)
from sinks.pg import clear_staging, copy_rows, require_tables
from sinks.refund_rows import (
    REFUND_EXCEPTION_TYPES,
    REFUND_TYPES,
    RefundExceptionRow,
    RefundRow,
)

__all__ = [
    "LedgerWriter",
    "build_ledger_rows",
    "result_rows",
]

TABLES = ("payments", "ledger_journals", "ledger_entries", "reconciliation_exceptions",
          "refunds", "refund_exceptions", *ledger_disputes.TABLES)

# Staging tables live per connection and empty themselves at every commit; the writer copies
# a batch's payments, refunds and exceptions into them and moves them with INSERT ... SELECT
# ... ON CONFLICT, so a replay is a no-op. Payment journals need no staging (see _post).
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_payments (
    payment_id text, merchant_id text, channel text, amount_minor bigint, currency text,
    state text, late boolean, result_id text, created_at timestamptz, decided_at timestamptz,
    order_id text, case_id text, operator text, approver text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_recon_exceptions (
    result_id text, payment_id text, merchant_id text, channel text, outcome text,
    expected_amount_minor bigint, expected_currency text, confirmed_amount_minor bigint,
    confirmed_currency text, confirmation_id text, channel_txn_id text, detail text,
    decided_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_refunds (
    payment_id text, refund_id text, merchant_id text, channel text, order_id text,
    amount_minor bigint, currency text, state text, late boolean, result_id text,
    fee_returned_minor bigint, net_minor bigint, requested_at timestamptz,
    decided_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_refund_exceptions (
    result_id text, payment_id text, refund_id text, merchant_id text, channel text,
    outcome text, amount_minor bigint, currency text, confirmed_amount_minor bigint,
    confirmed_currency text, confirmation_id text, channel_refund_id text, detail text,
    decided_at timestamptz
) ON COMMIT DELETE ROWS;
""" + journal_staging.STAGING_DDL + ledger_disputes.STAGING_DDL

_CLEAR_STAGING = ("DELETE FROM stage_payments; DELETE FROM stage_recon_exceptions; "
                  "DELETE FROM stage_refunds; DELETE FROM stage_refund_exceptions; "
                  + journal_staging.CLEAR_STAGING + "; " + ledger_disputes.CLEAR_STAGING)

# First terminal state wins; the exceptions are a late MATCHED replacing MISSING_CONFIRMATION
# and an operator's MATCHED_MANUAL replacing MISSING_CONFIRMATION or AMOUNT_MISMATCH (a
# mark-received or a force-match), each at most once because the state then is one that
# nothing replaces (ledger_rows.REPLACES).
_UPSERT_PAYMENTS = """
INSERT INTO payments (payment_id, merchant_id, channel, amount_minor, currency, state, late,
                      result_id, created_at, decided_at, order_id, case_id, operator, approver)
SELECT payment_id, merchant_id, channel, amount_minor, currency, state, late,
       result_id, created_at, decided_at, order_id, case_id, operator, approver
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
       order_id = COALESCE(EXCLUDED.order_id, payments.order_id),
       case_id = EXCLUDED.case_id,
       operator = EXCLUDED.operator,
       approver = EXCLUDED.approver,
       updated_at = now()
 WHERE (payments.state = 'MISSING_CONFIRMATION' AND EXCLUDED.state IN ('MATCHED',
                                                                        'MATCHED_MANUAL'))
    OR (payments.state = 'AMOUNT_MISMATCH' AND EXCLUDED.state = 'MATCHED_MANUAL')
RETURNING payment_id, state
"""

# The same rule for refunds: a late MATCHED replaces MISSING_CONFIRMATION once.
_UPSERT_REFUNDS = """
INSERT INTO refunds (payment_id, refund_id, merchant_id, channel, order_id, amount_minor,
                     currency, state, late, result_id, fee_returned_minor, net_minor,
                     requested_at, decided_at)
SELECT payment_id, refund_id, merchant_id, channel, order_id, amount_minor, currency, state,
       late, result_id, fee_returned_minor, net_minor, requested_at, decided_at
  FROM stage_refunds
ON CONFLICT (payment_id, refund_id) DO UPDATE
   SET state = EXCLUDED.state,
       late = EXCLUDED.late,
       result_id = EXCLUDED.result_id,
       decided_at = EXCLUDED.decided_at,
       fee_returned_minor = EXCLUDED.fee_returned_minor,
       net_minor = EXCLUDED.net_minor,
       merchant_id = COALESCE(EXCLUDED.merchant_id, refunds.merchant_id),
       channel = COALESCE(EXCLUDED.channel, refunds.channel),
       order_id = COALESCE(EXCLUDED.order_id, refunds.order_id),
       amount_minor = COALESCE(EXCLUDED.amount_minor, refunds.amount_minor),
       currency = COALESCE(EXCLUDED.currency, refunds.currency),
       updated_at = now()
 WHERE refunds.state = 'MISSING_CONFIRMATION' AND EXCLUDED.state = 'MATCHED'
RETURNING payment_id, refund_id, state
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

_INSERT_REFUND_EXCEPTIONS = """
INSERT INTO refund_exceptions (result_id, payment_id, refund_id, merchant_id, channel, outcome,
    amount_minor, currency, confirmed_amount_minor, confirmed_currency, confirmation_id,
    channel_refund_id, detail, decided_at)
SELECT result_id, payment_id, refund_id, merchant_id, channel, outcome, amount_minor,
       currency, confirmed_amount_minor, confirmed_currency, confirmation_id,
       channel_refund_id, detail, decided_at
  FROM stage_refund_exceptions
ON CONFLICT (result_id) DO NOTHING
"""

# States of a payment or refund whose terminal result posted its journal (result_id keeps it).
_MATCHED_ONCE = frozenset({MATCHED, MATCHED_MANUAL, ledger_reversals.REVERSED})

_T, _B, _BOOL, _TS = "text", "int8", "bool", "timestamptz"
_STAGES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("stage_payments", PaymentRow._fields,
     (_T, _T, _T, _B, _T, _T, _BOOL, _T, _TS, _TS, _T, _T, _T, _T)),
    ("stage_recon_exceptions", ExceptionRow._fields,
     (_T, _T, _T, _T, _T, _B, _T, _B, _T, _T, _T, _T, _TS)),
    ("stage_refunds", RefundRow._fields, REFUND_TYPES),
    ("stage_refund_exceptions", RefundExceptionRow._fields, REFUND_EXCEPTION_TYPES),
)


class LedgerWriter:
    """Writes a batch of ReconciliationResult (and RefundResult, DisputeResult, CaseEvent)
    records in one transaction.

    `refund_topic`, `dispute_topic`, `case_topic`: the refunds.results, disputes.results and
    cases.events topics this sink also consumes; their records are decoded as RefundResult,
    DisputeResult and CaseEvent (more_topics) and written as refunds, disputes (with their
    journals) and exception cases.
    """

    name = "ledger"
    stage = "ledger-sink"
    record_name = "ReconciliationResult"

    def __init__(self, fees: FeeSchedule = DEFAULT_FEES, refund_topic: str | None = None,
                 dispute_topic: str | None = None, case_topic: str | None = None) -> None:
        # settings.sink.fees (SETTLE_FEES) in the sink process; the built-in schedule otherwise.
        self.fees = fees
        self.refund_topic = refund_topic
        self.dispute_topic = dispute_topic
        self.case_topic = case_topic
        # Topics beyond the sink's main one, with the contract record each carries.
        more = {refund_topic: "RefundResult", dispute_topic: "DisputeResult",
                case_topic: "CaseEvent"}
        self.more_topics: Mapping[str, str] = MappingProxyType(
            {topic: record for topic, record in more.items() if topic})

    def prepare(self, conn: psycopg.Connection) -> None:
        require_tables(conn, (*TABLES, "sink_offsets"))
        conn.execute(_STAGING_DDL)

    def build(self, records: Sequence[SourceRecord]) -> LedgerRows:
        """The rows of decoded records (pure: the consumer may call it ahead, in a thread)."""
        def on(topic: str | None) -> set[int]:
            return {i for i, r in enumerate(records) if topic and r.topic == topic}

        return build_ledger_rows([r.record or {} for r in records], self.fees,
                                 on(self.refund_topic), on(self.dispute_topic),
                                 on(self.case_topic))

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
            if rows.payments:
                changed = cur.execute(_UPSERT_PAYMENTS).fetchall()
                result.add_rows("payments", len(changed))
                matched_now = {pid for pid, state in changed if state in POSTING_STATES}
                result.dead.extend(self._conflicts(cur, records, rows, matched_now))
                if matched_now:
                    self._post(cur, rows, matched_now, result)
                    # End-to-end latency is the pipeline's: an operator's match is not.
                    result.posted = [(p.channel or "unknown", p.created_at)
                                     for p in rows.payments
                                     if p.payment_id in matched_now and p.state == MATCHED
                                     and p.created_at is not None]
            if rows.exceptions:
                cur.execute(_INSERT_EXCEPTIONS)
                result.add_rows("reconciliation_exceptions", cur.rowcount)
            if rows.refunds:
                self._write_refunds(cur, records, rows, result)
            if rows.refund_exceptions:
                cur.execute(_INSERT_REFUND_EXCEPTIONS)
                result.add_rows("refund_exceptions", cur.rowcount)
            if rows.reversals:
                # After the batch's own MATCHED payments and refunds: a reversal in the same
                # batch as its original sees the original's journal.
                ledger_reversals.write_reversals(cur, records, rows, result)
            ledger_disputes.write_rejections(cur, rows.dispute_rejections, result)
            ledger_disputes.write_disputes(cur, records, rows.disputes, result)
            ledger_disputes.write_cases(cur, rows.case_events, result)
        return result

    @staticmethod
    def _post(cur: psycopg.Cursor, rows: LedgerRows, matched_now: set[str],
              result: WriteResult) -> None:
        """COPY the journals of payments that became MATCHED (or MATCHED_MANUAL) in this
        transaction, and their entries.

        Only this writer posts PAYMENT journals, and in the same transaction as the payment's
        move to MATCHED or MATCHED_MANUAL, which is final. So a payment the upsert has just
        moved there has no journal yet, and its rows go straight into the ledger tables: a
        replayed result finds its payment settled already and posts nothing. Should a journal
        exist all the same, the unique keys refuse the COPY, and the batch is written again
        record by record (the consumer's isolation), dead-lettering that record: never a
        second posting.
        """
        journals = [j for j in rows.journals if j.payment_id in matched_now]
        entries = [e for e in rows.entries if e.payment_id in matched_now]
        copy_rows(cur, "ledger_journals", JournalRow._fields, JOURNAL_TYPES, journals)
        copy_rows(cur, "ledger_entries", EntryRow._fields, ENTRY_TYPES, entries)
        debits = sum(1 for e in entries if e.side == DEBIT)
        result.add_rows("ledger_journals", len(journals))
        result.add_rows("ledger_entries", len(entries))
        result.add_postings(debits, len(entries) - debits)

    @classmethod
    def _write_refunds(cls, cur: psycopg.Cursor, records: Sequence[SourceRecord],
                       rows: LedgerRows, result: WriteResult) -> None:
        """Upsert the refunds' terminal states and post the REFUND journal of each refund
        that became MATCHED now (ON CONFLICT (kind, source_id): never twice)."""
        changed = cur.execute(_UPSERT_REFUNDS).fetchall()
        result.add_rows("refunds", len(changed))
        matched_now = {(pid, rid) for pid, rid, state in changed if state == MATCHED}
        result.dead.extend(cls._refund_conflicts(cur, records, rows, matched_now))
        if not matched_now:
            return
        sources = {f"{pid}/{rid}" for pid, rid in matched_now}
        journals = [j for j in rows.refund_journals if j.source_id in sources]
        ids = {j.journal_id for j in journals}
        entries = [e for e in rows.refund_entries if e.journal_id in ids]
        posted, debits, credits = journal_staging.post_journals(cur, journals, entries)
        result.add_rows("ledger_journals", posted)
        result.add_rows("ledger_entries", debits + credits)
        result.add_postings(debits, credits)

    @staticmethod
    def _stage(cur: psycopg.Cursor, rows: LedgerRows) -> None:
        batches: tuple[Sequence[Sequence[object]], ...] = (
            rows.payments, rows.exceptions, rows.refunds, rows.refund_exceptions)
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
        """MATCHED and MATCHED_MANUAL results whose payment already holds another verdict:
        dead letters.

        A replayed result finds its own result_id stored and is no conflict.
        """
        wanted = {p.payment_id: (p.state, p.result_id) for p in rows.payments
                  if p.state in POSTING_STATES}
        pending = [pid for pid in wanted if pid not in matched_now]
        if not pending:
            return []
        dead: list[DeadRecord] = []
        stored = cur.execute(
            "SELECT payment_id, state, result_id FROM payments WHERE payment_id = ANY(%s)",
            (pending,),
        ).fetchall()
        for payment_id, state, result_id in stored:
            outcome, wanted_id = wanted[payment_id]
            # A replay: matched by this result, or reversed since (result_id stays).
            if state in _MATCHED_ONCE and result_id == wanted_id:
                continue
            message = (
                f"{outcome} result {wanted_id} for payment {payment_id}, which is "
                f"already {state} by {result_id}: not posted"
            )
            source = records[rows.matched_index[payment_id]]
            dead.append(DeadRecord(source, TerminalStateConflict.__name__, message))
        return dead

    @staticmethod
    def _refund_conflicts(
        cur: psycopg.Cursor,
        records: Sequence[SourceRecord],
        rows: LedgerRows,
        matched_now: set[tuple[str, str]],
    ) -> list[DeadRecord]:
        """MATCHED refund results whose refund already holds another verdict: dead letters."""
        wanted = {(r.payment_id, r.refund_id): r.result_id for r in rows.refunds
                  if r.state == MATCHED}
        pending = [key for key in wanted if key not in matched_now]
        if not pending:
            return []
        stored = cur.execute(
            "SELECT payment_id, refund_id, state, result_id FROM refunds"
            " WHERE (payment_id, refund_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([p for p, _ in pending], [r for _, r in pending]),
        ).fetchall()
        dead: list[DeadRecord] = []
        for payment_id, refund_id, state, result_id in stored:
            key = (payment_id, refund_id)
            if state in _MATCHED_ONCE and result_id == wanted[key]:
                continue
            message = (f"MATCHED result {wanted[key]} for refund {payment_id}/{refund_id}, "
                       f"which is already {state} by {result_id}: not posted")
            source = records[rows.refund_matched_index[key]]
            dead.append(DeadRecord(source, TerminalStateConflict.__name__, message))
        return dead
