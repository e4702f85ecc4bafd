"""The settle stage netting disputes and manual matches: an OPENED dispute result becomes a
negative DISPUTE_HOLD item, a WON one a positive DISPUTE_RELEASE, a LOST one with a fee a
negative DISPUTE_FEE; a MATCHED_MANUAL result a PAYMENT item at its settled amount. Each nets
in its merchant and currency's open batch, negative balances carried, replays dropped."""

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
from tests.support.settle import W0, Harness

KEY = "m-1|CNY"


def money(batch: dict[str, Any]) -> tuple[int, ...]:
    return (batch["payment_count"], batch["refund_count"], batch["gross_minor"],
            batch["fee_minor"], batch["net_minor"], batch["carried_in_minor"],
            batch["payout_minor"], batch["carried_out_minor"])


def kinds(batch: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(i["kind"], i["item_id"], i["net_minor"]) for i in batch["items"]]


@pytest.mark.parametrize(("event", "fee", "kind", "net"), [
    ("OPENED", 0, "DISPUTE_HOLD", -300),
    ("WON", 0, "DISPUTE_RELEASE", 300),
    ("LOST", 150, "DISPUTE_FEE", -150),
])
def test_a_dispute_result_becomes_its_signed_feeless_item(event: str, fee: int, kind: str,
                                                          net: int) -> None:
    h = Harness()
    d = h.dispute("p-1", "d-1", event, amount=300, fee=fee, decided_at=W0 + 3)
    assert d.outcome == ITEMIZED
    [out] = d.outputs
    assert out.key == KEY.encode()
    body = json.loads(out.value)
    assert body["result_id"] == f"p-1/d-1:{event}:e-d-1-{event}"
    assert body["item"] == {"payment_id": "p-1", "gross_minor": net, "fee_minor": 0,
                            "net_minor": net, "matched_at_ms": W0 + 3, "kind": kind,
                            "item_id": "p-1/d-1"}


@pytest.mark.parametrize(("event", "over"), [
    ("LOST", {}),  # lost without a fee: its amount left with the hold, nothing more
    ("STAGE_CHANGED", {}),
    ("STAGE_CHANGED", {"status": "WON"}),  # first seen won: nothing was held
    ("REJECTED", {"reasons": [{"code": "PAYMENT_UNKNOWN", "detail": "x"}],
                  "merchant_id": None}),
])
def test_dispute_results_that_move_no_money_are_ignored(event: str,
                                                         over: dict[str, Any]) -> None:
    h = Harness()
    assert h.dispute("p-1", "d-1", event, **over).outcome == IGNORED
    assert h.store == {}


def test_a_hold_and_a_lost_fee_net_against_the_payment_in_one_batch() -> None:
    h = Harness()
    h.settle("p-1")
    assert h.settle_dispute("p-1", "d-1", "OPENED", amount=300).outcome == ADDED
    assert h.settle_dispute("p-1", "d-1", "LOST", amount=300, fee=150).outcome == ADDED
    h.now = W0 + 15_000
    decision = h.tick()
    [batch] = h.batches(decision)
    # The dispute's items count in neither payment_count nor refund_count.
    assert money(batch) == (1, 0, 550, 6, 544, 0, 544, 0)
    assert kinds(batch) == [("PAYMENT", "p-1", 994), ("DISPUTE_HOLD", "p-1/d-1", -300),
                            ("DISPUTE_FEE", "p-1/d-1", -150)]
    amounts = batch_amounts(decision.closed[0])
    assert (amounts["dispute_hold_net"], amounts["dispute_fee_net"],
            amounts["dispute_release_net"], amounts["payout"]) == (300, 150, 0, 544)


def test_a_hold_after_payout_is_carried_and_its_release_pays_it_back() -> None:
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    [first] = h.batches(h.tick())
    assert money(first) == (1, 0, 1000, 6, 994, 0, 994, 0)
    h.now = W0 + 16_000
    h.settle_dispute("p-1", "d-1", "OPENED", amount=1000)
    h.now = W0 + 25_000
    [second] = h.batches(h.tick())
    assert money(second) == (0, 0, -1000, 0, -1000, 0, 0, -1000)
    assert h.store[KEY]["carried_minor"] == -1000
    h.now = W0 + 26_000
    h.settle_dispute("p-1", "d-1", "WON", amount=1000)
    h.settle("p-2", expected_amount_minor=500, confirmed_amount_minor=500, fee_minor=3,
             net_minor=497)
    h.now = W0 + 35_000
    [third] = h.batches(h.tick())
    assert money(third) == (1, 0, 1500, 3, 1497, -1000, 497, 0)
    assert kinds(third) == [("DISPUTE_RELEASE", "p-1/d-1", 1000), ("PAYMENT", "p-2", 497)]


def test_replayed_dispute_items_are_dropped_and_survive_a_restart() -> None:
    h = Harness()
    first = h.dispute("p-1", "d-1", "OPENED")
    assert h.item(first.outputs[0]).outcome == ADDED
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    released = h.dispute("p-1", "d-1", "WON")  # same item id, another kind: not a duplicate
    assert h.item(released.outputs[0]).outcome == ADDED
    h = h.restart()
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert money(batch) == (0, 0, 0, 0, 0, 0, 0, 0)
    assert [i["kind"] for i in batch["items"]] == ["DISPUTE_HOLD", "DISPUTE_RELEASE"]
    h = h.restart()
    assert h.item(released.outputs[0]).outcome == DUPLICATE  # remembered after its close


@pytest.mark.parametrize(("event", "over", "reason"), [
    ("OPENED", {"merchant_id": None}, "BAD_DISPUTE_ITEM"),
    ("OPENED", {"amount_minor": 0}, "BAD_DISPUTE_ITEM"),
    ("WON", {"amount_minor": -5}, "BAD_DISPUTE_ITEM"),
    ("LOST", {"fee_minor": -1}, "BAD_DISPUTE_ITEM"),
    ("OPENED", {"dispute_id": "d/1"}, "BAD_DISPUTE_ITEM"),
    ("OPENED", {"dispute_id": ""}, "BAD_DISPUTE_ITEM"),
    ("OPENED", {"payment_id": "p\x001"}, "BAD_ITEM"),
])
def test_bad_dispute_results_are_dead_lettered_with_a_reason(
        event: str, over: dict[str, Any], reason: str) -> None:
    h = Harness()
    d = h.dispute("p-1", "d-1", event, **over)
    assert d.outcome == DEAD_LETTERED and d.error_type == reason, (over, d)
    letter = h.decoder.decode(d.outputs[0].value)
    assert letter["stage"] == "settle" and letter["reason"] == reason
    assert h.store == {}


def test_a_manual_match_settles_a_payment_item_at_its_settled_amount() -> None:
    h = Harness()
    d = h.manual("p-1", settled=950, fee=6)
    assert d.outcome == ITEMIZED
    body = json.loads(d.outputs[0].value)
    assert body["result_id"] == "p-1:MATCHED_MANUAL:a-p-1"
    assert body["item"] == {"payment_id": "p-1", "gross_minor": 950, "fee_minor": 6,
                            "net_minor": 944, "matched_at_ms": W0, "kind": "PAYMENT",
                            "item_id": "p-1"}
    assert h.item(d.outputs[0]).outcome == ADDED
    h.settle_dispute("p-1", "d-1", "OPENED", amount=200)
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert money(batch) == (1, 0, 750, 6, 744, 0, 744, 0)


@pytest.mark.parametrize("over", [
    {"settled_amount_minor": None},
    {"fee_minor": None, "net_minor": None},  # no fee schedule fallback for a manual match
    {"net_minor": 900},  # fee + net != settled
    {"fee_minor": -1, "net_minor": 951},
    {"merchant_id": None},
])
def test_bad_manual_matches_are_dead_lettered(over: dict[str, Any]) -> None:
    h = Harness()
    d = h.manual("p-1", **over)
    assert d.outcome == DEAD_LETTERED, (over, d)
    assert h.store == {}


def test_a_manual_match_record_that_is_not_terminal_is_ignored() -> None:
    assert Harness().manual("p-1", terminal=False).outcome == IGNORED


def test_a_release_never_settles_in_an_earlier_batch_than_its_late_hold() -> None:
    # Windows of 10 s closing 5 s after their end. The hold was decided in window W0 but
    # reaches settle at W0 + 21 s (a worker was down): W0 is closed, it goes to W0 + 20 s.
    # The release was decided at W0 + 12 s, whose window is still open (grace): settled
    # there, it would pay the merchant the released amount a batch before the hold took it.
    h = Harness()
    hold = h.dispute("p-1", "d-1", "OPENED", amount=300, decided_at=W0 + 1_000)
    release = h.dispute("p-1", "d-1", "WON", amount=300, decided_at=W0 + 12_000)
    h.now = W0 + 21_000
    assert h.item(hold.outputs[0]).outcome == ADDED
    assert h.item(release.outputs[0]).outcome == ADDED
    h.now = W0 + 60_000
    batches = h.batches(h.tick())
    assert [(int(b["window_start"].timestamp() * 1000), kinds(b)) for b in batches] == [
        (W0 + 20_000, [("DISPUTE_HOLD", "p-1/d-1", -300), ("DISPUTE_RELEASE", "p-1/d-1", 300)])]
