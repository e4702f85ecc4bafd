"""The ledger sink's writes of dispute results and case events, in the batch's transaction.

Disputes: the stored rows of the batch's disputes are read (locked), each result is applied in
batch order (sinks.dispute_rows.step), and what changed is written: new rows inserted, changed
rows updated where they still hold the result they were read with, and the journals of the
results applied posted. A dispute row and its journals move together, so a replay finds the
row moved and posts nothing; a journal posted without its row makes the insert fail, and the
consumer's isolation dead-letters that record alone: never a second posting.

Cases: every event is appended to case_events (ON CONFLICT DO NOTHING), then the
exception_cases rows follow the events the same way (sinks.case_rows.apply_event).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import psycopg

from settlement.ledger import DEBIT
from sinks.base import DeadRecord, SourceRecord, WriteResult
from sinks.case_rows import CASE_TYPES, EVENT_TYPES, CaseEventRow, CaseNews, CaseRow, apply_event
from sinks.dispute_rows import (
    APPLY,
    CONFLICT,
    DISPUTE_TYPES,
    REJECTION_TYPES,
    DisputeNews,
    DisputeRow,
    RejectionRow,
    step,
)
from sinks.errors import ConcurrentWriteConflict, DisputeStateConflict
from sinks.ledger_rows import ENTRY_TYPES, JOURNAL_TYPES, EntryRow, JournalRow, journal_rows
from sinks.pg import copy_rows

TABLES: Final = ("disputes", "dispute_rejections", "exception_cases", "case_events")

STAGING_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS stage_dispute_rejections (
    result_id text, payment_id text, dispute_id text, merchant_id text, channel text,
    channel_dispute_id text, stage text, status text, amount_minor bigint, currency text,
    funds_withdrawn boolean, fee_minor bigint, reasons text, reason_code text, detail text,
    occurred_at timestamptz, decided_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_disputes (
    payment_id text, dispute_id text, merchant_id text, order_id text, channel text,
    channel_dispute_id text, stage text, status text, state text, amount_minor bigint,
    currency text, funds_withdrawn boolean, fee_minor bigint, reason_code text,
    respond_by timestamptz, opened_at timestamptz, closed_at timestamptz,
    opened_result_id text, closed_result_id text, last_result_id text,
    decided_at timestamptz, read_result_id text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_case_events (
    event_id text, case_id text, payment_id text, kind text, status text, resolution text,
    action_id text, operator text, approver text, remark text, reason text,
    amount_minor bigint, currency text, evidence text, occurred_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_cases (
    case_id text, payment_id text, merchant_id text, channel text, subject text,
    subject_id text, outcome text, opened_by text, amount_minor bigint, currency text,
    status text, resolution text, operator text, approver text, remark text,
    opened_at timestamptz, resolved_at timestamptz, last_event_id text, last_event_kind text,
    last_event_at timestamptz, read_event_id text
) ON COMMIT DELETE ROWS;
"""

CLEAR_STAGING: Final = ("DELETE FROM stage_dispute_rejections; DELETE FROM stage_disputes; "
                        "DELETE FROM stage_case_events; DELETE FROM stage_cases")

_DISPUTE_COLUMNS: Final = ", ".join(DisputeRow._fields)
_CASE_COLUMNS: Final = ", ".join(CaseRow._fields)

_INSERT_REJECTIONS: Final = """
INSERT INTO dispute_rejections (result_id, payment_id, dispute_id, merchant_id, channel,
    channel_dispute_id, stage, status, amount_minor, currency, funds_withdrawn, fee_minor,
    reasons, reason_code, detail, occurred_at, decided_at)
SELECT result_id, payment_id, dispute_id, merchant_id, channel, channel_dispute_id, stage,
       status, amount_minor, currency, funds_withdrawn, fee_minor, reasons::jsonb,
       reason_code, detail, occurred_at, decided_at
  FROM stage_dispute_rejections
ON CONFLICT (result_id) DO NOTHING
"""

# Only a row that still holds the result it was read with: anything else is a concurrent
# writer's change, and the batch is retried to see it.
_UPDATE_DISPUTES: Final = """
UPDATE disputes d
   SET stage = s.stage, status = s.status, state = s.state, fee_minor = s.fee_minor,
       reason_code = s.reason_code, respond_by = s.respond_by, closed_at = s.closed_at,
       closed_result_id = s.closed_result_id, last_result_id = s.last_result_id,
       decided_at = s.decided_at, updated_at = now()
  FROM stage_disputes s
 WHERE d.payment_id = s.payment_id AND d.dispute_id = s.dispute_id
   AND d.last_result_id = s.read_result_id
"""

_INSERT_EVENTS: Final = """
INSERT INTO case_events (event_id, case_id, payment_id, kind, status, resolution, action_id,
    operator, approver, remark, reason, amount_minor, currency, evidence, occurred_at)
SELECT event_id, case_id, payment_id, kind, status, resolution, action_id, operator,
       approver, remark, reason, amount_minor, currency, evidence::jsonb, occurred_at
  FROM stage_case_events
ON CONFLICT (event_id) DO NOTHING
"""

_UPDATE_CASES: Final = """
UPDATE exception_cases c
   SET merchant_id = s.merchant_id, channel = s.channel, amount_minor = s.amount_minor,
       currency = s.currency, status = s.status, resolution = s.resolution,
       operator = s.operator, approver = s.approver, remark = s.remark,
       opened_at = s.opened_at, resolved_at = s.resolved_at, last_event_id = s.last_event_id,
       last_event_kind = s.last_event_kind, last_event_at = s.last_event_at,
       updated_at = now()
  FROM stage_cases s
 WHERE c.case_id = s.case_id AND c.last_event_id = s.read_event_id
"""


def write_rejections(cur: psycopg.Cursor, rows: Sequence[RejectionRow],
                     result: WriteResult) -> None:
    if rows:
        copy_rows(cur, "stage_dispute_rejections", RejectionRow._fields, REJECTION_TYPES, rows)
        cur.execute(_INSERT_REJECTIONS)
        result.add_rows("dispute_rejections", cur.rowcount)


def write_disputes(cur: psycopg.Cursor, records: Sequence[SourceRecord],
                   news: Sequence[tuple[int, DisputeNews]], result: WriteResult) -> None:
    """Apply the batch's dispute results (batch index, news) to the stored disputes."""
    if not news:
        return
    read = _stored_disputes(cur, {n.row.key for _, n in news})
    current: dict[tuple[str, str], DisputeRow | None] = dict(read)
    journals: list[JournalRow] = []
    entries: list[EntryRow] = []
    for index, item in news:
        key = item.row.key
        outcome = step(current.get(key), item)
        if outcome.verdict == APPLY:
            current[key] = outcome.row
            if outcome.journal is not None:
                row, posted = journal_rows(outcome.journal)
                journals.append(row)
                entries.extend(posted)
        elif outcome.verdict == CONFLICT:
            result.dead.append(DeadRecord(records[index], DisputeStateConflict.__name__,
                                          outcome.message))
        else:
            result.duplicates += 1
    inserts = [row for key, row in current.items() if row is not None and key not in read]
    updates = [(row, read[key]) for key, row in current.items()
               if key in read and row is not None and row != read[key]]
    if inserts:
        # A row inserted meanwhile by another writer makes this fail: the record is then
        # written alone and finds the row (the consumer's isolation).
        copy_rows(cur, "disputes", DisputeRow._fields, DISPUTE_TYPES, inserts)
    if updates:
        copy_rows(cur, "stage_disputes", (*DisputeRow._fields, "read_result_id"),
                  (*DISPUTE_TYPES, "text"),
                  [(*row, before.last_result_id) for row, before in updates])
        cur.execute(_UPDATE_DISPUTES)
        if cur.rowcount != len(updates):
            raise ConcurrentWriteConflict(
                f"{len(updates) - cur.rowcount} disputes changed since they were read")
    result.add_rows("disputes", len(inserts) + len(updates))
    _post(cur, journals, entries, result)


def _stored_disputes(cur: psycopg.Cursor, keys: set[tuple[str, str]]
                     ) -> dict[tuple[str, str], DisputeRow]:
    pids, dids = [k[0] for k in keys], [k[1] for k in keys]
    found = cur.execute(
        f"SELECT {_DISPUTE_COLUMNS} FROM disputes"
        " WHERE (payment_id, dispute_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " FOR UPDATE", (pids, dids)).fetchall()
    rows = (DisputeRow(*r) for r in found)
    return {row.key: row._replace(currency=row.currency.strip()) for row in rows}


def _post(cur: psycopg.Cursor, journals: list[JournalRow], entries: list[EntryRow],
          result: WriteResult) -> None:
    """COPY the journals of the results applied now, straight into the ledger: their rows
    have just moved, so none is posted yet (see the module doc)."""
    if not journals:
        return
    copy_rows(cur, "ledger_journals", JournalRow._fields, JOURNAL_TYPES, journals)
    copy_rows(cur, "ledger_entries", EntryRow._fields, ENTRY_TYPES, entries)
    debits = sum(1 for e in entries if e.side == DEBIT)
    result.add_rows("ledger_journals", len(journals))
    result.add_rows("ledger_entries", len(entries))
    result.add_postings(debits, len(entries) - debits)


def write_cases(cur: psycopg.Cursor, news: Sequence[CaseNews], result: WriteResult) -> None:
    """Append the batch's case events to the history and move their cases' rows."""
    if not news:
        return
    copy_rows(cur, "stage_case_events", CaseEventRow._fields, EVENT_TYPES,
              [n.event for n in news])
    cur.execute(_INSERT_EVENTS)
    result.add_rows("case_events", cur.rowcount)
    read = _stored_cases(cur, {n.event.case_id for n in news})
    current: dict[str, CaseRow | None] = dict(read)
    for item in news:
        moved = apply_event(current.get(item.event.case_id), item)
        if moved is not None:
            current[item.event.case_id] = moved
    inserts = [row for cid, row in current.items() if row is not None and cid not in read]
    updates = [(row, read[cid]) for cid, row in current.items()
               if cid in read and row is not None and row != read[cid]]
    if inserts:
        copy_rows(cur, "exception_cases", CaseRow._fields, CASE_TYPES, inserts)
    if updates:
        copy_rows(cur, "stage_cases", (*CaseRow._fields, "read_event_id"), (*CASE_TYPES, "text"),
                  [(*row, before.last_event_id) for row, before in updates])
        cur.execute(_UPDATE_CASES)
        if cur.rowcount != len(updates):
            raise ConcurrentWriteConflict(
                f"{len(updates) - cur.rowcount} exception cases changed since they were read")
    result.add_rows("exception_cases", len(inserts) + len(updates))


def _stored_cases(cur: psycopg.Cursor, case_ids: set[str]) -> dict[str, CaseRow]:
    found = cur.execute(f"SELECT {_CASE_COLUMNS} FROM exception_cases"
                        " WHERE case_id = ANY(%s) FOR UPDATE", (list(case_ids),)).fetchall()
    return {row.case_id: row for row in (CaseRow(*r) for r in found)}
