"""Exception cases for operators: select them from PostgreSQL, check an action, build and send
CaseAction records, and read the stage's answers back.

The ledger sink keeps each case's latest status (exception_cases) and its every event
(case_events); nothing here writes a row. An action is a CaseAction on cases.actions, keyed by
payment_id; the reconcile stage that holds the payment decides it and answers on cases.events
(PROPOSED, RESOLVED, REJECTED or REFUSED with a reason code). The checks below catch an
operator's mistakes before anything is sent; the stage still decides every rule (the tables
may lag it by a moment).

Idempotency: the client chooses each action_id, derived from a run id, the case and the
action, so sending a run again under its run id (after a crash, a timeout) applies nothing
twice: the stage ignores an action_id it has seen.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final, Protocol

import psycopg
from psycopg.rows import dict_row

from settlement.cases import (
    ACTION_ID_PATTERN,
    APPROVE,
    AWAITING_APPROVAL,
    CLOSE_NO_FUNDS,
    FORCE_MATCH,
    IGNORE,
    MARK_RECEIVED,
    OPEN,
    PAYMENT,
    PROPOSED,
    REFUSED,
    REJECT,
    REJECTED,
    RESOLVE,
    RESOLVED,
    CasePolicy,
    allowed_resolutions,
)
from settlement.errors import SettleError
from settlement.reconciliation import same_operator

__all__ = [  # the case vocabulary of settlement.cases, for the command line
    "ACTION_ID_PATTERN", "APPROVE", "AWAITING_APPROVAL", "CLOSE_NO_FUNDS", "FORCE_MATCH",
    "IGNORE", "MARK_RECEIVED", "OPEN", "PROPOSED", "REFUSED", "REJECT", "REJECTED", "RESOLVE",
    "RESOLVED", "allowed_resolutions",
]

# The command line's spelling of each resolution an operator may choose.
ACTIONS: Final[Mapping[str, str]] = {
    "force-match": FORCE_MATCH,
    "mark-received": MARK_RECEIVED,
    "close-no-funds": CLOSE_NO_FUNDS,
    "ignore": IGNORE,
}

RUN_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
OPERATOR_CHARS_MAX: Final = 128
REMARK_CHARS_MAX: Final = 2000
_AGE_UNITS_S: Final[Mapping[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_AGE: Final = re.compile(r"(\d+)([smhdw])")


class CaseCommandError(SettleError):
    """An operator's command that cannot be sent as given (unknown case, action not allowed)."""


class ActionSender(Protocol):
    def send(self, topic: str, key: str, record: Mapping[str, Any],
             headers: Mapping[str, str] | None = None) -> None: ...


def action_name(resolution: str) -> str:
    """FORCE_MATCH -> force-match (how the command line spells it)."""
    return resolution.lower().replace("_", "-")


def parse_age_s(text: str) -> int:
    """"90s", "30m", "2h", "3d", "1w" or a sum like "1d12h" -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    parts = _AGE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise CaseCommandError(f"age {text!r}: expected a number and a unit (s, m, h, d, w), "
                               "e.g. 2h, 3d or 1d12h")
    return sum(int(n) * _AGE_UNITS_S[u] for n, u in parts)


def format_age(age_s: int) -> str:
    """Seconds -> the two largest units: 3d 4h, 2h 5m, 45s."""
    age_s = max(0, age_s)
    days, rest = divmod(age_s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{u}" for n, u in units if n][:2]
    return " ".join(shown) or "0s"


def checked_operator(operator: str | None) -> str:
    name = (operator or "").strip()
    if not name:
        raise CaseCommandError("no operator: give --operator NAME or set SETTLE_OPERATOR "
                               "(it is recorded on the case)")
    if len(name) > OPERATOR_CHARS_MAX:
        raise CaseCommandError(f"operator name longer than {OPERATOR_CHARS_MAX} characters")
    return name


def checked_remark(remark: str | None) -> str:
    text = (remark or "").strip()
    if not text:
        raise CaseCommandError("--remark is required and must not be empty: say why (it is "
                               "kept in the case's history)")
    if len(text) > REMARK_CHARS_MAX:
        raise CaseCommandError(f"--remark longer than {REMARK_CHARS_MAX} characters")
    return text


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:16]}"


def checked_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise CaseCommandError(f"--run-id {run_id!r} must match {RUN_ID_PATTERN.pattern}")
    return run_id


def action_id_for(run_id: str, case_id: str, kind: str, resolution: str | None) -> str:
    """Deterministic per (run, case, kind, resolution): a run sent again repeats its ids."""
    digest = hashlib.sha256(
        f"{run_id}\x1f{case_id}\x1f{kind}\x1f{resolution or ''}".encode()).hexdigest()
    return f"ca-{digest[:32]}"


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseRow:
    """One exception case as the ledger sink last recorded it."""

    case_id: str
    payment_id: str
    merchant_id: str | None
    channel: str | None
    subject: str
    subject_id: str
    outcome: str
    opened_by: str
    amount_minor: int | None
    currency: str | None
    status: str
    resolution: str | None
    operator: str | None
    approver: str | None
    remark: str | None
    opened_at: datetime | None  # None only while the OPENED event is not recorded yet
    resolved_at: datetime | None
    age_s: int


@dataclass(frozen=True, slots=True)
class CaseEventRow:
    """One step of a case's history."""

    event_id: str
    case_id: str
    kind: str
    status: str
    resolution: str | None
    action_id: str | None
    operator: str | None
    approver: str | None
    remark: str | None
    reason: str | None
    evidence: Mapping[str, str]
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class CaseFilter:
    """Which cases to list or act on; None: any."""

    statuses: tuple[str, ...] | None = (OPEN, AWAITING_APPROVAL)
    outcome: str | None = None
    channel: str | None = None
    merchant_id: str | None = None
    older_than_s: int | None = None
    limit: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (placeholders %s) and its parameters."""
        terms: list[str] = ["TRUE"]
        params: list[Any] = []
        if self.statuses is not None:
            terms.append("status = ANY(%s)")
            params.append(list(self.statuses))
        if self.outcome is not None:
            terms.append("outcome = %s")
            params.append(self.outcome)
        if self.channel is not None:
            # Stored in lower case like every channel column; compared either way.
            terms.append("lower(channel) = lower(%s)")
            params.append(self.channel)
        if self.merchant_id is not None:
            terms.append("merchant_id = %s")
            params.append(self.merchant_id)
        if self.older_than_s is not None:
            terms.append("COALESCE(opened_at, last_event_at) < now() - make_interval(secs => %s)")
            params.append(self.older_than_s)
        return " AND ".join(terms), params


_CASE_COLUMNS: Final = (
    "case_id, payment_id, merchant_id, channel, subject, subject_id, outcome, opened_by, "
    "amount_minor, currency, status, resolution, operator, approver, remark, opened_at, "
    "resolved_at, GREATEST(0, EXTRACT(EPOCH FROM now() - COALESCE(opened_at, last_event_at))"
    ")::bigint AS age_s")
_EVENT_COLUMNS: Final = (
    "event_id, case_id, kind, status, resolution, action_id, operator, approver, remark, "
    "reason, evidence, occurred_at")


def select_cases_sql(selection: CaseFilter) -> tuple[str, list[Any]]:
    where, params = selection.where()
    sql = (f"SELECT {_CASE_COLUMNS} FROM exception_cases WHERE {where} "
           "ORDER BY COALESCE(opened_at, last_event_at), case_id")
    if selection.limit is not None:
        sql += " LIMIT %s"
        params.append(selection.limit)
    return sql, params


def _case(row: Mapping[str, Any]) -> CaseRow:
    return CaseRow(**{f.name: row[f.name] for f in fields(CaseRow)})


def _event(row: Mapping[str, Any]) -> CaseEventRow:
    evidence = row["evidence"]
    if isinstance(evidence, str):  # jsonb arrives decoded; text only from a hand-made view
        evidence = json.loads(evidence)
    values = {f.name: row[f.name] for f in fields(CaseEventRow)}
    values["evidence"] = {str(k): str(v) for k, v in (evidence or {}).items()}
    return CaseEventRow(**values)


def fetch_cases(conn: psycopg.Connection, selection: CaseFilter) -> list[CaseRow]:
    sql, params = select_cases_sql(selection)
    with conn.cursor(row_factory=dict_row) as cur:
        return [_case(row) for row in cur.execute(sql, params).fetchall()]


def fetch_case(conn: psycopg.Connection, case_id: str) -> CaseRow:
    """The case, or CaseCommandError naming it."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_CASE_COLUMNS} FROM exception_cases WHERE case_id = %s",
                          [case_id]).fetchone()
    if row is None:
        raise CaseCommandError(f"unknown case {case_id!r} (`settle cases list` shows the "
                               "cases; a case opened moments ago may not be recorded yet)")
    return _case(row)


def fetch_history(conn: psycopg.Connection, case_id: str) -> list[CaseEventRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {_EVENT_COLUMNS} FROM case_events WHERE case_id = %s "
                           "ORDER BY occurred_at, event_id", [case_id]).fetchall()
    return [_event(row) for row in rows]


def fetch_answers(conn: psycopg.Connection, action_ids: Sequence[str]
                  ) -> dict[str, CaseEventRow]:
    """The stage's answer to each of these actions found so far, by action_id."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {_EVENT_COLUMNS} FROM case_events "
                           "WHERE action_id = ANY(%s) ORDER BY occurred_at",
                           [list(action_ids)]).fetchall()
    return {str(row["action_id"]): _event(row) for row in rows}


def wait_for_answers(conn: psycopg.Connection, action_ids: Sequence[str], timeout_s: float,
                     poll_s: float = 0.5,
                     on_poll: Callable[[int], None] | None = None) -> dict[str, CaseEventRow]:
    """Poll case_events until every action is answered or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        answers = fetch_answers(conn, action_ids)
        if on_poll is not None:
            on_poll(len(answers))
        if len(answers) >= len(set(action_ids)) or time.monotonic() >= deadline:
            return answers
        time.sleep(poll_s)


# -- checking and building ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """A CaseAction to send, and the case it acts on (for the summary)."""

    case: CaseRow
    record: Mapping[str, Any]

    @property
    def action_id(self) -> str:
        return str(self.record["action_id"])


def check_resolve(case: CaseRow, resolution: str) -> None:
    """A RESOLVE of this case with this resolution can be sent, else CaseCommandError."""
    if case.status == RESOLVED:
        raise CaseCommandError(f"case {case.case_id} is already resolved "
                               f"({case.resolution or '?'} by {case.operator or '?'})")
    if case.status == AWAITING_APPROVAL:
        raise CaseCommandError(f"case {case.case_id} has a resolution awaiting approval: "
                               "`settle cases approve` or `reject` it first")
    allowed = allowed_resolutions(case.subject, case.outcome)
    if resolution not in allowed:
        names = ", ".join(action_name(r) for r in allowed)
        raise CaseCommandError(f"--action {action_name(resolution)} is not allowed for a "
                               f"{case.subject} {case.outcome} case; allowed: {names}")


def proposer(history: Sequence[CaseEventRow]) -> str | None:
    """The operator whose resolution awaits approval (the last PROPOSED, if still pending)."""
    for event in reversed(history):
        if event.kind == PROPOSED:
            return event.operator
        if event.kind in (REJECTED, RESOLVED):
            return None
    return None


def check_decision(case: CaseRow, history: Sequence[CaseEventRow], operator: str,
                   kind: str) -> None:
    """An APPROVE or REJECT by `operator` can be sent, else CaseCommandError."""
    verb = "approve" if kind == APPROVE else "reject"
    if case.status != AWAITING_APPROVAL:
        raise CaseCommandError(f"case {case.case_id} is {case.status}: nothing to {verb} "
                               "(only a resolution awaiting approval can be)")
    who = proposer(history) or case.operator
    if who is not None and same_operator(who, operator):
        raise CaseCommandError(f"{operator} proposed this resolution; another operator must "
                               f"{verb} it")


def case_action(case: CaseRow, kind: str, resolution: str | None, operator: str, remark: str,
                action_id: str, requested_at_ms: int) -> dict[str, Any]:
    """The CaseAction record (schemas/case_action.avsc)."""
    if not ACTION_ID_PATTERN.fullmatch(action_id):
        raise CaseCommandError(f"action id {action_id!r} must match {ACTION_ID_PATTERN.pattern}")
    return {
        "action_id": action_id,
        "case_id": case.case_id,
        "payment_id": case.payment_id,
        "kind": kind,
        "resolution": resolution if kind == RESOLVE else None,
        "operator": operator,
        "remark": remark,
        "requested_at": requested_at_ms,
    }


def plan_actions(cases: Iterable[CaseRow], kind: str, resolution: str | None, operator: str,
                 remark: str, run_id: str, requested_at_ms: int) -> list[PlannedAction]:
    return [PlannedAction(case, case_action(case, kind, resolution, operator, remark,
                                            action_id_for(run_id, case.case_id, kind,
                                                          resolution), requested_at_ms))
            for case in cases]


@dataclass(frozen=True, slots=True)
class BulkPlan:
    """A bulk resolution: the actions to send, and the selected cases left out, with why."""

    planned: list[PlannedAction]
    skipped: list[tuple[CaseRow, str]]


def plan_bulk_resolve(cases: Sequence[CaseRow], outcome: str, resolution: str, operator: str,
                      remark: str, run_id: str, requested_at_ms: int) -> BulkPlan:
    """RESOLVE every OPEN case of `outcome` among `cases` that the resolution is allowed for
    (a money resolution settles a payment: a refund's or a dispute's case is left out)."""
    allowed = allowed_resolutions(PAYMENT, outcome)
    if resolution not in allowed:
        names = ", ".join(action_name(r) for r in allowed)
        raise CaseCommandError(f"--action {action_name(resolution)} is not allowed for "
                               f"{outcome} cases; allowed: {names}")
    chosen, skipped = [], []
    for case in cases:
        if case.outcome != outcome or case.status != OPEN:
            continue
        if resolution in allowed_resolutions(case.subject, case.outcome):
            chosen.append(case)
        else:
            skipped.append((case, f"{action_name(resolution)} is not allowed for a "
                                  f"{case.subject} case"))
    return BulkPlan(plan_actions(chosen, RESOLVE, resolution, operator, remark, run_id,
                                 requested_at_ms), skipped)


def needs_approval(case: CaseRow, policy: CasePolicy) -> bool:
    """Whether the stage will propose (not apply) a resolution of this case: its amount at
    stake is above the approval limit of its currency (the stage's own settings)."""
    return case.amount_minor is not None and case.amount_minor > policy.limit_for(case.currency)


@dataclass(slots=True)
class Totals:
    """Cases and their amounts at stake, per currency ("-" for cases without an amount)."""

    cases: Counter[str] = field(default_factory=Counter)
    amount_minor: Counter[str] = field(default_factory=Counter)
    # Cases whose resolution will wait for a second operator (with a policy given).
    awaiting_approval: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, cases: Iterable[CaseRow], policy: CasePolicy | None = None) -> Totals:
        out = cls()
        for case in cases:
            currency = case.currency or "-"
            out.cases[currency] += 1
            out.amount_minor[currency] += case.amount_minor or 0
            if policy is not None and needs_approval(case, policy):
                out.awaiting_approval[currency] += 1
        return out


def publish_actions(sender: ActionSender, topic: str, planned: Iterable[PlannedAction],
                    on_sent: Callable[[PlannedAction], None] | None = None) -> int:
    """Send each action keyed by its payment_id; returns how many were sent."""
    sent = 0
    for action in planned:
        sender.send(topic, action.case.payment_id, action.record)
        sent += 1
        if on_sent is not None:
            on_sent(action)
    return sent
