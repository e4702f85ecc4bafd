"""MATCHED_MANUAL: an operator's case resolution settles an AMOUNT_MISMATCH (at the confirmed
amount) or a MISSING_CONFIRMATION (at the expected amount) once, and nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest

from settlement import reconciliation as recon
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    DUPLICATE_CONFIRMATION,
    FORCE_MATCH,
    MARK_RECEIVED,
    MATCHED,
    MATCHED_MANUAL,
    MISSING_CONFIRMATION,
    SUCCEEDED,
    TERMINAL_OUTCOMES,
    Confirmation,
    ReconError,
    ReconInvariantError,
    ReconPolicy,
    ReconState,
    RoutedInfo,
    on_confirmation,
    on_manual_match,
    on_routed,
    on_tick,
)

PID = "pay-1"
POLICY = ReconPolicy({}, 50, 30, 1_000)
ROUTED = RoutedInfo(PID, "m-1", "alipay", 1_000, "CNY", created_at_ms=0, routed_at_ms=0,
                    order_id="o-1")
CASE = "CS-0123456789abcdef01234567"


def conf(cid: str, amount: int = 1_000) -> Confirmation:
    return Confirmation(cid, "alipay", f"txn-{cid}", PID, SUCCEEDED, amount, "CNY", 0)


def mismatched() -> ReconState:
    state, _ = on_routed(None, ROUTED, 0)
    state, [res] = on_confirmation(state, conf("c-1", 990), 1)
    assert res.outcome == AMOUNT_MISMATCH
    return state


def missing() -> ReconState:
    state, _ = on_routed(None, ROUTED, 0)
    state, [res] = on_tick(state, 100, POLICY)
    assert res.outcome == MISSING_CONFIRMATION
    return state


def test_force_match_settles_the_confirmed_amount_as_its_own_terminal_outcome() -> None:
    state, [res] = on_manual_match(mismatched(), 990, 500, CASE, "alice", "bob", FORCE_MATCH,
                                   channel_txn_id="txn-c-1")
    assert MATCHED_MANUAL in TERMINAL_OUTCOMES and res.terminal and not res.late
    assert (res.outcome, res.result_id) == (MATCHED_MANUAL, f"{PID}:MATCHED_MANUAL:c-1")
    assert (res.settled_amount_minor, res.expected_amount_minor, res.confirmed_amount_minor) == (
        990, 1_000, 990)
    assert (res.case_id, res.operator, res.approver, res.channel_txn_id) == (
        CASE, "alice", "bob", "txn-c-1")
    assert (res.merchant_id, res.channel, res.order_id, res.decided_at_ms) == (
        "m-1", "alipay", "o-1", 500)
    assert (state.outcome, state.manual_from, state.manual_case_id, state.decided_at_ms) == (
        MATCHED_MANUAL, AMOUNT_MISMATCH, CASE, 500)
    assert ReconState.from_dict(state.to_dict()) == state


def test_mark_received_settles_the_expected_amount_without_a_confirmation() -> None:
    state, [res] = on_manual_match(missing(), 1_000, 500, CASE, "alice", None, MARK_RECEIVED)
    assert (res.result_id, res.confirmation_id, res.confirmed_amount_minor) == (
        f"{PID}:MATCHED_MANUAL:-", None, None)
    assert (res.settled_amount_minor, res.approver) == (1_000, None)
    assert state.missing_declared and state.manual_from == MISSING_CONFIRMATION
    assert ReconState.from_dict(state.to_dict()) == state


def test_a_late_confirmation_after_a_manual_match_is_a_duplicate() -> None:
    state, _ = on_manual_match(missing(), 1_000, 500, CASE, "alice", None, MARK_RECEIVED)
    state2, [res] = on_confirmation(state, conf("c-late"), 600)
    assert res.outcome == DUPLICATE_CONFIRMATION and CASE in res.detail
    assert state2.outcome == MATCHED_MANUAL and not state2.late_matched


def test_only_the_resolvable_outcomes_and_amounts_are_settled() -> None:
    with pytest.raises(ReconError):  # MARK_RECEIVED of an AMOUNT_MISMATCH
        on_manual_match(mismatched(), 1_000, 5, CASE, "alice", None, MARK_RECEIVED)
    with pytest.raises(ReconError):  # FORCE_MATCH of a MISSING_CONFIRMATION
        on_manual_match(missing(), 1_000, 5, CASE, "alice", None, FORCE_MATCH)
    with pytest.raises(ReconError):  # mark-received settles the expected amount only
        on_manual_match(missing(), 999, 5, CASE, "alice", None, MARK_RECEIVED)
    with pytest.raises(ReconError):  # a force-match of the expected amount is a MATCHED
        on_manual_match(mismatched(), 1_000, 5, CASE, "alice", None, FORCE_MATCH)
    with pytest.raises(ReconError):
        on_manual_match(mismatched(), 990, 5, CASE, "alice", None, "CLOSE_NO_FUNDS")
    state, _ = on_routed(None, ROUTED, 0)
    matched, [res] = on_confirmation(state, conf("c-1"), 1)
    assert res.outcome == MATCHED
    for undecided_or_matched in (state, matched):
        with pytest.raises(ReconError):
            on_manual_match(undecided_or_matched, 1_000, 5, CASE, "a", None, MARK_RECEIVED)
    settled, _ = on_manual_match(mismatched(), 990, 5, CASE, "alice", None, FORCE_MATCH)
    with pytest.raises(ReconError):  # once
        on_manual_match(settled, 990, 6, CASE, "alice", None, FORCE_MATCH)


def test_the_result_record_guards_a_manual_settlement() -> None:
    _, [res] = on_manual_match(mismatched(), 990, 5, CASE, "alice", "bob", FORCE_MATCH)
    with pytest.raises(ReconInvariantError):
        replace(res, settled_amount_minor=1_000)  # not the confirmed amount
    with pytest.raises(ReconInvariantError):
        replace(res, approver=" ALICE")  # approved by its own operator
    with pytest.raises(ReconInvariantError):
        replace(res, case_id=None)
    with pytest.raises(ReconInvariantError):
        replace(res, confirmed_currency="USD")
    _, [matched] = on_confirmation(on_routed(None, ROUTED, 0)[0], conf("c-9"), 1)
    with pytest.raises(ReconInvariantError):  # only MATCHED_MANUAL names a case
        replace(matched, case_id=CASE)


def test_the_state_guards_a_manual_match() -> None:
    state, _ = on_manual_match(mismatched(), 990, 5, CASE, "alice", None, FORCE_MATCH)
    with pytest.raises(ReconInvariantError):
        replace(state, manual_case_id=None)
    with pytest.raises(ReconInvariantError):
        replace(state, manual_from=MISSING_CONFIRMATION)  # it was never declared missing
    with pytest.raises(ReconInvariantError):
        replace(mismatched(), manual_from=AMOUNT_MISMATCH, manual_case_id=CASE)


def test_a_manually_matched_state_is_evicted_after_its_retention() -> None:
    state, _ = on_manual_match(missing(), 1_000, 500, CASE, "alice", None, MARK_RECEIVED)
    assert recon.evict_at_ms(state, POLICY) == 1_500
    assert recon.deadline_ms(state, POLICY) is None
