"""`settle audit books`: the ledger's invariants, checked from PostgreSQL and the topics."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infra.config import Settings
from infra.kafka import make_consumer
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


def check_database(conn: psycopg.Connection, audit: BooksAudit) -> None:
    """Every invariant PostgreSQL alone can answer."""
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
    journals = _rows(conn, "SELECT COUNT(*) FROM ledger_journals")[0][0]
    audit.add("Σdebits = Σcredits per journal", not unbalanced,
              f"unbalanced: {[r[0] for r in unbalanced]}" if unbalanced
              else f"{journals:,} journals balanced")

    gross_mismatch = _rows(conn, """
        SELECT COUNT(*) FROM ledger_journals j
         WHERE j.gross_minor <> j.net_minor + j.fee_minor
            OR j.gross_minor <> COALESCE((SELECT SUM(amount_minor) FROM ledger_entries e
                                           WHERE e.journal_id = j.journal_id
                                             AND e.side = 'DEBIT'), 0)""")[0][0]
    batch_mismatch = _rows(conn, """
        SELECT COUNT(*) FROM settlement_batches b
          LEFT JOIN (SELECT batch_id, COUNT(*) AS n, SUM(gross_minor) AS g,
                            SUM(fee_minor) AS f, SUM(net_minor) AS net
                       FROM settlement_batch_items GROUP BY batch_id) i
            ON i.batch_id = b.batch_id
         WHERE b.gross_minor <> b.net_minor + b.fee_minor
            OR (b.payment_count, b.gross_minor, b.fee_minor, b.net_minor)
               IS DISTINCT FROM (i.n::int, i.g, i.f, i.net)""")[0][0]
    audit.add("Σ gross = Σ net + Σ fee (journals and batches)",
              gross_mismatch == 0 and batch_mismatch == 0,
              f"{gross_mismatch} journals, {batch_mismatch} batches disagree")

    matched_without_journal = _rows(conn, """
        SELECT COUNT(*) FROM payments p
         WHERE p.state = 'MATCHED'
           AND NOT EXISTS (SELECT 1 FROM ledger_journals j WHERE j.payment_id = p.payment_id)
    """)[0][0]
    journal_not_matched = _rows(conn, """
        SELECT COUNT(*) FROM ledger_journals j
          LEFT JOIN payments p ON p.payment_id = j.payment_id
         WHERE p.state IS DISTINCT FROM 'MATCHED'""")[0][0]
    audit.add("a journal for every MATCHED payment and only for them",
              matched_without_journal == 0 and journal_not_matched == 0,
              f"{matched_without_journal} MATCHED without journal, "
              f"{journal_not_matched} journals for non-MATCHED payments")

    states = dict(_rows(conn, "SELECT state, COUNT(*) FROM payments GROUP BY state"))
    audit.figures["payments_by_state"] = {k: int(v) for k, v in states.items()}

    unbatched = _rows(conn, """
        SELECT COUNT(*) FROM payments p
         WHERE p.state = 'MATCHED'
           AND NOT EXISTS (SELECT 1 FROM settlement_batch_items i
                            WHERE i.payment_id = p.payment_id)""")[0][0]
    batched_not_matched = _rows(conn, """
        SELECT COUNT(*) FROM settlement_batch_items i
          LEFT JOIN payments p ON p.payment_id = i.payment_id
         WHERE p.state IS DISTINCT FROM 'MATCHED'""")[0][0]
    audit.add("every MATCHED payment in exactly one batch",
              unbatched == 0 and batched_not_matched == 0,
              f"{unbatched} MATCHED not in a batch, {batched_not_matched} batch items "
              "not MATCHED (a payment can't be in two: primary key)")

    payable = _rows(conn, """
        WITH ledger AS (
            SELECT substr(account, 9) AS merchant_id, currency,
                   SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS bal
              FROM ledger_entries WHERE account LIKE 'payable:%'
             GROUP BY 1, 2),
        batches AS (
            SELECT merchant_id, currency, SUM(net_minor) AS net
              FROM settlement_batches GROUP BY 1, 2)
        SELECT COALESCE(l.merchant_id, b.merchant_id), COALESCE(l.currency, b.currency),
               COALESCE(l.bal, 0), COALESCE(b.net, 0)
          FROM ledger l FULL JOIN batches b
            ON l.merchant_id = b.merchant_id AND l.currency = b.currency
         ORDER BY 1, 2""")
    off = [f"{m}/{c}: ledger {bal} vs batches {net}" for m, c, bal, net in payable if bal != net]
    audit.add("Σ batch net = merchant payable balance (per merchant, currency)", not off,
              "; ".join(off[:5]) or f"{len(payable)} merchant/currency pairs agree")
    audit.figures["payable"] = [(m, c, int(bal), int(net)) for m, c, bal, net in payable]
    audit.figures["batches_per_merchant"] = _rows(conn, """
        SELECT merchant_id, currency, COUNT(*), SUM(payment_count), SUM(gross_minor),
               SUM(fee_minor), SUM(net_minor)
          FROM settlement_batches GROUP BY 1, 2 ORDER BY 1, 2""")


def unbatched_matched(conn: psycopg.Connection) -> int:
    """MATCHED payments not in a batch yet: a cheap drain check before the full audit."""
    return int(_rows(conn, """
        SELECT COUNT(*) FROM payments p
         WHERE p.state = 'MATCHED'
           AND NOT EXISTS (SELECT 1 FROM settlement_batch_items i
                            WHERE i.payment_id = p.payment_id)""")[0][0])


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
        batch_payments: Counter[str] = Counter()
        for rec in read_topic(consumer, batches_topic):
            b = decoder.decode(rec.value)
            batch_ids[b["batch_id"]] += 1
            if batch_ids[b["batch_id"]] == 1:
                for item in b["items"]:
                    batch_payments[item["payment_id"]] += 1
    finally:
        consumer.close()

    def legal(outcomes: list[str]) -> bool:
        # One terminal decision, except MISSING_CONFIRMATION later turned MATCHED (late).
        return len(outcomes) == 1 or outcomes == ["MISSING_CONFIRMATION", "MATCHED"]

    illegal = [pid for pid, outs in terminal.items() if not legal(outs)]
    db_states = dict(_rows(conn, "SELECT payment_id, state FROM payments"))
    missing_rows = [pid for pid in terminal if pid not in db_states]
    wrong_state = [pid for pid, outs in terminal.items()
                   if pid in db_states and db_states[pid] != outs[-1]]
    audit.add("one terminal state per payment (topic ↔ payments table)",
              not illegal and not missing_rows and not wrong_state,
              f"{len(terminal):,} payments; {len(illegal)} with several decisions, "
              f"{len(missing_rows)} missing in PostgreSQL, {len(wrong_state)} with another state")
    undecided = [k for k in routed_ids if k.decode("utf-8", "replace") not in terminal]
    audit.add("every routed payment reached a terminal state", not undecided,
              f"{len(routed_ids):,} routed, {len(undecided)} without a terminal result")
    twice = [pid for pid, n in batch_payments.items() if n > 1]
    db_batches = _rows(conn, "SELECT COUNT(*) FROM settlement_batches")[0][0]
    audit.add("no payment in two published batches; topic ↔ table",
              not twice and db_batches == len(batch_ids),
              f"{len(batch_ids):,} batches on the topic, {db_batches:,} in PostgreSQL, "
              f"{len(twice)} payments in two batches")


def audit_books(settings: Settings, conn: psycopg.Connection, decoder: Any,
                results_topic: str = "reconciliation.results",
                batches_topic: str = "settlements.batches",
                routed_topics: tuple[str, ...] = ()) -> BooksAudit:
    audit = BooksAudit()
    check_database(conn, audit)
    check_topics(settings, conn, audit, results_topic, batches_topic, decoder, routed_topics)
    return audit
