"""Posting journals idempotently: staged rows moved with ON CONFLICT (kind, source_id)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from sinks.ledger_rows import ENTRY_TYPES, JOURNAL_TYPES, EntryRow, JournalRow
from sinks.pg import copy_rows

STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_journals (
    journal_id text, kind text, source_id text, payment_id text, currency text,
    gross_minor bigint, fee_minor bigint, net_minor bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_entries (
    journal_id text, payment_id text, account text, side text, amount_minor bigint,
    currency text
) ON COMMIT DELETE ROWS;
"""

CLEAR_STAGING = "DELETE FROM stage_journals; DELETE FROM stage_entries"

# A journal whose (kind, source_id) is already posted adds nothing, nor do its entries: a
# replayed event can never post twice. The deferred balance trigger checks the rest.
_POST = """
WITH journals AS (
    INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,
                                 gross_minor, fee_minor, net_minor)
    SELECT journal_id, kind, source_id, payment_id, currency, gross_minor, fee_minor,
           net_minor
      FROM stage_journals
    ON CONFLICT (kind, source_id) DO NOTHING
    RETURNING journal_id
), entries AS (
    INSERT INTO ledger_entries (journal_id, payment_id, account, side, amount_minor, currency)
    SELECT e.journal_id, e.payment_id, e.account, e.side, e.amount_minor, e.currency
      FROM stage_entries e JOIN journals USING (journal_id)
    RETURNING side
)
SELECT (SELECT count(*) FROM journals),
       (SELECT count(*) FROM entries WHERE side = 'DEBIT'),
       (SELECT count(*) FROM entries WHERE side = 'CREDIT')
"""


def post_journals(cur: psycopg.Cursor, journals: Sequence[JournalRow],
                  entries: Sequence[EntryRow]) -> tuple[int, int, int]:
    """Post journals not posted yet: (journals, debit entries, credit entries) written.

    Needs STAGING_DDL on the connection and the staging tables empty (the caller clears them).
    """
    if not journals:
        return 0, 0, 0
    copy_rows(cur, "stage_journals", JournalRow._fields, JOURNAL_TYPES, journals)
    copy_rows(cur, "stage_entries", EntryRow._fields, ENTRY_TYPES, entries)
    counts = cur.execute(_POST).fetchone()
    assert counts is not None  # an aggregate SELECT always returns one row
    posted, debits, credits = (int(n) for n in counts)
    return posted, debits, credits
