"""Exception cases against a reference model: any sequence of actions by any operators, and
the pipeline's own automatic resolution, on cases below and above the approval limit."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from settlement import cases as cs
from settlement.cases import Case, CaseAction, CasePolicy, CaseStep

T0 = 1_764_000_000_000
LIMIT = 1_000
POLICY = CasePolicy(approval_above_minor=LIMIT, retain_ms=60_000)
# (outcome, amount at stake): below, at and above the limit; one with nothing at stake.
CASES = [("AMOUNT_MISMATCH", 990), ("AMOUNT_MISMATCH", 5_000), ("MISSING_CONFIRMATION", 1_000),
         ("MISSING_CONFIRMATION", 80_000), ("CURRENCY_MISMATCH", 3_000), ("AMOUNT_MISMATCH", 0)]
ACTION_IDS = [f"a-{n}" for n in range(8)] + ["", "bad id"]  # the last two are invalid
OPERATORS = ["alice", "bob", " Alice", "carol", ""]
REMARKS = ["why", "because", "checked", " "]


@dataclass
class Ref:
    """The reference's memory of one case."""

    amount: int
    allowed: tuple[str, ...]
    status: str = cs.OPEN
    proposer: str | None = None
    proposed: str | None = None
    seen: set[str] = field(default_factory=set)
    kinds: list[str] = field(default_factory=list)

    def expect(self, action: CaseAction, held: bool) -> str | None:
        """The kind of step the action yields (None: no step at all)."""
        aid, op = action.action_id, action.operator.strip().casefold()
        if not cs.valid_action_id(aid):
            return cs.REFUSED
        if aid in self.seen:
            return None
        self.seen.add(aid)
        if not op or not action.remark.strip() or self.status == cs.RESOLVED:
            return cs.REFUSED
        money = cs.MONEY_RESOLUTIONS
        if action.kind == cs.RESOLVE:
            res = action.resolution
            if res is None or res not in self.allowed or self.proposer is not None:
                return cs.REFUSED
            if res in money and (not held or self.amount <= 0):
                return cs.REFUSED
            if self.amount > LIMIT:
                self.status, self.proposer, self.proposed = cs.AWAITING_APPROVAL, op, res
                return cs.PROPOSED
            self.status = cs.RESOLVED
            return cs.RESOLVED
        if self.proposer is None or op == self.proposer:
            return cs.REFUSED
        if action.kind == cs.REJECT:
            self.status, self.proposer, self.proposed = cs.OPEN, None, None
            return cs.REJECTED
        if self.proposed in money and not held:
            return cs.REFUSED
        self.status, self.proposer, self.proposed = cs.RESOLVED, None, None
        return cs.RESOLVED


class CaseMachine(RuleBasedStateMachine):
    @initialize()
    def open_cases(self) -> None:
        self.now = T0
        self.cases: list[Case] = []
        self.refs: list[Ref] = []
        self.history: list[list[tuple[CaseStep, str | None]]] = []
        for n, (outcome, amount) in enumerate(CASES):
            case, step = cs.open_case(
                payment_id="pay-1", subject=cs.PAYMENT, subject_id="pay-1", outcome=outcome,
                opened_by=f"pay-1:{outcome}:c-{n}", now_ms=self.now, amount_minor=amount,
                currency="CNY")
            self.cases.append(case)
            self.refs.append(Ref(amount, cs.allowed_resolutions(cs.PAYMENT, outcome)))
            self.history.append([(step, None)])

    @rule(pick=st.integers(0, len(CASES) - 1), kind=st.sampled_from(sorted(cs.ACTION_KINDS)),
          resolution=st.sampled_from([None, *sorted(cs.RESOLUTIONS)]),
          aid=st.sampled_from(ACTION_IDS), operator=st.sampled_from(OPERATORS),
          remark=st.sampled_from(REMARKS), held=st.booleans(), step_ms=st.integers(0, 5))
    def act(self, pick: int, kind: str, resolution: str | None, aid: str, operator: str,
            remark: str, held: bool, step_ms: int) -> None:
        self.now += step_ms
        case = self.cases[pick]
        action = CaseAction(aid, case.case_id, "pay-1", kind, operator, remark, self.now,
                            resolution)
        after, steps, apply = cs.on_action(case, action, self.now, POLICY,
                                           payment_state_held=held)
        expected = self.refs[pick].expect(action, held)
        assert [s.kind for s in steps] == ([] if expected is None else [expected])
        if expected == cs.REFUSED:
            assert steps[0].reason in cs.CASE_REFUSAL_CODES
        assert Case.from_dict(after.to_dict()) == after  # what the table keeps reads back
        if apply is not None:
            [step] = steps
            assert step.kind == cs.RESOLVED and apply == after.resolution
            assert held or apply not in cs.MONEY_RESOLUTIONS
        self.cases[pick] = after
        self.history[pick].extend((s, apply) for s in steps)

    @rule(pick=st.integers(0, len(CASES) - 1))
    def late_match(self, pick: int) -> None:
        case = self.cases[pick]
        after, steps = cs.auto_resolve(case, self.now, "pay-1:MATCHED:late")
        ref = self.refs[pick]
        auto = case.outcome == "MISSING_CONFIRMATION" and ref.status != cs.RESOLVED
        assert [s.kind for s in steps] == ([cs.RESOLVED] if auto else [])
        if auto:
            ref.status, ref.proposer, ref.proposed = cs.RESOLVED, None, None
        self.cases[pick] = after
        self.history[pick].extend((s, None) for s in steps)

    @invariant()
    def histories_hold(self) -> None:
        if not hasattr(self, "cases"):
            return
        for case, ref, history in zip(self.cases, self.refs, self.history, strict=True):
            assert case.status == ref.status
            kinds = [step.kind for step, _ in history]
            assert kinds[0] == cs.OPENED and cs.OPENED not in kinds[1:]
            resolved = [n for n, kind in enumerate(kinds) if kind == cs.RESOLVED]
            assert len(resolved) <= 1, kinds  # at most one RESOLVED per case
            if resolved:  # nothing but refusals after it
                assert set(kinds[resolved[0] + 1:]) <= {cs.REFUSED}
            times = [step.occurred_at_ms for step, _ in history]
            assert times == sorted(times)
            # Each step its own id; an invalid action id (never remembered) is answered the
            # same way each time it comes, under the same id (sinks dedupe on it).
            ids = [step.event_id for step, _ in history if ":REFUSED:invalid-" not in step.event_id]
            assert len(set(ids)) == len(ids)
            status = cs.OPEN
            for step, apply in history:
                if step.kind == cs.PROPOSED:
                    assert status == cs.OPEN
                if step.kind == cs.REJECTED or (
                        step.kind == cs.RESOLVED and step.approver is not None):
                    assert status == cs.AWAITING_APPROVAL
                    assert step.operator and step.approver
                    assert step.operator.casefold() != step.approver.casefold()
                if step.kind == cs.RESOLVED and step.resolution != cs.AUTO_MATCHED:
                    # Never applied without approval above the limit.
                    assert (case.amount_minor or 0) <= LIMIT or step.approver is not None
                    assert apply == step.resolution
                if step.kind != cs.REFUSED:
                    status = step.status
                assert step.status == status
            assert case.status == status


CaseMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                         deadline=None)
TestCases = CaseMachine.TestCase
