"""The settle stage without a broker: itemizing, batching per window, closing, never twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from settlement.fees import FeeSchedule
from settlement.windows import WindowPolicy, batch_id
from stream_processors.ingest import Output
from stream_processors.settle_stage import (
    ADDED,
    DEAD_LETTERED,
    DUPLICATE,
    IGNORED,
    ITEMIZED,
    TICKED,
    SettleDecision,
    SettleProcessor,
    batch_key,
)
from stream_processors.topics import TopicNames

SIZE_S, GRACE_S = 10, 5
POLICY = WindowPolicy(SIZE_S, GRACE_S, 0)
W0 = 1_764_000_000_000  # a window start (divisible by 10 s)
TOPICS = TopicNames()
ITEMS = "settle-settle-items"
TICKS = "settle-settle-ticks"
FEES = FeeSchedule.from_spec("alipay=60,card=180")


class Harness:
    def __init__(self, ids_windows: int = 4, ids_max: int = 100_000) -> None:
        self.now = W0
        self.registry = InMemoryRegistry()
        self.store: dict[str, Any] = {}
        self.proc = SettleProcessor(
            self.registry, self.store, POLICY, FEES, TOPICS, ITEMS, TICKS,
            ids_windows=ids_windows, ids_max=ids_max, idle_evict_ms=60_000,
            clock=lambda: self.now,
        )
        self.result_ser = AvroSerializer(self.registry, TOPICS.results, "ReconciliationResult")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0

    def result(self, pid: str, **over: Any) -> SettleDecision:
        rec = {
            "result_id": f"{pid}:MATCHED:c-{pid}", "payment_id": pid, "merchant_id": "m-1",
            "channel": "ALIPAY", "outcome": "MATCHED", "terminal": True, "late": False,
            "expected_amount_minor": 1000, "expected_currency": "CNY",
            "confirmed_amount_minor": 1000, "confirmed_currency": "CNY",
            "confirmation_id": f"c-{pid}", "channel_txn_id": "t", "created_at": self.now - 10,
            "decided_at": self.now, "detail": "", "fee_minor": 6, "net_minor": 994,
        }
        rec.update(over)
        self.offset += 1
        return self.proc.on_result(pid.encode(), self.result_ser.encode(rec), TOPICS.results,
                                   0, self.offset)

    def item(self, out: Output, partition: int = 0) -> SettleDecision:
        self.offset += 1
        return self.proc.process(out.key, out.value, ITEMS, partition, self.offset)

    def settle(self, pid: str, **over: Any) -> SettleDecision:
        d = self.result(pid, **over)
        assert d.outcome == ITEMIZED, d
        return self.item(d.outputs[0])

    def tick(self, partition: int = 0) -> SettleDecision:
        self.offset += 1
        return self.proc.process(b"tick", str(self.now).encode(), TICKS, partition, self.offset)

    def batches(self, d: SettleDecision) -> list[dict[str, Any]]:
        assert all(o.topic == TOPICS.batches for o in d.outputs)
        return [self.decoder.decode(o.value) for o in d.outputs]


def test_matched_result_becomes_an_item_keyed_by_merchant_and_currency() -> None:
    h = Harness()
    d = h.result("p-1")
    assert d.outcome == ITEMIZED
    [out] = d.outputs
    assert out.topic == ITEMS and out.key == b"m-1|CNY" == batch_key("m-1", "CNY").encode()
    body = json.loads(out.value)
    assert body["item"] == {"payment_id": "p-1", "gross_minor": 1000, "fee_minor": 6,
                            "net_minor": 994, "matched_at_ms": W0}


@pytest.mark.parametrize(
    "over",
    [
        {"outcome": "DECLINED", "result_id": "p-1:DECLINED:c-p-1", "fee_minor": None,
         "net_minor": None},
        {"outcome": "DUPLICATE_CONFIRMATION", "terminal": False,
         "result_id": "p-1:DUPLICATE_CONFIRMATION:c-p-1"},
        {"outcome": "MISSING_CONFIRMATION", "confirmation_id": None,
         "result_id": "p-1:MISSING_CONFIRMATION:-"},
    ],
)
def test_other_outcomes_are_ignored(over: dict[str, Any]) -> None:
    assert Harness().result("p-1", **over).outcome == IGNORED


def test_fee_falls_back_to_the_schedule_for_results_without_one() -> None:
    h = Harness()
    d = h.result("p-1", channel="CARD", fee_minor=None, net_minor=None)
    item = json.loads(d.outputs[0].value)["item"]
    assert (item["fee_minor"], item["net_minor"]) == (18, 982)  # 180 bps


def test_undecodable_results_and_items_are_dead_lettered() -> None:
    h = Harness()
    d = h.proc.on_result(b"k", b"junk", TOPICS.results, 1, 7)
    assert d.outcome == DEAD_LETTERED and d.error_type == "BAD_MAGIC_BYTE"
    letter = h.decoder.decode(d.outputs[0].value)
    assert letter["stage"] == "settle" and letter["source_offset"] == 7
    bad = h.proc.process(b"m-1|CNY", b"{not json", ITEMS, 0, 8)
    assert bad.outcome == DEAD_LETTERED and bad.outputs[0].topic == TOPICS.dlq
    bad_fee = h.result("p-2", fee_minor=7, net_minor=994)  # fee + net != gross
    assert bad_fee.outcome == DEAD_LETTERED and bad_fee.error_type == "BatchError"


def test_window_closes_after_its_grace_with_correct_totals() -> None:
    h = Harness()
    assert h.settle("p-1").outcome == ADDED
    h.now = W0 + 3_000
    h.settle("p-2", expected_amount_minor=2000, confirmed_amount_minor=2000,
             fee_minor=12, net_minor=1988)
    assert h.proc.open_batches() == 1
    h.now = W0 + (SIZE_S + GRACE_S) * 1000 - 1
    assert h.tick().outputs == []
    h.now += 1
    d = h.tick()
    assert d.outcome == TICKED
    [batch] = h.batches(d)
    assert batch["batch_id"] == batch_id("m-1", "CNY", W0)
    assert d.outputs[0].key == batch["batch_id"].encode()
    assert (batch["payment_count"], batch["gross_minor"], batch["fee_minor"],
            batch["net_minor"]) == (2, 3000, 18, 2982)
    assert [i["payment_id"] for i in batch["items"]] == ["p-1", "p-2"]
    assert h.proc.open_batches() == 0
    assert h.tick().outputs == []  # closed once


def test_late_match_after_the_window_closed_goes_to_the_next_open_window() -> None:
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    [closed] = h.batches(h.tick())
    assert closed["window_start"].timestamp() * 1000 == W0
    # Matched in the closed window (late=True after MISSING), processed now: next window.
    assert h.settle("p-late", decided_at=W0 + 2_000, late=True).outcome == ADDED
    h.now = W0 + 25_000
    [nxt] = h.batches(h.tick())
    assert nxt["batch_id"] == batch_id("m-1", "CNY", W0 + 10_000)
    assert [i["payment_id"] for i in nxt["items"]] == ["p-late"]


def test_item_replayed_while_its_batch_is_open_or_after_it_closed_is_dropped() -> None:
    h = Harness()
    first = h.result("p-1")
    assert h.item(first.outputs[0]).outcome == ADDED
    h.now = W0 + 12_000  # window W0 is in its grace; "now" is in the next window
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert batch["payment_count"] == 1
    assert h.item(first.outputs[0]).outcome == DUPLICATE  # remembered after the close
    h.now = W0 + 60_000
    assert h.tick().outputs == []  # nothing re-added, nothing re-closed


def test_recent_ids_are_bounded_by_windows_and_count() -> None:
    h = Harness(ids_windows=3, ids_max=2)
    for n in range(4):
        h.now = W0 + n * 10_000
        h.settle(f"p-{n}")
        h.now += 15_000
        h.tick()
    recent = h.store["m-1|CNY"]["recent"]
    assert [ids for _start, ids in recent] == [["p-2"], ["p-3"]]


def test_idle_key_is_evicted_after_its_last_close() -> None:
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    h.tick()
    assert "m-1|CNY" in h.store
    h.now += 60_000
    h.tick()
    assert h.store == {}


def test_keys_are_per_merchant_and_currency_and_ticks_per_partition() -> None:
    h = Harness()
    a = h.result("p-1").outputs[0]
    b = h.result("p-2", merchant_id="m-2", expected_currency="JPY", confirmed_currency="JPY",
                 expected_amount_minor=500, confirmed_amount_minor=500, fee_minor=3,
                 net_minor=497).outputs[0]
    h.item(a, partition=0)
    h.item(b, partition=1)
    h.now = W0 + 15_000
    assert [x["currency"] for x in h.batches(h.tick(partition=1))] == ["JPY"]
    assert [x["currency"] for x in h.batches(h.tick(partition=0))] == ["CNY"]
    assert h.item(a, partition=2).error_type == "NOT_COPARTITIONED"


def test_deadlines_are_rebuilt_after_a_rebalance() -> None:
    h = Harness()
    h.settle("p-1")
    h.proc.forget_partitions()
    h.now = W0 + 15_000
    assert len(h.batches(h.tick())) == 1


def test_replay_that_would_be_assigned_another_window_is_still_dropped() -> None:
    h = Harness()
    h.now = W0 + 16_000  # the match's window W0 has closed: the item goes to W0+10s
    first = h.result("p-1", decided_at=W0 + 1_000)
    assert h.item(first.outputs[0]).outcome == ADDED
    h.now = W0 + 22_000  # W0+10s is in its grace; a fresh assignment would pick W0+20s
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    h.now = W0 + 40_000
    batches = h.batches(h.tick())
    assert [(b["batch_id"], b["payment_count"]) for b in batches] == [
        (batch_id("m-1", "CNY", W0 + 10_000), 1)]
