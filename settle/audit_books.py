"""`settle audit books`: the ledger's invariants, checked from PostgreSQL and the topics.

Ledger v2: journals by (kind, source id): PAYMENT (a captured payment, MATCHED or settled by
an operator's case as MATCHED_MANUAL), REFUND (a succeeded refund), PAYOUT (a closed batch's
payout, payable -> payout_due), PAYMENT_REVERSAL and REFUND_REVERSAL (the channel took a
payment or a refund back: the exact mirror of its PAYMENT or REFUND journal; the payment or
refund is then REVERSED), DISPUTE_OPEN, DISPUTE_WON and DISPUTE_LOST (a dispute's hold, its
release, its loss with the fee). The SQL of the checks `settle monitor` shares is in
settle.books_sql.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infra.config import Settings
from infra.kafka import make_consumer
from settle import books_sql as q
from settle.audit_ingest import read_topic


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class BooksAudit:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _rows(conn: psycopg.Connection, sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def _violations(conn: psycopg.Connection, query: str,
                params: dict[str, Any] | None = None) -> tuple[int, list[tuple[Any, ...]]]:
    """How many rows break a books_sql invariant, and the first few of them."""
    count = conn.execute(q.count_of(query), params).fetchone()
    sample = conn.execute(q.sample_of(query), params).fetchall()
    return int(count[0]) if count else 0, sample


def _add_violations(audit: BooksAudit, name: str, found: tuple[int, list[tuple[Any, ...]]],
                    fine: str) -> None:
    n, sample = found
    audit.add(name, n == 0,
              f"{n:,} off: " + "; ".join(f"{what}: {detail}" for what, detail, *_ in sample)
              if n else fine)


def check_database(conn: psycopg.Connection, audit: BooksAudit) -> None:
    """Every invariant PostgreSQL alone can answer."""
    _check_journals(conn, audit)
    _check_payments_and_refunds(conn, audit)
    _check_batches(conn, audit)
    _check_balances(conn, audit)
    # A database before migration 0006 has no disputes or cases to check.
    if _rows(conn, "SELECT to_regclass('disputes') IS NOT NULL")[0][0]:
        _check_disputes(conn, audit)
        _check_cases(conn, audit)


def _check_journals(conn: psycopg.Connection, audit: BooksAudit) -> None:
    per_currency = _rows(conn, """
        SELECT currency,
               SUM(amount_minor) FILTER (WHERE side = 'DEBIT'),
               SUM(amount_minor) FILTER (WHERE side = 'CREDIT')
          FROM ledger_entries GROUP BY currency ORDER BY currency""")
    bad = [f"{c}: {d} != {k}" for c, d, k in per_currency if (d or 0) != (k or 0)]
    audit.add("Σdebits = Σcredits per currency", not bad,
              "; ".join(bad) or f"{len(per_currency)} currencies balanced")
    audit.figures["ledger_by_currency"] = [(c, int(d or 0), int(k or 0))
                                           for c, d, k in per_currency]

    unbalanced = _rows(conn, """
        SELECT journal_id FROM ledger_entries GROUP BY journal_id
        HAVING SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0
        LIMIT 5""")
    kinds = dict(_rows(conn, "SELECT kind, COUNT(*) FROM ledger_journals GROUP BY kind"))
    audit.figures["journals_by_kind"] = {k: int(n) for k, n in kinds.items()}
    audit.add("Σdebits = Σcredits per journal", not unbalanced,
              f"unbalanced: {[r[0] for r in unbalanced]}" if unbalanced
              else f"{sum(kinds.values()):,} journals balanced")

    twice = _rows(conn, """
        SELECT kind || ' ' || source_id FROM ledger_journals
         GROUP BY kind, source_id HAVING COUNT(*) > 1 LIMIT 5""")
    empty = _rows(conn, """
        SELECT COUNT(*) FROM ledger_journals j
         WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.journal_id = j.journal_id)
    """)[0][0]
    audit.add("one journal per (kind, source id), none empty", not twice and empty == 0,
              f"posted twice: {[r[0] for r in twice]}, {empty} without entries"
              if twice or empty else
              ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items())) or "no journals")


# Kinds whose journals settle as batch items (a lost dispute's only when it has a fee).
ITEM_KINDS = q.SETTLED_KINDS


def _check_payments_and_refunds(conn: psycopg.Connection, audit: BooksAudit) -> None:
    matched_without_journal = _rows(conn, f"""
        SELECT COUNT(*) FROM payments p
         WHERE p.state IN {q.POSTED_PAYMENT_STATES}
           AND NOT EXISTS (SELECT 1 FROM ledger_journals j
                            WHERE j.kind = 'PAYMENT' AND j.source_id = p.payment_id)
    """)[0][0]
    journal_not_matched = _rows(conn, f"""
        SELECT COUNT(*) FROM ledger_journals j
          LEFT JOIN payments p ON p.payment_id = j.source_id
         WHERE j.kind = 'PAYMENT' AND p.state NOT IN {q.POSTED_PAYMENT_STATES}
            OR j.kind = 'PAYMENT' AND p.state IS NULL""")[0][0]
    audit.add("a PAYMENT journal for every MATCHED (or MATCHED_MANUAL) payment and only for "
              "them",
              matched_without_journal == 0 and journal_not_matched == 0,
              f"{matched_without_journal} MATCHED without journal, "
              f"{journal_not_matched} journals for non-MATCHED payments")
    states = dict(_rows(conn, "SELECT state, COUNT(*) FROM payments GROUP BY state"))
    audit.figures["payments_by_state"] = {k: int(v) for k, v in states.items()}

    refund_without_journal = _rows(conn, """
        SELECT COUNT(*) FROM refunds r
         WHERE r.state IN ('MATCHED', 'REVERSED')
           AND NOT EXISTS (SELECT 1 FROM ledger_journals j
                            WHERE j.kind = 'REFUND'
                              AND j.source_id = r.payment_id || '/' || r.refund_id
                              AND j.gross_minor = r.amount_minor
                              AND j.fee_minor = r.fee_returned_minor)""")[0][0]
    journal_not_refunded = _rows(conn, """
        SELECT COUNT(*) FROM ledger_journals j
          LEFT JOIN refunds r ON j.source_id = r.payment_id || '/' || r.refund_id
         WHERE j.kind = 'REFUND' AND r.state IS NULL
            OR j.kind = 'REFUND' AND r.state NOT IN ('MATCHED', 'REVERSED')""")[0][0]
    audit.add("a REFUND journal (same R and f) for every succeeded refund and only for them",
              refund_without_journal == 0 and journal_not_refunded == 0,
              f"{refund_without_journal} MATCHED refunds without journal, "
              f"{journal_not_refunded} journals for refunds not MATCHED")
    refund_states = dict(_rows(conn, "SELECT state, COUNT(*) FROM refunds GROUP BY state"))
    audit.figures["refunds_by_state"] = {k: int(v) for k, v in refund_states.items()}

    _check_reversals(conn, audit)

    # Net refunds: a reversed refund gives its amount back (its REFUND_REVERSAL journal).
    over = _rows(conn, """
        SELECT r.payment_id,
               SUM(CASE WHEN r.kind = 'REFUND' THEN r.gross_minor ELSE -r.gross_minor END),
               SUM(CASE WHEN r.kind = 'REFUND' THEN r.fee_minor ELSE -r.fee_minor END),
               MIN(p.gross_minor), MIN(p.fee_minor)
          FROM ledger_journals r
          LEFT JOIN ledger_journals p ON p.kind = 'PAYMENT' AND p.source_id = r.payment_id
         WHERE r.kind IN ('REFUND', 'REFUND_REVERSAL')
         GROUP BY r.payment_id
        HAVING MIN(p.gross_minor) IS NULL
            OR SUM(CASE WHEN r.kind = 'REFUND' THEN r.gross_minor ELSE -r.gross_minor END)
               > MIN(p.gross_minor)
            OR SUM(CASE WHEN r.kind = 'REFUND' THEN r.fee_minor ELSE -r.fee_minor END)
               > MIN(p.fee_minor)
         ORDER BY 1 LIMIT 5""")
    refunded = _rows(conn, "SELECT COUNT(DISTINCT payment_id) FROM ledger_journals"
                           " WHERE kind = 'REFUND'")[0][0]
    audit.add("per payment Σ succeeded refunds - Σ refund reversals ≤ captured "
              "(and Σ fee returned ≤ fee)", not over,
              "; ".join(f"{pid}: refunded {r} (fee {f}) of {g} (fee {pf})"
                        for pid, r, f, g, pf in over)
              or f"{refunded:,} refunded payments within their capture")


def _check_reversals(conn: psycopg.Connection, audit: BooksAudit) -> None:
    # A reversal journal for every REVERSED payment (refund) and only for them.
    payments_off = _rows(conn, """
        SELECT (SELECT COUNT(*) FROM payments p
                 WHERE p.state = 'REVERSED'
                   AND NOT EXISTS (SELECT 1 FROM ledger_journals j
                                    WHERE j.kind = 'PAYMENT_REVERSAL'
                                      AND j.source_id = p.payment_id))
             + (SELECT COUNT(*) FROM ledger_journals j
                  LEFT JOIN payments p ON p.payment_id = j.source_id
                 WHERE j.kind = 'PAYMENT_REVERSAL' AND p.state IS DISTINCT FROM 'REVERSED')
    """)[0][0]
    refunds_off = _rows(conn, """
        SELECT (SELECT COUNT(*) FROM refunds r
                 WHERE r.state = 'REVERSED'
                   AND NOT EXISTS (SELECT 1 FROM ledger_journals j
                                    WHERE j.kind = 'REFUND_REVERSAL'
                                      AND j.source_id = r.payment_id || '/' || r.refund_id))
             + (SELECT COUNT(*) FROM ledger_journals j
                  LEFT JOIN refunds r ON j.source_id = r.payment_id || '/' || r.refund_id
                 WHERE j.kind = 'REFUND_REVERSAL' AND r.state IS DISTINCT FROM 'REVERSED')
    """)[0][0]
    audit.add("a reversal journal for every REVERSED payment and refund and only for them",
              payments_off == 0 and refunds_off == 0,
              f"{payments_off} payments, {refunds_off} refunds disagree")

    # Exact mirror: same currency and amounts as the original, and the original's entries
    # with every side swapped (no entry missing or extra on either side).
    not_mirrored = _rows(conn, f"""
        SELECT r.kind || ' ' || r.source_id FROM ledger_journals r
          LEFT JOIN ledger_journals o
                 ON o.source_id = r.source_id
                AND o.kind = CASE r.kind WHEN 'PAYMENT_REVERSAL' THEN 'PAYMENT'
                                         ELSE 'REFUND' END
         WHERE r.kind IN ('PAYMENT_REVERSAL', 'REFUND_REVERSAL')
           AND (o.journal_id IS NULL
                OR (o.currency, o.gross_minor, o.fee_minor, o.net_minor)
                   IS DISTINCT FROM (r.currency, r.gross_minor, r.fee_minor, r.net_minor)
                OR EXISTS ({_UNMIRRORED_LEGS}))
         ORDER BY 1 LIMIT 5""")
    reversals = _rows(conn, "SELECT COUNT(*) FROM ledger_journals"
                            " WHERE kind IN ('PAYMENT_REVERSAL', 'REFUND_REVERSAL')")[0][0]
    audit.add("every reversal journal mirrors its PAYMENT or REFUND journal exactly",
              not not_mirrored,
              f"not mirrored: {[r[0] for r in not_mirrored]}" if not_mirrored
              else f"{reversals:,} reversal journals mirror their originals")

    # A reversed payment keeps no succeeded refund: every REFUND journal of it is reversed.
    refunded_reversed = _rows(conn, """
        SELECT j.source_id FROM ledger_journals j
         WHERE j.kind = 'PAYMENT_REVERSAL'
           AND EXISTS (SELECT 1 FROM ledger_journals f
                        WHERE f.kind = 'REFUND' AND f.payment_id = j.source_id
                          AND NOT EXISTS (SELECT 1 FROM ledger_journals b
                                           WHERE b.kind = 'REFUND_REVERSAL'
                                             AND b.source_id = f.source_id))
         ORDER BY 1 LIMIT 5""")
    audit.add("a reversed payment has no succeeded refund left", not refunded_reversed,
              f"reversed with refunds: {[r[0] for r in refunded_reversed]}"
              if refunded_reversed else "no reversed payment keeps a refund")


# Legs of the reversal r and its original o that are not each other's swapped copy.
_UNMIRRORED_LEGS = """
    SELECT 1 FROM (SELECT account, side, amount_minor FROM ledger_entries
                    WHERE journal_id = r.journal_id) re
      FULL JOIN (SELECT account, CASE side WHEN 'DEBIT' THEN 'CREDIT' ELSE 'DEBIT' END AS side,
                        amount_minor FROM ledger_entries WHERE journal_id = o.journal_id) oe
             USING (account, side, amount_minor)
     WHERE re.account IS NULL OR oe.account IS NULL"""


def unbatched_matched(conn: psycopg.Connection) -> int:
    """Posted payments, refunds, reversals and dispute events not in a batch yet: a cheap
    drain check before the audit."""
    return sum(_unbatched(conn).values())


def _unbatched(conn: psycopg.Connection) -> dict[str, int]:
    """Per kind, the journals of ITEM_KINDS that no batch item settles yet."""
    rows = conn.execute(f"SELECT kind, COUNT(*) FROM ({q.UNBATCHED_JOURNALS}) t GROUP BY 1",
                        {"horizon": 0}).fetchall()
    counts: dict[str, int] = {kind: int(n) for kind, n in rows}
    return {kind: int(counts.get(kind, 0)) for kind in ITEM_KINDS}


def _check_batches(conn: psycopg.Connection, audit: BooksAudit) -> None:
    gross_mismatch = _rows(conn, f"""
        SELECT COUNT(*) FROM ledger_journals j
         WHERE j.gross_minor <> j.net_minor + j.fee_minor
            OR NOT ({q.GROSS_IS_DEBITS})""")[0][0]
    batch_mismatch = _rows(conn, """
        SELECT COUNT(*) FROM settlement_batches b
          LEFT JOIN (SELECT batch_id, COUNT(*) FILTER (WHERE kind = 'PAYMENT') AS payments,
                            COUNT(*) FILTER (WHERE kind = 'REFUND') AS refunds,
                            COUNT(*) FILTER (WHERE kind <> 'PAYMENT') AS not_payments,
                            SUM(gross_minor) AS g, SUM(fee_minor) AS f, SUM(net_minor) AS net
                       FROM settlement_batch_items GROUP BY batch_id) i
            ON i.batch_id = b.batch_id
         WHERE b.gross_minor <> b.net_minor + b.fee_minor
            OR (b.payout_minor IS NULL AND i.not_payments > 0)
            OR (b.payment_count, b.refund_count, b.gross_minor, b.fee_minor, b.net_minor)
               IS DISTINCT FROM (i.payments::int, i.refunds::int, i.g, i.f, i.net)""")[0][0]
    audit.add("Σ gross = Σ net + Σ fee (journals and batches, counts by kind)",
              gross_mismatch == 0 and batch_mismatch == 0,
              f"{gross_mismatch} journals, {batch_mismatch} batches disagree")

    # An item settles exactly one posted journal (the kind its own maps to), of a posted
    # payment of its batch's merchant and currency, for the journal's amounts as its kind
    # signs them; the (kind, item_id) key keeps any journal in one batch.
    item_mismatch, sample = _violations(conn, q.ITEMS_MATCH_JOURNALS)
    unbatched = _unbatched(conn)
    audit.figures["unbatched"] = unbatched
    audit.add("every PAYMENT journal in one batch item; items = their journals",
              item_mismatch == 0 and unbatched["PAYMENT"] == 0,
              f"{unbatched['PAYMENT']} MATCHED payments not in a batch, {item_mismatch} batch "
              "items without their journal or with other amounts (a journal can't be in two: "
              "primary key)" + "".join(f"; {what}: {detail}" for what, detail in sample))
    audit.add("every REFUND journal in exactly one batch item",
              unbatched["REFUND"] == 0,
              f"{unbatched['REFUND']} succeeded refunds not in a batch yet")
    audit.add("every PAYMENT_REVERSAL and REFUND_REVERSAL journal in exactly one batch item",
              unbatched["PAYMENT_REVERSAL"] == 0 and unbatched["REFUND_REVERSAL"] == 0,
              f"{unbatched['PAYMENT_REVERSAL']} payment reversals and "
              f"{unbatched['REFUND_REVERSAL']} refund reversals not in a batch yet")
    audit.add("every DISPUTE_OPEN, DISPUTE_WON and DISPUTE_LOST (with a fee) journal in "
              "exactly one batch item",
              not (unbatched["DISPUTE_OPEN"] or unbatched["DISPUTE_WON"]
                   or unbatched["DISPUTE_LOST"]),
              f"{unbatched['DISPUTE_OPEN']} holds, {unbatched['DISPUTE_WON']} releases, "
              f"{unbatched['DISPUTE_LOST']} fees not in a batch yet")


_PAYOUT_DUE = """
WITH ledger AS (
    SELECT substr(account, 12) AS merchant_id, currency,
           SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS bal
      FROM ledger_entries WHERE left(account, 11) = 'payout_due:'
     GROUP BY 1, 2),
paid AS (
    SELECT merchant_id, currency, SUM(payout_minor) AS payout
      FROM settlement_batches WHERE payout_minor IS NOT NULL GROUP BY 1, 2)
SELECT COALESCE(l.merchant_id, p.merchant_id), COALESCE(l.currency, p.currency),
       COALESCE(l.bal, 0), COALESCE(p.payout, 0)
  FROM ledger l FULL JOIN paid p USING (merchant_id, currency)
 ORDER BY 1, 2
"""


def _check_balances(conn: psycopg.Connection, audit: BooksAudit) -> None:
    # The payable:<m> credit balance explained by the batches (books_sql.PAYABLE_TERMS):
    # the last carried balance + pre-payout batches + the journals no item settles yet
    # (payments, refunds, reversals, dispute holds, releases and fees).
    payable = conn.execute(q.PAYABLE_TERMS + " ORDER BY 1, 2").fetchall()
    off = [f"{m}/{c}: payable {bal} vs batches {legacy} + carried {carried} + open {open_}"
           + (f" - unposted {unposted}" if unposted else "")
           for m, c, bal, legacy, carried, open_, unposted in payable
           if bal != legacy + carried + open_ - unposted]
    audit.add("payable = carried balance + open items (+ pre-payout batches), per merchant",
              not off, "; ".join(off[:5]) or f"{len(payable)} merchant/currency pairs agree")
    audit.figures["payable"] = [(m, c, int(bal), int(legacy + carried + open_ - unposted))
                                for m, c, bal, legacy, carried, open_, unposted in payable]
    due = conn.execute(_PAYOUT_DUE).fetchall()
    off = [f"{m}/{c}: payout_due {bal} vs payouts {paid}" for m, c, bal, paid in due
           if bal != paid]
    audit.add("Σ batch payouts = payout_due balance (per merchant, currency)", not off,
              "; ".join(off[:5]) or f"{len(due)} merchant/currency pairs agree")
    audit.figures["batches_per_merchant"] = _rows(conn, """
        SELECT merchant_id, currency, COUNT(*), SUM(payment_count), SUM(refund_count),
               SUM(gross_minor), SUM(fee_minor), SUM(net_minor),
               COALESCE(SUM(payout_minor), 0),
               (ARRAY_AGG(carried_out_minor ORDER BY window_start DESC))[1]
          FROM settlement_batches GROUP BY 1, 2 ORDER BY 1, 2""")


def _check_disputes(conn: psycopg.Connection, audit: BooksAudit) -> None:
    _add_violations(audit, "dispute_hold:<m> = Σ OPEN disputes = Σ opened - won - lost "
                    "journals, per merchant", _violations(conn, q.DISPUTE_HOLDS),
                    "every merchant's holds agree")
    _add_violations(audit, "dispute_receivable:<ch> = Σ withdrawn amounts of OPEN disputes",
                    _violations(conn, q.DISPUTE_RECEIVABLES), "every channel's receivable agrees")
    _add_violations(audit, "every dispute event posted once, as its state says (OPEN: opened; "
                    "WON: opened and won, or neither; LOST: opened and lost)",
                    _violations(conn, q.DISPUTE_POSTINGS), "every dispute posted once")
    _add_violations(audit, "nothing disputed paid out while open (no release or fee batched "
                    "before its hold)", _violations(conn, q.DISPUTES_HELD_FIRST),
                    "every release and fee batched with or after its hold")
    states = dict(_rows(conn, "SELECT state, COUNT(*) FROM disputes GROUP BY state"))
    audit.figures["disputes_by_state"] = {k: int(v) for k, v in states.items()}
    audit.figures["held_by_currency"] = {c: int(v) for c, v in _rows(conn, """
        SELECT currency, SUM(amount_minor) FROM disputes WHERE state = 'OPEN'
         GROUP BY 1 ORDER BY 1""")}


def _check_cases(conn: psycopg.Connection, audit: BooksAudit) -> None:
    _add_violations(audit, "a MATCHED_MANUAL payment: one PAYMENT journal at its settled "
                    "amount, its case resolved FORCE_MATCH or MARK_RECEIVED",
                    _violations(conn, q.MANUAL_MATCHES, {"horizon": 0}),
                    "every manual match posted and resolved")
    _add_violations(audit, "every RESOLVED case has exactly one RESOLVED event",
                    _violations(conn, q.CASES_RESOLVED_ONCE), "every case resolved once")
    statuses = dict(_rows(conn, "SELECT status, COUNT(*) FROM exception_cases GROUP BY 1"))
    audit.figures["cases_by_status"] = {k: int(v) for k, v in statuses.items()}


def check_topics(settings: Settings, conn: psycopg.Connection, audit: BooksAudit,
                 results_topic: str, batches_topic: str, decoder: Any,
                 routed_topics: tuple[str, ...] = ()) -> None:
    """Invariants that join the topics with the tables."""
    consumer = make_consumer(settings.kafka, group_id=f"settle-audit-{uuid.uuid4()}")
    try:
        terminal: dict[str, list[str]] = defaultdict(list)
        seen_results: set[str] = set()
        for rec in read_topic(consumer, results_topic):
            r = decoder.decode(rec.value)
            if r["result_id"] in seen_results:
                continue  # an at-least-once replay of the same decision
            seen_results.add(r["result_id"])
            if r["terminal"]:
                terminal[r["payment_id"]].append(r["outcome"])
        routed_ids = {rec.key for t in routed_topics for rec in read_topic(consumer, t)
                      if rec.key is not None}
        batch_ids: Counter[str] = Counter()
        batch_items: Counter[tuple[str, str]] = Counter()
        for rec in read_topic(consumer, batches_topic):
            b = decoder.decode(rec.value)
            batch_ids[b["batch_id"]] += 1
            if batch_ids[b["batch_id"]] == 1:
                for item in b["items"]:
                    # Items written before kinds and ids read as the payment's.
                    key = (item.get("kind") or "PAYMENT",
                           item.get("item_id") or item["payment_id"])
                    batch_items[key] += 1
    finally:
        consumer.close()

    def legal(outcomes: list[str]) -> bool:
        # One terminal decision, except MISSING_CONFIRMATION later turned MATCHED (late), and
        # an exception an operator's case settled (MATCHED_MANUAL).
        return len(outcomes) == 1 or outcomes in LATER_TERMINAL

    illegal = [pid for pid, outs in terminal.items() if not legal(outs)]
    db_states = dict(_rows(conn, "SELECT payment_id, state FROM payments"))
    missing_rows = [pid for pid in terminal if pid not in db_states]
    # A MATCHED (MATCHED_MANUAL) payment the channel reversed later is REVERSED in PostgreSQL.
    wrong_state = [pid for pid, outs in terminal.items()
                   if pid in db_states and db_states[pid] != outs[-1]
                   and not (db_states[pid] == "REVERSED"
                            and outs[-1] in ("MATCHED", "MATCHED_MANUAL"))]
    audit.add("one terminal state per payment (topic ↔ payments table)",
              not illegal and not missing_rows and not wrong_state,
              f"{len(terminal):,} payments; {len(illegal)} with several decisions, "
              f"{len(missing_rows)} missing in PostgreSQL, {len(wrong_state)} with another state")
    undecided = [k for k in routed_ids if k.decode("utf-8", "replace") not in terminal]
    audit.add("every routed payment reached a terminal state", not undecided,
              f"{len(routed_ids):,} routed, {len(undecided)} without a terminal result")
    twice = [key for key, n in batch_items.items() if n > 1]
    db_batches = _rows(conn, "SELECT COUNT(*) FROM settlement_batches")[0][0]
    audit.add("no payment or refund in two published batches; topic ↔ table",
              not twice and db_batches == len(batch_ids),
              f"{len(batch_ids):,} batches on the topic, {db_batches:,} in PostgreSQL, "
              f"{len(twice)} items in two batches")


# Terminal decision sequences of one payment besides a single one.
LATER_TERMINAL: list[list[str]] = [
    ["MISSING_CONFIRMATION", "MATCHED"],
    ["MISSING_CONFIRMATION", "MATCHED_MANUAL"],
    ["AMOUNT_MISMATCH", "MATCHED_MANUAL"],
]


def audit_books(settings: Settings, conn: psycopg.Connection, decoder: Any,
                results_topic: str = "reconciliation.results",
                batches_topic: str = "settlements.batches",
                routed_topics: tuple[str, ...] = ()) -> BooksAudit:
    audit = BooksAudit()
    check_database(conn, audit)
    check_topics(settings, conn, audit, results_topic, batches_topic, decoder, routed_topics)
    return audit
