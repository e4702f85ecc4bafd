"""Refunds and reversals netted into batches and the carried negative balance, against a
reference model.

The model is the simplest bookkeeping of what a merchant is owed: a running balance per
merchant and currency, every item's net added when its batch closes; a positive balance is
paid out whole, a negative one waits. Batches must pay exactly what the model pays, batch by
batch, and never pay a negative amount or carry a positive one.
"""

from __future__ import annotations

import json
from collections import defaultdict

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
    payout_split,
)
from settlement.refund_model import (
    DISPUTE_ITEM_KINDS,
    ITEM_DISPUTE_FEE,
    ITEM_DISPUTE_HOLD,
    ITEM_DISPUTE_RELEASE,
    ITEM_PAYMENT,
    ITEM_PAYMENT_REVERSAL,
    ITEM_REFUND,
    ITEM_REFUND_REVERSAL,
)
from settlement.windows import Window, WindowPolicy, assign_window, batch_id

POLICY = WindowPolicy(10, 2, 0)
WINDOW = Window(0, 10_000)


def pay(pid: str, gross: int = 1_000, fee: int = 6) -> BatchItem:
    return BatchItem(pid, gross, fee, gross - fee, 1_000)


def refund(pid: str, rid: str, amount: int = 400, fee_back: int = 2) -> BatchItem:
    return BatchItem.for_refund(pid, rid, amount, fee_back, amount - fee_back, 2_000)


def test_refund_item_rules() -> None:
    item = refund("p-1", "r-1")
    assert (item.kind, item.item_id, item.payment_id) == (ITEM_REFUND, "p-1/r-1", "p-1")
    assert (item.gross_minor, item.fee_minor, item.net_minor) == (-400, -2, -398)
    assert pay("p-1").identity == (ITEM_PAYMENT, "p-1") != item.identity
    assert BatchItem.for_refund("p", "r", 5, 5, 0, 0).net_minor == 0  # every cent was fee
    bad_amounts: list[tuple[object, object, object]] = [
        (400, 2, 399), (400, -1, 401), (0, 0, 0), (-5, 0, -5), (4, 5, -1), (400, 2.0, 398),
        (True, 0, 1)]
    for amount, fee_back, net in bad_amounts:
        with pytest.raises(BatchError):
            BatchItem.for_refund("p-1", "r-1", amount, fee_back, net, 0)  # type: ignore[arg-type]
    for bad_rid in ("", "r/1", "r 1"):
        with pytest.raises(BatchError):
            BatchItem.for_refund("p-1", bad_rid, 400, 2, 398, 0)
    for bad in (
        ("p-1", -400, -2, -398, 0, "REFUND", "p-2/r-1"),  # another payment's refund
        ("p-1", -400, -2, -398, 0, "REFUND", "p-1"),  # not a refund source id
        ("p-1", -400, -2, -398, 0, "REFUND", ""),
        ("p-1", 400, 2, 398, 0, "REFUND", "p-1/r-1"),  # positive refund
        ("p-1", -400, 2, -402, 0, "REFUND", "p-1/r-1"),  # fee taken on a refund
        ("p-1", -400, -2, -398, 0, "PAYMENT", "p-1"),  # negative payment
        ("p-1", 400, 2, 398, 0, "PAYMENT", "p-2"),  # payment item_id is its payment_id
        ("p-1", 400, 2, 398, 0, "REVERSAL", "p-1"),  # unknown kind
    ):
        with pytest.raises(BatchError):
            BatchItem(*bad)


def pay_back(pid: str, gross: int = 1_000, fee: int = 6) -> BatchItem:
    """The channel's reversal of pay(pid, gross, fee)."""
    return BatchItem.for_payment_reversal(pid, gross, fee, gross - fee, 3_000)


def refund_back(pid: str, rid: str, amount: int = 400, fee_back: int = 2) -> BatchItem:
    """The channel's reversal of refund(pid, rid, amount, fee_back)."""
    return BatchItem.for_refund_reversal(pid, rid, amount, fee_back, amount - fee_back, 4_000)


def test_reversal_items_mirror_what_they_reverse() -> None:
    payment_back = pay_back("p-1")
    assert (payment_back.kind, payment_back.item_id, payment_back.payment_id) == (
        ITEM_PAYMENT_REVERSAL, "p-1", "p-1")
    assert (payment_back.gross_minor, payment_back.fee_minor, payment_back.net_minor) == (
        -1000, -6, -994)
    refund_came_back = refund_back("p-1", "r-1")
    assert (refund_came_back.kind, refund_came_back.item_id, refund_came_back.payment_id) == (
        ITEM_REFUND_REVERSAL, "p-1/r-1", "p-1")
    assert (refund_came_back.gross_minor, refund_came_back.fee_minor,
            refund_came_back.net_minor) == (400, 2, 398)
    # Four identities, however alike the ids: nothing reversed is mistaken for its original.
    identities = {pay("p-1").identity, payment_back.identity, refund("p-1", "r-1").identity,
                  refund_came_back.identity}
    assert len(identities) == 4
    assert BatchItem.for_payment_reversal("p", 5, 5, 0, 0).net_minor == 0  # all of it fee
    assert BatchItem.for_refund_reversal("p", "r", 5, 0, 5, 0).fee_minor == 0
    bad_splits: list[tuple[object, object, object]] = [
        (400, 2, 399), (400, -1, 401), (0, 0, 0), (-5, 0, -5), (4, 5, -1), (400, 2.0, 398),
        (True, 0, 1), (400, None, 400)]
    for gross, fee, net in bad_splits:
        with pytest.raises(BatchError):
            BatchItem.for_payment_reversal("p-1", gross, fee, net, 0)  # type: ignore[arg-type]
        with pytest.raises(BatchError):
            BatchItem.for_refund_reversal("p-1", "r-1", gross, fee, net,  # type: ignore[arg-type]
                                          0)
    for bad_rid in ("", "r/1", "r 1"):
        with pytest.raises(BatchError):
            BatchItem.for_refund_reversal("p-1", bad_rid, 400, 2, 398, 0)
    for bad in (
        ("p-1", 1000, 6, 994, 0, "PAYMENT_REVERSAL", "p-1"),  # positive payment reversal
        ("p-1", -1000, 6, -1006, 0, "PAYMENT_REVERSAL", "p-1"),  # fee taken on a reversal
        ("p-1", -1000, -6, -994, 0, "PAYMENT_REVERSAL", "p-2"),  # another payment's
        ("p-1", -1000, -6, -994, 0, "PAYMENT_REVERSAL", "p-1/r-1"),  # a refund's id
        ("p-1", -1000, -6, -994, 0, "PAYMENT_REVERSAL", ""),  # no default item_id but PAYMENT's
        ("p-1", -1000, -6, -995, 0, "PAYMENT_REVERSAL", "p-1"),  # fee + net != gross
        ("p-1", -400, -2, -398, 0, "REFUND_REVERSAL", "p-1/r-1"),  # negative refund reversal
        ("p-1", 400, -2, 402, 0, "REFUND_REVERSAL", "p-1/r-1"),  # fee kept on a reversal
        ("p-1", 400, 2, 398, 0, "REFUND_REVERSAL", "p-2/r-1"),  # another payment's refund
        ("p-1", 400, 2, 398, 0, "REFUND_REVERSAL", "p-1"),  # not a refund source id
        ("p-1", 0, 0, 0, 0, "REFUND_REVERSAL", "p-1/r-1"),
    ):
        with pytest.raises(BatchError):
            BatchItem(*bad)


def test_item_dicts_round_trip_and_old_ones_read_as_payments() -> None:
    for item in (pay("p-1"), refund("p-1", "r-1"), pay_back("p-1"), refund_back("p-1", "r-1")):
        assert BatchItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item
    old = {"payment_id": "p-1", "gross_minor": 1000, "fee_minor": 6, "net_minor": 994,
           "matched_at_ms": 1_000}
    assert BatchItem.from_dict(old) == pay("p-1")
    assert BatchItem.from_dict({**old, "item_id": None}) == pay("p-1")  # Avro null
    with pytest.raises(BatchError):
        BatchItem.from_dict({**old, "extra": 1})


def test_payout_split() -> None:
    assert payout_split(100, 0) == (100, 0)
    assert payout_split(100, -30) == (70, 0)
    assert payout_split(100, -130) == (0, -30)
    assert payout_split(-50, 0) == (0, -50)
    assert payout_split(-50, -10) == (0, -60)
    assert payout_split(0, 0) == (0, 0)
    for bad in ((1, 1), (1.0, 0), (1, True)):
        with pytest.raises(BatchError):
            payout_split(*bad)


def test_a_batch_nets_refunds_and_closes_with_its_carried_balance() -> None:
    batch = OpenBatch.new("m1", "CNY", WINDOW)
    batch = batch.add(pay("p-1")).add(refund("p-1", "r-1")).add(refund("p-0", "r-1"))
    assert ("PAYMENT", "p-1") in batch and "p-1" in batch and ("REFUND", "p-1/r-1") in batch
    assert "p-1/r-1" not in batch  # a refund is never found by a payment id
    assert batch.add(refund("p-1", "r-1")).duplicates_ignored == 1
    with pytest.raises(BatchConflict):
        batch.add(refund("p-1", "r-1", amount=401, fee_back=2))
    closed = batch.close(12_000, carried_in_minor=-100)
    assert (closed.payment_count, closed.refund_count) == (1, 2)
    assert (closed.gross_minor, closed.fee_minor, closed.net_minor) == (200, 2, 198)
    assert (closed.carried_in_minor, closed.payout_minor, closed.carried_out_minor) == (
        -100, 98, 0)
    negative = batch.close(12_000, carried_in_minor=-300)
    assert (negative.payout_minor, negative.carried_out_minor) == (0, -102)
    totals = BatchTotals.new("m1", "CNY", WINDOW)
    for item in batch.items:
        totals = totals.add(item)
    assert totals == BatchTotals.of(batch) and totals.item_count == 3
    assert totals.close(12_000, batch.items, -300) == negative
    with pytest.raises(BatchError):
        batch.close(12_000, carried_in_minor=5)  # a carried balance is never positive


def test_closed_batch_invariants_are_checked_on_read_back() -> None:
    batch = OpenBatch.new("m1", "CNY", WINDOW).add(pay("p-1")).add(refund("p-1", "r-1"))
    closed = batch.close(12_000, carried_in_minor=-1_000)
    data = json.loads(json.dumps(closed.to_dict()))
    assert SettlementBatch.from_dict(data) == closed
    for tampered in ({"payout_minor": 1}, {"carried_out_minor": 0}, {"carried_in_minor": 5},
                     {"refund_count": 0}, {"payment_count": 2}, {"net_minor": 0},
                     {"refund_count": 2}):
        with pytest.raises(BatchInvariantError):
            SettlementBatch.from_dict({**data, **tampered})
    # A batch written before refunds existed: no refunds, nothing carried, its net paid.
    old = {k: v for k, v in data.items()
           if k not in ("refund_count", "carried_in_minor", "payout_minor",
                        "carried_out_minor")}
    old_items = [{k: v for k, v in pay("p-1").to_dict().items() if k not in ("kind", "item_id")}]
    paid = SettlementBatch.from_dict({**old, "items": old_items, "gross_minor": 1000,
                                      "fee_minor": 6, "net_minor": 994})
    assert (paid.refund_count, paid.carried_in_minor, paid.payout_minor,
            paid.carried_out_minor) == (0, 0, 994, 0)


def test_totals_formats_and_sign_rules() -> None:
    totals = BatchTotals.new("m1", "CNY", WINDOW).add(pay("p-1")).add(refund("p-1", "r-1"))
    data = json.loads(json.dumps(totals.to_dict()))
    assert data["v"] == 4 and BatchTotals.from_dict(data) == totals
    disputes = ("dispute_hold_count", "dispute_release_count", "dispute_fee_count")
    v1 = {k: v for k, v in BatchTotals.new("m1", "CNY", WINDOW).add(pay("p-1")).to_dict().items()
          if k not in ("refund_count", "payment_reversal_count", "refund_reversal_count",
                       *disputes)}
    assert BatchTotals.from_dict({**v1, "v": 1}).refund_count == 0
    with pytest.raises(BatchError):
        BatchTotals.from_dict({**data, "v": 1})  # format 1 had no refunds
    v2 = {k: v for k, v in data.items()
          if k not in ("payment_reversal_count", "refund_reversal_count", *disputes)}
    assert BatchTotals.from_dict({**v2, "v": 2}) == totals
    with pytest.raises(BatchError):
        BatchTotals.from_dict({**data, "v": 2})  # format 2 had no reversals
    v3 = {k: v for k, v in data.items() if k not in disputes}
    assert BatchTotals.from_dict({**v3, "v": 3}) == totals
    with pytest.raises(BatchError):
        BatchTotals.from_dict({**data, "v": 3})  # format 3 had no dispute items
    base = BatchTotals.new("m1", "CNY", WINDOW).to_dict()
    for bad in (
        {"payment_count": 1, "gross_minor": -10, "fee_minor": 0, "net_minor": -10},
        {"payment_count": 1, "gross_minor": 0, "fee_minor": 0, "net_minor": 0},
        {"refund_count": 1, "gross_minor": 10, "fee_minor": 0, "net_minor": 10},
        {"refund_count": 1, "gross_minor": 0, "fee_minor": 0, "net_minor": 0},
        {"gross_minor": 5, "fee_minor": 0, "net_minor": 5},
        {"refund_count": -1},
        {"payment_reversal_count": -1},
        {"refund_reversal_count": True},
        # Reversals of payments only subtract, of refunds only add, like refunds and payments.
        {"payment_reversal_count": 1, "gross_minor": 10, "fee_minor": 0, "net_minor": 10},
        {"payment_reversal_count": 1, "gross_minor": 0, "fee_minor": 0, "net_minor": 0},
        {"refund_count": 1, "payment_reversal_count": 1, "gross_minor": -10, "fee_minor": 1,
         "net_minor": -11},
        {"refund_reversal_count": 1, "gross_minor": -10, "fee_minor": 0, "net_minor": -10},
        {"refund_reversal_count": 1, "gross_minor": 0, "fee_minor": 0, "net_minor": 0},
        {"payment_count": 1, "refund_reversal_count": 1, "gross_minor": 10, "fee_minor": -1,
         "net_minor": 11},
    ):
        with pytest.raises(BatchError):
            BatchTotals.from_dict({**base, **bad})
    mixed = {"payment_count": 1, "refund_count": 1, "gross_minor": -10, "fee_minor": 1,
             "net_minor": -11}
    assert BatchTotals.from_dict({**base, **mixed}).net_minor == -11
    for mixed in (
        {"payment_count": 1, "payment_reversal_count": 1, "gross_minor": 0, "fee_minor": 0,
         "net_minor": 0},  # a payment and its reversal
        {"refund_count": 1, "refund_reversal_count": 1, "gross_minor": 0, "fee_minor": 0,
         "net_minor": 0},  # a refund and its reversal
        {"payment_reversal_count": 1, "refund_reversal_count": 1, "gross_minor": -10,
         "fee_minor": 1, "net_minor": -11},
    ):
        assert BatchTotals.from_dict({**base, **mixed}).item_count == 2


def test_reversals_net_in_a_batch_and_count_in_neither_published_count() -> None:
    batch = (OpenBatch.new("m1", "CNY", WINDOW)
             .add(pay("p-1")).add(pay_back("p-1"))  # 0
             .add(pay("p-2")).add(refund("p-2", "r-1")).add(refund_back("p-2", "r-1")))  # 994
    assert "p-1" in batch and ("PAYMENT_REVERSAL", "p-1") in batch
    assert ("REFUND_REVERSAL", "p-2/r-1") in batch and ("REFUND", "p-2/r-1") in batch
    assert batch.add(pay_back("p-1")).duplicates_ignored == 1
    with pytest.raises(BatchConflict):
        batch.add(pay_back("p-1", gross=999))
    assert (batch.payment_count, batch.refund_count, batch.payment_reversal_count,
            batch.refund_reversal_count) == (2, 1, 1, 1)
    closed = batch.close(12_000, carried_in_minor=-100)
    assert (closed.payment_count, closed.refund_count) == (2, 1)  # the published counts
    assert (closed.payment_reversal_count, closed.refund_reversal_count) == (1, 1)
    assert (closed.gross_minor, closed.fee_minor, closed.net_minor) == (1000, 6, 994)
    assert (closed.payout_minor, closed.carried_out_minor) == (894, 0)
    data = json.loads(json.dumps(closed.to_dict()))
    assert SettlementBatch.from_dict(data) == closed
    for tampered in ({"payment_count": 3}, {"refund_count": 2}, {"net_minor": 1000},
                     {"items": data["items"][:-1]}):
        with pytest.raises(BatchInvariantError):
            SettlementBatch.from_dict({**data, **tampered})
    totals = BatchTotals.new("m1", "CNY", WINDOW)
    for item in batch.items:
        totals = totals.add(item)
    assert totals == BatchTotals.of(batch) and totals.item_count == 5
    assert BatchTotals.from_dict(json.loads(json.dumps(totals.to_dict()))) == totals
    assert totals.close(12_000, batch.items, -100) == closed
    # The totals count every kind, so an item swapped for another kind of the same sums fails.
    wrong_kind = [*batch.items[:-1], BatchItem(
        "p-2/r-1", 400, 2, 398, 4_000)]  # a PAYMENT with the reversal's sums
    with pytest.raises(BatchInvariantError):
        totals.close(12_000, wrong_kind, -100)
    # A payment reversed in a later batch than its payment: that batch is negative, carried.
    later = OpenBatch.new("m1", "CNY", Window(10_000, 20_000)).add(pay_back("p-9"))
    negative = later.close(22_000, carried_in_minor=0)
    assert (negative.payment_count, negative.refund_count, negative.payout_minor,
            negative.carried_out_minor) == (0, 0, 0, -994)


def test_open_batch_of_format_1_is_read() -> None:
    batch = OpenBatch.new("m1", "CNY", WINDOW).add(pay("p-1"))
    data = batch.to_dict()
    old = {**data, "v": 1, "items": [{k: v for k, v in i.items() if k not in ("kind", "item_id")}
                                     for i in data["items"]]}
    assert OpenBatch.from_dict(old) == batch


KEYS = (("m1", "CNY"), ("m1", "JPY"), ("m2", "CNY"))
KINDS = (ITEM_PAYMENT, ITEM_REFUND, ITEM_PAYMENT_REVERSAL, ITEM_REFUND_REVERSAL,
         ITEM_DISPUTE_HOLD, ITEM_DISPUTE_RELEASE, ITEM_DISPUTE_FEE)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.sampled_from(KINDS),
        st.one_of(st.integers(1, 500), st.integers(1, 10**12)),  # gross or refunded amount
        st.integers(0, 10_000),  # fee in basis points of it
        st.integers(0, 120_000),  # decided at
        st.integers(0, 20_000),  # processing delay
    ),
    max_size=60,
)


def of_kind(kind: str, pid: str, amount: int, fee: int, at_ms: int) -> BatchItem:
    """An item of this kind for an amount and fee of it (a refund's: refund id "r"; a
    dispute's: dispute id "d", its fee ignored)."""
    if kind == ITEM_DISPUTE_HOLD:
        return BatchItem.for_dispute_hold(pid, "d", amount, at_ms)
    if kind == ITEM_DISPUTE_RELEASE:
        return BatchItem.for_dispute_release(pid, "d", amount, at_ms)
    if kind == ITEM_DISPUTE_FEE:
        return BatchItem.for_dispute_fee(pid, "d", amount, at_ms)
    if kind == ITEM_PAYMENT:
        return BatchItem(pid, amount, fee, amount - fee, at_ms)
    if kind == ITEM_REFUND:
        return BatchItem.for_refund(pid, "r", amount, fee, amount - fee, at_ms)
    if kind == ITEM_PAYMENT_REVERSAL:
        return BatchItem.for_payment_reversal(pid, amount, fee, amount - fee, at_ms)
    return BatchItem.for_refund_reversal(pid, "r", amount, fee, amount - fee, at_ms)


@given(EVENTS)
def test_carry_forward_against_a_running_balance_model(
    events: list[tuple[tuple[str, str], str, int, int, int, int]],
) -> None:
    """Items of every kind (payments, refunds, reversals of either, disputes' holds, releases
    and fees) over windows per merchant
    and currency, batches closed in order as time passes: every payout >= 0, every carried
    balance <= 0, Σ payouts = Σ nets - last carried_out, and payouts equal to the model's,
    batch by batch."""
    open_batches: dict[str, OpenBatch] = {}
    closed_starts: dict[tuple[str, str], set[int]] = defaultdict(set)
    carried: dict[tuple[str, str], int] = defaultdict(int)
    published: list[SettlementBatch] = []

    def close_due(now_ms: int) -> None:
        for batch in due_batches(open_batches.values(), now_ms, POLICY):
            key = (batch.merchant_id, batch.currency)
            closed = batch.close(now_ms, carried_in_minor=carried[key])
            # What is published reads back the same, every invariant checked again.
            assert SettlementBatch.from_dict(json.loads(json.dumps(closed.to_dict()))) == closed
            carried[key] = closed.carried_out
            published.append(closed)
            closed_starts[key].add(batch.window_start_ms)
            del open_batches[batch.batch_id]

    ordered = sorted(enumerate(events), key=lambda e: e[1][4] + e[1][5])
    for index, (key, kind, amount, fee_bps, decided_at, delay) in ordered:
        now_ms = decided_at + delay
        close_due(now_ms)
        window = assign_window(decided_at, now_ms, POLICY, closed=closed_starts[key].__contains__)
        bid = batch_id(*key, window.start_ms)
        batch = open_batches.get(bid) or OpenBatch.new(*key, window)
        fee = 0 if kind in DISPUTE_ITEM_KINDS else amount * fee_bps // 10_000
        net = amount - fee
        item = of_kind(kind, f"p{index}", amount, fee, decided_at)
        assert item.kind == kind and abs(item.net_minor) == net
        open_batches[bid] = batch.add(item)
    close_due(10**13)
    assert not open_batches

    # The model: a running balance per key, paid out whole whenever it is positive.
    balance: dict[tuple[str, str], int] = defaultdict(int)
    for closed in published:
        key = (closed.merchant_id, closed.currency)
        assert closed.payout >= 0 and closed.carried_in_minor <= 0 and closed.carried_out <= 0
        assert closed.carried_in_minor == balance[key]
        balance[key] += sum(i.net_minor for i in closed.items)
        model_payout = max(balance[key], 0)
        balance[key] -= model_payout
        assert (closed.payout_minor, closed.carried_out_minor) == (model_payout, balance[key])
    for key in KEYS:
        batches = [b for b in published if (b.merchant_id, b.currency) == key]
        nets = sum(b.net_minor for b in batches)
        last_carried = batches[-1].carried_out if batches else 0
        assert sum(b.payout for b in batches) == nets - last_carried
        assert last_carried == carried[key] == balance[key]
    # Every item in exactly one batch, and counted where its kind is.
    settled = [i.identity for b in published for i in b.items]
    assert len(settled) == len(set(settled)) == len(events)
    kinds = [kind for _key, kind, *_rest in events]
    assert sum(b.payment_count for b in published) == kinds.count(ITEM_PAYMENT)
    assert sum(b.refund_count for b in published) == kinds.count(ITEM_REFUND)
    assert sum(b.payment_reversal_count for b in published) == kinds.count(
        ITEM_PAYMENT_REVERSAL)
    assert sum(b.refund_reversal_count for b in published) == kinds.count(
        ITEM_REFUND_REVERSAL)
    for kind in DISPUTE_ITEM_KINDS:
        assert sum(b.count(kind) for b in published) == kinds.count(kind)
