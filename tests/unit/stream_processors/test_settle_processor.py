"""The settle stage without a broker: itemizing, batching per window, closing, never twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from settlement.batches import BatchItem, OpenBatch
from settlement.windows import Window, batch_id
from stream_processors.settle_stage import (
    ADDED,
    DEAD_LETTERED,
    DUPLICATE,
    IGNORED,
    ITEMIZED,
    TICK_OUTBOX_KEY,
    TICKED,
)
from stream_processors.settle_table import batch_key, item_key
from tests.support.settle import (
    GRACE_S,
    ITEMS,
    SIZE_S,
    TICKS,
    TOPICS,
    W0,
    Harness,
    remembered,
)


def test_matched_result_becomes_an_item_keyed_by_merchant_and_currency() -> None:
    h = Harness()
    d = h.result("p-1")
    assert d.outcome == ITEMIZED
    [out] = d.outputs
    assert out.topic == ITEMS and out.key == b"m-1|CNY" == batch_key("m-1", "CNY").encode()
    body = json.loads(out.value)
    assert body["item"] == {"payment_id": "p-1", "gross_minor": 1000, "fee_minor": 6,
                            "net_minor": 994, "matched_at_ms": W0, "kind": "PAYMENT",
                            "item_id": "p-1"}


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
    assert [(start - W0, count) for start, count, _carried_in in recent] == [
        (20_000, 1), (30_000, 1)]
    assert remembered(h.store) == {"p-2", "p-3"}  # the older windows' item records are gone


def test_idle_key_is_evicted_after_its_last_close() -> None:
    h = Harness()
    h.settle("p-1")
    h.now = W0 + 15_000
    h.tick()
    assert "m-1|CNY" in h.store
    h.now += 60_000
    h.tick()
    # Only the partition's tick outbox (bounded, one key per partition) is left.
    assert [k for k in h.store if not k.startswith(TICK_OUTBOX_KEY)] == []


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


def _without_closed_at(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "closed_at"}


def test_each_add_writes_the_same_few_bytes_however_big_the_batch() -> None:
    """The changelog write of an add is O(1): the same size at 10 items and at 10,000."""
    h = Harness()
    written: dict[int, list[int]] = {}
    for n in range(1, 10_001):
        before = len(h.store.log)
        assert h.settle(f"p-{n:06d}").outcome == ADDED
        if n in (10, 10_000):
            written[n] = [len(k.encode()) + len(v or b"") for k, v in h.store.log[before:]]
    assert len(written[10]) == len(written[10_000]) == 2  # the item, then the entry
    # Only the digits of seq, count and sums grow (3 more each): nothing proportional to n.
    assert sum(written[10_000]) <= sum(written[10]) + 5 * 3, written
    assert sum(written[10_000]) < 1_000  # one item is ~100 bytes; 10,000 would be ~1 MB
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert batch["payment_count"] == 10_000 == len(batch["items"])
    assert [i["payment_id"] for i in batch["items"][:2]] == ["p-000001", "p-000002"]


def test_a_restarted_worker_closes_the_same_batch() -> None:
    def run(restart: bool) -> tuple[dict[str, Any], Harness]:
        h = Harness()
        for n in range(5):
            h.now = W0 + n * 1_000
            h.settle(f"p-{n}", expected_amount_minor=1000 + n, confirmed_amount_minor=1000 + n,
                     net_minor=994 + n)
        if restart:
            h = h.restart()
            assert h.proc.open_batches() == 0  # nothing in memory until the partition is touched
        h.now = W0 + 15_000
        [batch] = h.batches(h.tick())
        return batch, h

    plain, _ = run(restart=False)
    restarted, h = run(restart=True)
    assert _without_closed_at(restarted) == _without_closed_at(plain)
    assert [i["payment_id"] for i in restarted["items"]] == [f"p-{n}" for n in range(5)]
    assert h.tick().outputs == []  # closed once
    assert h.restart().tick().outputs == []  # and not again after another restart


def test_duplicate_after_restart_is_dropped_open_or_closed() -> None:
    h = Harness()
    first = h.result("p-1")
    assert h.item(first.outputs[0]).outcome == ADDED
    h = h.restart()
    h.now = W0 + 12_000  # a fresh assignment would pick the next window
    assert h.item(first.outputs[0]).outcome == DUPLICATE
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert [i["payment_id"] for i in batch["items"]] == ["p-1"]
    h = h.restart()
    assert h.item(first.outputs[0]).outcome == DUPLICATE  # remembered after close + restart
    h.now = W0 + 40_000
    assert h.tick().outputs == []


def test_an_item_whose_entry_write_was_lost_is_added_again_by_its_replay() -> None:
    """A crash between an add's two writes: the item is in the restored table, its window's
    count is not. The replay counts it (once); a close before the replay leaves it out and
    the replay settles it in the next window."""
    for close_first in (False, True):
        h = Harness()
        h.settle("p-1")
        second = h.result("p-2")
        assert h.item(second.outputs[0]).outcome == ADDED
        h = h.restart(upto=-1)  # the last write, p-2's entry, never reached the changelog
        if close_first:
            h.now = W0 + 15_000
            [batch] = h.batches(h.tick())
            assert [i["payment_id"] for i in batch["items"]] == ["p-1"]
        assert h.item(second.outputs[0]).outcome == ADDED
        assert h.item(second.outputs[0]).outcome == DUPLICATE
        h.now = W0 + 40_000
        closed = h.batches(h.tick()) + ([batch] if close_first else [])
        settled = sorted(i["payment_id"] for b in closed for i in b["items"])
        assert settled == ["p-1", "p-2"], (close_first, closed)


def test_a_version_1_entry_is_migrated_with_its_items_and_remembered_ids() -> None:
    h = Harness()
    closed_start, open_start = W0 - 10_000, W0
    legacy = OpenBatch.new("m-1", "CNY", Window(open_start, open_start + 10_000))
    legacy = legacy.add(BatchItem("p-old", 1000, 6, 994, W0)).add(
        BatchItem("p-old2", 500, 3, 497, W0 + 1))
    h.store["m-1|CNY"] = {
        "partition": 0, "merchant_id": "m-1", "currency": "CNY",
        "open": {str(open_start): legacy.to_dict()}, "last_closed_start_ms": closed_start,
        "last_closed_at_ms": W0, "recent": [[closed_start, ["p-closed"]]]}
    assert h.settle("p-closed", decided_at=W0 - 5_000).outcome == DUPLICATE
    assert h.settle("p-old").outcome == DUPLICATE
    assert h.settle("p-new").outcome == ADDED
    entry = h.store["m-1|CNY"]
    assert entry["v"] == 3 and entry["recent"] == [[closed_start, 1, 0]]
    assert entry["carried_minor"] == 0
    assert remembered(h.store) == {"p-closed", "p-old", "p-old2", "p-new"}
    h = h.restart()
    h.now = W0 + 15_000
    [batch] = h.batches(h.tick())
    assert [i["payment_id"] for i in batch["items"]] == ["p-old", "p-old2", "p-new"]
    assert (batch["payment_count"], batch["gross_minor"], batch["net_minor"]) == (
        3, 2500, 994 + 497 + 994)


def test_ids_with_nul_or_a_currency_with_a_bar_are_dead_lettered() -> None:
    h = Harness()
    for over in ({"merchant_id": "m\x001"}, {"payment_id": "p\x00"},
                 {"expected_currency": "C|Y", "confirmed_currency": "C|Y"}):
        d = h.result("p-1", **over)
        assert d.outcome == DEAD_LETTERED and d.error_type == "BAD_ITEM", over
    body = {"v": 1, "merchant_id": "m-1", "currency": "CNY", "result_id": "r",
            "item": {"payment_id": "p\x00x", "gross_minor": 10, "fee_minor": 0,
                     "net_minor": 10, "matched_at_ms": W0}}
    d = h.proc.process(b"m-1|CNY", json.dumps(body).encode(), ITEMS, 0, 99)
    assert d.outcome == DEAD_LETTERED and d.error_type == "BAD_ITEM"
    assert item_key("m-1|CNY", "p") not in h.store and h.store == {}


def test_a_restarted_worker_rebuilds_each_partition_from_one_read_of_the_table() -> None:
    h = Harness()
    a = h.result("p-1").outputs[0]
    b = h.result("p-2", merchant_id="m-2").outputs[0]
    h.item(a, partition=0)
    h.item(b, partition=1)
    h = h.restart()
    assert h.item(b, partition=1).outcome == DUPLICATE  # partition 1 is scanned first
    h.now = W0 + 15_000
    assert [x["merchant_id"] for x in h.batches(h.tick(partition=0))] == ["m-1"]
    assert h.item(a, partition=0).outcome == DUPLICATE
    assert [x["merchant_id"] for x in h.batches(h.tick(partition=1))] == ["m-2"]


def test_a_batch_too_big_to_send_stays_open_and_is_retried() -> None:
    """Sending a record over the producer's limit fails after the table changed, which would
    lose the batch: it is not closed, the tick counts an error and tries again later."""
    h = Harness(max_batch_bytes=1_500)  # ~17 bytes an item, plus 512 for overhead
    for n in range(100):
        h.settle(f"p-{n:03d}")
    h.now = W0 + 15_000
    d = h.tick()
    assert d.outputs == [] and d.closed == [] and d.tick_errors == 1
    assert h.proc.open_batches() == 1 and len(remembered(h.store)) == 100
    assert h.settle("p-next").outcome == ADDED  # into the next window, W0 + 10 s
    h.now = W0 + 15_000 + 60_000  # TICK_RETRY_MS later: tried again, still too big
    d = h.tick()
    assert d.tick_errors == 1
    assert [b["batch_id"] for b in h.batches(d)] == [batch_id("m-1", "CNY", W0 + 10_000)]
    big = Harness(store=h.store.restored())  # a worker whose producer may send more
    big.now = h.now
    [batch] = big.batches(big.tick())
    assert batch["payment_count"] == 100


def test_a_tick_read_again_after_a_crash_republishes_the_batches_it_closed() -> None:
    # The close reached the changelog, the batch never reached its topic: the restarted
    # worker re-reads the tick and must publish the very same batch.
    h = Harness()
    for pid in ("p-1", "p-2", "p-3"):
        h.settle(pid)
    h.now = W0 + 15_000
    closed = h.tick()
    [batch] = h.batches(closed)
    assert batch["payment_count"] == 3
    tick_offset = h.offset
    h2 = h.restart()
    h2.now += 5_000
    replay = h2.proc.process(b"tick", b"", TICKS, 0, tick_offset)
    # Byte-equal bodies (the restarted harness has its own registry, hence schema ids).
    assert [o.value[5:] for o in replay.outputs] == [o.value[5:] for o in closed.outputs]
    assert h2.batches(replay) == [batch]
    assert [o.key for o in replay.outputs] == [o.key for o in closed.outputs]
    # A new tick closes nothing again; a replayed item is still a duplicate.
    assert h2.tick().outputs == []


def test_registry_outage_during_a_tick_keeps_every_due_batch_due() -> None:
    # The keys popped with the failing one must stay due, or their batches never close
    # (until a restart rebuilt the queue): seen in a chaos run as MATCHED payments unbatched.
    from schemas.errors import RegistryUnavailable

    h = Harness()
    h.settle("p-1")
    h.settle("p-2", merchant_id="m-2")
    h.settle("p-3", merchant_id="m-3")
    encode = h.proc._batch_ser.encode
    calls = []

    def flaky(record: Any) -> bytes:
        calls.append(record)
        if len(calls) == 1:
            raise RegistryUnavailable("registry down (test)")
        return encode(record)

    h.proc._batch_ser.encode = flaky  # type: ignore[method-assign]
    h.now = W0 + 15_000
    assert h.tick().tick_errors == 1
    closed = h.batches(h.tick())
    assert sorted(b["merchant_id"] for b in closed) == ["m-1", "m-2", "m-3"]
