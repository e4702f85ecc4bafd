"""Consistent books for the API's tests, the demo and `settle bench api`, written with COPY.

`seed_books` writes, for `days` daily settlement windows (the cut-off zone's midnights), what
the sinks would have written for `payments` payments of `merchants` merchants: payments in
every state with their reconciliation exceptions, PAYMENT journals built with the core's
posting functions, refunds (and their journals and exceptions), payment and refund reversals,
disputes (open, won, lost with and without a fee, first seen won) and rejected dispute
records, exception cases with their events (open, awaiting approval, rejected proposals,
resolved, including the force-matches and mark-receiveds that settled MATCHED_MANUAL
payments), and for each closed window the batches with their items, carried balances and
PAYOUT journals. Every migration constraint and trigger holds, and so does every invariant
of `settle audit books` (settle.books_sql); with `open_days` > 0 the last days' journals are
left unbatched, as in a live system before their windows close (then only the audit's
"everything batched" checks name them).

Deterministic for a seed: the same arguments write the same rows. Payment ids are
`pay_<8 digits>` in creation order; the first 2 x len(COVERAGE) payments (merchants 1 and 2,
early on the first day) walk through COVERAGE so even a small seed has every state and event;
later ones are drawn at realistic rates.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Final

import psycopg

from settle.api_seed_copy import Buffers, ts
from settle.api_seed_followups import Story
from settle.api_seed_stories import COVERAGE, Stories, draw_story
from settlement import postings_v2 as pv
from settlement.batch_items import payout_split
from settlement.windows import WindowPolicy, batch_id, window_for

DEFAULT_START: Final = datetime(2025, 3, 2, 16, 0, tzinfo=UTC)  # 2025-03-03 00:00 Shanghai
# Each merchant's currencies (one or two); the first merchants cover the 0 and 3 exponents.
CURRENCY_PROFILES: Final = (("CNY", "JPY"), ("CNY", "KWD"), ("USD",), ("CNY",), ("EUR", "CNY"),
                            ("JPY",), ("CNY", "USD"), ("KWD",))
CHANNELS: Final = ("alipay", "wechat_pay", "unionpay", "card")
_CHANNEL_CUM: Final = tuple(accumulate((40, 30, 15, 15)))
# Payment amounts, minor units, per currency (CNY 1.00-5,000.00, JPY 100-300,000, ...).
AMOUNT_RANGE: Final = {"CNY": (100, 500_000), "USD": (100, 200_000), "EUR": (100, 200_000),
                       "JPY": (100, 300_000), "KWD": (1_000, 500_000)}
_FLUSH_LINES: Final = 300_000
_CLOSE_AFTER_MS: Final = 5_000  # a batch closes this long after its window's grace


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """What `seed_books` wrote: counts, the merchants, and an example id of each kind."""

    merchants: tuple[str, ...]
    currencies: tuple[str, ...]
    start: datetime
    end: datetime
    rows: dict[str, int]  # per table
    payments_by_state: dict[str, int]
    journals_by_kind: dict[str, int]
    # "payment:<state>", "refund:<state>", "dispute:<state>", "case:<status>",
    # "exception:<outcome>", "batch" -> an id of one (a refund/dispute: "<payment>/<id>").
    examples: dict[str, str]
    open_days: int

    @property
    def payments(self) -> int:
        return self.rows.get("payments", 0)


def merchant_ids(merchants: int) -> tuple[str, ...]:
    return tuple(f"mch_{i + 1:03d}" for i in range(merchants))


def seed_books(conn: psycopg.Connection, *, payments: int, merchants: int = 20, seed: int = 7,
               start: datetime = DEFAULT_START, days: int = 14, open_days: int = 0,
               progress: Callable[[int], None] | None = None) -> SeedSummary:
    """Write consistent books into the (migrated) database of `conn`, as its owner.

    Written window by window, each in its own transaction (a journal's balance is checked at
    its commit). `progress` is called with the number of payments written so far.
    """
    if payments < 1 or merchants < 1 or days < 1 or not 0 <= open_days <= days:
        raise ValueError("need payments >= 1, merchants >= 1, days >= 1, 0 <= open_days <= days")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(seed)
    policy = WindowPolicy.daily_shanghai()
    start_ms = int(start.timestamp() * 1000)
    first = window_for(start_ms, policy).start_ms
    end_ms = first + days * policy.size_ms
    ids = merchant_ids(merchants)
    books = _Books(policy, end_ms, open_from_ms=end_ms - open_days * policy.size_ms)
    stories = Stories(rng, books, end_ms)
    merchant_cum = tuple(accumulate(1.0 / (i + 1) ** 0.7 for i in range(merchants)))
    seq = 0
    for day in range(days):
        day_start = first + day * policy.size_ms
        count = payments // days + (1 if day < payments % days else 0)
        # Payments are created over the day's first 22 hours (decisions land in the window).
        times = sorted(rng.randrange(day_start, day_start + 22 * 3_600_000)
                       for _ in range(count))
        with conn.transaction():
            for created_ms in times:
                seq += 1
                stories.tell(_story(rng, seq, created_ms, ids, merchant_cum))
                if books.buf.pending() >= _FLUSH_LINES:
                    books.buf.flush(conn)
                    if progress is not None:
                        progress(seq)
            books.close_window(day_start)
            books.buf.flush(conn)
        if progress is not None:
            progress(seq)
    return SeedSummary(
        merchants=ids, currencies=tuple(sorted(books.currencies)),
        start=datetime.fromtimestamp(first / 1000, UTC),
        end=datetime.fromtimestamp(end_ms / 1000, UTC), rows=dict(books.buf.written),
        payments_by_state=dict(stories.states), journals_by_kind=dict(books.kinds),
        examples=dict(stories.examples) | books.examples, open_days=open_days)


def _story(rng: random.Random, seq: int, created_ms: int, ids: tuple[str, ...],
           merchant_cum: tuple[float, ...]) -> Story:
    if seq <= 2 * len(COVERAGE) and len(ids) >= 1:
        # The coverage walk: merchants 1 and 2 take turns, each currency of theirs in turn.
        merchant = (seq - 1) % min(2, len(ids))
        plan = COVERAGE[(seq - 1) // 2]
        profile = CURRENCY_PROFILES[merchant % len(CURRENCY_PROFILES)]
        currency = profile[((seq - 1) // 2) % len(profile)]
        if plan.extra == "CARRY":  # a currency the merchant sells in only this once
            currency = next(c for c in AMOUNT_RANGE if c not in profile)
    else:
        merchant = bisect(merchant_cum, rng.random() * merchant_cum[-1])
        merchant = min(merchant, len(ids) - 1)
        profile = CURRENCY_PROFILES[merchant % len(CURRENCY_PROFILES)]
        currency = profile[0] if len(profile) == 1 or rng.random() < 0.7 else profile[1]
        plan = draw_story(rng)
    channel = CHANNELS[bisect(_CHANNEL_CUM, rng.randrange(_CHANNEL_CUM[-1]))]
    low, high = AMOUNT_RANGE[currency]
    return Story(seq=seq, created_ms=created_ms, merchant_id=ids[merchant], currency=currency,
                 channel=channel, amount_minor=rng.randint(low, high), plan=plan)


# Journal kind -> (item kind, the item's (gross, fee, net) from the journal's), as
# settle.books_sql reads them back; a lost dispute settles only its fee.
def _item_amounts(kj: pv.KindJournal) -> tuple[str, int, int, int] | None:
    g, f, n = kj.gross_minor, kj.fee_minor, kj.net_minor
    match kj.kind:
        case "PAYMENT" | "REFUND_REVERSAL":
            return kj.kind, g, f, n
        case "REFUND" | "PAYMENT_REVERSAL":
            return kj.kind, -g, -f, -n
        case "DISPUTE_OPEN":
            return "DISPUTE_HOLD", -n, 0, -n
        case "DISPUTE_WON":
            return "DISPUTE_RELEASE", n, 0, n
        case "DISPUTE_LOST":
            return ("DISPUTE_FEE", -f, 0, -f) if f > 0 else None
    return None  # PAYOUT: posted by a batch, settles nothing


class _Books:
    """The ledger and the batches: journals with their entries, the items each window's
    batches will settle, and the carried balance per merchant and currency."""

    def __init__(self, policy: WindowPolicy, end_ms: int, open_from_ms: int) -> None:
        self.buf = Buffers()
        self.policy = policy
        self.end_ms = end_ms
        self.open_from_ms = open_from_ms
        # window start -> (merchant, currency) -> items (kind, item_id, payment_id, g, f, n, at)
        self.items: dict[int, dict[tuple[str, str], list[tuple[str, str, str, int, int, int,
                                                                int]]]] = (
            defaultdict(lambda: defaultdict(list)))
        self.carried: dict[tuple[str, str], int] = {}
        self.kinds: Counter[str] = Counter()
        self.currencies: set[str] = set()
        self.examples: dict[str, str] = {}

    def post(self, kj: pv.KindJournal, merchant_id: str, posted_ms: int) -> None:
        """Write a journal and its entries; queue the batch item that settles it."""
        at = ts(posted_ms)
        self.buf.add("ledger_journals", kj.journal_id, kj.kind, kj.source_id, kj.payment_id,
                     kj.currency, kj.gross_minor, kj.fee_minor, kj.net_minor, at)
        for p in kj.journal.postings:
            self.buf.add("ledger_entries", kj.journal_id, kj.payment_id, p.account, p.side,
                         p.amount_minor, p.currency, at)
        self.kinds[kj.kind] += 1
        self.currencies.add(kj.currency)
        item = _item_amounts(kj)
        if item is None or kj.payment_id is None:
            return
        window = window_for(posted_ms, self.policy).start_ms
        if window >= self.open_from_ms:
            return  # its window is still open: the journal stays unbatched
        kind, g, f, n = item
        self.items[window][(merchant_id, kj.currency)].append(
            (kind, kj.source_id, kj.payment_id, g, f, n, posted_ms))

    def close_window(self, window_start_ms: int) -> None:
        """The window's batches: per merchant and currency with items, totals, the carried
        balance in and out, and the PAYOUT journal of what it pays."""
        pending = self.items.pop(window_start_ms, {})
        window_end_ms = window_start_ms + self.policy.size_ms
        closed_ms = window_end_ms + self.policy.grace_ms + _CLOSE_AFTER_MS
        for (merchant_id, currency), items in sorted(pending.items()):
            key = (merchant_id, currency)
            bid = batch_id(merchant_id, currency, window_start_ms)
            gross = sum(i[3] for i in items)
            fee = sum(i[4] for i in items)
            net = sum(i[5] for i in items)
            carried_in = self.carried.get(key, 0)
            payout, carried_out = payout_split(net, carried_in)
            self.buf.add("settlement_batches", bid, merchant_id, currency,
                         ts(window_start_ms), ts(window_end_ms),
                         sum(1 for i in items if i[0] == "PAYMENT"),
                         sum(1 for i in items if i[0] == "REFUND"), gross, fee, net,
                         carried_in, payout, carried_out, ts(closed_ms), ts(closed_ms))
            for kind, item_id, payment_id, g, f, n, at_ms in items:
                self.buf.add("settlement_batch_items", bid, kind, item_id, payment_id, g, f, n,
                             ts(at_ms))
            if payout > 0:
                self.post(pv.payout_journal(bid, merchant_id, currency, payout), merchant_id,
                          closed_ms)
            self.carried[key] = carried_out
            self.examples.setdefault("batch", bid)
            if carried_out < 0:
                self.examples.setdefault("batch:carried", bid)
