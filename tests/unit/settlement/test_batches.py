"""Unit and property tests for settlement.batches: sums, idempotent adds, exactly-once settling."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.batches import (
    BatchConflict,
    BatchError,
    BatchInvariantError,
    BatchItem,
    BatchTotals,
    OpenBatch,
    SettlementBatch,
    due_batches,
)
from settlement.fees import FeeSchedule
from settlement.ledger import balances, journal_for_match, payable_account
from settlement.windows import (
    Window,
    WindowPolicy,
    assign_window,
    batch_id,
    is_closed_at,
    parse_batch_id,
    window_for,
)

FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180,all=10000")
POLICY = WindowPolicy(10, 2, 0)


def item(payment_id: str, gross: int = 10_000, fee: int = 60, at: int = 1_000) -> BatchItem:
    return BatchItem(payment_id, gross, fee, gross - fee, at)


def test_item_rules() -> None:
    expected = BatchItem("p1", 10_000, 180, 9_820, 5)
    assert BatchItem.for_match("p1", "card", 10_000, 5, FEES) == expected
    assert BatchItem.for_match("p1", "all", 10, 5, FEES).net_minor == 0
    for bad in (
        ("p1", 100, 10, 91, 0),  # fee + net != gross
        ("p1", 0, 0, 0, 0),
        ("p1", 100, -1, 101, 0),
        ("p1", 100, 101, -1, 0),
        ("", 100, 0, 100, 0),
        ("p1", True, 0, 1, 0),
        ("p1", 100, 0, 100, 1.5),
    ):
        with pytest.raises(BatchError):
            BatchItem(*bad)


def test_open_batch_adds_and_closes() -> None:
    batch = OpenBatch.new("m1", "CNY", Window(0, 10_000))
    assert batch.batch_id == batch_id("m1", "CNY", 0)
    batch = batch.add(item("p1")).add(item("p2", gross=501, fee=3))
    assert "p1" in batch and "p3" not in batch
    closed = batch.close(now_ms=12_000)
    assert closed == SettlementBatch(
        batch_id="B:m1:CNY:0",
        merchant_id="m1",
        currency="CNY",
        window_start_ms=0,
        window_end_ms=10_000,
        payment_count=2,
        gross_minor=10_501,
        fee_minor=63,
        net_minor=10_438,
        closed_at_ms=12_000,
        items=(item("p1"), item("p2", gross=501, fee=3)),
    )


def test_add_is_idempotent_and_counted_and_conflicts_are_refused() -> None:
    batch = OpenBatch.new("m1", "CNY", Window(0, 10_000)).add(item("p1"))
    again = batch.add(item("p1"))
    assert again.items == batch.items
    assert again.gross_minor == batch.gross_minor
    assert again.duplicates_ignored == 1
    with pytest.raises(BatchConflict):
        batch.add(item("p1", gross=10_001))


def test_empty_batch_closes_to_zero() -> None:
    closed = OpenBatch.new("m1", "CNY", Window(0, 10_000)).close(now_ms=20_000)
    assert (closed.payment_count, closed.gross_minor, closed.net_minor) == (0, 0, 0)


def test_round_trips_and_read_back_checks() -> None:
    batch = OpenBatch.new("m:1", "JPY", Window(-10_000, 0)).add(item("p1")).add(item("p1"))
    data = json.loads(json.dumps(batch.to_dict()))
    assert OpenBatch.from_dict(data) == batch
    closed = batch.close(5)
    assert SettlementBatch.from_dict(json.loads(json.dumps(closed.to_dict()))) == closed

    tampered = dict(data, gross_minor=data["gross_minor"] + 1)
    with pytest.raises(BatchInvariantError):
        OpenBatch.from_dict(tampered)
    with pytest.raises(BatchInvariantError):
        OpenBatch.from_dict(dict(data, items=data["items"] * 2))
    with pytest.raises(BatchError):
        OpenBatch.from_dict(dict(data, v=99))
    with pytest.raises(BatchInvariantError):
        SettlementBatch.from_dict(dict(closed.to_dict(), payment_count=2))
    with pytest.raises(BatchInvariantError):
        SettlementBatch.from_dict(dict(closed.to_dict(), net_minor=0))
    with pytest.raises(BatchInvariantError):
        OpenBatch.from_dict(dict(data, batch_id="B:other:JPY:-10000"))


def test_due_batches_oldest_first() -> None:
    late = OpenBatch.new("m1", "CNY", Window(10_000, 20_000))
    b = OpenBatch.new("m2", "CNY", Window(0, 10_000))
    a = OpenBatch.new("m1", "CNY", Window(0, 10_000))
    assert due_batches([late, b, a], 11_999, POLICY) == []
    assert due_batches([late, b, a], 12_000, POLICY) == [a, b]
    assert due_batches([late, b, a], 22_000, POLICY) == [a, b, late]


def test_totals_close_like_an_open_batch_and_check_the_items_given() -> None:
    window = Window(0, 10_000)
    items = [item("p1"), item("p2", gross=501, fee=3)]
    totals = BatchTotals.new("m1", "CNY", window)
    full = OpenBatch.new("m1", "CNY", window)
    for i in items:
        totals, full = totals.add(i), full.add(i)
    assert totals == BatchTotals.of(full)
    assert totals.close(12_000, items) == full.close(12_000)
    for wrong in (items[:1], [*items, item("p3")], [items[0], item("p2", gross=502, fee=3)],
                  [items[0], items[0]]):
        with pytest.raises(BatchInvariantError):
            totals.close(12_000, wrong)


def test_totals_round_trip_and_read_back_checks() -> None:
    totals = BatchTotals.new("m:1", "JPY", Window(-10_000, 0)).add(item("p1"))
    data = json.loads(json.dumps(totals.to_dict()))
    assert BatchTotals.from_dict(data) == totals
    assert due_batches([totals], 2_000, POLICY) == [totals]
    with pytest.raises(BatchError):
        BatchTotals.from_dict(dict(data, v=99))
    with pytest.raises(BatchInvariantError):
        BatchTotals.from_dict(dict(data, gross_minor=data["gross_minor"] + 1))
    with pytest.raises(BatchInvariantError):
        BatchTotals.from_dict(dict(data, batch_id="B:other:JPY:-10000"))
    for bad in ({"payment_count": -1}, {"payment_count": 1.0}, {"window_end_ms": -10_000}):
        with pytest.raises(BatchError):
            BatchTotals.from_dict(dict(data, **bad))


items_strategy = st.lists(
    st.builds(
        item,
        st.sampled_from([f"p{i}" for i in range(12)]),
        gross=st.integers(min_value=1, max_value=10**9),
        fee=st.just(0),
    ),
    max_size=40,
)


@given(items_strategy)
def test_sums_with_redelivered_items(deliveries: list[BatchItem]) -> None:
    batch = OpenBatch.new("m1", "CNY", Window(0, 10_000))
    first: dict[str, BatchItem] = {}
    duplicates = 0
    for delivery in deliveries:
        if delivery.payment_id in first and first[delivery.payment_id] != delivery:
            with pytest.raises(BatchConflict):
                batch.add(delivery)
            continue
        duplicates += delivery.payment_id in first
        first.setdefault(delivery.payment_id, delivery)
        batch = batch.add(delivery)
    closed = batch.close(now_ms=99)
    assert closed.payment_count == len(first)
    assert closed.gross_minor == sum(i.gross_minor for i in first.values())
    assert closed.net_minor + closed.fee_minor == closed.gross_minor
    assert batch.duplicates_ignored == duplicates
    assert [i.payment_id for i in closed.items] == list(first)


payments = st.lists(
    st.tuples(
        st.sampled_from(["m1", "m2"]),
        st.sampled_from(["CNY", "KWD"]),
        st.sampled_from(["alipay", "card", "all"]),
        st.integers(min_value=1, max_value=10**9),
        st.integers(min_value=0, max_value=100_000),  # matched_at_ms
        st.integers(min_value=0, max_value=30_000),  # processing delay
        st.booleans(),  # redelivered while its batch is still open
    ),
    max_size=30,
)


@given(payments, st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=8))
def test_every_payment_settles_in_exactly_one_batch(
    matches: list[tuple[str, str, str, int, int, int, bool]], size_s: int, grace_s: int
) -> None:
    """A model of the settle agent: assign, add, close due batches; nothing lost or doubled."""
    policy = WindowPolicy(size_s, grace_s, -28_800_000)
    events = sorted(enumerate(matches), key=lambda e: e[1][4] + e[1][5])
    open_batches: dict[str, OpenBatch] = {}
    closed_ids: set[str] = set()
    published: list[SettlementBatch] = []

    def close_due(now_ms: int) -> None:
        for batch in due_batches(open_batches.values(), now_ms, policy):
            published.append(batch.close(now_ms))
            closed_ids.add(batch.batch_id)
            del open_batches[batch.batch_id]

    for index, (merchant, currency, channel, gross, matched_at, delay, again) in events:
        now_ms = matched_at + delay
        close_due(now_ms)
        keys = [parse_batch_id(closed_id) for closed_id in closed_ids]
        closed = {start for m, c, start in keys if (m, c) == (merchant, currency)}
        window = assign_window(matched_at, now_ms, policy, closed=closed.__contains__)
        key = batch_id(merchant, currency, window.start_ms)
        assert key not in closed_ids and not is_closed_at(window, now_ms, policy)
        assert window.start_ms >= window_for(matched_at, policy).start_ms
        batch = open_batches.get(key) or OpenBatch.new(merchant, currency, window)
        new_item = BatchItem.for_match(f"p{index}", channel, gross, matched_at, FEES)
        batch = batch.add(new_item)
        open_batches[key] = batch.add(new_item) if again else batch
    close_due(10**12)
    assert not open_batches

    settled = Counter(i.payment_id for b in published for i in b.items)
    assert settled == Counter(f"p{index}" for index in range(len(matches)))
    assert len({b.batch_id for b in published}) == len(published)

    # Guarantee 3: per merchant and currency, settled net == merchant payable in the ledger.
    postings = [
        p
        for index, (m, cur, ch, gross, *_rest) in enumerate(matches)
        for p in journal_for_match(f"p{index}", m, ch, gross, cur, FEES).postings
    ]
    ledger = balances(postings)
    net_settled: dict[tuple[str, str], int] = defaultdict(int)
    for b in published:
        net_settled[(b.merchant_id, b.currency)] += b.net_minor
    for (merchant, currency), net in net_settled.items():
        assert net == -ledger.get((payable_account(merchant), currency), 0)
