"""The settle stage netting the channel's reversals: a PAYMENT_REVERSED result becomes a
negative PAYMENT_REVERSAL item, a REFUND_REVERSED one a positive REFUND_REVERSAL item, each
netted in its merchant and currency's open batch beside what it reverses, replays dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stream_processors.settle_stage import (
    ADDED,
    DEAD_LETTERED,
    DUPLICATE,
    IGNORED,
    ITEMIZED,
    batch_amounts,
)
from stream_processors.settle_table import item_key, item_tag
from tests.support.settle import ITEMS, NO_DISPUTES, TICKS, W0, Harness, remembered

KEY = "m-1|CNY"


def money(batch: dict[str, Any]) -> tuple[int, ...]:
    return (batch["payment_count"], batch["refund_count"], batch["gross_minor"],
            batch["fee_minor"], batch["net_minor"], batch["carried_in_minor"],
            batch["payout_minor"], batch["carried_out_minor"])


def kinds(batch: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(i["kind"], i["item_id"], i["net_minor"]) for i in batch["items"]]


def test_a_payment_reversal_becomes_the_negative_mirror_of_its_payment_item() -> None:
    h = Harness()
    d = h.payment_reversal("p-1", gross=1000, fee=6)
    assert d.outcome == ITEMIZED
    [out] = d.outputs
    assert out.topic == ITEMS and out.key == KEY.encode()
    body = json.loads(out.value)
    assert body["v"] == 2 and body["result_id"] == "p-1:PAYMENT_REVERSED:rv-p-1"
    assert body["item"] == {"payment_id": "p-1", "gross_minor": -1000, "fee_minor": -6,
                            "net_minor": -994, "matched_at_ms": W0,
                            "kind": "PAYMENT_REVERSAL", "item_id": "p-1"}


def test_a_refund_reversal_becomes_the_positive_mirror_of_its_refund_item() -> None:
    h = Harness()
    d = h.refund_reversal("p-1", "r-1", amount=400, fee_returned=2, decided_at=W0 + 7)
    assert d.outcome == ITEMIZED
    [out] = d.outputs
    assert out.key == KEY.encode()
    body = json.loads(out.value)
    assert body["result_id"] == "p-1/r-1:REFUND_REVERSED:rv-r-1"
    assert body["item"] == {"payment_id": "p-1", "gross_minor": 400, "fee_minor": 2,
                            "net_minor": 398, "matched_at_ms": W0 + 7,
                            "kind": "REFUND_REVERSAL", "item_id": "p-1/r-1"}


def test_a_payment_and_its_reversal_in_one_window_net_to_nothing() -> None:
    h = Harness()
    assert h.settle("p-1").outcome == ADDED
    h.now = W0 + 1_000
    assert h.settle_payment_reversal("p-1").outcome == ADDED  # not the payment's duplicate
    assert remembered(h.store) == {"p-1", "PAYMENT_REVERSAL\x00p-1"}
    h.settle("p-2", expected_amount_minor=500, confirmed_amount_minor=500, fee_minor=3,
             net_minor=497)
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    # payment_count counts PAYMENT items only: the reversal is in neither count.
    assert money(batch) == (2, 0, 500, 3, 497, 0, 497, 0)
    assert kinds(batch) == [("PAYMENT", "p-1", 994), ("PAYMENT_REVERSAL", "p-1", -994),
                            ("PAYMENT", "p-2", 497)]


def test_a_payment_reversed_after_its_batch_closed_is_carried_and_absorbed() -> None:
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    [first] = h.batches(h.tick())
    assert money(first) == (1, 0, 1000, 6, 994, 0, 994, 0)
    h.now = W0 + 16_000
    h.settle_payment_reversal("p-1")
    h.now = W0 + 25_000
    [second] = h.batches(h.tick())
    assert money(second) == (0, 0, -1000, -6, -994, 0, 0, -994)
    assert kinds(second) == [("PAYMENT_REVERSAL", "p-1", -994)]
    assert h.store[KEY]["carried_minor"] == -994
    h.now = W0 + 26_000
    h.settle("p-2", expected_amount_minor=2000, confirmed_amount_minor=2000, fee_minor=12,
             net_minor=1988)
    h.now = W0 + 35_000
    [third] = h.batches(h.tick())
    assert money(third) == (1, 0, 2000, 12, 1988, -994, 994, 0)


def test_a_refund_that_came_back_gives_the_merchant_its_net_again() -> None:
    h = Harness()
    h.settle("p-1")
    h.settle_refund("p-1", "r-1", amount=1000, fee_returned=6)
    h.now = W0 + 15_000
    [first] = h.batches(h.tick())
    assert money(first) == (1, 1, 0, 0, 0, 0, 0, 0)
    h.now = W0 + 16_000
    assert h.settle_refund_reversal("p-1", "r-1", amount=1000, fee_returned=6).outcome == ADDED
    assert remembered(h.store) >= {"REFUND\x00p-1/r-1", "REFUND_REVERSAL\x00p-1/r-1"}
    h.now = W0 + 25_000
    [second] = h.batches(h.tick())
    assert money(second) == (0, 0, 1000, 6, 994, 0, 994, 0)
    assert kinds(second) == [("REFUND_REVERSAL", "p-1/r-1", 994)]


def test_a_refund_reversal_pays_off_a_carried_balance() -> None:
    h = Harness()
    h.settle_refund("p-1", "r-1", amount=400, fee_returned=2)
    h.now = W0 + 15_000
    [first] = h.batches(h.tick())
    assert (first["payout_minor"], first["carried_out_minor"]) == (0, -398)
    h.now = W0 + 16_000
    h.settle_refund_reversal("p-1", "r-1", amount=400, fee_returned=2)
    h.settle_payment_reversal("p-9", gross=100, fee=1)
    h.now = W0 + 25_000
    decision = h.tick()
    [second] = h.batches(decision)
    assert money(second) == (0, 0, 300, 1, 299, -398, 0, -99)
    assert batch_amounts(decision.closed[0]) == {
        "gross": 0, "fee": 0, "net": 0, "refund_gross": 0, "refund_fee": 0, "refund_net": 0,
        "payment_reversal_gross": 100, "payment_reversal_fee": 1, "payment_reversal_net": 99,
        "refund_reversal_gross": 400, "refund_reversal_fee": 2, "refund_reversal_net": 398,
        **NO_DISPUTES, "payout": 0, "carried_out": 99}


@pytest.mark.parametrize("kind", ["PAYMENT_REVERSAL", "REFUND_REVERSAL"])
def test_replayed_reversals_are_dropped_as_duplicates_open_closed_and_restarted(
    kind: str,
) -> None:
    h = Harness()

    def reversal() -> Any:
        if kind == "PAYMENT_REVERSAL":
            return h.payment_reversal("p-1")
        return h.refund_reversal("p-1", "r-1")

    first = reversal()
    assert h.item(first.outputs[0]).outcome == ADDED
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    again = reversal()  # the result itself re-read: the same item message
    assert again.outputs[0].value == first.outputs[0].value
    h.now = W0 + 12_000  # its window past its end: a replay still finds it
    assert h.item(again.outputs[0]).outcome == DUPLICATE
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert [i["kind"] for i in batch["items"]] == [kind]
    h = h.restart()
    assert h.item(first.outputs[0]).outcome == DUPLICATE  # remembered after close + restart
    h.now = W0 + 40_000
    assert h.tick().outputs == []


def test_reversals_survive_a_restart_with_their_window_open() -> None:
    """The entry counts reversals among its items: after a restart the open window's reversal
    records are counted (not taken for the leftovers of a lost write) and closed with it."""
    h = Harness()
    h.settle("p-1")
    h.settle_payment_reversal("p-1")
    h.settle_refund_reversal("p-0", "r-1")
    h.settle("p-2")
    h = h.restart()
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert [i["kind"] for i in batch["items"]] == [
        "PAYMENT", "PAYMENT_REVERSAL", "REFUND_REVERSAL", "PAYMENT"]
    assert money(batch) == (2, 0, 1400, 8, 1392, 0, 1392, 0)


def test_a_reversal_whose_entry_write_was_lost_is_added_again_by_its_replay() -> None:
    h = Harness()
    h.settle("p-1")
    d = h.payment_reversal("p-1")
    assert h.item(d.outputs[0]).outcome == ADDED
    assert h.store.log[-2][0] == item_key(KEY, item_tag("PAYMENT_REVERSAL", "p-1"))
    h = h.restart(upto=len(h.store.log) - 1)  # the item reached the changelog, the entry not
    assert h.item(d.outputs[0]).outcome == ADDED
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert money(batch) == (1, 0, 0, 0, 0, 0, 0, 0)


def test_a_reversal_replayed_on_the_items_topic_then_a_tick_republishes_it() -> None:
    h = Harness()
    h.settle("p-1")
    h.settle_payment_reversal("p-1")
    h.settle_refund("p-2", "r-1", amount=100, fee_returned=1)
    h.settle_refund_reversal("p-2", "r-1", amount=100, fee_returned=1)
    h.now = W0 + 15_000
    closed = h.tick()
    tick_offset = h.offset
    h2 = h.restart()
    h2.now += 5_000
    replay = h2.proc.process(b"tick", b"", TICKS, 0, tick_offset)
    assert h2.batches(replay) == h.batches(closed)
    [batch] = h2.batches(replay)
    assert money(batch) == (1, 1, 0, 0, 0, 0, 0, 0) and len(batch["items"]) == 4


@pytest.mark.parametrize("over", [
    {"outcome": "REVERSAL_EXCEPTION", "fee_minor": None, "net_minor": None},
    {"outcome": "REVERSAL_EXCEPTION"},
    {"outcome": "LATE_CONFIRMATION"},
])
def test_reversal_exceptions_and_other_records_are_ignored_on_results(
    over: dict[str, Any],
) -> None:
    h = Harness()
    assert h.payment_reversal("p-1", **over).outcome == IGNORED
    assert h.store == {}


@pytest.mark.parametrize("over", [
    {"outcome": "REVERSAL_EXCEPTION", "fee_returned_minor": None, "net_minor": None},
    {"outcome": "REVERSAL_EXCEPTION"},
    {"outcome": "DUPLICATE_CONFIRMATION"},
])
def test_reversal_exceptions_and_other_records_are_ignored_on_refund_results(
    over: dict[str, Any],
) -> None:
    assert Harness().refund_reversal("p-1", "r-1", **over).outcome == IGNORED


def test_the_terminal_flag_of_a_reversal_is_not_looked_at() -> None:
    """Its money is in the record, and the ledger posts it whatever the flag says."""
    h = Harness()
    assert h.payment_reversal("p-1", terminal=True).outcome == ITEMIZED
    assert h.refund_reversal("p-1", "r-1", terminal=True).outcome == ITEMIZED


@pytest.mark.parametrize("over", [
    {"fee_minor": None},  # no fee schedule fallback: the split is the published one
    {"net_minor": None},
    {"expected_amount_minor": None},
    {"net_minor": 995},  # net != gross - fee
    {"fee_minor": -1, "net_minor": 1001},
    {"fee_minor": 1001, "net_minor": -1},  # more fee than the payment
    {"expected_amount_minor": 0, "fee_minor": 0, "net_minor": 0},
    {"merchant_id": None},
    {"expected_currency": None},
    {"payment_id": "p\x001"},
])
def test_bad_payment_reversals_are_dead_lettered_with_a_reason(over: dict[str, Any]) -> None:
    h = Harness()
    d = h.payment_reversal("p-1", **over)
    assert d.outcome == DEAD_LETTERED, (over, d)
    expected = "BAD_ITEM" if "payment_id" in over else "BAD_REVERSAL_ITEM"
    assert d.error_type == expected, (over, d)
    letter = h.decoder.decode(d.outputs[0].value)
    assert letter["stage"] == "settle" and letter["reason"] == expected
    assert h.store == {}


@pytest.mark.parametrize("over", [
    {"fee_returned_minor": None},
    {"net_minor": None},
    {"amount_minor": None},
    {"net_minor": 399},
    {"fee_returned_minor": -1, "net_minor": 401},
    {"fee_returned_minor": 500, "net_minor": -100},
    {"amount_minor": 0, "fee_returned_minor": 0, "net_minor": 0},
    {"merchant_id": None},
    {"currency": None},
    {"refund_id": "r/1"},
])
def test_bad_refund_reversals_are_dead_lettered_with_a_reason(over: dict[str, Any]) -> None:
    h = Harness()
    d = h.refund_reversal("p-1", "r-1", **over)
    assert d.outcome == DEAD_LETTERED and d.error_type == "BAD_REVERSAL_ITEM", (over, d)
    letter = h.decoder.decode(d.outputs[0].value)
    assert letter["reason"] == "BAD_REVERSAL_ITEM"
    assert letter["error_type"] == "BadReversalItem"
    assert h.store == {}
