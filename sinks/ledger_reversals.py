"""The ledger sink's reversals: each PAYMENT_REVERSED or REFUND_REVERSED result posts the exact
mirror of its original journal and marks its payment or refund REVERSED, once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import psycopg

from settlement.postings_v2 import REVERSED_KIND, mirror_mismatch
from settlement.reconciliation import MATCHED, MATCHED_MANUAL
from sinks import journal_staging
from sinks.base import DeadRecord, SourceRecord, WriteResult
from sinks.errors import ConcurrentWriteConflict, ReversalMismatch, ReversalStateConflict
from sinks.ledger_rows import POSTING_STATES, EntryRow, JournalRow, LedgerRows, journal_rows
from sinks.refund_rows import Reversal

REVERSED: Final = "REVERSED"  # payments.state and refunds.state of a reversed payment or refund
# The states a reversal may reverse: a payment or refund whose journal is posted.
_REVERSIBLE: Final = POSTING_STATES


def write_reversals(cur: psycopg.Cursor, records: Sequence[SourceRecord],
                     rows: LedgerRows, result: WriteResult) -> None:
    """Post each reversal's mirror journal and mark its payment or refund REVERSED, once.

    A reversal is posted only when its original journal is posted, its payment (refund) is
    MATCHED, and its journal mirrors the original exactly; a replay (its result id already
    marks the row REVERSED) posts nothing; anything else is dead-lettered, never posted.
    """
    keys = [(r.journal.kind, r.journal.source_id) for _, r in rows.reversals]
    originals = _originals(cur, keys)
    states = _reversal_states(cur, [r for _, r in rows.reversals])
    accepted: list[Reversal] = []
    for index, reversal in rows.reversals:
        posted = reversal.journal
        key = (reversal.payment_id, reversal.refund_id)
        what = (f"payment {reversal.payment_id}" if reversal.refund_id is None
                else f"refund {posted.source_id}")
        state, reversed_by = states.get(key, (None, None))
        if reversed_by == reversal.result_id:
            result.duplicates += 1  # a replay: posted and marked already
            continue
        original = originals.get((REVERSED_KIND[posted.kind], posted.source_id))
        if state not in _REVERSIBLE or original is None:
            error: type[Exception] = ReversalStateConflict
            message = (f"{posted.kind} result {reversal.result_id} for {what}, which is "
                       f"{state or 'unknown'}"
                       + (f" (reversed by {reversed_by})" if reversed_by else "")
                       + ("" if original else f", with no {REVERSED_KIND[posted.kind]} "
                          "journal posted") + ": not posted")
        else:
            head, legs = original
            problem = mirror_mismatch(
                head, legs,
                (posted.kind, posted.currency, posted.gross_minor, posted.fee_minor,
                 posted.net_minor),
                [(p.account, p.side, p.amount_minor) for p in posted.journal.postings])
            if problem is None:
                accepted.append(reversal)
                states[key] = (REVERSED, reversal.result_id)
                continue
            error = ReversalMismatch
            message = (f"{posted.kind} result {reversal.result_id} does not mirror the "
                       f"posted journal of {what}: {problem}; not posted")
        result.dead.append(DeadRecord(records[index], error.__name__, message))
    if not accepted:
        return
    journals: list[JournalRow] = []
    entries: list[EntryRow] = []
    for reversal in accepted:
        row, posted_entries = journal_rows(reversal.journal)
        journals.append(row)
        entries.extend(posted_entries)
    cur.execute(journal_staging.CLEAR_STAGING)
    posted_count, debits, credits = journal_staging.post_journals(cur, journals, entries)
    if posted_count != len(journals):  # the rows said not reversed yet: a concurrent writer
        raise ConcurrentWriteConflict(
            f"{len(journals) - posted_count} reversal journals were posted meanwhile")
    result.add_rows("ledger_journals", posted_count)
    result.add_rows("ledger_entries", debits + credits)
    result.add_postings(debits, credits)
    for table, refund in (("payments", False), ("refunds", True)):
        marked = [r for r in accepted if (r.refund_id is not None) == refund]
        if marked:
            changed = _mark_reversed(cur, table, marked)
            if changed != len(marked):
                raise ConcurrentWriteConflict(
                    f"{len(marked) - changed} {table} changed state meanwhile")
            result.add_rows(table, changed)


def _originals(cur: psycopg.Cursor, keys: Sequence[tuple[str, str]]
               ) -> dict[tuple[str, str], tuple[tuple[str, str, int, int, int],
                                                list[tuple[str, str, int]]]]:
    """The posted journals the reversals (kind, source_id) mirror: (kind, source_id) ->
    ((kind, currency, gross, fee, net), legs)."""
    kinds = [REVERSED_KIND[kind] for kind, _ in keys]
    sources = [source for _, source in keys]
    rows = cur.execute(
        "SELECT j.kind, j.source_id, j.currency::text, j.gross_minor, j.fee_minor, j.net_minor,"
        "       e.account, e.side, e.amount_minor"
        "  FROM ledger_journals j JOIN ledger_entries e USING (journal_id)"
        " WHERE (j.kind, j.source_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        (kinds, sources),
    ).fetchall()
    out: dict[tuple[str, str], tuple[tuple[str, str, int, int, int],
                                     list[tuple[str, str, int]]]] = {}
    for kind, source, currency, gross, fee, net, account, side, amount in rows:
        held = out.setdefault((kind, source), ((kind, currency, gross, fee, net), []))
        held[1].append((account, side, amount))
    return out


def _reversal_states(cur: psycopg.Cursor, reversals: Sequence[Reversal]
                     ) -> dict[tuple[str, str | None], tuple[str, str | None]]:
    """(payment_id, refund_id or None) -> (state, reversal_result_id) of the rows reversed."""
    pids = [r.payment_id for r in reversals if r.refund_id is None]
    refunds = [(r.payment_id, r.refund_id) for r in reversals if r.refund_id is not None]
    out: dict[tuple[str, str | None], tuple[str, str | None]] = {}
    if pids:
        for pid, state, by in cur.execute(
                "SELECT payment_id, state, reversal_result_id FROM payments"
                " WHERE payment_id = ANY(%s)", (pids,)).fetchall():
            out[(pid, None)] = (state, by)
    if refunds:
        for pid, rid, state, by in cur.execute(
                "SELECT payment_id, refund_id, state, reversal_result_id FROM refunds"
                " WHERE (payment_id, refund_id) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([p for p, _ in refunds], [r for _, r in refunds])).fetchall():
            out[(pid, rid)] = (state, by)
    return out


def _mark_reversed(cur: psycopg.Cursor, table: str, reversals: Sequence[Reversal]) -> int:
    """Move MATCHED (or MATCHED_MANUAL) rows to REVERSED with the reversal's result id and
    time; rows changed."""
    where = ("t.payment_id = r.payment_id" if table == "payments"
             else "t.payment_id = r.payment_id AND t.refund_id = r.refund_id")
    cur.execute(
        f"UPDATE {table} t SET state = '{REVERSED}', reversal_result_id = r.result_id,"
        "       reversed_at = r.decided_at, updated_at = now()"
        "  FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[])"
        "       AS r (payment_id, refund_id, result_id, decided_at)"
        f" WHERE {where} AND t.state IN ('{MATCHED}', '{MATCHED_MANUAL}')",
        ([r.payment_id for r in reversals], [r.refund_id or "" for r in reversals],
         [r.result_id for r in reversals], [r.decided_at for r in reversals]),
    )
    return cur.rowcount
