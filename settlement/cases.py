"""Exception cases: pure transitions of an operator's case about one exception of a payment.

A case opens (OPENED) for an exception the pipeline cannot settle by itself: a payment's
AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION or REVERSAL_EXCEPTION, a refund's
AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION or LATE_CONFIRMATION, a rejected
dispute record (DISPUTE_REJECTED). Operators act on it with CaseActions; each applied action
is one step of its history (a CaseEvent), and nothing is ever edited:

    OPEN --RESOLVE (amount <= limit)--> RESOLVED (the resolution is applied)
    OPEN --RESOLVE (amount > limit)---> AWAITING_APPROVAL (PROPOSED)
    AWAITING_APPROVAL --APPROVE (another operator)--> RESOLVED (applied, with its approver)
    AWAITING_APPROVAL --REJECT (another operator)---> OPEN (REJECTED)
    any action that breaks a rule -> REFUSED with a reason code, the case unchanged

A case resolves at most once. The same action_id again is ignored (no event at all): the last
SEEN_ACTION_IDS_MAX ids are remembered per case. The stage applies what a RESOLVED step names
(`apply`): FORCE_MATCH and MARK_RECEIVED settle the payment as MATCHED_MANUAL
(settlement.reconciliation.on_manual_match); CLOSE_NO_FUNDS and IGNORE post nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

from settlement.currencies import is_known
from settlement.errors import DomainError
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    FORCE_MATCH,
    LATE_CONFIRMATION,
    MARK_RECEIVED,
    MISSING_CONFIRMATION,
    REVERSAL_EXCEPTION,
    same_operator,
)

__all__ = ["FORCE_MATCH", "MARK_RECEIVED"]  # re-exported: the resolutions that settle money

# What a case is about (the Avro enum CaseSubject).
PAYMENT: Final = "PAYMENT"
REFUND: Final = "REFUND"
DISPUTE: Final = "DISPUTE"
SUBJECTS: Final = frozenset({PAYMENT, REFUND, DISPUTE})

# The outcome of a case opened by a REJECTED dispute record.
DISPUTE_REJECTED: Final = "DISPUTE_REJECTED"
PAYMENT_CASE_OUTCOMES: Final = frozenset(
    {AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION, REVERSAL_EXCEPTION})
REFUND_CASE_OUTCOMES: Final = frozenset(
    {AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION, LATE_CONFIRMATION})
CASE_OUTCOMES: Final = MappingProxyType({
    PAYMENT: PAYMENT_CASE_OUTCOMES,
    REFUND: REFUND_CASE_OUTCOMES,
    DISPUTE: frozenset({DISPUTE_REJECTED}),
})

# Statuses (CaseStatus).
OPEN: Final = "OPEN"
AWAITING_APPROVAL: Final = "AWAITING_APPROVAL"
RESOLVED: Final = "RESOLVED"
STATUSES: Final = frozenset({OPEN, AWAITING_APPROVAL, RESOLVED})

# Steps of a case's history (CaseEventKind); RESOLVED is also the status it leads to.
OPENED: Final = "OPENED"
PROPOSED: Final = "PROPOSED"
REJECTED: Final = "REJECTED"
REFUSED: Final = "REFUSED"
EVENT_KINDS: Final = frozenset({OPENED, PROPOSED, REJECTED, RESOLVED, REFUSED})

# What an operator does (CaseActionKind).
RESOLVE: Final = "RESOLVE"
APPROVE: Final = "APPROVE"
REJECT: Final = "REJECT"
ACTION_KINDS: Final = frozenset({RESOLVE, APPROVE, REJECT})

# How a case ends (CaseResolution). AUTO_MATCHED is the pipeline's own: a late confirmation
# matched a MISSING_CONFIRMATION payment; no operator may choose it.
CLOSE_NO_FUNDS: Final = "CLOSE_NO_FUNDS"
IGNORE: Final = "IGNORE"
AUTO_MATCHED: Final = "AUTO_MATCHED"
RESOLUTIONS: Final = frozenset({FORCE_MATCH, MARK_RECEIVED, CLOSE_NO_FUNDS, IGNORE,
                                AUTO_MATCHED})
MONEY_RESOLUTIONS: Final = frozenset({FORCE_MATCH, MARK_RECEIVED})
CLOSING_RESOLUTIONS: Final = (CLOSE_NO_FUNDS, IGNORE)
SYSTEM_OPERATOR: Final = "system"
# The outcome and opening result named by an answer to an action whose case is not held.
UNKNOWN_OUTCOME: Final = "UNKNOWN"
UNKNOWN_OPENED_BY: Final = "-"

# Why an action was refused (CaseEvent.reason of a REFUSED step).
CASE_UNKNOWN: Final = "CASE_UNKNOWN"
CASE_ALREADY_RESOLVED: Final = "CASE_ALREADY_RESOLVED"
RESOLUTION_NOT_ALLOWED: Final = "RESOLUTION_NOT_ALLOWED"
RESOLUTION_MISSING: Final = "RESOLUTION_MISSING"
REMARK_REQUIRED: Final = "REMARK_REQUIRED"
OPERATOR_REQUIRED: Final = "OPERATOR_REQUIRED"
ACTION_ID_INVALID: Final = "ACTION_ID_INVALID"
SAME_OPERATOR: Final = "SAME_OPERATOR"
NOTHING_TO_APPROVE: Final = "NOTHING_TO_APPROVE"
APPROVAL_PENDING: Final = "APPROVAL_PENDING"
PAYMENT_STATE_GONE: Final = "PAYMENT_STATE_GONE"
PAYMENT_MISMATCH: Final = "PAYMENT_MISMATCH"
CASE_REFUSAL_CODES: Final = frozenset({
    CASE_UNKNOWN, CASE_ALREADY_RESOLVED, RESOLUTION_NOT_ALLOWED, RESOLUTION_MISSING,
    REMARK_REQUIRED, OPERATOR_REQUIRED, ACTION_ID_INVALID, SAME_OPERATOR, NOTHING_TO_APPROVE,
    APPROVAL_PENDING, PAYMENT_STATE_GONE, PAYMENT_MISMATCH,
})

ACTION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SEEN_ACTION_IDS_MAX: Final = 16
CASE_ID_PREFIX: Final = "CS-"
DEFAULT_APPROVAL_ABOVE_MINOR: Final = 1_000_000


class CaseError(DomainError, ValueError):
    """Case rules were called with input that breaks them (a caller bug)."""


class CaseInvariantError(CaseError):
    """A case would break an invariant; nothing may be emitted."""


def case_id_for(result_id: str) -> str:
    """Deterministic from the result that opened the case, so a replay reopens nothing."""
    return CASE_ID_PREFIX + hashlib.sha256(result_id.encode()).hexdigest()[:24]


def event_id_for(case_id: str, kind: str, action_id: str) -> str:
    """A step's id: the case, the step's kind and the action behind it (or the opening
    result's id); a replayed step repeats it, so sinks dedupe on it."""
    return f"{case_id}:{kind}:{action_id}"


def valid_action_id(action_id: object) -> bool:
    return isinstance(action_id, str) and ACTION_ID_PATTERN.fullmatch(action_id) is not None


def allowed_resolutions(subject: str, outcome: str) -> tuple[str, ...]:
    """What an operator may resolve a case with: a money resolution only for a payment's
    AMOUNT_MISMATCH (force-match) or MISSING_CONFIRMATION (mark-received); close or ignore
    for every case."""
    if subject == PAYMENT and outcome == AMOUNT_MISMATCH:
        return (FORCE_MATCH, *CLOSING_RESOLUTIONS)
    if subject == PAYMENT and outcome == MISSING_CONFIRMATION:
        return (MARK_RECEIVED, *CLOSING_RESOLUTIONS)
    return CLOSING_RESOLUTIONS


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_str(value: object) -> bool:
    return value is None or isinstance(value, str)


@dataclass(frozen=True, slots=True)
class CasePolicy:
    """Who must approve what, and how long a resolved case is kept.

    A resolution of a case whose amount at stake is above the limit of its currency
    (`approval_above_minor_by_currency`, else `approval_above_minor`) waits for a second
    operator. A case without an amount (nothing is known to settle) never waits.
    """

    approval_above_minor: int = DEFAULT_APPROVAL_ABOVE_MINOR
    approval_above_minor_by_currency: Mapping[str, int] = field(default_factory=dict)
    retain_ms: int = 10 * 60 * 1000

    def __post_init__(self) -> None:
        limits = {"approval_above_minor": self.approval_above_minor,
                  **dict(self.approval_above_minor_by_currency)}
        for name, value in limits.items():
            if not _is_int(value) or value < 0:
                raise CaseError(f"CasePolicy {name} must be an int >= 0, got {value!r}")
        for currency in self.approval_above_minor_by_currency:
            if not is_known(currency):
                raise CaseError(f"CasePolicy: {currency!r} is not an active ISO 4217 code "
                                "(upper case)")
        if not _is_int(self.retain_ms) or self.retain_ms < 0:
            raise CaseError(f"CasePolicy retain_ms must be an int >= 0, got {self.retain_ms!r}")
        object.__setattr__(self, "approval_above_minor_by_currency",
                           MappingProxyType(dict(self.approval_above_minor_by_currency)))

    def limit_for(self, currency: str | None) -> int:
        if currency is None:
            return self.approval_above_minor
        return self.approval_above_minor_by_currency.get(currency, self.approval_above_minor)

    def needs_approval(self, case: Case) -> bool:
        return case.amount_minor is not None and case.amount_minor > self.limit_for(case.currency)


@dataclass(frozen=True, slots=True)
class CaseAction:
    """One CaseAction record. Types are checked here (a record breaking them is unreadable);
    what the rules judge (the action id's shape, empty remark or operator) is not."""

    action_id: str
    case_id: str
    payment_id: str
    kind: str
    operator: str
    remark: str
    requested_at_ms: int
    resolution: str | None = None

    def __post_init__(self) -> None:
        for name in ("action_id", "case_id", "payment_id", "operator", "remark"):
            if not isinstance(getattr(self, name), str):
                raise CaseError(f"CaseAction.{name} must be a string: {getattr(self, name)!r}")
        if self.kind not in ACTION_KINDS:
            raise CaseError(f"CaseAction.kind {self.kind!r}: one of {sorted(ACTION_KINDS)}")
        if self.resolution is not None and self.resolution not in RESOLUTIONS:
            raise CaseError(f"CaseAction.resolution {self.resolution!r}: one of "
                            f"{sorted(RESOLUTIONS)}")
        if not _is_int(self.requested_at_ms):
            raise CaseError(f"CaseAction.requested_at_ms must be an int: "
                            f"{self.requested_at_ms!r}")

    @property
    def event_key(self) -> str:
        """The action's part of its event ids: itself when valid, else a digest (an invalid
        id may be empty or huge, and is never remembered)."""
        if valid_action_id(self.action_id):
            return self.action_id
        return "invalid-" + hashlib.sha256(self.action_id.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Proposal:
    """A resolution waiting for a second operator."""

    action_id: str
    resolution: str
    operator: str
    remark: str
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class CaseStep:
    """One step of a case's history, to be published as a CaseEvent (with the case's
    identity, subject, outcome and amount beside it)."""

    event_id: str
    kind: str
    status: str
    occurred_at_ms: int
    resolution: str | None = None
    action_id: str | None = None
    operator: str | None = None
    approver: str | None = None
    remark: str | None = None
    reason: str | None = None
    evidence: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS or self.status not in STATUSES:
            raise CaseInvariantError(f"case step {self.event_id}: {self.kind} -> {self.status}")
        if (self.kind == REFUSED) != (self.reason is not None):
            raise CaseInvariantError(f"case step {self.event_id}: a reason iff REFUSED")
        if self.reason is not None and self.reason not in CASE_REFUSAL_CODES:
            raise CaseInvariantError(f"case step {self.event_id}: unknown reason {self.reason}")
        object.__setattr__(self, "evidence", MappingProxyType(dict(self.evidence)))


@dataclass(frozen=True, slots=True)
class Case:
    """One exception case, as the payment's table value keeps it."""

    case_id: str
    payment_id: str
    subject: str
    subject_id: str
    outcome: str
    opened_by: str  # the result_id of the result that opened it
    opened_at_ms: int
    status: str = OPEN
    merchant_id: str | None = None
    channel: str | None = None  # lower case, like the reconciler's
    amount_minor: int | None = None  # at stake: what a money resolution settles
    currency: str | None = None
    evidence: Mapping[str, str] = field(default_factory=dict)
    proposal: Proposal | None = None
    resolution: str | None = None
    operator: str | None = None
    approver: str | None = None
    remark: str | None = None
    resolved_at_ms: int | None = None
    seen_action_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "evidence", MappingProxyType(dict(self.evidence)))
        object.__setattr__(self, "seen_action_ids", tuple(self.seen_action_ids))
        resolved = self.status == RESOLVED
        strs = (self.case_id, self.payment_id, self.subject_id, self.opened_by)
        checks = {
            "ids are non-empty strings": all(isinstance(s, str) and s for s in strs),
            "case id derived from its opening result": self.case_id == case_id_for(
                self.opened_by),
            "subject known": self.subject in SUBJECTS,
            "outcome opens cases of its subject": self.outcome in CASE_OUTCOMES.get(
                self.subject, ()),
            "status known": self.status in STATUSES,
            "amount an int or None": self.amount_minor is None or _is_int(self.amount_minor),
            "optional strings": all(_opt_str(v) for v in (
                self.merchant_id, self.channel, self.currency, self.operator, self.approver,
                self.remark)),
            "evidence maps strings to strings": all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.evidence.items()),
            "a proposal iff awaiting approval": (self.proposal is not None) == (
                self.status == AWAITING_APPROVAL),
            "resolution, operator and time iff resolved": resolved == (
                self.resolution is not None) == (self.operator is not None) == (
                self.resolved_at_ms is not None),
            "an approver only on a resolved case": self.approver is None or resolved,
            "resolution allowed for the case": self.resolution is None
            or self.resolution in allowed_resolutions(self.subject, self.outcome)
            or (self.resolution == AUTO_MATCHED and self._auto_matchable),
            "approver is not the operator": self.approver is None
            or not same_operator(self.approver, self.operator or ""),
            "seen action ids bounded": len(self.seen_action_ids) <= SEEN_ACTION_IDS_MAX,
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise CaseInvariantError(f"case {self.case_id!r}: broken {broken}")

    @property
    def _auto_matchable(self) -> bool:
        return self.subject == PAYMENT and self.outcome == MISSING_CONFIRMATION

    @property
    def is_open(self) -> bool:
        """Not resolved yet (OPEN or AWAITING_APPROVAL)."""
        return self.status != RESOLVED

    def evict_at_ms(self, policy: CasePolicy) -> int | None:
        """When the case may be dropped from the table: retain_ms after it resolved."""
        if self.resolved_at_ms is None:
            return None
        return self.resolved_at_ms + policy.retain_ms

    def remembering(self, action_id: str) -> Case:
        seen = (*self.seen_action_ids, action_id)[-SEEN_ACTION_IDS_MAX:]
        return replace(self, seen_action_ids=seen)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["evidence"] = dict(self.evidence)
        data["proposal"] = self.proposal.to_dict() if self.proposal is not None else None
        data["seen_action_ids"] = list(self.seen_action_ids)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Case:
        values = dict(data)
        proposal = values.get("proposal")
        try:
            values["proposal"] = Proposal(**proposal) if proposal is not None else None
            values["seen_action_ids"] = tuple(values.get("seen_action_ids", ()))
            return cls(**values)
        except TypeError as exc:
            raise CaseError(f"cannot read a Case from {dict(data)!r}: {exc}") from exc


# -- opening ---------------------------------------------------------------------------------


def open_case(
    *,
    payment_id: str,
    subject: str,
    subject_id: str,
    outcome: str,
    opened_by: str,
    now_ms: int,
    merchant_id: str | None = None,
    channel: str | None = None,
    amount_minor: int | None = None,
    currency: str | None = None,
    evidence: Mapping[str, str] | None = None,
) -> tuple[Case, CaseStep]:
    """A new case for the exception the result `opened_by` reported, and its OPENED step
    (carrying the evidence)."""
    case = Case(
        case_id=case_id_for(opened_by), payment_id=payment_id, subject=subject,
        subject_id=subject_id, outcome=outcome, opened_by=opened_by, opened_at_ms=now_ms,
        merchant_id=merchant_id, channel=channel, amount_minor=amount_minor, currency=currency,
        evidence=evidence or {},
    )
    step = CaseStep(event_id_for(case.case_id, OPENED, opened_by), OPENED, OPEN, now_ms,
                    evidence=case.evidence)
    return case, step


# -- actions ---------------------------------------------------------------------------------

Decision = tuple[Case, list[CaseStep], str | None]


def refuse(case: Case, action: CaseAction, reason: str, detail: str, now_ms: int) -> Decision:
    """The action answered REFUSED with `reason`; the case unchanged but for the action's id
    remembered (a valid one), so the same action again is ignored."""
    if valid_action_id(action.action_id) and action.action_id not in case.seen_action_ids:
        case = case.remembering(action.action_id)
    step = CaseStep(
        event_id_for(case.case_id, REFUSED, action.event_key), REFUSED, case.status, now_ms,
        resolution=action.resolution, action_id=action.action_id,
        operator=action.operator.strip() or None, remark=action.remark.strip() or None,
        reason=reason, evidence={"detail": detail},
    )
    return case, [step], None


def refused_without_case(action: CaseAction, reason: str, detail: str, now_ms: int,
                         ) -> CaseStep:
    """The REFUSED step of an action the stage cannot match to a case it holds: one naming
    an unknown case (CASE_UNKNOWN), or another payment than its record's key
    (PAYMENT_MISMATCH)."""
    return CaseStep(
        event_id_for(action.case_id, REFUSED, action.event_key), REFUSED, OPEN, now_ms,
        resolution=action.resolution, action_id=action.action_id,
        operator=action.operator.strip() or None, remark=action.remark.strip() or None,
        reason=reason, evidence={"detail": detail},
    )


def on_action(case: Case, action: CaseAction, now_ms: int, policy: CasePolicy, *,
              payment_state_held: bool = True) -> Decision:
    """Decide one operator's action on `case`: (case after, steps to publish, apply).

    `apply` names the resolution the stage must carry out now (a RESOLVED step): FORCE_MATCH
    or MARK_RECEIVED settle the payment (MATCHED_MANUAL), CLOSE_NO_FUNDS or IGNORE nothing;
    None otherwise. `payment_state_held` says whether the payment's reconciliation state is
    still held (a money resolution needs it). The same action_id again: (case, [], None).
    """
    if case.case_id != action.case_id:
        raise CaseError(f"action on {action.case_id} applied to case {case.case_id}")
    if not valid_action_id(action.action_id):
        return refuse(case, action, ACTION_ID_INVALID,
                      "action_id must be 1-128 characters of A-Z a-z 0-9 . _ : -", now_ms)
    if action.action_id in case.seen_action_ids:
        return case, [], None
    problem = _problem(case, action, payment_state_held)
    if problem is not None:
        return refuse(case, action, *problem, now_ms)
    operator, remark = action.operator.strip(), action.remark.strip()
    case = case.remembering(action.action_id)
    if action.kind == RESOLVE:
        assert action.resolution is not None
        if policy.needs_approval(case):
            waiting = Proposal(action.action_id, action.resolution, operator, remark, now_ms)
            case = replace(case, status=AWAITING_APPROVAL, proposal=waiting)
            step = CaseStep(event_id_for(case.case_id, PROPOSED, action.action_id), PROPOSED,
                            AWAITING_APPROVAL, now_ms, resolution=action.resolution,
                            action_id=action.action_id, operator=operator, remark=remark)
            return case, [step], None
        return _resolved(case, action.resolution, operator, None, remark, action.action_id,
                         now_ms)
    proposal = case.proposal
    assert proposal is not None
    if action.kind == APPROVE:
        return _resolved(case, proposal.resolution, proposal.operator, operator, remark,
                         action.action_id, now_ms)
    case = replace(case, status=OPEN, proposal=None)
    step = CaseStep(event_id_for(case.case_id, REJECTED, action.action_id), REJECTED, OPEN,
                    now_ms, resolution=proposal.resolution, action_id=action.action_id,
                    operator=proposal.operator, approver=operator, remark=remark)
    return case, [step], None


def _problem(case: Case, action: CaseAction, payment_state_held: bool,
             ) -> tuple[str, str] | None:
    """The first rule the action breaks, as (reason code, detail), or None. The approval
    limit never refuses: it decides between PROPOSED and RESOLVED."""
    operator = action.operator.strip()
    if case.payment_id != action.payment_id:
        return PAYMENT_MISMATCH, (f"case {case.case_id} is about payment {case.payment_id}, "
                                  f"not {action.payment_id}")
    if not operator:
        return OPERATOR_REQUIRED, "the operator must be named"
    if not action.remark.strip():
        return REMARK_REQUIRED, "a remark must say why"
    if case.status == RESOLVED:
        return CASE_ALREADY_RESOLVED, (f"case resolved {case.resolution} by {case.operator}"
                                       f" at {case.resolved_at_ms}")
    if action.kind == RESOLVE:
        allowed = allowed_resolutions(case.subject, case.outcome)
        if action.resolution is None:
            return RESOLUTION_MISSING, f"RESOLVE needs a resolution: one of {list(allowed)}"
        if action.resolution not in allowed:
            return RESOLUTION_NOT_ALLOWED, (f"{action.resolution} is not allowed for a "
                                            f"{case.subject} {case.outcome} case: one of "
                                            f"{list(allowed)}")
        if case.proposal is not None:
            return APPROVAL_PENDING, (f"{case.proposal.resolution} by "
                                      f"{case.proposal.operator} awaits approval")
        resolution = action.resolution
    else:
        if case.proposal is None:
            return NOTHING_TO_APPROVE, "no resolution awaits approval"
        if same_operator(operator, case.proposal.operator):
            return SAME_OPERATOR, (f"{case.proposal.operator} proposed it; another operator "
                                   "must approve or reject it")
        if action.kind == REJECT:
            return None
        resolution = case.proposal.resolution
    if resolution in MONEY_RESOLUTIONS and not payment_state_held:
        return PAYMENT_STATE_GONE, ("the payment's reconciliation state is no longer held: "
                                    f"{resolution} cannot settle it")
    if resolution in MONEY_RESOLUTIONS and (case.amount_minor or 0) <= 0:
        return RESOLUTION_NOT_ALLOWED, f"{resolution} needs an amount > 0 at stake"
    return None


def _resolved(case: Case, resolution: str, operator: str, approver: str | None, remark: str,
              action_id: str, now_ms: int) -> Decision:
    case = replace(case, status=RESOLVED, proposal=None, resolution=resolution,
                   operator=operator, approver=approver, remark=remark, resolved_at_ms=now_ms)
    step = CaseStep(event_id_for(case.case_id, RESOLVED, action_id), RESOLVED, RESOLVED,
                    now_ms, resolution=resolution, action_id=action_id, operator=operator,
                    approver=approver, remark=remark)
    return case, [step], resolution


def auto_resolve(case: Case, now_ms: int, result_id: str | None = None,
                 ) -> tuple[Case, list[CaseStep]]:
    """A late MATCHED settled a MISSING_CONFIRMATION payment: its open case resolves itself
    (AUTO_MATCHED, operator "system"; a waiting proposal is dropped). Any other case, or one
    already resolved: unchanged, no step."""
    if not case.is_open or not case._auto_matchable:
        return case, []
    remark = "a late confirmation matched the payment"
    case = replace(case, status=RESOLVED, proposal=None, resolution=AUTO_MATCHED,
                   operator=SYSTEM_OPERATOR, approver=None, remark=remark,
                   resolved_at_ms=now_ms)
    step = CaseStep(event_id_for(case.case_id, RESOLVED, case.opened_by), RESOLVED, RESOLVED,
                    now_ms, resolution=AUTO_MATCHED, operator=SYSTEM_OPERATOR, remark=remark,
                    evidence={"result_id": result_id} if result_id else {})
    return case, [step]
