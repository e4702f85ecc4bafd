"""Exception cases in the reconcile stage: opened by the stage's own exceptions, resolved by
operators' actions (MATCHED_MANUAL with its refund book), replay-safe, and keeping the
payment's state while a case about it is open."""

from __future__ import annotations

from typing import Any

from schemas.codec import AvroSerializer
from settlement import cases as cs
from settlement.cases import CasePolicy, case_id_for
from sinks.case_rows import case_rows
from stream_processors.placement import Placement
from stream_processors.reconcile import (
    APPLIED,
    DEAD_LETTERED,
    MOVED,
    REPLAYED,
    ReconcileProcessor,
    ReconDecision,
)
from tests.support.reconcile import FEES, RETAIN_MS, SLA_MS, TICKS, TOPICS, Harness

LIMIT = 5_000
AMOUNT_CASE = case_id_for("p-1:AMOUNT_MISMATCH:c-1")
MISSING_CASE = case_id_for("p-1:MISSING_CONFIRMATION:-")


class Writes(dict[str, Any]):
    """The table, counting its writes (faust changelogs each assignment)."""

    writes = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        super().__setitem__(key, value)


class Cases(Harness):
    """The reconcile harness with operators' actions and channels' disputes."""

    def __init__(self, limit: int = LIMIT, placement: Placement | None = None) -> None:
        super().__init__()
        self.store = Writes()
        self.proc = ReconcileProcessor(
            self.registry, self.store, self.proc._policy, FEES, TOPICS, TICKS,
            clock=lambda: self.now, placement=placement,
            case_policy=CasePolicy(limit, {"JPY": 10}, RETAIN_MS))
        self.action_ser = AvroSerializer(self.registry, TOPICS.case_actions, "CaseAction")
        self.dispute_ser = AvroSerializer(self.registry, TOPICS.disputes, "ChannelDispute")

    def action(self, case_id: str, kind: str = cs.RESOLVE, resolution: str | None = None,
               aid: str = "a-1", operator: str = "alice", pid: str = "p-1",
               key: bytes | None = None, partition: int = 0, **over: Any) -> ReconDecision:
        rec = {"action_id": aid, "case_id": case_id, "payment_id": pid, "kind": kind,
               "resolution": resolution, "operator": operator, "remark": "see the bill",
               "requested_at": self.now}
        rec.update(over)
        value = self.action_ser.encode(rec)
        return self.feed(TOPICS.case_actions, value, pid.encode() if key is None else key,
                         partition)

    def dispute(self, eid: str, pid: str = "p-1", **over: Any) -> ReconDecision:
        rec = {"event_id": eid, "dispute_id": "d-1", "channel": "ALIPAY",
               "channel_dispute_id": "cd-1", "payment_id": pid, "stage": "DISPUTE",
               "status": "OPENED", "amount_minor": 300, "currency": "CNY",
               "funds_withdrawn": False, "fee_minor": 0, "reason_code": None,
               "respond_by": None, "occurred_at": self.now}
        rec.update(over)
        return self.feed(TOPICS.disputes, self.dispute_ser.encode(rec), pid.encode(), 0)

    def events(self, d: ReconDecision) -> list[dict[str, Any]]:
        return self.decoded(d, TOPICS.case_events)

    def cases(self, pid: str = "p-1") -> dict[str, Any]:
        return dict(self.store[pid].get("cases", {}))


def mismatch(h: Cases, amount: int = 990) -> dict[str, Any]:
    h.routed()
    d = h.confirm("c-1", amount_minor=amount)
    [res] = h.results(d)
    assert res["outcome"] == "AMOUNT_MISMATCH"
    [event] = h.events(d)
    return event


def missing(h: Cases) -> dict[str, Any]:
    h.routed()
    h.now += SLA_MS
    d = h.tick()
    [res] = h.results(d)
    assert res["outcome"] == "MISSING_CONFIRMATION"
    [event] = h.events(d)
    return event


def matched(h: Cases) -> None:
    h.routed()
    [res] = h.results(h.confirm("c-1"))
    assert res["outcome"] == "MATCHED"


# -- opening ---------------------------------------------------------------------------------


def test_a_payment_exception_opens_a_case_with_its_evidence() -> None:
    h = Cases()
    event = mismatch(h)
    assert (event["kind"], event["status"], event["case_id"]) == ("OPENED", "OPEN", AMOUNT_CASE)
    assert event["event_id"] == f"{AMOUNT_CASE}:OPENED:p-1:AMOUNT_MISMATCH:c-1"
    assert (event["subject"], event["subject_id"], event["outcome"], event["opened_by"]) == (
        "PAYMENT", "p-1", "AMOUNT_MISMATCH", "p-1:AMOUNT_MISMATCH:c-1")
    # At stake: what a force-match would settle, the confirmed amount.
    assert (event["amount_minor"], event["currency"], event["channel"]) == (990, "CNY", "ALIPAY")
    assert event["evidence"] == {
        "expected_amount_minor": "1000", "expected_currency": "CNY",
        "confirmed_amount_minor": "990", "confirmed_currency": "CNY", "confirmation_id": "c-1",
        "channel_txn_id": "t-c-1", "detail": "expected 1000, confirmed 990"}
    assert event["action_id"] is None and event["operator"] is None
    assert h.cases()[AMOUNT_CASE]["status"] == cs.OPEN


def test_each_kind_of_exception_opens_its_case() -> None:
    h = Cases()
    h.routed("p-c")
    [event] = h.events(h.confirm("c-c", pid="p-c", currency="USD"))
    assert (event["outcome"], event["amount_minor"], event["currency"]) == (
        "CURRENCY_MISMATCH", 1000, "CNY")
    event = missing(h)
    assert (event["outcome"], event["amount_minor"], event["case_id"]) == (
        "MISSING_CONFIRMATION", 1000, MISSING_CASE)
    [event] = h.events(h.confirm("c-x", pid="ghost", status="REVERSED"))
    assert (event["outcome"], event["subject"], event["merchant_id"]) == (
        "REVERSAL_EXCEPTION", "PAYMENT", None)
    h.routed("p-r")
    h.confirm("c-r", pid="p-r")
    h.refund("r1", 400, pid="p-r")
    [event] = h.events(h.refund_answer("r1", 399, pid="p-r"))
    assert (event["subject"], event["subject_id"], event["outcome"], event["amount_minor"]) == (
        "REFUND", "r1", "AMOUNT_MISMATCH", 400)
    assert event["evidence"]["confirmed_amount_minor"] == "399"
    h.refund("r2", 100, pid="p-r")
    h.now += SLA_MS
    [event] = h.events(h.tick())
    assert (event["subject_id"], event["outcome"]) == ("r2", "MISSING_CONFIRMATION")
    [event] = h.events(h.refund_answer("r2", 50, pid="p-r"))
    assert (event["subject_id"], event["outcome"]) == ("r2", "LATE_CONFIRMATION")
    [event] = h.events(h.dispute("e1", pid="p-r", amount_minor=-5))
    assert (event["subject"], event["subject_id"], event["outcome"]) == (
        "DISPUTE", "d-1", "DISPUTE_REJECTED")
    assert event["evidence"]["reason_codes"] == "AMOUNT_NOT_POSITIVE"
    assert h.events(h.dispute("e2", pid="p-r")) == []  # an applied dispute opens none
    assert len(h.cases("p-r")) == 4


def test_a_rejected_dispute_of_an_unknown_payment_keeps_only_its_case() -> None:
    h = Cases()
    d = h.dispute("e1", pid="ghost")
    [event] = h.events(d)
    assert event["outcome"] == "DISPUTE_REJECTED" and event["merchant_id"] is None
    assert "state" not in h.store["ghost"] and "book" not in h.store["ghost"]
    again = h.replay(h.offset)  # read again after a crash: the same outputs, nothing new
    assert again.outcome == REPLAYED and again.outputs == d.outputs
    redelivered = h.dispute("e1", pid="ghost")  # a new offset: answered, no second case
    assert h.events(redelivered) == [] and len(h.cases("ghost")) == 1


def test_a_case_opens_once_per_exception() -> None:
    h = Cases()
    mismatch(h)
    d = h.confirm("c-2", amount_minor=990)  # a DUPLICATE_CONFIRMATION: no case
    assert [r["outcome"] for r in h.results(d)] == ["DUPLICATE_CONFIRMATION"]
    assert h.events(d) == [] and list(h.cases()) == [AMOUNT_CASE]


# -- resolving -------------------------------------------------------------------------------


def test_force_match_settles_the_confirmed_amount_and_opens_the_refund_book() -> None:
    h = Cases()
    mismatch(h)
    d = h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH)
    assert d.outcome == APPLIED and [o.topic for o in d.outputs] == [
        TOPICS.results, TOPICS.case_events]
    [res] = h.results(d)
    # Fee at 60 bps of the settled 990: (990 * 60 + 5000) // 10000 = 6.
    assert (res["outcome"], res["terminal"], res["settled_amount_minor"]) == (
        "MATCHED_MANUAL", True, 990)
    assert (res["fee_minor"], res["net_minor"], res["expected_amount_minor"]) == (6, 984, 1000)
    assert (res["case_id"], res["operator"], res["approver"]) == (AMOUNT_CASE, "alice", None)
    assert (res["confirmation_id"], res["channel_txn_id"], res["order_id"]) == (
        "c-1", "t-c-1", "o-1")
    [event] = h.events(d)
    assert (event["kind"], event["status"], event["resolution"], event["action_id"]) == (
        "RESOLVED", "RESOLVED", "FORCE_MATCH", "a-1")
    assert d.results[0].outcome == "MATCHED_MANUAL" and d.cases == [
        ("RESOLVED", "AMOUNT_MISMATCH")]
    book = h.store["p-1"]["book"]
    assert (book["captured_minor"], book["fee_minor"], book["channel_txn_id"]) == (
        990, 6, "t-c-1")
    assert h.store["p-1"]["state"]["outcome"] == "MATCHED_MANUAL"
    # The payment is now refundable and disputable, within what it settled.
    [rej] = h.decoded(h.refund("r1", 991), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == ["REFUND_EXCEEDS_REFUNDABLE"]
    assert h.decoded(h.refund("r2", 500), TOPICS.refunds_routed)
    [res] = h.decoded(h.dispute("e1"), TOPICS.dispute_results)
    assert (res["event"], res["refundable_minor"]) == ("OPENED", 190)
    # A late confirmation now is a duplicate: the payment is decided.
    [res] = h.results(h.confirm("c-3"))
    assert res["outcome"] == "DUPLICATE_CONFIRMATION"


def test_mark_received_settles_the_expected_amount() -> None:
    h = Cases(limit=1_000)
    missing(h)
    d = h.action(MISSING_CASE, resolution=cs.MARK_RECEIVED)
    [res] = h.results(d)
    assert (res["outcome"], res["settled_amount_minor"], res["confirmed_amount_minor"]) == (
        "MATCHED_MANUAL", 1000, None)
    assert (res["fee_minor"], res["net_minor"], res["result_id"]) == (
        6, 994, "p-1:MATCHED_MANUAL:-")
    assert h.store["p-1"]["book"]["captured_minor"] == 1000


def test_closing_a_case_posts_nothing() -> None:
    h = Cases()
    mismatch(h)
    d = h.action(AMOUNT_CASE, resolution=cs.CLOSE_NO_FUNDS)
    assert [o.topic for o in d.outputs] == [TOPICS.case_events] and d.results == []
    [event] = h.events(d)
    assert (event["kind"], event["resolution"]) == ("RESOLVED", "CLOSE_NO_FUNDS")
    assert h.store["p-1"]["state"]["outcome"] == "AMOUNT_MISMATCH"
    assert "book" not in h.store["p-1"]


def test_above_the_limit_a_second_operator_approves_and_is_recorded() -> None:
    h = Cases(limit=500)
    mismatch(h)
    [event] = h.events(h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH))
    assert (event["kind"], event["status"], event["operator"]) == (
        "PROPOSED", "AWAITING_APPROVAL", "alice")
    [event] = h.events(h.action(AMOUNT_CASE, cs.APPROVE, aid="a-2", operator="Alice"))
    assert (event["kind"], event["reason"]) == ("REFUSED", "SAME_OPERATOR")
    [event] = h.events(h.action(AMOUNT_CASE, cs.REJECT, aid="a-3", operator="bob"))
    assert (event["kind"], event["status"], event["approver"]) == ("REJECTED", "OPEN", "bob")
    h.events(h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH, aid="a-4"))
    d = h.action(AMOUNT_CASE, cs.APPROVE, aid="a-5", operator="bob")
    [res] = h.results(d)
    assert (res["outcome"], res["operator"], res["approver"]) == (
        "MATCHED_MANUAL", "alice", "bob")
    [event] = h.events(d)
    assert (event["kind"], event["operator"], event["approver"]) == ("RESOLVED", "alice", "bob")
    [event] = h.events(h.action(AMOUNT_CASE, cs.APPROVE, aid="a-6", operator="carol"))
    assert event["reason"] == "CASE_ALREADY_RESOLVED"


def test_actions_the_stage_cannot_apply_are_refused() -> None:
    h = Cases()
    mismatch(h)
    [event] = h.events(h.action("CS-nope", resolution=cs.IGNORE))
    assert (event["kind"], event["reason"], event["case_id"], event["outcome"]) == (
        "REFUSED", "CASE_UNKNOWN", "CS-nope", "UNKNOWN")
    [event] = h.events(h.action("CS-nope", resolution=cs.IGNORE, pid="ghost"))
    assert event["reason"] == "CASE_UNKNOWN" and "ghost" not in h.store
    [event] = h.events(h.action(AMOUNT_CASE, resolution=cs.IGNORE, aid="a-2", key=b"p-2"))
    assert event["reason"] == "PAYMENT_MISMATCH"
    [event] = h.events(h.action(AMOUNT_CASE, resolution=cs.MARK_RECEIVED, aid="a-3"))
    assert event["reason"] == "RESOLUTION_NOT_ALLOWED"
    # A table value whose state is gone (kept by an older version): no money resolution.
    h.store["p-1"] = {k: v for k, v in h.store["p-1"].items() if k != "state"}
    d = h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH, aid="a-4")
    [event] = h.events(d)
    assert event["reason"] == "PAYMENT_STATE_GONE" and h.results(d) == []
    [event] = h.events(h.action(AMOUNT_CASE, resolution=cs.IGNORE, aid="a-5"))
    assert event["kind"] == "RESOLVED"  # closing needs no state


def test_undecodable_actions_are_dead_lettered_and_misplaced_ones_moved() -> None:
    h = Cases()
    d = h.feed(TOPICS.case_actions, b"\x00junk", b"p-1")
    assert d.outcome == DEAD_LETTERED and d.outputs[0].topic == TOPICS.dlq
    placement = Placement("placed", 4, frozenset(TOPICS.external))
    h = Cases(placement=placement)
    right = placement.target("p-1")
    d = h.action(AMOUNT_CASE, resolution=cs.IGNORE, partition=(right + 1) % 4)
    assert d.outcome == MOVED and d.outputs[0].partition == right


def test_a_late_match_closes_the_missing_confirmation_case_itself() -> None:
    h = Cases()
    missing(h)
    d = h.confirm("c-late")
    [res] = h.results(d)
    assert (res["outcome"], res["late"]) == ("MATCHED", True)
    [event] = h.events(d)
    assert (event["kind"], event["resolution"], event["operator"], event["case_id"]) == (
        "RESOLVED", "AUTO_MATCHED", "system", MISSING_CASE)
    assert event["evidence"] == {"result_id": "p-1:MATCHED:c-late"}
    [event] = h.events(h.action(MISSING_CASE, resolution=cs.MARK_RECEIVED))
    assert event["reason"] == "CASE_ALREADY_RESOLVED"


# -- replays and writes ----------------------------------------------------------------------


def test_an_action_read_again_resends_exactly_its_outputs_with_one_write() -> None:
    h = Cases()
    mismatch(h)
    before = h.store.writes
    d = h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH)
    assert h.store.writes == before + 1  # result, book, case and replay memory: one write
    again = h.replay(h.offset)
    assert again.outcome == REPLAYED and again.outputs == d.outputs
    assert h.store.writes == before + 1
    redelivered = h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH)  # same id, new offset
    assert redelivered.outcome == APPLIED and redelivered.outputs == []


def test_inputs_and_ticks_read_again_resend_their_case_events() -> None:
    h = Cases()
    h.routed()
    d = h.confirm("c-1", amount_minor=990)
    assert h.replay(h.offset).outputs == d.outputs
    h.routed("p-2")
    h.now += SLA_MS
    tick = h.tick()
    assert [o.topic for o in tick.outputs] == [TOPICS.results, TOPICS.case_events]
    assert h.replay(h.offset).outputs == tick.outputs
    h.confirm("c-r", pid="p-2", status="REVERSED")
    reversal = h.replay(h.offset)
    assert [o.topic for o in reversal.outputs] == [TOPICS.results, TOPICS.case_events]


# -- retention -------------------------------------------------------------------------------


def test_an_open_case_keeps_the_payment_state_until_resolved_and_retained() -> None:
    h = Cases()
    mismatch(h)
    h.now += 10 * RETAIN_MS
    h.tick()
    assert h.store["p-1"]["state"]["outcome"] == "AMOUNT_MISMATCH"  # kept: the case is open
    [res] = h.results(h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH))  # days later
    assert res["outcome"] == "MATCHED_MANUAL"
    h.now += RETAIN_MS
    assert h.tick().evicted == 1
    # The state and the resolved case are gone; the refund book stays for its window.
    assert set(h.store["p-1"]) >= {"book"} and "state" not in h.store["p-1"]
    assert "cases" not in h.store["p-1"]


def test_a_closed_case_lets_the_state_go_and_is_dropped_after_its_retention() -> None:
    h = Cases()
    mismatch(h)
    h.now += 2 * RETAIN_MS
    h.action(AMOUNT_CASE, resolution=cs.IGNORE)
    h.now += RETAIN_MS - 1
    h.tick()
    assert "cases" in h.store["p-1"]
    h.now += 1
    assert h.tick().evicted == 1 and "p-1" not in h.store


def test_a_value_of_cases_only_goes_once_they_are_resolved_and_retained() -> None:
    h = Cases()
    [event] = h.events(h.dispute("e1", pid="ghost"))
    h.now += 10 * RETAIN_MS
    h.tick()
    assert "ghost" in h.store
    h.action(event["case_id"], resolution=cs.IGNORE, pid="ghost")
    h.now += RETAIN_MS
    assert h.tick().evicted == 1 and "ghost" not in h.store


def test_a_fresh_processor_finds_the_cases_deadlines_in_the_table() -> None:
    h = Cases()
    mismatch(h)
    h.action(AMOUNT_CASE, resolution=cs.CLOSE_NO_FUNDS)
    h.dispute("e1", pid="ghost")
    ghost_case = next(iter(h.cases("ghost")))
    h.action(ghost_case, resolution=cs.IGNORE, pid="ghost")
    h.proc = ReconcileProcessor(
        h.registry, h.store, h.proc._policy, FEES, TOPICS, TICKS, clock=lambda: h.now,
        case_policy=CasePolicy(LIMIT, {}, RETAIN_MS))
    h.now += RETAIN_MS
    assert h.tick().evicted == 2 and h.store == {}


def test_an_action_naming_no_case_or_payment_is_dead_lettered() -> None:
    h = Cases()
    assert h.action("", resolution=cs.IGNORE).outcome == DEAD_LETTERED
    assert h.action(AMOUNT_CASE, resolution=cs.IGNORE, pid="").outcome == DEAD_LETTERED


def test_every_case_event_the_stage_writes_is_one_the_ledger_sink_reads() -> None:
    h = Cases(limit=500)
    outputs = h.confirm("c-x", pid="ghost", status="REVERSED").outputs
    h.routed()
    outputs += h.confirm("c-1", amount_minor=990).outputs
    for d in (h.action(AMOUNT_CASE, resolution=cs.FORCE_MATCH),
              h.action(AMOUNT_CASE, cs.APPROVE, aid="a-2"),
              h.action(AMOUNT_CASE, cs.REJECT, aid="a-3", operator="bob"),
              h.action(AMOUNT_CASE, resolution=cs.IGNORE, aid="a-4"),
              h.action(AMOUNT_CASE, cs.APPROVE, aid="a-5", operator="bob"),
              h.action("CS-nope", resolution=cs.IGNORE, aid="a-6"),
              h.action(AMOUNT_CASE, resolution=cs.IGNORE, aid="a-7", key=b"other"),
              h.action(AMOUNT_CASE, resolution=cs.IGNORE, aid="bad id")):
        outputs += d.outputs
    h.routed("p-2")
    h.now += SLA_MS
    outputs += h.tick().outputs
    outputs += h.confirm("c-2", pid="p-2").outputs  # AUTO_MATCHED
    events = [h.decoder.decode(o.value) for o in outputs if o.topic == TOPICS.case_events]
    kinds = {(e["kind"], e["reason"]) for e in events}
    assert kinds == {("OPENED", None), ("PROPOSED", None), ("REJECTED", None),
                     ("RESOLVED", None), ("REFUSED", "SAME_OPERATOR"),
                     ("REFUSED", "CASE_UNKNOWN"), ("REFUSED", "PAYMENT_MISMATCH"),
                     ("REFUSED", "ACTION_ID_INVALID")}
    for event in events:
        news = case_rows(event)
        assert news.event.event_id == event["event_id"]
