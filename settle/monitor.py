"""`settle monitor`: consumer lag from the broker's offsets and the books' health, as metrics.

The pipeline's own processes can only say what they did; what an SRE pages on is what they
have *not* done yet (lag) and whether the books still balance. One small process answers
both from the outside, so it works whichever worker is down:

- every ``interval`` it reads the end offset of each contract topic and the committed
  offsets of every consumer group whose id matches ``groups`` (faust workers commit after
  processing; the sinks commit to Kafka after their PostgreSQL transaction, for exactly
  this), and publishes ``settle_consumer_lag_records{group,topic,partition}`` and
  ``settle_topic_end_offset{topic,partition}``;
- every ``books_interval`` it runs the books' invariants in PostgreSQL and publishes
  ``settle_books_balanced{invariant}`` (1 holds, 0 broken) and the time of the last check;
- in the same check it counts the routed payments reconcile consumed that have had no
  terminal state in PostgreSQL for longer than their channel's SLA and a margin
  (``settle_routed_undecided_payments{channel}``, see ``settle.undecided``), and reads the
  open disputes, their deadlines and holds, and the open exception cases
  (``settle.books_gauges``).

The invariants here are the ones that hold at every instant (balanced journals, a journal
per MATCHED payment and per succeeded refund, batches = items = ledger, payable:<m> = the last
batch's carried balance + the open items, Σ payouts = payout_due:<m>, dispute holds and
receivables = the open disputes, each dispute event posted once, no release batched before its
hold, a case resolved by one event; the SQL shared with `settle audit books` is in
settle.books_sql), plus those with a
horizon: "a MATCHED payment (a succeeded refund) is in a batch within the window, its grace
and a slack" (one waiting for its window to close is not an error, one still unbatched long
after is) and "per payment Σ succeeded refunds <= captured" (a refund posted before its
payment's journal, from the other results topic, counts only past the horizon).

Metrics are served from a snapshot taken by the loop, so a scrape never waits on Kafka or
PostgreSQL, and series of groups or partitions that disappeared disappear with them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from infra.config import Settings
from settle import books_sql as q
from settle.books_gauges import CaseGauges, families, read_gauges
from settle.undecided import (
    Overdue,
    RoutedSource,
    RoutedTail,
    UndecidedTracker,
    decided_among,
)
from settlement.errors import SettleError

log = logging.getLogger(__name__)

CHECK_ERRORS = Counter(
    "settle_monitor_errors_total",
    "Monitor checks that failed to run (Kafka or PostgreSQL unreachable, a query error)",
    ["check"],
)
for _check in ("offsets", "books", "undecided"):
    CHECK_ERRORS.labels(_check)

# Invariants that hold at every instant (each query counts violations).
INSTANT_INVARIANTS: dict[str, str] = {
    # Σ debits = Σ credits in every journal, whatever its kind (the trigger enforces it; this
    # proves it).
    "journals_balanced": """
        SELECT COUNT(*) FROM (
            SELECT journal_id FROM ledger_entries GROUP BY journal_id
            HAVING SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0
        ) t""",
    # Σ debits = Σ credits per currency over the whole ledger.
    "currencies_balanced": """
        SELECT COUNT(*) FROM (
            SELECT currency FROM ledger_entries GROUP BY currency
            HAVING SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0
        ) t""",
    # gross = net + fee for every journal and every batch (signed sums in a batch).
    "amounts_consistent": """
        SELECT (SELECT COUNT(*) FROM ledger_journals WHERE gross_minor <> net_minor + fee_minor)
             + (SELECT COUNT(*) FROM settlement_batches
                 WHERE gross_minor <> net_minor + fee_minor)""",
    # a PAYMENT journal for every MATCHED or MATCHED_MANUAL (or since REVERSED) payment and
    # only for them; a REFUND journal for every MATCHED (succeeded, or since REVERSED) refund
    # and only for them; a PAYMENT_REVERSAL (REFUND_REVERSAL) journal for every REVERSED
    # payment (refund) and only for them. The ledger sink writes a row and its journal in one
    # transaction.
    "journal_iff_matched": f"""
        SELECT (SELECT COUNT(*) FROM payments p
                 WHERE p.state IN {q.POSTED_PAYMENT_STATES} AND NOT EXISTS (
                       SELECT 1 FROM ledger_journals j
                        WHERE j.kind = 'PAYMENT' AND j.source_id = p.payment_id))
             + (SELECT COUNT(*) FROM ledger_journals j
                  LEFT JOIN payments p ON p.payment_id = j.source_id
                 WHERE j.kind = 'PAYMENT'
                   AND (p.state IS NULL OR p.state NOT IN {q.POSTED_PAYMENT_STATES}))
             + (SELECT COUNT(*) FROM refunds r
                 WHERE r.state IN ('MATCHED', 'REVERSED') AND NOT EXISTS (
                       SELECT 1 FROM ledger_journals j
                        WHERE j.kind = 'REFUND'
                          AND j.source_id = r.payment_id || '/' || r.refund_id))
             + (SELECT COUNT(*) FROM ledger_journals j
                  LEFT JOIN refunds r ON r.payment_id = j.payment_id
                                     AND j.source_id = r.payment_id || '/' || r.refund_id
                 WHERE j.kind = 'REFUND'
                   AND (r.state IS NULL OR r.state NOT IN ('MATCHED', 'REVERSED')))
             + (SELECT COUNT(*) FROM payments p
                 WHERE p.state = 'REVERSED' AND NOT EXISTS (
                       SELECT 1 FROM ledger_journals j
                        WHERE j.kind = 'PAYMENT_REVERSAL' AND j.source_id = p.payment_id))
             + (SELECT COUNT(*) FROM ledger_journals j
                  LEFT JOIN payments p ON p.payment_id = j.source_id
                 WHERE j.kind = 'PAYMENT_REVERSAL' AND p.state IS DISTINCT FROM 'REVERSED')
             + (SELECT COUNT(*) FROM refunds r
                 WHERE r.state = 'REVERSED' AND NOT EXISTS (
                       SELECT 1 FROM ledger_journals j
                        WHERE j.kind = 'REFUND_REVERSAL'
                          AND j.source_id = r.payment_id || '/' || r.refund_id))
             + (SELECT COUNT(*) FROM ledger_journals j
                  LEFT JOIN refunds r ON r.payment_id = j.payment_id
                                     AND j.source_id = r.payment_id || '/' || r.refund_id
                 WHERE j.kind = 'REFUND_REVERSAL' AND r.state IS DISTINCT FROM 'REVERSED')""",
    # each PAYMENT_REVERSAL (REFUND_REVERSAL) journal is the exact mirror of the PAYMENT
    # (REFUND) journal of its source: same currency and amounts, the same legs with every
    # side swapped. Counts the reversal journals that are not.
    "reversals_mirror_originals": """
        SELECT COUNT(*) FROM ledger_journals r
          LEFT JOIN ledger_journals o
                 ON o.source_id = r.source_id
                AND o.kind = CASE r.kind WHEN 'PAYMENT_REVERSAL' THEN 'PAYMENT'
                                         ELSE 'REFUND' END
         WHERE r.kind IN ('PAYMENT_REVERSAL', 'REFUND_REVERSAL')
           AND (o.journal_id IS NULL
                OR (o.currency, o.gross_minor, o.fee_minor, o.net_minor)
                   IS DISTINCT FROM (r.currency, r.gross_minor, r.fee_minor, r.net_minor)
                OR EXISTS (
                    SELECT 1 FROM (SELECT account, side, amount_minor FROM ledger_entries
                                    WHERE journal_id = r.journal_id) re
                      FULL JOIN (SELECT account, CASE side WHEN 'DEBIT' THEN 'CREDIT'
                                                           ELSE 'DEBIT' END AS side,
                                        amount_minor FROM ledger_entries
                                  WHERE journal_id = o.journal_id) oe
                             USING (account, side, amount_minor)
                     WHERE re.account IS NULL OR oe.account IS NULL))""",
    # a reversed payment keeps no succeeded refund: each of its REFUND journals is reversed.
    "reversed_payments_unrefunded": """
        SELECT COUNT(*) FROM ledger_journals j
         WHERE j.kind = 'PAYMENT_REVERSAL'
           AND EXISTS (SELECT 1 FROM ledger_journals f
                        WHERE f.kind = 'REFUND' AND f.payment_id = j.source_id
                          AND NOT EXISTS (SELECT 1 FROM ledger_journals b
                                           WHERE b.kind = 'REFUND_REVERSAL'
                                             AND b.source_id = f.source_id))""",
    # a batch's totals are the sum of its items, its counts their number by kind.
    "batch_totals_match_items": """
        SELECT COUNT(*) FROM settlement_batches b
          LEFT JOIN (SELECT batch_id, COUNT(*) FILTER (WHERE kind = 'PAYMENT') AS payments,
                            COUNT(*) FILTER (WHERE kind = 'REFUND') AS refunds,
                            SUM(gross_minor) AS g, SUM(fee_minor) AS f, SUM(net_minor) AS net
                       FROM settlement_batch_items GROUP BY batch_id) i
            ON i.batch_id = b.batch_id
         WHERE (b.payment_count, b.refund_count, b.gross_minor, b.fee_minor, b.net_minor)
               IS DISTINCT FROM (i.payments::int, i.refunds::int, i.g, i.f, i.net)""",
    # each batch item settles the posted journal of its kind (DISPUTE_HOLD: DISPUTE_OPEN,
    # DISPUTE_RELEASE: DISPUTE_WON, DISPUTE_FEE: DISPUTE_LOST) and id, of a posted payment of
    # the batch's merchant, in the batch's currency, for the journal's amounts as the item's
    # kind signs them: so Σ batch net = the batched part of the merchant payable.
    "batches_match_ledger": q.count_of(q.ITEMS_MATCH_JOURNALS),
    # a succeeded refund, a reversal, a dispute's hold, release or fee is in one batch at most
    # (the items' primary key (kind, item_id) makes this structural; the check guards the
    # key). Reads only the non-PAYMENT part of the primary-key index.
    "refunds_in_one_batch": """
        SELECT COUNT(*) FROM (
            SELECT kind, item_id FROM settlement_batch_items
             WHERE kind IN ('REFUND', 'PAYMENT_REVERSAL', 'REFUND_REVERSAL', 'DISPUTE_HOLD',
                            'DISPUTE_RELEASE', 'DISPUTE_FEE')
             GROUP BY kind, item_id HAVING COUNT(*) > 1
        ) t""",
    # per merchant and currency, the credit balance of payable:<m> =
    #     Σ net of batches written before payouts (payout_minor NULL: they posted no payout)
    #   + carried_out of the last batch with a payout (<= 0)
    #   + Σ payable movement of the posted journals no batch item settles yet (payments,
    #     refunds, reversals, dispute holds, releases and fees)
    #   - Σ net of batch items whose journal is not posted yet (the settlement sink may write
    #     a batch before the ledger sink posts one of its items; batches_match_ledger counts
    #     those items, this check does not count them twice).
    # Counts the merchant/currency pairs that disagree.
    "payable_matches_batches": q.count_of(q.PAYABLE_MISMATCHES),
    # per merchant and currency, Σ payout of the closed batches = credit balance of
    # payout_due:<m> (the settlement sink posts a batch's payout journal in the batch's own
    # transaction). Counts the merchant/currency pairs that disagree.
    "payout_due_matches_payouts": """
        WITH ledger AS (
            SELECT substr(account, 12) AS merchant_id, currency,
                   SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS bal
              FROM ledger_entries WHERE left(account, 11) = 'payout_due:'
             GROUP BY 1, 2),
        paid AS (
            SELECT merchant_id, currency, SUM(payout_minor) AS payout
              FROM settlement_batches WHERE payout_minor IS NOT NULL GROUP BY 1, 2)
        SELECT COUNT(*) FROM ledger l FULL JOIN paid p USING (merchant_id, currency)
         WHERE COALESCE(l.bal, 0) <> COALESCE(p.payout, 0)""",
    # per merchant and currency, the credit balance of dispute_hold:<m> = Σ amount of the
    # OPEN disputes = Σ opened - won - lost dispute journals. Counts the pairs that disagree.
    "dispute_holds_balance": q.count_of(q.DISPUTE_HOLDS),
    # per channel and currency, the debit balance of dispute_receivable:<ch> = Σ amount of the
    # OPEN disputes whose funds the channel withdrew. Counts the pairs that disagree.
    "dispute_receivables_balance": q.count_of(q.DISPUTE_RECEIVABLES),
    # every dispute event posted once, as the dispute's state says (OPEN: DISPUTE_OPEN; WON:
    # DISPUTE_OPEN and DISPUTE_WON, or neither; LOST: DISPUTE_OPEN and DISPUTE_LOST), for its
    # amount, and no dispute journal without its disputes row. Counts disputes and journals.
    "dispute_events_posted_once": q.count_of(q.DISPUTE_POSTINGS),
    # nothing disputed paid out while open: no DISPUTE_RELEASE or DISPUTE_FEE item in a batch
    # before (or without) the batch of its DISPUTE_HOLD.
    "disputes_held_before_released": q.count_of(q.DISPUTES_HELD_FIRST),
    # a case is RESOLVED iff it has exactly one RESOLVED event (of its resolution); no event
    # of a case without its row.
    "cases_resolved_once": q.count_of(q.CASES_RESOLVED_ONCE),
}

# Invariants with a horizon (%(horizon)s seconds): what may legitimately wait, for a while,
# for a window to close or for another sink.
HORIZON_INVARIANTS: dict[str, str] = {
    # MATCHED (MATCHED_MANUAL) payments decided longer ago than the horizon and in no batch.
    "matched_settled_in_time": """
        SELECT COUNT(*) FROM payments p
         WHERE p.state IN ('MATCHED', 'MATCHED_MANUAL')
           AND p.decided_at < now() - make_interval(secs => %(horizon)s)
           AND NOT EXISTS (SELECT 1 FROM settlement_batch_items i
                            WHERE i.kind = 'PAYMENT' AND i.item_id = p.payment_id)""",
    # succeeded refunds decided longer ago than the horizon and still in no batch.
    "refunds_settled_in_time": """
        SELECT COUNT(*) FROM refunds r
         WHERE r.state = 'MATCHED'
           AND r.decided_at < now() - make_interval(secs => %(horizon)s)
           AND NOT EXISTS (SELECT 1 FROM settlement_batch_items i
                            WHERE i.kind = 'REFUND'
                              AND i.item_id = r.payment_id || '/' || r.refund_id)""",
    # reversal journals posted longer ago than the horizon and still in no batch.
    "reversals_settled_in_time": """
        SELECT COUNT(*) FROM ledger_journals j
         WHERE j.kind IN ('PAYMENT_REVERSAL', 'REFUND_REVERSAL')
           AND j.posted_at < now() - make_interval(secs => %(horizon)s)
           AND NOT EXISTS (SELECT 1 FROM settlement_batch_items i
                            WHERE i.kind = j.kind AND i.item_id = j.source_id)""",
    # per payment, Σ succeeded refunds - Σ refund reversals <= captured and the same for the
    # fee returned (the REFUND and REFUND_REVERSAL journals against the PAYMENT journal).
    # Payments refunded above their capture, plus refunded payments with no PAYMENT journal
    # for longer than the horizon (the ledger sink reads payment and refund results from two
    # topics: a refund may be posted first).
    "refunds_within_capture": """
        SELECT COUNT(*) FROM (
            SELECT r.payment_id FROM ledger_journals r
              LEFT JOIN ledger_journals p ON p.kind = 'PAYMENT' AND p.source_id = r.payment_id
             WHERE r.kind IN ('REFUND', 'REFUND_REVERSAL')
             GROUP BY r.payment_id
            HAVING SUM(CASE WHEN r.kind = 'REFUND' THEN r.gross_minor ELSE -r.gross_minor END)
                   > MIN(p.gross_minor)
                OR SUM(CASE WHEN r.kind = 'REFUND' THEN r.fee_minor ELSE -r.fee_minor END)
                   > MIN(p.fee_minor)
                OR (MIN(p.gross_minor) IS NULL
                    AND MIN(r.posted_at) < now() - make_interval(secs => %(horizon)s))
        ) t""",
    # dispute journals that move payable (a hold, a release, a lost one's fee) posted longer
    # ago than the horizon and still in no batch: held funds not yet kept from a payout.
    "disputes_settled_in_time": q.count_of(
        q.unbatched_of(("DISPUTE_OPEN", "DISPUTE_WON", "DISPUTE_LOST"))),
    # MATCHED_MANUAL payments without their PAYMENT journal at the settled amount, or whose
    # case is resolved otherwise than FORCE_MATCH or MARK_RECEIVED, or (past the horizon: the
    # case's events come on another topic) whose case is missing or not resolved.
    "manual_matches_posted": q.count_of(q.MANUAL_MATCHES),
}
SETTLED_IN_TIME = "matched_settled_in_time"
REFUNDS_WITHIN_CAPTURE = "refunds_within_capture"
INVARIANTS: tuple[str, ...] = (*INSTANT_INVARIANTS, *HORIZON_INVARIANTS)


def check_books(conn: psycopg.Connection, horizon_s: float) -> dict[str, int]:
    """Violations per invariant (0 = holds), in one repeatable-read snapshot."""
    violations: dict[str, int] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for name, sql in INSTANT_INVARIANTS.items():
            row = conn.execute(sql).fetchone()
            violations[name] = int(row[0]) if row and row[0] is not None else 0
        for name, sql in HORIZON_INVARIANTS.items():
            row = conn.execute(sql, {"horizon": horizon_s}).fetchone()
            violations[name] = int(row[0]) if row and row[0] is not None else 0
    return violations


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    topics: tuple[str, ...]  # topics whose end offsets are published
    groups: str = r"settle-.*"  # consumer groups (regex, full match) whose lag is published
    interval_s: float = 10.0
    books_interval_s: float = 30.0
    horizon_s: float = 86_400 + 600 + 900  # window + grace + slack
    # routed topics whose payments must reach a terminal state (none: no such check)
    routed: tuple[RoutedSource, ...] = ()
    reconcile_group: str = "settle-reconcile"  # whose committed offsets mean "consumed"
    undecided_lookback_s: float = 86_400.0  # routed records read back at start


@dataclass(slots=True)
class Snapshot:
    """What the last loop saw; scrapes read it, the loop replaces it."""

    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    lag: dict[tuple[str, str, int], int] = field(default_factory=dict)
    offsets_at: float = 0.0
    books: dict[str, int] = field(default_factory=dict)
    books_at: float = 0.0
    books_duration_s: float = 0.0
    undecided: dict[str, Overdue] = field(default_factory=dict)
    cases: CaseGauges | None = None  # disputes and cases, from the last books check


def lag_of(committed: dict[tuple[str, int], int], end: dict[tuple[str, int], int]) -> dict[
        tuple[str, int], int]:
    """Lag per (topic, partition): end - committed; a partition never committed is skipped,
    and lag never goes below 0 (a commit can be seen before the end offset that covers it)."""
    out: dict[tuple[str, int], int] = {}
    for tp, offset in committed.items():
        if offset < 0 or tp not in end:
            continue
        out[tp] = max(end[tp] - offset, 0)
    return out


class Monitor(Collector):
    """The loop (a thread) and the Prometheus collector that serves its snapshot."""

    def __init__(self, settings: Settings, options: MonitorOptions) -> None:
        self.settings = settings
        self.options = options
        self.snapshot = Snapshot()
        self._groups = re.compile(options.groups)
        self._admin_client: AdminClient | None = None  # created on first use
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tracker = UndecidedTracker(options.routed)
        self._tail = (RoutedTail(settings.kafka, options.routed, self._tracker,
                                 options.undecided_lookback_s) if options.routed else None)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        next_books = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_offsets()
            if started >= next_books:
                self.poll_books()
                next_books = started + self.options.books_interval_s
            self._stop.wait(max(self.options.interval_s - (time.monotonic() - started), 0.1))
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Close the routed topics' consumer (the loop does when it stops)."""
        if self._tail is not None:
            self._tail.close()

    def poll_offsets(self) -> None:
        try:
            end = self._end_offsets(self.options.topics)
            lag: dict[tuple[str, str, int], int] = {}
            for group in self._group_ids():
                committed = self._committed(group)
                missing = sorted({t for t, _ in committed} - {t for t, _ in end})
                group_end = {**end, **self._end_offsets(tuple(missing))} if missing else end
                for (topic, partition), value in lag_of(committed, group_end).items():
                    lag[(group, topic, partition)] = value
        except (KafkaException, OSError) as exc:
            CHECK_ERRORS.labels("offsets").inc()
            log.warning("monitor: offsets unavailable: %s", exc)
            return
        with self._lock:
            self.snapshot.end_offsets = end
            self.snapshot.lag = lag
            self.snapshot.offsets_at = time.time()

    def poll_books(self) -> None:
        from sinks.db import connect

        started = time.monotonic()
        try:
            with connect(self.settings.postgres, autocommit=True) as conn:
                books = check_books(conn, self.options.horizon_s)
                cases = read_gauges(conn)
                undecided = self.check_undecided(conn)
        except (psycopg.Error, OSError, SettleError) as exc:
            CHECK_ERRORS.labels("books").inc()
            log.warning("monitor: books check failed: %s", exc)
            return
        broken = {k: v for k, v in books.items() if v}
        if broken:
            log.error("monitor: books invariants broken: %s", broken)
        with self._lock:
            self.snapshot.books = books
            self.snapshot.cases = cases
            if undecided is not None:
                self.snapshot.undecided = undecided
            # A check is complete with its routed-payments part: while that part fails, the
            # check's time stands still (SettleBooksCheckStale), the last counts stay.
            if undecided is not None or self._tail is None:
                self.snapshot.books_at = time.time()
                self.snapshot.books_duration_s = time.monotonic() - started

    def check_undecided(self, conn: psycopg.Connection) -> dict[str, Overdue] | None:
        """Overdue routed payments per channel; None when the routed topics or reconcile's
        offsets could not be read (PostgreSQL errors propagate, as in the books check)."""
        if self._tail is None:
            return None
        try:
            committed = self._committed(self.options.reconcile_group)
            self._tail.read(self._end_offsets(self._tail.topics))
        except (KafkaException, OSError) as exc:
            CHECK_ERRORS.labels("undecided").inc()
            log.warning("monitor: routed topics or reconcile's offsets unavailable: %s", exc)
            return None
        now_ms = int(time.time() * 1000)
        self._tracker.consumed(committed, now_ms)
        self._tracker.decided(decided_among(conn, self._tracker.to_check()))
        overdue = self._tracker.overdue(now_ms)
        late = {ch: o.count for ch, o in overdue.items() if o.count}
        if late:
            log.error("monitor: routed payments without a terminal state past their SLA "
                      "and margin, per channel: %s", late)
        return overdue

    # -- Kafka ---------------------------------------------------------------------------

    @property
    def _admin(self) -> AdminClient:
        if self._admin_client is None:
            self._admin_client = AdminClient({
                **self.settings.kafka.client_config(),
                "client.id": f"{self.settings.kafka.client_id_prefix}-monitor"})
        return self._admin_client

    def _group_ids(self) -> list[str]:
        listing = self._admin.list_consumer_groups(request_timeout=10).result()
        return sorted(g.group_id for g in listing.valid if self._groups.fullmatch(g.group_id))

    def _committed(self, group: str) -> dict[tuple[str, int], int]:
        futures = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=10)
        result = futures[group].result()
        return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or []
                if tp.error is None}

    def _end_offsets(self, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
        if not topics:
            return {}
        meta = self._admin.list_topics(timeout=10)
        wanted = {TopicPartition(t, p): OffsetSpec.latest()
                  for t in topics if t in meta.topics
                  for p in meta.topics[t].partitions}
        if not wanted:
            return {}
        futures = self._admin.list_offsets(wanted, request_timeout=10)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    # -- the collector -------------------------------------------------------------------

    def describe(self) -> Iterable[Any]:
        return []  # collected on scrape only; no fixed series to announce

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            snap = Snapshot(dict(self.snapshot.end_offsets), dict(self.snapshot.lag),
                            self.snapshot.offsets_at, dict(self.snapshot.books),
                            self.snapshot.books_at, self.snapshot.books_duration_s,
                            dict(self.snapshot.undecided), self.snapshot.cases)
        lag = GaugeMetricFamily(
            "settle_consumer_lag_records",
            "Records a consumer group has yet to commit: the partition's end offset minus "
            "the group's committed offset, from the broker",
            labels=["group", "topic", "partition"])
        for (group, topic, partition), value in sorted(snap.lag.items()):
            lag.add_metric([group, topic, str(partition)], value)
        yield lag
        end = GaugeMetricFamily(
            "settle_topic_end_offset",
            "End offset (high watermark) of each partition of the pipeline's topics; its "
            "rate is the topic's input rate", labels=["topic", "partition"])
        for (topic, partition), value in sorted(snap.end_offsets.items()):
            end.add_metric([topic, str(partition)], value)
        yield end
        yield GaugeMetricFamily(
            "settle_monitor_offsets_timestamp_seconds",
            "Unix time the offsets were last read", value=snap.offsets_at)
        balanced = GaugeMetricFamily(
            "settle_books_balanced",
            "1 when the books' invariant held at the last check, 0 when it was broken",
            labels=["invariant"])
        violations = GaugeMetricFamily(
            "settle_books_violations",
            "Rows breaking the books' invariant at the last check", labels=["invariant"])
        for name in INVARIANTS:
            if name in snap.books:
                balanced.add_metric([name], 0 if snap.books[name] else 1)
                violations.add_metric([name], snap.books[name])
        yield balanced
        yield violations
        yield GaugeMetricFamily(
            "settle_books_check_timestamp_seconds",
            "Unix time of the last completed books check (0: none yet)", value=snap.books_at)
        yield GaugeMetricFamily(
            "settle_books_check_duration_seconds",
            "How long the last books check took", value=snap.books_duration_s)
        undecided = GaugeMetricFamily(
            "settle_routed_undecided_payments",
            "Routed payments the reconcile group consumed that have had no terminal state in "
            "PostgreSQL for longer than their channel's reconciliation SLA + margin",
            labels=["channel"])
        oldest = GaugeMetricFamily(
            "settle_routed_undecided_oldest_age_seconds",
            "How long the oldest of settle_routed_undecided_payments has been owed a terminal "
            "state (since the monitor saw reconcile consume it; 0: none)", labels=["channel"])
        for channel, overdue in sorted(snap.undecided.items()):
            undecided.add_metric([channel], overdue.count)
            oldest.add_metric([channel], overdue.oldest_age_s)
        yield undecided
        yield oldest
        if snap.cases is not None:  # replaced whole by the loop, never changed in place
            yield from families(snap.cases)


def start(settings: Settings, options: MonitorOptions) -> Monitor:
    """Register the collector and run the loop in a daemon thread."""
    monitor = Monitor(settings, options)
    REGISTRY.register(monitor)
    threading.Thread(target=monitor.run, name="settle-monitor", daemon=True).start()
    return monitor
