"""The books' invariants as SQL, shared by `settle audit books` (which names what breaks them)
and `settle monitor` (which counts it), so both prove the same thing.

Each invariant is one query returning a row per violation, its first column naming the
offender (a merchant/currency pair, an item, a journal, a dispute, a case) and the second
saying how it is off. `count_of` wraps one for the monitor's gauges, `sample_of` for the
audit's lines. A query with `%(horizon)s` tolerates what may still be on its way for that many
seconds (the audit passes 0: after a drain, nothing may be).

Journals and the batch items that settle them (kind, item_id = the journal's source id):

    PAYMENT -> PAYMENT (+g, +f, +n)          REFUND -> REFUND (-g, -f, -n)
    PAYMENT_REVERSAL -> PAYMENT_REVERSAL (-g, -f, -n)
    REFUND_REVERSAL -> REFUND_REVERSAL (+g, +f, +n)
    DISPUTE_OPEN -> DISPUTE_HOLD (-D, 0, -D)   DISPUTE_WON -> DISPUTE_RELEASE (+D, 0, +D)
    DISPUTE_LOST -> DISPUTE_FEE (-X, 0, -X), only when X > 0

A dispute journal stores net = D (the disputed amount), fee = X (the dispute fee, LOST only)
and gross = D + X, the debits on the merchant's accounts (payable and dispute_hold); the
channel pair of a withdrawn dispute (dispute_receivable, clearing) adds debits beyond it. In
every case the item's net is what the journal moved on payable:<m>, signed as a credit.
"""

from __future__ import annotations

from typing import Final

# Payment states that posted a PAYMENT journal (REVERSED: posted, then mirrored).
POSTED_PAYMENT_STATES: Final = "('MATCHED', 'MATCHED_MANUAL', 'REVERSED')"
DISPUTE_KINDS: Final = "('DISPUTE_OPEN', 'DISPUTE_WON', 'DISPUTE_LOST')"

# Journal kind -> the kind of the batch item that settles it.
ITEM_KIND_OF: Final = {
    "PAYMENT": "PAYMENT", "REFUND": "REFUND", "PAYMENT_REVERSAL": "PAYMENT_REVERSAL",
    "REFUND_REVERSAL": "REFUND_REVERSAL", "DISPUTE_OPEN": "DISPUTE_HOLD",
    "DISPUTE_WON": "DISPUTE_RELEASE", "DISPUTE_LOST": "DISPUTE_FEE",
}
SETTLED_KINDS: Final = tuple(ITEM_KIND_OF)  # journal kinds batch items settle
_KINDS_SQL: Final = "(" + ", ".join(f"'{k}'" for k in SETTLED_KINDS) + ")"


def _case(column: str, mapping: dict[str, str]) -> str:
    whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in mapping.items() if k != v)
    return f"CASE {column} {whens} ELSE {column} END"


# The item kind of journal j, and the journal kind of item i.
ITEM_KIND_OF_J: Final = _case("j.kind", ITEM_KIND_OF)
JOURNAL_KIND_OF_I: Final = _case("i.kind", {v: k for k, v in ITEM_KIND_OF.items()})

# Journal j is one a batch item must settle (a lost dispute without fee moves no payable).
SETTLES_AS_ITEM: Final = (f"(j.kind IN {_KINDS_SQL}"
                          " AND NOT (j.kind = 'DISPUTE_LOST' AND j.fee_minor = 0))")
# ... and no batch item settles it yet.
UNBATCHED: Final = (f"NOT EXISTS (SELECT 1 FROM settlement_batch_items i"
                    f" WHERE i.kind = {ITEM_KIND_OF_J} AND i.item_id = j.source_id)")

# The (gross, fee, net) of the item that settles journal j.
_ITEM_AMOUNTS: Final = """(
    CASE WHEN j.kind IN ('PAYMENT', 'REFUND_REVERSAL') THEN j.gross_minor
         WHEN j.kind IN ('REFUND', 'PAYMENT_REVERSAL') THEN -j.gross_minor
         WHEN j.kind = 'DISPUTE_OPEN' THEN -j.net_minor
         WHEN j.kind = 'DISPUTE_WON' THEN j.net_minor
         WHEN j.kind = 'DISPUTE_LOST' THEN -j.fee_minor END,
    CASE WHEN j.kind IN ('PAYMENT', 'REFUND_REVERSAL') THEN j.fee_minor
         WHEN j.kind IN ('REFUND', 'PAYMENT_REVERSAL') THEN -j.fee_minor
         ELSE 0 END,
    CASE WHEN j.kind IN ('PAYMENT', 'REFUND_REVERSAL') THEN j.net_minor
         WHEN j.kind IN ('REFUND', 'PAYMENT_REVERSAL') THEN -j.net_minor
         WHEN j.kind = 'DISPUTE_OPEN' THEN -j.net_minor
         WHEN j.kind = 'DISPUTE_WON' THEN j.net_minor
         WHEN j.kind = 'DISPUTE_LOST' THEN -j.fee_minor END)"""

# A journal's gross is its debits; a dispute journal's, its debits on the merchant's accounts.
GROSS_IS_DEBITS: Final = f"""
    j.gross_minor = COALESCE((
        SELECT SUM(e.amount_minor) FROM ledger_entries e
         WHERE e.journal_id = j.journal_id AND e.side = 'DEBIT'
           AND (j.kind NOT IN {DISPUTE_KINDS} OR left(e.account, 8) = 'payable:'
                OR left(e.account, 13) = 'dispute_hold:')), 0)"""


def count_of(query: str) -> str:
    """The monitor's form: how many violations."""
    return f"SELECT COUNT(*) FROM ({query}) v"


def sample_of(query: str, limit: int = 5) -> str:
    """The audit's form: the first few violations, ordered."""
    return f"SELECT * FROM ({query}) v ORDER BY 1 LIMIT {int(limit)}"


# -- items, batches and payable ---------------------------------------------------------------

# Each batch item settles the posted journal of its kind and id, of a payment posted (MATCHED,
# MATCHED_MANUAL or since REVERSED) for the batch's merchant, in the batch's currency, for
# the journal's amounts as the item kind signs them: so Σ batch net = the batched part of
# payable. A lost dispute without fee has no item (its journal moves no payable).
ITEMS_MATCH_JOURNALS: Final = f"""
    SELECT i.kind || ' ' || i.item_id AS item,
           CASE WHEN j.journal_id IS NULL THEN 'no ' || {JOURNAL_KIND_OF_I} || ' journal'
                WHEN p.state IS NULL OR p.state NOT IN {POSTED_PAYMENT_STATES}
                     THEN 'payment ' || COALESCE(p.state, 'unknown')
                WHEN p.merchant_id IS DISTINCT FROM b.merchant_id
                     OR j.currency IS DISTINCT FROM b.currency
                     THEN 'in batch ' || b.batch_id || ' of another merchant or currency'
                ELSE 'item (' || i.gross_minor || ', ' || i.fee_minor || ', ' || i.net_minor
                     || ') for journal ' || j.journal_id END AS detail
      FROM settlement_batch_items i
      JOIN settlement_batches b ON b.batch_id = i.batch_id
      LEFT JOIN payments p ON p.payment_id = i.payment_id
      LEFT JOIN ledger_journals j ON j.kind = {JOURNAL_KIND_OF_I} AND j.source_id = i.item_id
     WHERE j.journal_id IS NULL
        OR p.state IS NULL OR p.state NOT IN {POSTED_PAYMENT_STATES}
        OR p.merchant_id IS DISTINCT FROM b.merchant_id
        OR j.currency IS DISTINCT FROM b.currency
        OR (i.gross_minor, i.fee_minor, i.net_minor) IS DISTINCT FROM {_ITEM_AMOUNTS}
        OR (j.kind = 'DISPUTE_LOST' AND j.fee_minor = 0)"""

# Per merchant and currency, the terms of the payable invariant: the credit balance of
# payable:<m>, Σ net of batches written before payouts (payout_minor NULL: they posted no
# payout), carried_out of the last batch with a payout (<= 0), Σ payable movement of the
# posted journals no batch item settles yet, and Σ net of batch items whose journal is not
# posted yet (the settlement sink may write a batch before the ledger sink posts one of its
# items; ITEMS_MATCH_JOURNALS counts those items, payable must not count them twice).
PAYABLE_TERMS: Final = f"""
    WITH ledger AS (
        SELECT substr(account, 9) AS merchant_id, currency,
               SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS bal
          FROM ledger_entries WHERE left(account, 8) = 'payable:'
         GROUP BY 1, 2),
    open_items AS (
        SELECT substr(e.account, 9) AS merchant_id, e.currency,
               SUM(CASE WHEN e.side = 'CREDIT' THEN e.amount_minor
                        ELSE -e.amount_minor END) AS net
          FROM ledger_entries e JOIN ledger_journals j USING (journal_id)
         WHERE left(e.account, 8) = 'payable:' AND {SETTLES_AS_ITEM} AND {UNBATCHED}
         GROUP BY 1, 2),
    unposted AS (
        SELECT b.merchant_id, b.currency, SUM(i.net_minor) AS net
          FROM settlement_batch_items i JOIN settlement_batches b USING (batch_id)
         WHERE NOT EXISTS (SELECT 1 FROM ledger_journals j
                            WHERE j.kind = {JOURNAL_KIND_OF_I} AND j.source_id = i.item_id)
         GROUP BY 1, 2),
    legacy AS (
        SELECT merchant_id, currency, SUM(net_minor) AS net
          FROM settlement_batches WHERE payout_minor IS NULL GROUP BY 1, 2),
    last_carried AS (
        SELECT DISTINCT ON (merchant_id, currency) merchant_id, currency, carried_out_minor
          FROM settlement_batches WHERE payout_minor IS NOT NULL
         ORDER BY merchant_id, currency, window_start DESC),
    keys AS (
        SELECT merchant_id, currency FROM ledger
        UNION SELECT merchant_id, currency FROM legacy
        UNION SELECT merchant_id, currency FROM last_carried)
    SELECT k.merchant_id, k.currency, COALESCE(l.bal, 0) AS bal, COALESCE(g.net, 0) AS legacy,
           COALESCE(c.carried_out_minor, 0) AS carried, COALESCE(o.net, 0) AS open,
           COALESCE(u.net, 0) AS unposted
      FROM keys k
      LEFT JOIN ledger l USING (merchant_id, currency)
      LEFT JOIN open_items o USING (merchant_id, currency)
      LEFT JOIN unposted u USING (merchant_id, currency)
      LEFT JOIN legacy g USING (merchant_id, currency)
      LEFT JOIN last_carried c USING (merchant_id, currency)"""

PAYABLE_MISMATCHES: Final = f"""
    SELECT merchant_id || '/' || currency AS pair,
           'payable ' || bal || ' vs batches ' || legacy || ' + carried ' || carried
           || ' + open ' || open || ' - unposted ' || unposted AS detail
      FROM ({PAYABLE_TERMS}) t
     WHERE bal <> legacy + carried + open - unposted"""

# Posted journals a batch item must settle, posted longer ago than the horizon and still in
# no batch (by kind: the audit reports each; the monitor has one invariant per family).
UNBATCHED_JOURNALS: Final = f"""
    SELECT j.kind || ' ' || j.source_id AS journal, 'posted ' || j.posted_at AS detail,
           j.kind
      FROM ledger_journals j
     WHERE {SETTLES_AS_ITEM} AND {UNBATCHED}
       AND j.posted_at <= now() - make_interval(secs => %(horizon)s)"""


def unbatched_of(kinds: tuple[str, ...]) -> str:
    """UNBATCHED_JOURNALS of the given journal kinds only."""
    listed = ", ".join(f"'{k}'" for k in kinds)
    return f"{UNBATCHED_JOURNALS} AND j.kind IN ({listed})"


# -- disputes ---------------------------------------------------------------------------------

# Per merchant and currency: the credit balance of dispute_hold:<m> = Σ amount of the disputes
# OPEN in the disputes table = Σ D of the DISPUTE_OPEN journals - Σ D of the DISPUTE_WON and
# DISPUTE_LOST ones (the journals' stored net, against their own postings and the table).
DISPUTE_HOLDS: Final = f"""
    WITH ledger AS (
        SELECT substr(account, 14) AS merchant_id, currency,
               SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS bal
          FROM ledger_entries WHERE left(account, 13) = 'dispute_hold:'
         GROUP BY 1, 2),
    open_disputes AS (
        SELECT merchant_id, currency, SUM(amount_minor) AS held
          FROM disputes WHERE state = 'OPEN' GROUP BY 1, 2),
    journals AS (
        SELECT d.merchant_id, j.currency,
               SUM(CASE j.kind WHEN 'DISPUTE_OPEN' THEN j.net_minor
                               ELSE -j.net_minor END) AS held
          FROM ledger_journals j
          JOIN disputes d ON d.payment_id = j.payment_id
                         AND j.source_id = d.payment_id || '/' || d.dispute_id
         WHERE j.kind IN {DISPUTE_KINDS}
         GROUP BY 1, 2),
    keys AS (
        SELECT merchant_id, currency FROM ledger
        UNION SELECT merchant_id, currency FROM open_disputes
        UNION SELECT merchant_id, currency FROM journals)
    SELECT k.merchant_id || '/' || k.currency AS pair,
           'dispute_hold ' || COALESCE(l.bal, 0) || ', OPEN disputes '
           || COALESCE(o.held, 0) || ', journals ' || COALESCE(j.held, 0) AS detail
      FROM keys k
      LEFT JOIN ledger l USING (merchant_id, currency)
      LEFT JOIN open_disputes o USING (merchant_id, currency)
      LEFT JOIN journals j USING (merchant_id, currency)
     WHERE COALESCE(l.bal, 0) <> COALESCE(o.held, 0)
        OR COALESCE(l.bal, 0) <> COALESCE(j.held, 0)"""

# Per channel and currency: the debit balance of dispute_receivable:<ch> = Σ amount of the
# OPEN disputes whose funds the channel withdrew (it owes them back if the merchant wins; a
# lost one's receivable is settled by its DISPUTE_LOST journal).
DISPUTE_RECEIVABLES: Final = """
    WITH ledger AS (
        SELECT substr(account, 20) AS channel, currency,
               SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE -amount_minor END) AS bal
          FROM ledger_entries WHERE left(account, 19) = 'dispute_receivable:'
         GROUP BY 1, 2),
    withdrawn AS (
        SELECT lower(channel) AS channel, currency, SUM(amount_minor) AS owed
          FROM disputes WHERE state = 'OPEN' AND funds_withdrawn GROUP BY 1, 2)
    SELECT COALESCE(l.channel, w.channel) || '/' || COALESCE(l.currency, w.currency) AS pair,
           'dispute_receivable ' || COALESCE(l.bal, 0) || ', withdrawn OPEN disputes '
           || COALESCE(w.owed, 0) AS detail
      FROM ledger l FULL JOIN withdrawn w USING (channel, currency)
     WHERE COALESCE(l.bal, 0) <> COALESCE(w.owed, 0)"""

# Every dispute event posts exactly once, as its state says: an OPEN dispute has its
# DISPUTE_OPEN journal only; a WON one its opening and its DISPUTE_WON, or neither (first
# seen won: nothing was held); a LOST one its opening and its DISPUTE_LOST. Each journal is
# for its dispute's amount (net = D) and currency, and only a lost one has a fee. And every
# dispute journal has its disputes row.
DISPUTE_POSTINGS: Final = f"""
    SELECT 'dispute ' || d.payment_id || '/' || d.dispute_id AS dispute,
           d.state || ' with ' || c.opened || ' DISPUTE_OPEN, ' || c.won || ' DISPUTE_WON, '
           || c.lost || ' DISPUTE_LOST, ' || c.off || ' for another amount' AS detail
      FROM disputes d
      CROSS JOIN LATERAL (
          SELECT COUNT(*) FILTER (WHERE j.kind = 'DISPUTE_OPEN') AS opened,
                 COUNT(*) FILTER (WHERE j.kind = 'DISPUTE_WON') AS won,
                 COUNT(*) FILTER (WHERE j.kind = 'DISPUTE_LOST') AS lost,
                 COUNT(*) FILTER (WHERE j.net_minor <> d.amount_minor
                                     OR j.currency <> d.currency
                                     OR (j.kind <> 'DISPUTE_LOST' AND j.fee_minor <> 0)
                                     OR (j.kind = 'DISPUTE_LOST'
                                         AND j.fee_minor <> d.fee_minor)) AS off
            FROM ledger_journals j
           WHERE j.kind IN {DISPUTE_KINDS}
             AND j.source_id = d.payment_id || '/' || d.dispute_id) c
     WHERE c.off > 0 OR NOT CASE d.state
               WHEN 'OPEN' THEN (c.opened, c.won, c.lost) = (1, 0, 0)
               WHEN 'WON' THEN (c.opened, c.won, c.lost) IN ((1, 1, 0), (0, 0, 0))
               WHEN 'LOST' THEN (c.opened, c.won, c.lost) = (1, 0, 1)
               ELSE FALSE END
    UNION ALL
    SELECT 'journal ' || j.journal_id, 'no disputes row'
      FROM ledger_journals j
     WHERE j.kind IN {DISPUTE_KINDS}
       AND NOT EXISTS (SELECT 1 FROM disputes d
                        WHERE d.payment_id = j.payment_id
                          AND j.source_id = d.payment_id || '/' || d.dispute_id)"""

# Nothing disputed is paid out while open: a dispute's release or fee item is never in a batch
# before the batch holding its amount (a release batched alone would pay out money still held).
DISPUTES_HELD_FIRST: Final = """
    SELECT r.kind || ' ' || r.item_id AS item,
           CASE WHEN h.batch_id IS NULL THEN 'in ' || r.batch_id || ', its hold in no batch'
                ELSE 'in ' || r.batch_id || ', its hold in the later ' || h.batch_id
           END AS detail
      FROM settlement_batch_items r
      JOIN settlement_batches rb ON rb.batch_id = r.batch_id
      LEFT JOIN settlement_batch_items h ON h.kind = 'DISPUTE_HOLD' AND h.item_id = r.item_id
      LEFT JOIN settlement_batches hb ON hb.batch_id = h.batch_id
     WHERE r.kind IN ('DISPUTE_RELEASE', 'DISPUTE_FEE')
       AND (h.batch_id IS NULL OR hb.window_start > rb.window_start)"""

# -- manual matches and cases -----------------------------------------------------------------

# A MATCHED_MANUAL payment has its PAYMENT journal, in the payment's currency, and (once its
# case's events are in: they come on another topic, so past the horizon) its case RESOLVED
# FORCE_MATCH or MARK_RECEIVED, the journal's gross being the case's amount (what a money
# resolution settles: the confirmed amount of a force-match, the expected amount of a
# mark-received, which is the payment row's amount).
MANUAL_MATCHES: Final = """
    SELECT p.payment_id AS payment,
           CASE WHEN j.journal_id IS NULL THEN 'no PAYMENT journal'
                WHEN j.currency <> p.currency THEN 'journal in ' || j.currency
                WHEN c.case_id IS NULL THEN 'no case ' || p.case_id
                WHEN c.status <> 'RESOLVED' THEN 'case ' || c.case_id || ' ' || c.status
                WHEN c.resolution NOT IN ('FORCE_MATCH', 'MARK_RECEIVED')
                     THEN 'case ' || c.case_id || ' resolved ' || c.resolution
                ELSE 'journal gross ' || j.gross_minor || ', case ' || c.case_id || ' '
                     || c.resolution || ' of ' || COALESCE(c.amount_minor::text, '?')
                     || ', payment of ' || p.amount_minor END AS detail
      FROM payments p
      LEFT JOIN ledger_journals j ON j.kind = 'PAYMENT' AND j.source_id = p.payment_id
      LEFT JOIN exception_cases c ON c.case_id = p.case_id
     WHERE p.state = 'MATCHED_MANUAL'
       AND (j.journal_id IS NULL OR j.currency <> p.currency
            OR (c.status = 'RESOLVED'
                AND (c.resolution NOT IN ('FORCE_MATCH', 'MARK_RECEIVED')
                     OR j.gross_minor IS DISTINCT FROM c.amount_minor
                     OR (c.resolution = 'MARK_RECEIVED' AND j.gross_minor <> p.amount_minor)))
            OR ((c.case_id IS NULL OR c.status <> 'RESOLVED')
                AND p.decided_at <= now() - make_interval(secs => %(horizon)s)))"""

# A case is RESOLVED iff it has exactly one RESOLVED event, of the case's resolution; and
# every event but a refusal belongs to a case (the ledger sink writes a case and its events
# together; a REFUSED event is kept whatever case it names, e.g. CASE_UNKNOWN).
CASES_RESOLVED_ONCE: Final = """
    SELECT 'case ' || c.case_id AS case_,
           c.status || ' with ' || r.n || ' RESOLVED events'
           || CASE WHEN r.other > 0 THEN ', ' || r.other || ' of another resolution'
                   ELSE '' END AS detail
      FROM exception_cases c
      CROSS JOIN LATERAL (
          SELECT COUNT(*) AS n,
                 COUNT(*) FILTER (WHERE e.resolution IS DISTINCT FROM c.resolution) AS other
            FROM case_events e WHERE e.case_id = c.case_id AND e.kind = 'RESOLVED') r
     WHERE (c.status = 'RESOLVED') <> (r.n = 1) OR r.n > 1 OR r.other > 0
    UNION ALL
    SELECT 'event ' || e.event_id, 'of case ' || e.case_id || ', which has no row'
      FROM case_events e
     WHERE e.kind <> 'REFUSED'
       AND NOT EXISTS (SELECT 1 FROM exception_cases c WHERE c.case_id = e.case_id)"""
