"""The reconcile stage without a broker: every outcome, ticks, eviction and dead letters."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.errors import RegistryUnavailable
from stream_processors.reconcile import (
    APPLIED,
    DEAD_LETTERED,
    TICKED,
    WAITING_CONFIRMATION,
    WAITING_ROUTED,
    ReconDecision,
)
from tests.support.reconcile import (
    GRACE_MS,
    RETAIN_MS,
    SLA_MS,
    T0,
    TOPICS,
    FlakyRegistry,
    Harness,
)


def outcomes(h: Harness, d: ReconDecision) -> list[str]:
    return [r["outcome"] for r in h.results(d)]


@pytest.mark.parametrize(
    ("over", "outcome"),
    [
        ({}, "MATCHED"),
        ({"status": "FAILED", "decline_code": "NSF"}, "DECLINED"),
        ({"amount_minor": 999}, "AMOUNT_MISMATCH"),
        ({"currency": "USD"}, "CURRENCY_MISMATCH"),
    ],
)
def test_first_confirmation_decides(over: dict[str, Any], outcome: str) -> None:
    h = Harness()
    assert h.routed().outputs == []
    d = h.confirm("c-1", **over)
    assert d.outcome == APPLIED
    [res] = h.results(d)
    assert res["outcome"] == outcome and res["terminal"] is True and res["late"] is False
    assert res["result_id"] == f"p-1:{outcome}:c-1"
    assert res["channel"] == "ALIPAY" and res["merchant_id"] == "m-1"
    assert d.outputs[0].key == b"p-1"
    if outcome == "MATCHED":
        # Computed once, here: 60 bps of 1000 minor units rounds half up to 6.
        assert (res["fee_minor"], res["net_minor"]) == (6, 994)
        assert [ch for ch, _s in d.matched_after_s] == ["alipay"]
    else:
        assert res["fee_minor"] is None and res["net_minor"] is None


def test_duplicate_confirmation_and_redelivery() -> None:
    h = Harness()
    h.routed()
    assert outcomes(h, h.confirm("c-1")) == ["MATCHED"]
    assert h.confirm("c-1").outputs == []  # the same confirmation redelivered: no-op
    assert outcomes(h, h.confirm("c-2")) == ["DUPLICATE_CONFIRMATION"]
    assert h.routed().outputs == []  # routed redelivered


def test_confirmation_before_routed_is_held_then_decides() -> None:
    h = Harness()
    assert h.confirm("c-1").outputs == []
    assert h.proc.backlog(h.now) == {("alipay", WAITING_ROUTED): (1, 0.0)}
    h.now += 1_000
    assert outcomes(h, h.routed()) == ["MATCHED"]
    assert h.proc.backlog(h.now) == {}


def test_tick_declares_missing_after_the_channel_sla_then_late_match() -> None:
    h = Harness()
    h.routed()
    h.now += 10_000
    assert h.proc.backlog(h.now) == {("alipay", WAITING_CONFIRMATION): (1, 10.0)}
    h.now = T0 + SLA_MS - 1
    assert h.tick().outputs == []
    h.now = T0 + SLA_MS
    d = h.tick()
    assert d.outcome == TICKED
    [res] = h.results(d)
    assert res["outcome"] == "MISSING_CONFIRMATION" and res["terminal"] is True
    assert h.tick().outputs == []  # declared once
    h.now += 5_000
    [late] = h.results(h.confirm("c-late"))
    assert late["outcome"] == "MATCHED" and late["late"] is True
    assert late["fee_minor"] == 6
    assert outcomes(h, h.confirm("c-again")) == ["DUPLICATE_CONFIRMATION"]


def test_late_non_match_is_a_late_confirmation_record() -> None:
    h = Harness()
    h.routed()
    h.now += SLA_MS
    h.tick()
    [res] = h.results(h.confirm("c-1", amount_minor=5))
    assert res["outcome"] == "LATE_CONFIRMATION" and res["terminal"] is False


def test_per_channel_sla() -> None:
    h = Harness()
    h.routed(channel="card")
    h.now += SLA_MS
    assert h.tick().outputs == []  # card waits 60 s
    h.now = T0 + 60_000
    assert outcomes(h, h.tick()) == ["MISSING_CONFIRMATION"]


def test_tick_declares_orphans_after_the_grace_then_the_payment_still_decides() -> None:
    h = Harness()
    h.confirm("c-1")
    h.now += GRACE_MS
    [orphan] = h.results(h.tick())
    assert orphan["outcome"] == "ORPHAN_CONFIRMATION" and orphan["merchant_id"] is None
    assert orphan["terminal"] is False
    assert outcomes(h, h.confirm("c-2")) == ["ORPHAN_CONFIRMATION"]  # after the grace: at once
    assert outcomes(h, h.routed()) == ["MATCHED", "DUPLICATE_CONFIRMATION"]


def test_wrong_channel_confirmation_is_an_orphan_record() -> None:
    h = Harness()
    h.routed(channel="alipay")
    assert outcomes(h, h.confirm("c-x", channel="card")) == ["ORPHAN_CONFIRMATION"]
    assert outcomes(h, h.confirm("c-1")) == ["MATCHED"]


def test_decided_states_are_evicted_on_a_tick_after_the_retention() -> None:
    h = Harness()
    h.routed()
    h.confirm("c-1")
    assert "p-1" in h.store and h.store["p-1"]["partition"] == 0
    h.now += RETAIN_MS - 1
    assert h.tick().evicted == 0
    h.now += 1
    assert h.tick().evicted == 1
    # The reconciliation state is gone; the MATCHED payment's refund book stays for the
    # refund window (365 days by default) and is forgotten after it.
    assert set(h.store["p-1"]) == {"partition", "book"}
    h.now += 365 * 24 * 3600 * 1000  # the refund window, not yet its retention after it
    assert h.tick().evicted == 0
    h.now += 600_000  # the default retention after it
    assert h.tick().evicted == 1
    assert h.store == {}


def test_a_declined_payment_is_evicted_whole() -> None:
    h = Harness()
    h.routed()
    h.confirm("c-1", status="FAILED")
    h.now += RETAIN_MS
    assert h.tick().evicted == 1
    assert h.store == {}


def test_ticks_only_touch_their_own_partition() -> None:
    h = Harness()
    h.routed(pid="p-0", partition=0)
    h.routed(pid="p-1", partition=1)
    h.now += SLA_MS
    assert [r["payment_id"] for r in h.results(h.tick(partition=1))] == ["p-1"]
    assert [r["payment_id"] for r in h.results(h.tick(partition=0))] == ["p-0"]


def test_deadlines_are_rebuilt_from_the_table_after_a_rebalance() -> None:
    h = Harness()
    h.routed()
    h.proc.forget_partitions()
    assert len(h.proc.deadlines) == 0
    h.now += SLA_MS
    assert outcomes(h, h.tick()) == ["MISSING_CONFIRMATION"]


def test_a_fresh_processor_on_an_old_table_finds_the_deadlines() -> None:
    h = Harness()
    h.routed()
    h2 = Harness()
    h2.store.update(h.store)
    h2.now = T0 + SLA_MS
    assert outcomes(h2, h2.tick()) == ["MISSING_CONFIRMATION"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "EMPTY_VALUE"),
        (b"{}", "BAD_MAGIC_BYTE"),
        (b"\x00\x00\x00\x00\x63garbage", "UNKNOWN_SCHEMA_ID"),
    ],
)
def test_undecodable_records_are_dead_lettered(value: bytes | None, reason: str) -> None:
    h = Harness()
    d = h.feed(TOPICS.confirmations, value, b"p-1", partition=2)
    assert d.outcome == DEAD_LETTERED and d.error_type == reason
    [out] = d.outputs
    assert out.topic == TOPICS.dlq
    letter = h.decoder.decode(out.value)
    assert letter["stage"] == "reconcile" and letter["reason"] == reason
    assert letter["original_value"] == value and letter["source_partition"] == 2
    assert letter["source_topic"] == TOPICS.confirmations


def test_invalid_or_conflicting_records_are_dead_lettered() -> None:
    h = Harness()
    assert h.routed(amount_minor=0).outcome == DEAD_LETTERED  # the core refuses amount 0
    assert h.routed(pid="p-2", on_topic="card").error_type == "CHANNEL_TOPIC_MISMATCH"
    h.routed()
    assert h.routed(amount_minor=2000).error_type == "RoutedConflict"
    d = h.feed(TOPICS.confirmations, h.conf_ser.encode({
        "confirmation_id": "c", "channel": "ALIPAY", "channel_txn_id": "t", "payment_id": "p-1",
        "status": "SUCCEEDED", "amount_minor": 1000, "currency": "CNY", "confirmed_at": T0,
        "decline_code": None}), b"other-key")
    assert d.error_type == "NOT_COPARTITIONED"
    assert h.confirm("c-1", partition=3).error_type == "NOT_COPARTITIONED"


def test_registry_outage_raises_before_anything_is_written_then_retry_works() -> None:
    registry = FlakyRegistry()
    h = Harness(registry)
    h.routed(pid="p-0")  # warms the routed decoder only
    value = h.conf_ser.encode({
        "confirmation_id": "c", "channel": "ALIPAY", "channel_txn_id": "t", "payment_id": "p-0",
        "status": "SUCCEEDED", "amount_minor": 1000, "currency": "CNY", "confirmed_at": T0,
        "decline_code": None})
    registry.down = True
    before = {k: dict(v) for k, v in h.store.items()}
    with pytest.raises(RegistryUnavailable):
        h.feed(TOPICS.confirmations, value, b"p-0")
    assert h.store == before  # nothing half-applied: the caller retries the same record
    registry.down = False
    assert outcomes(h, h.feed(TOPICS.confirmations, value, b"p-0")) == ["MATCHED"]


def test_registry_outage_during_a_tick_keeps_the_key_due() -> None:
    registry = FlakyRegistry()
    h = Harness(registry)
    h.routed()
    h.now += SLA_MS
    registry.down = True
    d = h.tick()  # the results serializer has not registered yet: it cannot encode
    assert d.outputs == [] and d.tick_errors == 1
    assert h.store["p-1"]["state"]["outcome"] is None
    registry.down = False
    assert outcomes(h, h.tick()) == ["MISSING_CONFIRMATION"]


def test_registry_outage_during_a_tick_keeps_every_key_of_the_tick_due() -> None:
    # The keys popped with the failing one must not fall out of the deadline queue: they
    # would never be decided (until a restart rebuilt the queue). Seen in a chaos run.
    registry = FlakyRegistry()
    h = Harness(registry)
    for pid in ("p-1", "p-2", "p-3"):
        h.routed(pid)
    h.now += SLA_MS
    registry.down = True
    assert h.tick().tick_errors == 1
    registry.down = False
    assert outcomes(h, h.tick()) == ["MISSING_CONFIRMATION"] * 3


# -- replays after a crash: the state kept the change, the result may be lost -----------------

def test_a_replayed_input_resends_exactly_its_results_and_changes_nothing() -> None:
    h = Harness()
    h.routed()
    h.now += 1_000
    decided = h.confirm("c-1")
    assert outcomes(h, decided) == ["MATCHED"]
    before = dict(h.store)
    # The worker died before the result was delivered and re-reads the confirmation.
    replay = h.replay(h.offset)
    assert replay.outcome == "replayed"
    assert [o.value for o in replay.outputs] == [o.value for o in decided.outputs]
    assert replay.outputs[0].headers == decided.outputs[0].headers
    assert h.store == before
    # Replaying the routed input (it produced nothing) re-sends nothing.
    routed_replay = h.replay(h.offset - 1)
    assert routed_replay.outcome == "replayed" and routed_replay.outputs == []
    # A genuinely new redelivery of the confirmation (another offset) is no second MATCHED.
    assert "MATCHED" not in outcomes(h, h.confirm("c-1"))


def test_a_replayed_tick_resends_the_decisions_it_made() -> None:
    h = Harness()
    h.routed("p-1")
    h.routed("p-2")
    h.now += SLA_MS + 1
    ticked = h.tick()
    assert sorted(outcomes(h, ticked)) == ["MISSING_CONFIRMATION", "MISSING_CONFIRMATION"]
    tick_offset = h.offset
    h.now += 1_000
    assert h.tick().outputs == []  # a later tick has nothing left to decide
    replay = h.replay(tick_offset)
    assert sorted(o.value for o in replay.outputs) == sorted(o.value for o in ticked.outputs)
    # The outbox key never disturbs the deadline rebuild after a rebalance.
    h.proc.forget_partitions()
    h.now += RETAIN_MS * 2
    assert h.tick().tick_errors == 0
