"""Exception cases: opening, every action and refusal code, the approval path, idempotency."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from settlement import cases as cs
from settlement.cases import (
    Case,
    CaseAction,
    CaseError,
    CaseInvariantError,
    CasePolicy,
    auto_resolve,
    case_id_for,
    on_action,
    open_case,
)

T0 = 1_764_000_000_000
RESULT_ID = "pay-1:AMOUNT_MISMATCH:c-1"
POLICY = CasePolicy(approval_above_minor=10_000, approval_above_minor_by_currency={"JPY": 100},
                    retain_ms=1_000)


def opened(outcome: str = "AMOUNT_MISMATCH", subject: str = cs.PAYMENT, amount: int | None = 990,
           currency: str | None = "CNY", opened_by: str = RESULT_ID) -> Case:
    case, step = open_case(
        payment_id="pay-1", subject=subject,
        subject_id="pay-1" if subject == cs.PAYMENT else "sub-1", outcome=outcome,
        opened_by=opened_by, now_ms=T0, merchant_id="m-1", channel="alipay",
        amount_minor=amount, currency=currency, evidence={"confirmed_amount_minor": "990"})
    assert (step.kind, step.status, step.event_id) == (
        cs.OPENED, cs.OPEN, f"{case.case_id}:OPENED:{opened_by}")
    assert step.evidence == {"confirmed_amount_minor": "990"}
    return case


def act(kind: str = cs.RESOLVE, resolution: str | None = cs.FORCE_MATCH, aid: str = "a-1",
        operator: str = "alice", remark: str = "bill shows 9.90", case: Case | None = None,
        **over: Any) -> CaseAction:
    values: dict[str, Any] = {
        "action_id": aid, "case_id": (case or opened()).case_id, "payment_id": "pay-1",
        "kind": kind, "resolution": resolution, "operator": operator, "remark": remark,
        "requested_at_ms": T0}
    values.update(over)
    return CaseAction(**values)


def refused(case: Case, action: CaseAction, held: bool = True) -> str:
    after, [step], apply = on_action(case, action, T0 + 1, POLICY, payment_state_held=held)
    assert step.kind == cs.REFUSED and apply is None and step.status == case.status
    assert step.reason in cs.CASE_REFUSAL_CODES and step.evidence["detail"]
    # Unchanged but for the action's id (a valid one), so the same action again is ignored.
    assert replace(after, seen_action_ids=case.seen_action_ids) == case
    assert step.reason is not None
    return step.reason


# -- opening ---------------------------------------------------------------------------------


def test_the_case_id_is_derived_from_the_opening_result() -> None:
    assert case_id_for(RESULT_ID) == case_id_for(RESULT_ID)
    assert case_id_for(RESULT_ID).startswith("CS-") and len(case_id_for(RESULT_ID)) == 27
    assert case_id_for(RESULT_ID) != case_id_for("pay-1:MISSING_CONFIRMATION:-")
    with pytest.raises(CaseInvariantError, match="derived"):
        replace(opened(), case_id="CS-000000000000000000000000")


def test_a_case_round_trips_through_its_dict_with_a_proposal() -> None:
    case, _, _ = on_action(opened(amount=50_000), act(), T0 + 1, POLICY)
    assert case.status == cs.AWAITING_APPROVAL
    assert Case.from_dict(case.to_dict()) == case
    with pytest.raises(CaseError):
        Case.from_dict({**case.to_dict(), "colour": "red"})


@pytest.mark.parametrize(("subject", "outcome"), [
    (cs.PAYMENT, "DECLINED"), (cs.PAYMENT, "LATE_CONFIRMATION"), (cs.REFUND, "REVERSAL_EXCEPTION"),
    (cs.DISPUTE, "AMOUNT_MISMATCH"), ("ORDER", "AMOUNT_MISMATCH")])
def test_only_exceptions_open_cases_of_their_subject(subject: str, outcome: str) -> None:
    with pytest.raises(CaseInvariantError):
        opened(outcome, subject)


def test_allowed_resolutions_per_subject_and_outcome() -> None:
    assert cs.allowed_resolutions(cs.PAYMENT, "AMOUNT_MISMATCH") == (
        cs.FORCE_MATCH, cs.CLOSE_NO_FUNDS, cs.IGNORE)
    assert cs.allowed_resolutions(cs.PAYMENT, "MISSING_CONFIRMATION") == (
        cs.MARK_RECEIVED, cs.CLOSE_NO_FUNDS, cs.IGNORE)
    for subject, outcome in [(cs.PAYMENT, "CURRENCY_MISMATCH"), (cs.REFUND, "AMOUNT_MISMATCH"),
                             (cs.REFUND, "MISSING_CONFIRMATION"), (cs.DISPUTE, "DISPUTE_REJECTED"),
                             (cs.PAYMENT, "REVERSAL_EXCEPTION")]:
        assert cs.allowed_resolutions(subject, outcome) == (cs.CLOSE_NO_FUNDS, cs.IGNORE)


# -- resolving -------------------------------------------------------------------------------


def test_a_resolution_at_or_below_the_limit_applies_at_once() -> None:
    case = opened(amount=10_000)  # at the limit: no approval
    after, [step], apply = on_action(case, act(remark="  bill shows 9.90 "), T0 + 1, POLICY)
    assert apply == cs.FORCE_MATCH
    assert (after.status, after.resolution, after.operator, after.approver, after.remark) == (
        cs.RESOLVED, cs.FORCE_MATCH, "alice", None, "bill shows 9.90")
    assert (step.kind, step.status, step.event_id, step.action_id) == (
        cs.RESOLVED, cs.RESOLVED, f"{case.case_id}:RESOLVED:a-1", "a-1")
    assert after.resolved_at_ms == T0 + 1 and after.evict_at_ms(POLICY) == T0 + 1 + 1_000


@pytest.mark.parametrize("resolution", [cs.CLOSE_NO_FUNDS, cs.IGNORE])
def test_closing_resolutions_apply_to_every_case_and_settle_nothing(resolution: str) -> None:
    for outcome, subject in [("CURRENCY_MISMATCH", cs.PAYMENT), ("LATE_CONFIRMATION", cs.REFUND),
                             ("DISPUTE_REJECTED", cs.DISPUTE)]:
        case = opened(outcome, subject, amount=5)
        after, [step], apply = on_action(case, act(resolution=resolution, case=case), T0, POLICY)
        assert apply == resolution and after.resolution == resolution
        assert step.kind == cs.RESOLVED


def test_mark_received_resolves_a_missing_confirmation() -> None:
    case = opened("MISSING_CONFIRMATION", opened_by="pay-1:MISSING_CONFIRMATION:-")
    after, _, apply = on_action(case, act(resolution=cs.MARK_RECEIVED, case=case), T0, POLICY)
    assert apply == cs.MARK_RECEIVED and after.status == cs.RESOLVED


def test_above_the_limit_a_second_operator_approves() -> None:
    case = opened(amount=10_001)
    waiting, [proposed], apply = on_action(case, act(), T0 + 1, POLICY)
    assert apply is None and waiting.status == cs.AWAITING_APPROVAL
    assert (proposed.kind, proposed.status, proposed.resolution, proposed.operator) == (
        cs.PROPOSED, cs.AWAITING_APPROVAL, cs.FORCE_MATCH, "alice")
    assert waiting.proposal is not None and waiting.proposal.operator == "alice"
    done, [step], apply = on_action(waiting, act(cs.APPROVE, None, "a-2", "bob", "checked"),
                                    T0 + 2, POLICY)
    assert apply == cs.FORCE_MATCH
    assert (done.status, done.operator, done.approver, done.remark, done.proposal) == (
        cs.RESOLVED, "alice", "bob", "checked", None)
    assert (step.kind, step.operator, step.approver, step.event_id) == (
        cs.RESOLVED, "alice", "bob", f"{case.case_id}:RESOLVED:a-2")


def test_a_rejected_proposal_opens_the_case_again() -> None:
    waiting, _, _ = on_action(opened(amount=50_000), act(), T0, POLICY)
    back, [step], apply = on_action(waiting, act(cs.REJECT, None, "a-2", "bob", "no bill"),
                                    T0 + 1, POLICY)
    assert apply is None and (back.status, back.proposal) == (cs.OPEN, None)
    assert (step.kind, step.status, step.resolution, step.operator, step.approver) == (
        cs.REJECTED, cs.OPEN, cs.FORCE_MATCH, "alice", "bob")
    # Open again: another resolution may be proposed, and approved.
    again, [step], _ = on_action(back, act(resolution=cs.IGNORE, aid="a-3"), T0 + 2, POLICY)
    assert step.kind == cs.PROPOSED and again.proposal is not None


def test_the_limit_is_per_currency() -> None:
    jpy = opened(amount=101, currency="JPY")
    _, [step], _ = on_action(jpy, act(case=jpy), T0, POLICY)
    assert step.kind == cs.PROPOSED  # 101 > 100 JPY
    cny = opened(amount=101, currency="CNY")
    _, [step], _ = on_action(cny, act(case=cny), T0, POLICY)
    assert step.kind == cs.RESOLVED  # 101 <= 10,000 CNY
    unknown = opened("REVERSAL_EXCEPTION", amount=None, currency=None)
    _, [step], _ = on_action(unknown, act(resolution=cs.IGNORE, case=unknown), T0, POLICY)
    assert step.kind == cs.RESOLVED  # no amount at stake: nothing to approve


def test_the_same_action_again_is_ignored() -> None:
    case = opened()
    after, steps, _ = on_action(case, act(), T0, POLICY)
    assert steps
    assert on_action(after, act(), T0 + 5, POLICY) == (after, [], None)
    # Refused ones too: a refused action sent again is not answered twice.
    refused_once, [step], _ = on_action(after, act(aid="a-9"), T0, POLICY)
    assert step.reason == cs.CASE_ALREADY_RESOLVED
    assert on_action(refused_once, act(aid="a-9"), T0, POLICY) == (refused_once, [], None)


def test_seen_action_ids_are_bounded() -> None:
    case = opened()
    for n in range(cs.SEEN_ACTION_IDS_MAX + 5):
        case, _, _ = on_action(case, act(cs.APPROVE, None, aid=f"x-{n}"), T0, POLICY)
    assert len(case.seen_action_ids) == cs.SEEN_ACTION_IDS_MAX
    assert case.seen_action_ids[-1] == f"x-{cs.SEEN_ACTION_IDS_MAX + 4}"


# -- refusals --------------------------------------------------------------------------------


def test_every_refusal_code() -> None:
    case = opened()
    mismatch = opened("CURRENCY_MISMATCH", amount=5, opened_by="pay-1:CURRENCY_MISMATCH:c-1")
    waiting, _, _ = on_action(opened(amount=50_000), act(), T0, POLICY)
    done, _, _ = on_action(case, act(aid="done"), T0, POLICY)
    assert refused(case, act(aid="bad id!")) == cs.ACTION_ID_INVALID
    assert refused(case, act(aid="")) == cs.ACTION_ID_INVALID
    assert refused(case, act(aid="a" * 129)) == cs.ACTION_ID_INVALID
    assert refused(case, act(payment_id="pay-2")) == cs.PAYMENT_MISMATCH
    assert refused(case, act(operator="  ")) == cs.OPERATOR_REQUIRED
    assert refused(case, act(remark="")) == cs.REMARK_REQUIRED
    assert refused(done, act()) == cs.CASE_ALREADY_RESOLVED
    assert refused(case, act(resolution=None)) == cs.RESOLUTION_MISSING
    assert refused(case, act(resolution=cs.MARK_RECEIVED)) == cs.RESOLUTION_NOT_ALLOWED
    assert refused(case, act(resolution=cs.AUTO_MATCHED)) == cs.RESOLUTION_NOT_ALLOWED
    assert refused(mismatch, act(case=mismatch)) == cs.RESOLUTION_NOT_ALLOWED
    assert refused(waiting, act(aid="a-2", operator="carol")) == cs.APPROVAL_PENDING
    assert refused(case, act(cs.APPROVE, None, operator="bob")) == cs.NOTHING_TO_APPROVE
    assert refused(case, act(cs.REJECT, None, operator="bob")) == cs.NOTHING_TO_APPROVE
    assert refused(waiting, act(cs.APPROVE, None, "a-2", " Alice ")) == cs.SAME_OPERATOR
    assert refused(waiting, act(cs.REJECT, None, "a-2", "ALICE")) == cs.SAME_OPERATOR
    assert refused(case, act(), held=False) == cs.PAYMENT_STATE_GONE
    assert refused(waiting, act(cs.APPROVE, None, "a-2", "bob"), held=False) == (
        cs.PAYMENT_STATE_GONE)
    zero = opened(amount=0)
    assert refused(zero, act(case=zero)) == cs.RESOLUTION_NOT_ALLOWED
    assert {cs.CASE_UNKNOWN} == cs.CASE_REFUSAL_CODES - {
        cs.ACTION_ID_INVALID, cs.PAYMENT_MISMATCH, cs.OPERATOR_REQUIRED, cs.REMARK_REQUIRED,
        cs.CASE_ALREADY_RESOLVED, cs.RESOLUTION_MISSING, cs.RESOLUTION_NOT_ALLOWED,
        cs.APPROVAL_PENDING, cs.NOTHING_TO_APPROVE, cs.SAME_OPERATOR, cs.PAYMENT_STATE_GONE}


def test_closing_needs_no_payment_state_and_a_rejection_needs_none_either() -> None:
    case = opened()
    _, [step], apply = on_action(case, act(resolution=cs.CLOSE_NO_FUNDS), T0, POLICY,
                                 payment_state_held=False)
    assert step.kind == cs.RESOLVED and apply == cs.CLOSE_NO_FUNDS
    waiting, _, _ = on_action(opened(amount=50_000), act(), T0, POLICY)
    _, [step], _ = on_action(waiting, act(cs.REJECT, None, "a-2", "bob"), T0, POLICY,
                             payment_state_held=False)
    assert step.kind == cs.REJECTED


def test_an_invalid_action_id_is_answered_under_a_digest_and_never_remembered() -> None:
    case = opened()
    huge = "é" * 500
    after, [step], _ = on_action(case, act(aid=huge), T0, POLICY)
    assert after == case and len(step.event_id) < 100 and ":REFUSED:invalid-" in step.event_id
    _, [again], _ = on_action(after, act(aid=huge), T0, POLICY)
    assert again.event_id == step.event_id  # answered the same way each time


def test_refused_without_case_names_the_action() -> None:
    action = act(case_id="CS-nope")
    step = cs.refused_without_case(action, cs.CASE_UNKNOWN, "no such case", T0)
    assert (step.kind, step.reason, step.event_id) == (
        cs.REFUSED, cs.CASE_UNKNOWN, "CS-nope:REFUSED:a-1")


def test_an_action_on_another_case_is_a_caller_bug() -> None:
    with pytest.raises(CaseError):
        on_action(opened(), act(case_id="CS-other"), T0, POLICY)


def test_unreadable_actions_and_policies_raise() -> None:
    with pytest.raises(CaseError):
        act(kind="DELETE")
    with pytest.raises(CaseError):
        act(resolution="REFUND")
    with pytest.raises(CaseError):
        act(operator=None)
    with pytest.raises(CaseError):
        CasePolicy(approval_above_minor=-1)
    with pytest.raises(CaseError):
        CasePolicy(approval_above_minor_by_currency={"jpy": 1})
    with pytest.raises(CaseError):
        CasePolicy(retain_ms=True)


# -- automatic resolution --------------------------------------------------------------------


def test_a_late_match_resolves_a_missing_confirmation_case_itself() -> None:
    case = opened("MISSING_CONFIRMATION", amount=50_000,
                  opened_by="pay-1:MISSING_CONFIRMATION:-")
    waiting, _, _ = on_action(case, act(resolution=cs.MARK_RECEIVED, case=case), T0, POLICY)
    done, [step] = auto_resolve(waiting, T0 + 3, "pay-1:MATCHED:c-late")
    assert (done.status, done.resolution, done.operator, done.proposal) == (
        cs.RESOLVED, cs.AUTO_MATCHED, cs.SYSTEM_OPERATOR, None)
    assert (step.kind, step.resolution, step.action_id, step.event_id) == (
        cs.RESOLVED, cs.AUTO_MATCHED, None, f"{case.case_id}:RESOLVED:{case.opened_by}")
    assert step.evidence == {"result_id": "pay-1:MATCHED:c-late"}
    assert auto_resolve(done, T0 + 4) == (done, [])  # resolved once
    other = opened()
    assert auto_resolve(other, T0) == (other, [])  # only MISSING_CONFIRMATION payment cases
