"""Unit tests of the ledger sink's pure rows for disputes, exception cases and manual matches:
each dispute event posts once and in order, a case's row never moves backwards, a
MATCHED_MANUAL posts at its settled amount and replaces an exception once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.fees import FeeSchedule
from settlement.ledger import balances
from sinks.case_rows import CaseRow, apply_event, case_rows
from sinks.dispute_rows import (
    APPLY,
    CONFLICT,
    DUPLICATE,
    STALE,
    DisputeNews,
    DisputeRow,
    RejectionRow,
    dispute_rows,
    step,
)
from sinks.errors import InvalidRecord
from sinks.ledger_rows import build_ledger_rows
from sinks.refund_rows import refund_rows
from sinks.settlement_rows import build_settlement_rows
from tests.unit.sinks.test_sink_rows import _netted, result

FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180")
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def dispute(event: str = "OPENED", did: str = "d1", pid: str = "p1", *, minute: int = 1,
            amount: int = 700, fee: int = 0, withdrawn: bool = True, **extra: Any
            ) -> dict[str, Any]:
    status = {"WON": "WON", "LOST": "LOST"}.get(event, "OPENED")
    record = {
        "result_id": f"{pid}/{did}:{event}:e{minute}", "dispute_id": did, "payment_id": pid,
        "merchant_id": "m1", "order_id": "o1", "channel": "CARD",
        "channel_dispute_id": f"cb-{did}", "event": event, "stage": "DISPUTE",
        "status": status, "amount_minor": amount, "currency": "CNY",
        "funds_withdrawn": withdrawn, "fee_minor": fee, "reasons": [], "reason_code": "4837",
        "respond_by": T0 + timedelta(days=7), "captured_minor": 10_000, "held_minor": 0,
        "disputed_lost_minor": 0, "refundable_minor": 0,
        "occurred_at": T0 + timedelta(minutes=minute),
        "decided_at": T0 + timedelta(minutes=minute, seconds=1), "detail": "",
    }
    record.update(extra)
    return record


def news(record: dict[str, Any]) -> DisputeNews:
    out = dispute_rows(record)
    assert isinstance(out, DisputeNews)
    return out


def run(records: list[dict[str, Any]], current: DisputeRow | None = None
        ) -> tuple[DisputeRow | None, list[str], list[str]]:
    """Apply results in order: (the row, verdicts, journal ids posted)."""
    verdicts, posted = [], []
    for record in records:
        done = step(current, news(record))
        verdicts.append(done.verdict)
        if done.verdict == APPLY:
            current = done.row
            if done.journal is not None:
                posted.append(done.journal.journal_id)
    return current, verdicts, posted


# -- disputes ----------------------------------------------------------------------------------


def test_an_opened_dispute_is_its_row_and_its_hold_journal() -> None:
    item = news(dispute())
    assert item.journal is not None and item.journal.journal_id == "DO:p1/d1"
    row = item.row
    assert (row.state, row.channel, row.amount_minor, row.funds_withdrawn, row.opened_at,
            row.opened_result_id, row.closed_at, row.closed_result_id) == (
        "OPEN", "card", 700, True, T0 + timedelta(minutes=1), "p1/d1:OPENED:e1", None, None)
    assert set(balances(item.journal.journal.postings).values()) == {700, -700}


def test_open_then_lost_posts_the_hold_then_the_loss_once_each() -> None:
    row, verdicts, posted = run([
        dispute(minute=1), dispute(minute=1),  # a replay of the opening
        dispute("STAGE_CHANGED", minute=2, stage="PRE_ARBITRATION"),
        dispute("LOST", minute=3, fee=150, status="ACCEPTED", stage="PRE_ARBITRATION"),
        dispute("LOST", minute=3, fee=150, status="ACCEPTED", stage="PRE_ARBITRATION"),
        dispute(minute=1),  # the opening, very late
        dispute("STAGE_CHANGED", minute=2, stage="PRE_ARBITRATION"),  # history only
    ])
    assert verdicts == [APPLY, DUPLICATE, APPLY, APPLY, DUPLICATE, DUPLICATE, STALE]
    assert posted == ["DO:p1/d1", "DL:p1/d1"]
    assert row is not None
    assert (row.state, row.status, row.stage, row.fee_minor, row.closed_result_id,
            row.last_result_id) == ("LOST", "ACCEPTED", "PRE_ARBITRATION", 150,
                                    "p1/d1:LOST:e3", "p1/d1:LOST:e3")


def test_won_after_lost_and_a_close_without_a_hold_are_conflicts() -> None:
    row, verdicts, posted = run([dispute(minute=1), dispute("LOST", minute=2),
                                 dispute("WON", minute=3)])
    assert verdicts == [APPLY, APPLY, CONFLICT] and posted == ["DO:p1/d1", "DL:p1/d1"]
    assert row is not None and row.state == "LOST"
    for event in ("WON", "LOST"):
        done = step(None, news(dispute(event, minute=2)))
        assert done.verdict == CONFLICT and "never opened" in done.message
    opened = step(None, news(dispute())).row
    second = step(opened, news(dispute(minute=5)))  # another OPENED result for it
    assert second.verdict == CONFLICT


@pytest.mark.parametrize("change", [{"amount_minor": 701}, {"currency": "USD"},
                                    {"funds_withdrawn": False}, {"merchant_id": "m2"},
                                    {"channel": "UNIONPAY"}])
def test_a_close_that_does_not_match_the_hold_is_refused(change: dict[str, Any]) -> None:
    opened = step(None, news(dispute())).row
    done = step(opened, news(dispute("WON", minute=2, **change)))
    assert done.verdict == CONFLICT and done.journal is None


def test_a_dispute_first_seen_won_is_a_row_without_money() -> None:
    done = step(None, news(dispute("STAGE_CHANGED", status="CANCELLED")))
    assert done.verdict == APPLY and done.journal is None and done.row is not None
    assert (done.row.state, done.row.opened_result_id, done.row.closed_result_id,
            done.row.closed_at) == ("WON", None, None, T0 + timedelta(minutes=1))
    assert step(None, news(dispute("STAGE_CHANGED"))).verdict == CONFLICT  # open, unheld
    opened = step(None, news(dispute())).row
    closing = step(opened, news(dispute("STAGE_CHANGED", minute=2, status="WON")))
    assert closing.verdict == CONFLICT  # would close without releasing the hold


def test_a_rejected_dispute_is_a_rejection_row_as_sent() -> None:
    rec = dispute("REJECTED", did="bad id!", merchant_id=None, currency="cny", amount=-5,
                  reasons=[{"code": "DISPUTE_ID_INVALID", "detail": "pattern"},
                           {"code": "AMOUNT_NOT_POSITIVE", "detail": "-5"}])
    row = dispute_rows(rec)
    assert isinstance(row, RejectionRow)
    assert (row.dispute_id, row.amount_minor, row.currency, row.channel) == (
        "bad id!", -5, "cny", "card")
    assert [r["code"] for r in json.loads(row.reasons)] == ["DISPUTE_ID_INVALID",
                                                           "AMOUNT_NOT_POSITIVE"]


@pytest.mark.parametrize("bad", [
    dispute(event="SETTLED"),
    dispute(dispute_id="d/1"),
    dispute(merchant_id=None),
    dispute(currency="cny"),
    dispute(amount=0),
    dispute("OPENED", fee=5),  # a fee on anything but a loss
    dispute("LOST", fee=-1),
    dispute("WON", status="LOST"),  # the status does not fit the event
    dispute("LOST", status="OPENED"),
    dispute(stage="APPEAL"),
    dispute(funds_withdrawn=None),
    dispute(reasons=[{"code": "X", "detail": ""}]),  # reasons on a money event
    dispute("REJECTED", reasons=[]),  # a rejection without its reasons
    dispute(decided_at=datetime(2026, 3, 1)),  # naive
])
def test_bad_dispute_results_are_rejected_never_written(bad: dict[str, Any]) -> None:
    rows = build_ledger_rows([dispute(did="ok"), bad], FEES, dispute_positions={0, 1})
    assert [r.position for r in rows.rejected] == [1]
    assert [n.row.dispute_id for _, n in rows.disputes] == ["ok"]


def test_the_batch_keeps_dispute_moves_in_order_and_each_rejection_once() -> None:
    rejected = dispute("REJECTED", reasons=[{"code": "PAYMENT_UNKNOWN", "detail": ""}])
    batch = [result(), dispute(), rejected, dispute("LOST", minute=2), dict(rejected)]
    rows = build_ledger_rows(batch, FEES, dispute_positions={1, 2, 3, 4})
    assert rows.rejected == [] and rows.duplicates == 1
    assert [(i, n.event) for i, n in rows.disputes] == [(1, "OPENED"), (3, "LOST")]
    assert [r.result_id for r in rows.dispute_rejections] == [rejected["result_id"]]
    assert [j.journal_id for j in rows.journals] == ["J:p1"]  # disputes post when written


# A dispute's life as the reconcile stage publishes it: opened (maybe stage changes), then
# won or lost (or still open); replays of any earlier result may arrive at any later point.
LIVES = st.tuples(st.integers(0, 3), st.sampled_from([None, "WON", "LOST"]), st.booleans(),
                  st.integers(0, 500), st.lists(st.integers(0, 10**6), max_size=8))


@given(LIVES)
def test_any_replays_post_each_money_event_once_and_in_order(
        life: tuple[int, str | None, bool, int, list[int]]) -> None:
    changes, end, withdrawn, fee, replays = life
    records = [dispute(minute=1, withdrawn=withdrawn)]
    records += [dispute("STAGE_CHANGED", minute=2 + n, withdrawn=withdrawn)
                for n in range(changes)]
    if end is not None:
        records.append(dispute(end, minute=10, withdrawn=withdrawn,
                               fee=fee if end == "LOST" else 0))
    stream = list(records)
    for seed in replays:  # a replay of a result already published, anywhere after it
        at = seed % len(stream)
        stream.insert(at + 1 + seed % (len(stream) - at), stream[at])
    row, _verdicts, posted = run(stream)
    prefix = {"WON": ["DW:p1/d1"], "LOST": ["DL:p1/d1"], None: []}[end]
    assert posted == ["DO:p1/d1", *prefix]
    assert row is not None and row.state == {"WON": "WON", "LOST": "LOST", None: "OPEN"}[end]
    assert row.last_result_id == records[-1]["result_id"]


# -- exception cases ---------------------------------------------------------------------------


def event(kind: str = "OPENED", *, minute: int = 0, case: str = "CS-1", action: str = "",
          **extra: Any) -> dict[str, Any]:
    status = {"PROPOSED": "AWAITING_APPROVAL", "RESOLVED": "RESOLVED"}.get(kind, "OPEN")
    record = {
        "event_id": f"{case}:{kind}:{action or 'r1'}", "case_id": case, "payment_id": "p1",
        "merchant_id": "m1", "channel": "ALIPAY", "subject": "PAYMENT", "subject_id": "p1",
        "outcome": "AMOUNT_MISMATCH", "opened_by": "p1:AMOUNT_MISMATCH:c1", "kind": kind,
        "status": status, "resolution": None, "amount_minor": 9_500, "currency": "CNY",
        "action_id": action or None, "operator": None, "approver": None, "remark": None,
        "reason": None, "evidence": {"expected_amount_minor": "10000"},
        "occurred_at": T0 + timedelta(minutes=minute),
    }
    if kind in ("PROPOSED", "RESOLVED"):
        record.update(resolution="FORCE_MATCH", operator="alice", remark="bank statement")
    if kind == "REFUSED":
        record.update(reason="SAME_OPERATOR", operator="alice")
    record.update(extra)
    return record


def follow(events: list[dict[str, Any]], current: CaseRow | None = None) -> CaseRow | None:
    for record in events:
        moved = apply_event(current, case_rows(record))
        if moved is not None:
            current = moved
    return current


def test_a_case_follows_its_events_proposal_rejection_approval() -> None:
    opened = follow([event()])
    assert opened is not None
    assert (opened.status, opened.resolution, opened.opened_at, opened.outcome) == (
        "OPEN", None, T0, "AMOUNT_MISMATCH")
    proposed = follow([event("PROPOSED", minute=1, action="a1")], opened)
    assert proposed is not None and (proposed.status, proposed.resolution, proposed.operator,
                                     proposed.approver) == (
        "AWAITING_APPROVAL", "FORCE_MATCH", "alice", None)
    rejected = follow([event("REJECTED", minute=2, action="a2", resolution="FORCE_MATCH",
                             operator="alice", approver="bob")], proposed)
    assert rejected is not None and (rejected.status, rejected.resolution, rejected.operator,
                                     rejected.remark) == ("OPEN", None, None, None)
    resolved = follow([event("RESOLVED", minute=3, action="a3", approver="bob")], rejected)
    assert resolved is not None
    assert (resolved.status, resolved.resolution, resolved.operator, resolved.approver,
            resolved.resolved_at, resolved.last_event_kind) == (
        "RESOLVED", "FORCE_MATCH", "alice", "bob", T0 + timedelta(minutes=3), "RESOLVED")


def test_a_case_never_moves_backwards() -> None:
    resolved = follow([event(), event("RESOLVED", minute=5, action="a1")])
    assert resolved is not None and resolved.status == "RESOLVED"
    # A later proposal, an older event, a refusal, a replay: history only.
    for later in (event("PROPOSED", minute=9, action="a9"),
                  event("PROPOSED", minute=1, action="a0"),
                  event("REFUSED", minute=9, action="a8"),
                  event("RESOLVED", minute=5, action="a1")):
        assert apply_event(resolved, case_rows(later)) is None
    proposed = follow([event(), event("PROPOSED", minute=5, action="a1")])
    assert apply_event(proposed, case_rows(event("REJECTED", minute=4, action="a0",
                                                 resolution="IGNORE", operator="x",
                                                 approver="y"))) is None


def test_an_opening_read_after_a_later_event_only_dates_the_case() -> None:
    first = follow([event("PROPOSED", minute=5, action="a1")])
    assert first is not None and first.opened_at is None and first.status == "AWAITING_APPROVAL"
    dated = follow([event()], first)
    assert dated is not None and dated.opened_at == T0 and dated.status == "AWAITING_APPROVAL"
    assert follow([event("REFUSED", minute=1, action="a2")]) is None  # refusals make no case


@pytest.mark.parametrize("bad", [
    event(kind="CLOSED"),
    event(subject="ORDER"),
    event(status="RESOLVED"),  # an OPENED event leaves the case OPEN
    event("PROPOSED", resolution=None),
    event("RESOLVED", operator=None),
    event("REFUSED", reason=None),
    event(reason="SAME_OPERATOR"),  # a reason on anything but a refusal
    event(resolution="SPLIT"),
    event(evidence={"k": 1}),
    event(outcome=""),
    event(occurred_at=datetime(2026, 3, 1)),
])
def test_bad_case_events_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord):
        case_rows(bad)
    rows = build_ledger_rows([event(case="ok"), bad], FEES, case_positions={0, 1})
    assert [r.position for r in rows.rejected] == [1]


def test_case_events_keep_their_evidence_and_collapse_replays() -> None:
    rows = build_ledger_rows([event(), event(), event("REFUSED", action="a1")], FEES,
                             case_positions={0, 1, 2})
    assert rows.duplicates == 1 and rows.rejected == []
    assert [n.event.kind for n in rows.case_events] == ["OPENED", "REFUSED"]
    assert json.loads(rows.case_events[0].event.evidence) == {"expected_amount_minor": "10000"}


# -- manual matches ------------------------------------------------------------------------------


def manual(pid: str = "p1", settled: int = 9_500, *, confirmed: int | None = 9_500,
           **extra: Any) -> dict[str, Any]:
    conf = "c1" if confirmed is not None else None
    fields = {"settled_amount_minor": settled, "case_id": "CS-1", "operator": "alice",
              "approver": "bob", "split": (57, settled - 57), **extra}
    return result(pid, "MATCHED_MANUAL", conf=conf, amount=10_000, confirmed=confirmed,
                  **fields)


def test_a_force_match_posts_at_the_confirmed_amount_and_replaces_the_mismatch() -> None:
    batch = [result("p1", "AMOUNT_MISMATCH", confirmed=9_500), manual(), manual()]
    rows = build_ledger_rows(batch, FEES)
    assert rows.rejected == [] and rows.duplicates == 1
    assert [tuple(j) for j in rows.journals] == [
        ("J:p1", "PAYMENT", "p1", "p1", "CNY", 9_500, 57, 9_443)]
    assert [(p.state, p.amount_minor, p.case_id, p.operator, p.approver)
            for p in rows.payments] == [("MATCHED_MANUAL", 10_000, "CS-1", "alice", "bob")]
    assert [e.outcome for e in rows.exceptions] == ["AMOUNT_MISMATCH"]


def test_a_mark_received_posts_at_the_expected_amount() -> None:
    batch = [result("p1", "MISSING_CONFIRMATION", conf=None),
             manual(settled=10_000, confirmed=None)]
    rows = build_ledger_rows(batch, FEES)
    assert rows.rejected == []
    assert [j.gross_minor for j in rows.journals] == [10_000]
    assert [p.state for p in rows.payments] == ["MATCHED_MANUAL"]


def test_a_manual_match_of_a_settled_or_declined_payment_is_a_conflict() -> None:
    for first in (result("p1"), result("p1", "DECLINED", confirmed=0),
                  result("p1", "CURRENCY_MISMATCH")):
        rows = build_ledger_rows([first, manual()], FEES)
        assert [(r.position, r.error_type) for r in rows.rejected] == [
            (1, "TerminalStateConflict")], first["outcome"]
    rows = build_ledger_rows([result("p1", "MISSING_CONFIRMATION", conf=None),
                              manual(settled=10_000, confirmed=None),
                              result("p1", "MATCHED", conf="c9", late=True)], FEES)
    assert [(r.position, r.error_type) for r in rows.rejected] == [(2, "TerminalStateConflict")]


@pytest.mark.parametrize("bad", [
    manual(settled=9_400),  # not the confirmed amount
    manual(settled=9_999, confirmed=None),  # not the expected amount
    manual(settled_amount_minor=None),
    manual(split=(57, 9_000)),  # fee + net != settled
    manual(split=(None, None)),  # no fee schedule fallback
    manual(case_id=None),
    manual(operator=""),
    manual(confirmed_currency="USD"),
    manual(merchant=None),
])
def test_bad_manual_matches_are_rejected(bad: dict[str, Any]) -> None:
    rows = build_ledger_rows([bad], FEES)
    assert [r.position for r in rows.rejected] == [0] and rows.journals == []


def test_a_matched_result_settles_its_expected_amount_only() -> None:
    rows = build_ledger_rows([result(settled_amount_minor=10_000),
                              result("p2", settled_amount_minor=9_000)], FEES)
    assert [r.position for r in rows.rejected] == [1]


def test_a_refund_result_is_never_matched_manually() -> None:
    with pytest.raises(InvalidRecord):
        refund_rows({"result_id": "r", "payment_id": "p1", "refund_id": "r1",
                     "outcome": "MATCHED_MANUAL", "terminal": True})


# -- settlement: dispute items ---------------------------------------------------------------------


def test_dispute_items_are_accepted_signed_and_counted_in_neither_count() -> None:
    rec = _netted([("PAYMENT", "p1", "p1", 10_000, 60),
                   ("DISPUTE_HOLD", "p1/d1", "p1", -700, 0),
                   ("DISPUTE_FEE", "p1/d1", "p1", -150, 0),
                   ("DISPUTE_RELEASE", "p2/d9", "p2", 300, 0)])
    rows = build_settlement_rows([rec])
    assert rows.rejected == []
    [b] = rows.batches
    assert (b.payment_count, b.refund_count, b.net_minor) == (1, 0, 9_940 - 700 - 150 + 300)


@pytest.mark.parametrize("items", [
    [("DISPUTE_HOLD", "p1/d1", "p1", 700, 0)],  # a hold is negative
    [("DISPUTE_RELEASE", "p1/d1", "p1", -700, 0)],  # a release positive
    [("DISPUTE_FEE", "p1/d1", "p1", -150, -1)],  # no fee on a dispute item
    [("DISPUTE_HOLD", "p2/d1", "p1", -700, 0)],  # another payment's
    [("DISPUTE_HOLD", "p1", "p1", -700, 0)],  # not a source id
])
def test_dispute_items_with_the_wrong_sign_fee_or_id_are_rejected(
        items: list[tuple[str, str, str, int, int]]) -> None:
    rows = build_settlement_rows([_netted(items)])
    assert [r.position for r in rows.rejected] == [0]
