"""The settle stage netting refunds: REFUND items beside payments, a negative batch paying 0
and carrying its balance into the next, replays and old table formats."""

from __future__ import annotations

import json
from typing import Any

import pytest

from settlement.batches import BatchTotals
from settlement.windows import Window, batch_id
from stream_processors.settle_stage import (
    ADDED,
    DEAD_LETTERED,
    DUPLICATE,
    IGNORED,
    ITEMIZED,
    TICK_OUTBOX_KEY,
    batch_amounts,
)
from stream_processors.settle_table import item_key, item_tag
from tests.support.settle import ITEMS, NO_DISPUTES, TICKS, W0, Harness, remembered

KEY = "m-1|CNY"


def money(batch: dict[str, Any]) -> tuple[int, ...]:
    return (batch["payment_count"], batch["refund_count"], batch["gross_minor"],
            batch["fee_minor"], batch["net_minor"], batch["carried_in_minor"],
            batch["payout_minor"], batch["carried_out_minor"])


def test_a_matched_refund_becomes_a_negative_refund_item_keyed_like_payments() -> None:
    h = Harness()
    d = h.refund("p-1", "r-1", amount=400, fee_returned=2)
    assert d.outcome == ITEMIZED
    [out] = d.outputs
    assert out.topic == ITEMS and out.key == KEY.encode()
    body = json.loads(out.value)
    assert body["v"] == 2 and body["result_id"] == "p-1/r-1:MATCHED:rc-r-1"
    assert body["item"] == {"payment_id": "p-1", "gross_minor": -400, "fee_minor": -2,
                            "net_minor": -398, "matched_at_ms": W0, "kind": "REFUND",
                            "item_id": "p-1/r-1"}


def test_refund_nets_against_its_payment_in_the_same_window() -> None:
    h = Harness()
    h.settle("p-1")  # 1000, fee 6, net 994
    h.now = W0 + 2_000
    assert h.settle_refund("p-1", "r-1", amount=400, fee_returned=2).outcome == ADDED
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert money(batch) == (1, 1, 600, 4, 596, 0, 596, 0)
    assert [(i["kind"], i["item_id"], i["payment_id"], i["net_minor"]) for i in batch["items"]] \
        == [("PAYMENT", "p-1", "p-1", 994), ("REFUND", "p-1/r-1", "p-1", -398)]
    assert h.store[KEY]["carried_minor"] == 0


def test_refund_after_the_batch_closed_is_carried_and_absorbed_by_the_next_batches() -> None:
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    [first] = h.batches(h.tick())
    assert money(first) == (1, 0, 1000, 6, 994, 0, 994, 0)
    # A full refund decided after the payment's batch closed: the next window, negative.
    h.now = W0 + 16_000
    h.settle_refund("p-1", "r-1", amount=1000, fee_returned=6)
    h.now = W0 + 25_000
    [second] = h.batches(h.tick())
    assert second["batch_id"] == batch_id("m-1", "CNY", W0 + 10_000)
    assert money(second) == (0, 1, -1000, -6, -994, 0, 0, -994)
    assert h.store[KEY]["carried_minor"] == -994
    # A smaller payment does not pay it off: nothing is paid, the rest is carried on.
    h.now = W0 + 26_000
    h.settle("p-2", expected_amount_minor=500, confirmed_amount_minor=500, fee_minor=3,
             net_minor=497)
    h.now = W0 + 35_000
    [third] = h.batches(h.tick())
    assert money(third) == (1, 0, 500, 3, 497, -994, 0, -497)
    # The next one does, and pays the rest.
    h.now = W0 + 36_000
    h.settle("p-3")
    h.now = W0 + 45_000
    [fourth] = h.batches(h.tick())
    assert money(fourth) == (1, 0, 1000, 6, 994, -497, 497, 0)
    assert h.store[KEY]["carried_minor"] == 0
    paid = [b["payout_minor"] for b in (first, second, third, fourth)]
    assert sum(paid) == 994 - 994 + 497 + 994  # every net, nothing carried at the end


def test_replayed_refund_results_are_dropped_as_duplicates_open_or_closed() -> None:
    h = Harness()
    first = h.refund("p-1", "r-1")
    assert h.item(first.outputs[0]).outcome == ADDED
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    again = h.refund("p-1", "r-1")  # the result itself re-read: the same item message
    assert again.outputs[0].value == first.outputs[0].value
    h.now = W0 + 12_000
    assert h.item(again.outputs[0]).outcome == DUPLICATE
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert money(batch) == (0, 1, -400, -2, -398, 0, 0, -398)
    h = h.restart()
    assert h.item(first.outputs[0]).outcome == DUPLICATE  # remembered after close + restart
    h.now = W0 + 40_000
    assert h.tick().outputs == []


def test_a_refund_id_never_collides_with_a_payment_id() -> None:
    """A payment whose id looks like a refund's source id is another item."""
    h = Harness()
    assert h.settle("p-1/r-1").outcome == ADDED
    assert h.settle_refund("p-1", "r-1").outcome == ADDED
    assert item_key(KEY, item_tag("PAYMENT", "p-1/r-1")) != item_key(
        KEY, item_tag("REFUND", "p-1/r-1"))
    assert remembered(h.store) == {"p-1/r-1", "REFUND\x00p-1/r-1"}
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert [(i["kind"], i["item_id"]) for i in batch["items"]] == [
        ("PAYMENT", "p-1/r-1"), ("REFUND", "p-1/r-1")]


@pytest.mark.parametrize(
    "over",
    [
        {"outcome": "DECLINED", "fee_returned_minor": None, "net_minor": None},
        {"outcome": "MISSING_CONFIRMATION", "confirmation_id": None},
        {"outcome": "DUPLICATE_CONFIRMATION", "terminal": False},
        {"outcome": "AMOUNT_MISMATCH"},
    ],
)
def test_other_refund_outcomes_are_ignored(over: dict[str, Any]) -> None:
    assert Harness().refund("p-1", "r-1", **over).outcome == IGNORED


@pytest.mark.parametrize(
    "over",
    [
        {"net_minor": 399},  # net != amount - fee_returned
        {"fee_returned_minor": -1, "net_minor": 401},  # fee returned < 0
        {"fee_returned_minor": None},
        {"net_minor": None},
        {"amount_minor": None},
        {"amount_minor": 0, "fee_returned_minor": 0, "net_minor": 0},
        {"fee_returned_minor": 500, "net_minor": -100},  # more fee back than refunded
        {"merchant_id": None},
        {"currency": None},
        {"refund_id": "r/1"},  # not a refund id
    ],
)
def test_bad_refund_results_are_dead_lettered_with_a_reason(over: dict[str, Any]) -> None:
    h = Harness()
    d = h.refund("p-1", "r-1", **over)
    assert d.outcome == DEAD_LETTERED and d.error_type == "BAD_REFUND_ITEM", (over, d)
    letter = h.decoder.decode(d.outputs[0].value)
    assert letter["stage"] == "settle" and letter["reason"] == "BAD_REFUND_ITEM"
    assert letter["error_type"] == "BadRefundItem"
    assert h.store == {}


def test_a_replayed_tick_republishes_the_same_carried_batches() -> None:
    """The closes reached the changelog, the batches never reached their topic: the restarted
    worker re-reads the tick and re-publishes the very same batches, carried fields too."""
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    h.tick()
    h.now = W0 + 16_000
    h.settle_refund("p-1", "r-1", amount=1000, fee_returned=6)
    h.now = W0 + 25_000
    h.tick()
    h.now = W0 + 26_000
    h.settle("p-2", expected_amount_minor=500, confirmed_amount_minor=500, fee_minor=3,
             net_minor=497)
    h.settle_refund("p-2", "r-2", amount=100, fee_returned=1)
    h.now = W0 + 35_000
    closed = h.tick()
    [batch] = h.batches(closed)
    assert money(batch) == (1, 1, 400, 2, 398, -994, 0, -596)
    tick_offset = h.offset
    h2 = h.restart()
    h2.now += 5_000
    replay = h2.proc.process(b"tick", b"", TICKS, 0, tick_offset)
    assert [o.value[5:] for o in replay.outputs] == [o.value[5:] for o in closed.outputs]
    assert h2.batches(replay) == [batch]
    assert h2.store[KEY]["carried_minor"] == -596  # the replay changed nothing
    assert h2.tick().outputs == []


def test_an_idle_key_with_a_carried_balance_is_kept_until_a_batch_absorbs_it() -> None:
    h = Harness()  # idle eviction after 60 s
    h.settle_refund("p-1", "r-1", amount=1000, fee_returned=6)
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert batch["carried_out_minor"] == -994
    h.now += 60_000
    assert h.tick().outputs == []
    entry = h.store[KEY]
    assert entry["carried_minor"] == -994 and entry["recent"] == []
    assert remembered(h.store) == set()  # the closed window's ids are gone, the debt is not
    h.now += 10 * 60_000
    h.tick()
    h = h.restart()
    h.now += 60_000
    assert h.tick().outputs == [] and h.store[KEY]["carried_minor"] == -994
    start = h.now
    h.settle("p-2", decided_at=start)
    h.now = start + 15_000
    [absorbing] = h.batches(h.tick())
    assert money(absorbing) == (1, 0, 1000, 6, 994, -994, 0, 0)
    h.now += 60_000
    h.tick()
    assert [k for k in h.store if not k.startswith(TICK_OUTBOX_KEY)] == []  # now evicted


def test_a_version_2_entry_and_version_1_item_messages_are_read_and_migrated() -> None:
    h = Harness()
    closed_start, open_start = W0 - 10_000, W0
    totals = BatchTotals.new("m-1", "CNY", Window(open_start, open_start + 10_000))
    old_totals = {k: v for k, v in totals.to_dict().items()
                  if k not in ("refund_count", "payment_reversal_count", "refund_reversal_count",
                               "dispute_hold_count", "dispute_release_count",
                               "dispute_fee_count")}
    old_totals.update(v=1, payment_count=1, gross_minor=1000, fee_minor=6, net_minor=994)
    h.store[KEY] = {
        "v": 2, "partition": 0, "merchant_id": "m-1", "currency": "CNY",
        "open": {str(open_start): old_totals}, "last_closed_start_ms": closed_start,
        "last_closed_at_ms": W0, "recent": [[closed_start, 1]]}
    old_item = {"payment_id": "p-old", "gross_minor": 1000, "fee_minor": 6, "net_minor": 994,
                "matched_at_ms": W0}
    h.store[item_key(KEY, "p-old")] = {"partition": 0, "key": KEY,
                                       "window_start_ms": open_start, "seq": 0,
                                       "item": old_item}
    h.store[item_key(KEY, "p-closed")] = {"partition": 0, "key": KEY,
                                          "window_start_ms": closed_start, "seq": 0,
                                          "item": {**old_item, "payment_id": "p-closed"}}
    # An item message written before kinds existed (format 1) is a payment.
    v1 = {"v": 1, "merchant_id": "m-1", "currency": "CNY", "result_id": "r",
          "item": {**old_item, "payment_id": "p-v1", "matched_at_ms": W0 + 1}}
    assert h.proc.process(KEY.encode(), json.dumps(v1).encode(), ITEMS, 0, 50).outcome == ADDED
    entry = h.store[KEY]
    assert entry["v"] == 3 and entry["carried_minor"] == 0
    assert entry["recent"] == [[closed_start, 1, 0]]
    assert entry["open"][str(open_start)]["v"] == 4
    assert h.settle("p-closed", decided_at=W0 - 5_000).outcome == DUPLICATE
    assert h.settle("p-old").outcome == DUPLICATE
    assert h.settle_refund("p-old", "r-1").outcome == ADDED
    h = h.restart()
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert [(i["kind"], i["item_id"]) for i in batch["items"]] == [
        ("PAYMENT", "p-old"), ("PAYMENT", "p-v1"), ("REFUND", "p-old/r-1")]
    assert money(batch) == (2, 1, 1600, 10, 1590, 0, 1590, 0)


def test_a_version_1_message_with_kinds_is_refused() -> None:
    h = Harness()
    v1 = {"v": 1, "merchant_id": "m-1", "currency": "CNY", "result_id": "r",
          "item": {"payment_id": "p", "gross_minor": 10, "fee_minor": 0, "net_minor": 10,
                   "matched_at_ms": W0, "kind": "PAYMENT", "item_id": "p"}}
    d = h.proc.process(KEY.encode(), json.dumps(v1).encode(), ITEMS, 0, 9)
    assert d.outcome == DEAD_LETTERED and d.error_type == "BAD_ITEM"


def test_batch_amounts_are_counter_increments() -> None:
    h = Harness()
    h.settle("p-1")
    h.settle_refund("p-1", "r-1", amount=1000, fee_returned=6)
    h.settle_refund("p-0", "r-9", amount=300, fee_returned=2)
    h.now = W0 + 15_000
    [closed] = h.tick().closed
    assert (closed.net_minor, closed.payout_minor, closed.carried_out_minor) == (-298, 0, -298)
    assert batch_amounts(closed) == {
        "gross": 1000, "fee": 6, "net": 994, "refund_gross": 1300, "refund_fee": 8,
        "refund_net": 1292, "payment_reversal_gross": 0, "payment_reversal_fee": 0,
        "payment_reversal_net": 0, "refund_reversal_gross": 0, "refund_reversal_fee": 0,
        "refund_reversal_net": 0, **NO_DISPUTES, "payout": 0, "carried_out": 298}
