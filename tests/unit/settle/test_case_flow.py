"""The simulated operators' policy: only allowed resolutions, money where the outcome has
it, and a case whose proposal was rejected is closed without funds."""

from __future__ import annotations

from datetime import UTC, datetime

from settle.case_flow import choose
from settle.cases_tool import CLOSE_NO_FUNDS, FORCE_MATCH, IGNORE, MARK_RECEIVED, CaseRow
from settlement.cases import allowed_resolutions


def case(n: int, subject: str, outcome: str) -> CaseRow:
    return CaseRow(case_id=f"CS-{n:024x}", payment_id=f"p-{n}", merchant_id="m-1",
                   channel="card", subject=subject, subject_id=f"p-{n}", outcome=outcome,
                   opened_by="r", amount_minor=100, currency="CNY", status="OPEN",
                   resolution=None, operator=None, approver=None, remark=None,
                   opened_at=datetime.now(UTC), resolved_at=None, age_s=0)


def test_every_choice_is_allowed_and_money_is_chosen_where_it_can_be() -> None:
    kinds = [("PAYMENT", "AMOUNT_MISMATCH"), ("PAYMENT", "MISSING_CONFIRMATION"),
             ("PAYMENT", "CURRENCY_MISMATCH"), ("REFUND", "AMOUNT_MISMATCH"),
             ("DISPUTE", "DISPUTE_REJECTED")]
    for subject, outcome in kinds:
        picks = [choose(case(n, subject, outcome), rejected_before=False) for n in range(200)]
        assert set(picks) <= set(allowed_resolutions(subject, outcome))
        money = {FORCE_MATCH, MARK_RECEIVED} & set(allowed_resolutions(subject, outcome))
        if money:
            assert 0.5 < sum(p in money for p in picks) / len(picks) < 1.0
        else:
            assert set(picks) == {CLOSE_NO_FUNDS, IGNORE}


def test_a_rejected_proposal_is_followed_by_closing_without_funds() -> None:
    for n in range(50):
        assert choose(case(n, "PAYMENT", "AMOUNT_MISMATCH"), rejected_before=True) \
            == CLOSE_NO_FUNDS
