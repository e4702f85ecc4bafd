"""Disputes in the reconcile stage: decided against the payment's refund book in its table
value, answered on disputes.results, replay-safe, moved to their payment's partition first."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from schemas.codec import AvroSerializer
from settlement import disputes as dp
from stream_processors.placement import Placement
from stream_processors.reconcile import (
    APPLIED,
    DEAD_LETTERED,
    MOVED,
    REPLAYED,
    ReconcileProcessor,
    ReconDecision,
)
from tests.support.reconcile import FEES, RETAIN_MS, TICKS, TOPICS, Harness

DAY_MS = 86_400_000


class Disputes(Harness):
    """The reconcile harness with a channel adapter's dispute records."""

    def __init__(self, placement: Placement | None = None) -> None:
        super().__init__()
        if placement is not None:
            self.proc = ReconcileProcessor(
                self.registry, self.store, self.proc._policy, FEES, TOPICS, TICKS,
                clock=lambda: self.now, placement=placement)
        self.dispute_ser = AvroSerializer(self.registry, TOPICS.disputes, "ChannelDispute")

    def record(self, eid: str, status: str = "OPENED", amount: int = 300, pid: str = "p-1",
               **over: Any) -> dict[str, Any]:
        rec = {
            "event_id": eid, "dispute_id": "d-1", "channel": "ALIPAY",
            "channel_dispute_id": "cd-1", "payment_id": pid, "stage": "DISPUTE",
            "status": status, "amount_minor": amount, "currency": "CNY",
            "funds_withdrawn": True, "fee_minor": 25, "reason_code": "10.4",
            "respond_by": self.now + 7 * DAY_MS, "occurred_at": self.now - 1,
        }
        rec.update(over)
        return rec

    def dispute(self, eid: str, status: str = "OPENED", amount: int = 300, pid: str = "p-1",
                partition: int = 0, **over: Any) -> ReconDecision:
        value = self.dispute_ser.encode(self.record(eid, status, amount, pid, **over))
        return self.feed(TOPICS.disputes, value, pid.encode(), partition)

    def answers(self, d: ReconDecision) -> list[dict[str, Any]]:
        """The dispute results of a decision (a rejection also opens a case: cases.events)."""
        assert {o.topic for o in d.outputs} <= {TOPICS.dispute_results, TOPICS.case_events}
        return self.decoded(d, TOPICS.dispute_results)


def matched(h: Harness, pid: str = "p-1") -> None:
    h.routed(pid)
    [res] = h.results(h.confirm(f"c-{pid}", pid))
    assert res["outcome"] == "MATCHED"


def test_an_opened_dispute_holds_its_amount_in_the_payments_book() -> None:
    h = Disputes()
    matched(h)
    d = h.dispute("e1")
    assert d.outcome == APPLIED
    [res] = h.answers(d)
    assert (res["event"], res["result_id"]) == ("OPENED", "p-1/d-1:OPENED:e1")
    assert (res["merchant_id"], res["order_id"], res["channel"]) == ("m-1", "o-1", "ALIPAY")
    assert (res["amount_minor"], res["fee_minor"], res["funds_withdrawn"]) == (300, 0, True)
    assert (res["captured_minor"], res["held_minor"], res["disputed_lost_minor"],
            res["refundable_minor"]) == (1000, 300, 0, 700)
    assert res["respond_by"] is not None and res["reasons"] == []
    assert all(o.key == b"p-1" for o in d.outputs)
    [dispute] = h.store["p-1"]["book"]["disputes"]
    assert (dispute["state"], dispute["amount_minor"]) == (dp.OPEN, 300)
    assert "state" in h.store["p-1"]  # one value: state and book side by side
    [decided] = d.disputes
    assert decided.results == [("alipay", "OPENED")] and decided.reasons == []


def test_a_dispute_counts_against_refunds_and_refunds_against_disputes() -> None:
    h = Disputes()
    matched(h)
    h.refund("r1", 400)
    [res] = h.answers(h.dispute("e1", amount=601))
    assert res["event"] == "REJECTED"
    assert [r["code"] for r in res["reasons"]] == [dp.DISPUTE_EXCEEDS_DISPUTABLE]
    [res] = h.answers(h.dispute("e2", amount=600))
    assert res["event"] == "OPENED" and res["refundable_minor"] == 0
    [rej] = h.decoded(h.refund("r2", 1), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == ["REFUND_EXCEEDS_REFUNDABLE"]
    [res] = h.answers(h.dispute("e3", "WON", amount=600))
    assert (res["event"], res["held_minor"], res["refundable_minor"]) == ("WON", 0, 600)
    assert h.decoded(h.refund("r2", 600), TOPICS.refunds_routed)


def test_a_dispute_first_seen_lost_answers_twice_and_a_closed_one_refuses_more() -> None:
    h = Disputes()
    matched(h)
    d = h.dispute("e1", "ACCEPTED")
    assert [(r["event"], r["fee_minor"]) for r in h.answers(d)] == [("OPENED", 0), ("LOST", 25)]
    assert [o.key for o in d.outputs] == [b"p-1", b"p-1"]
    assert d.disputes[0].results == [("alipay", "OPENED"), ("alipay", "LOST")]
    [res] = h.answers(h.dispute("e2", "WON"))
    assert [r["code"] for r in res["reasons"]] == [dp.DISPUTE_ALREADY_CLOSED]
    assert (res["held_minor"], res["disputed_lost_minor"]) == (0, 300)


def test_a_redelivered_record_is_ignored_and_one_read_again_resends_its_outputs() -> None:
    h = Disputes()
    matched(h)
    first = h.dispute("e1", "LOST")
    again = h.replay(h.offset)  # the same record read again after a crash
    assert again.outcome == REPLAYED and again.outputs == first.outputs
    redelivered = h.dispute("e1", "LOST")  # the adapter sent it again: a new offset
    assert redelivered.outcome == APPLIED and redelivered.outputs == []
    rejected = h.dispute("e2", "WON")
    assert h.replay(h.offset).outputs == rejected.outputs


def test_a_dispute_of_an_unknown_payment_is_rejected_and_no_book_is_opened() -> None:
    h = Disputes()
    d = h.dispute("e1", pid="ghost")
    [res] = h.answers(d)
    assert [r["code"] for r in res["reasons"]] == [dp.PAYMENT_UNKNOWN]
    assert (res["merchant_id"], res["captured_minor"], res["refundable_minor"]) == (None, None, 0)
    assert h.store.get("ghost", {}).get("book") is None
    assert d.disputes[0].reasons == [dp.PAYMENT_UNKNOWN]
    assert h.replay(h.offset).outputs == d.outputs  # read again: the same outputs


def test_a_dispute_of_a_payment_not_matched_is_remembered_keyed_by_the_payment() -> None:
    h = Disputes()
    h.routed()
    d = h.dispute("e1")
    [res] = h.answers(d)
    assert [r["code"] for r in res["reasons"]] == [dp.PAYMENT_NOT_CAPTURED]
    again = h.replay(h.offset)
    assert again.outcome == REPLAYED and again.outputs == d.outputs
    assert all(o.key == b"p-1" for o in again.outputs)
    # The payment's own record still joins: the dispute changed nothing of its state.
    [res] = h.results(h.confirm("c-1"))
    assert res["outcome"] == "MATCHED"


def test_rules_broken_in_the_stage_have_their_reasons() -> None:
    h = Disputes()
    matched(h)
    [res] = h.answers(h.dispute("e1", channel="CARD", currency="USD", dispute_id="d/1"))
    assert [r["code"] for r in res["reasons"]] == [
        dp.DISPUTE_ID_INVALID, dp.CHANNEL_MISMATCH, dp.CURRENCY_MISMATCH]
    assert res["dispute_id"] == "d/1" and res["result_id"] == "p-1/d/1:REJECTED:e1"
    h.confirm("c-rev", status="REVERSED")
    [res] = h.answers(h.dispute("e2"))
    assert [r["code"] for r in res["reasons"]] == [dp.PAYMENT_REVERSED]


def test_a_payment_reversal_with_an_open_dispute_is_an_exception() -> None:
    h = Disputes()
    matched(h)
    h.dispute("e1")
    [res] = h.results(h.confirm("c-rev", status="REVERSED"))
    assert res["outcome"] == "REVERSAL_EXCEPTION" and "disputes" in res["detail"]


def test_the_book_outlives_the_payment_state_and_an_open_dispute_keeps_the_book() -> None:
    h = Disputes()
    matched(h)
    h.now += RETAIN_MS + 1
    h.tick()
    assert "state" not in h.store["p-1"]
    [res] = h.answers(h.dispute("e1"))
    assert res["event"] == "OPENED" and res["captured_minor"] == 1000
    h.now += 400 * DAY_MS  # past the refund window and the retention
    h.tick()
    assert h.store["p-1"]["book"]["disputes"][0]["state"] == dp.OPEN
    [res] = h.answers(h.dispute("e2", "WON"))
    assert res["event"] == "WON"
    h.now += RETAIN_MS + 600_000
    assert h.tick().evicted == 1 and "p-1" not in h.store


def test_unreadable_dispute_records_are_dead_lettered_with_their_bytes() -> None:
    h = Disputes()
    matched(h)
    junk = h.feed(TOPICS.disputes, b"not avro", b"p-1")
    no_event = h.dispute("", pid="p-1")
    no_payment = h.dispute("e1", pid="")
    for d in (junk, no_event, no_payment):
        assert d.outcome == DEAD_LETTERED and d.error_type
        [letter] = h.decoded(d, TOPICS.dlq)
        assert letter["stage"] == "reconcile" and letter["source_topic"] == TOPICS.disputes
    assert h.decoded(junk, TOPICS.dlq)[0]["original_value"] == b"not avro"
    assert h.store["p-1"]["book"]["disputes"] == []


def test_a_dispute_on_another_partition_than_its_payment_is_moved_there_first() -> None:
    placement = Placement("placed", 4, frozenset(TOPICS.external))
    h = Disputes(placement)
    right = placement.target("p-1")
    h.routed(partition=right)
    h.confirm("c-1", partition=right)
    moved = h.dispute("e1", partition=(right + 1) % 4)
    assert moved.outcome == MOVED and h.store["p-1"]["book"]["disputes"] == []
    [out] = moved.outputs
    assert (out.topic, out.partition, out.key) == ("placed", right, b"p-1")
    h.offset += 1
    d = h.proc.process(out.key, out.value, out.topic, right, h.offset, list(out.headers))
    [res] = h.answers(d)
    assert d.outcome == APPLIED and res["event"] == "OPENED"
    assert d.outputs[0].headers[0][1].decode().startswith(f"{TOPICS.disputes}/")


def test_dispute_results_and_rejections_are_counted() -> None:
    from stream_processors.stages import _count_recon

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    h = Disputes()
    matched(h)
    opened = value("settle_dispute_results_total", channel="alipay", event="OPENED")
    rejected = value("settle_dispute_rejections_total", reason=dp.DISPUTE_AMOUNT_CHANGED)
    _count_recon(h.dispute("e1"), tick=False)
    _count_recon(h.dispute("e2", amount=1), tick=False)
    assert value("settle_dispute_results_total", channel="alipay", event="OPENED") == opened + 1
    assert value("settle_dispute_rejections_total",
                 reason=dp.DISPUTE_AMOUNT_CHANGED) == rejected + 1
