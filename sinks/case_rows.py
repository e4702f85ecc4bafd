"""Ledger sink rows of exception case events (pure): the history row of every event and the
case's latest status.

Every CaseEvent is a case_events row (insert-only, by event_id). The exception_cases row of
its case follows the events in their order, never backwards: a RESOLVED case stays RESOLVED,
an event older than the row's last one is history only, and a REFUSED event (an action that
could not be applied, the case unchanged) never touches it. The row's resolution, operator,
approver and remark are those applied (RESOLVED) or waiting for approval (AWAITING_APPROVAL),
and empty while the case is OPEN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple

from sinks import fields as f
from sinks.errors import InvalidRecord

# The contract's enums (CaseSubject, CaseEventKind, CaseStatus, CaseResolution).
SUBJECTS: Final = frozenset({"PAYMENT", "REFUND", "DISPUTE"})
OPENED, PROPOSED, REJECTED, RESOLVED, REFUSED = (
    "OPENED", "PROPOSED", "REJECTED", "RESOLVED", "REFUSED")
KINDS: Final = frozenset({OPENED, PROPOSED, REJECTED, RESOLVED, REFUSED})
STATUS_OPEN, STATUS_AWAITING, STATUS_RESOLVED = "OPEN", "AWAITING_APPROVAL", "RESOLVED"
STATUSES: Final = frozenset({STATUS_OPEN, STATUS_AWAITING, STATUS_RESOLVED})
RESOLUTIONS: Final = frozenset({"FORCE_MATCH", "MARK_RECEIVED", "CLOSE_NO_FUNDS", "IGNORE",
                                "AUTO_MATCHED"})
# The status each kind of event leaves the case in (REFUSED: whatever it was).
_STATUS_AFTER: Final = {OPENED: STATUS_OPEN, PROPOSED: STATUS_AWAITING, REJECTED: STATUS_OPEN,
                        RESOLVED: STATUS_RESOLVED}


class CaseEventRow(NamedTuple):
    """A case_events row; columns in COPY order (EVENT_TYPES). evidence: JSON text of the
    evidence map, cast to jsonb when moved from staging."""

    event_id: str
    case_id: str
    payment_id: str
    kind: str
    status: str
    resolution: str | None
    action_id: str | None
    operator: str | None
    approver: str | None
    remark: str | None
    reason: str | None
    amount_minor: int | None
    currency: str | None
    evidence: str
    occurred_at: datetime


class CaseRow(NamedTuple):
    """An exception_cases row; columns in COPY order (CASE_TYPES)."""

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
    opened_at: datetime | None
    resolved_at: datetime | None
    last_event_id: str
    last_event_kind: str
    last_event_at: datetime


class CaseNews(NamedTuple):
    """One decoded, checked CaseEvent: its history row and the case row it would start."""

    event: CaseEventRow
    case: CaseRow  # the case as a first event would leave it


_T, _B, _TS = "text", "int8", "timestamptz"
EVENT_TYPES: Final = (_T, _T, _T, _T, _T, _T, _T, _T, _T, _T, _T, _B, _T, _T, _TS)
CASE_TYPES: Final = (_T, _T, _T, _T, _T, _T, _T, _T, _B, _T, _T, _T, _T, _T, _T, _TS, _TS, _T,
                     _T, _TS)


def case_rows(record: Mapping[str, Any]) -> CaseNews:
    """A CaseEvent read and checked; InvalidRecord if it is bad."""
    event_id = f.required_text(record, "event_id")
    case_id = f.required_text(record, "case_id")
    payment_id = f.required_text(record, "payment_id")
    subject, kind, status = record.get("subject"), record.get("kind"), record.get("status")
    resolution = record.get("resolution")
    if subject not in SUBJECTS or kind not in KINDS or status not in STATUSES:
        raise InvalidRecord(f"unknown subject {subject!r}, kind {kind!r} or status {status!r}")
    if resolution is not None and resolution not in RESOLUTIONS:
        raise InvalidRecord(f"unknown resolution {resolution!r}")
    operator = f.text(record, "operator", required=False)
    reason = f.text(record, "reason", required=False)
    if kind != REFUSED and status != _STATUS_AFTER[kind]:
        raise InvalidRecord(f"a {kind} case event leaves the case {_STATUS_AFTER[kind]}, "
                            f"not {status}")
    if kind in (PROPOSED, RESOLVED) and (resolution is None or operator is None):
        raise InvalidRecord(f"a {kind} case event needs its resolution and operator")
    if (kind == REFUSED) != (reason is not None):
        raise InvalidRecord("a reason code comes with a REFUSED case event, and only with it")
    amount = f.amount(record, "amount_minor")
    currency = f.text(record, "currency", required=False)
    occurred_at = f.timestamp(record, "occurred_at")
    assert occurred_at is not None
    event = CaseEventRow(
        event_id, case_id, payment_id, kind, status, resolution,
        f.text(record, "action_id", required=False), operator,
        f.text(record, "approver", required=False), f.text(record, "remark", required=False),
        reason, amount, currency, _evidence(record), occurred_at)
    case = CaseRow(
        case_id, payment_id, f.text(record, "merchant_id", required=False), f.channel(record),
        subject, f.required_text(record, "subject_id"), f.required_text(record, "outcome"),
        f.required_text(record, "opened_by"), amount, currency, STATUS_OPEN, None, None, None,
        None, occurred_at if kind == OPENED else None, None, event_id, kind, occurred_at)
    return CaseNews(event, _with_status(case, event))


def _evidence(record: Mapping[str, Any]) -> str:
    evidence = record.get("evidence") or {}
    if not isinstance(evidence, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and "\x00" not in k + v
            for k, v in evidence.items()):
        raise InvalidRecord("evidence must map strings to strings without NUL characters")
    return json.dumps(dict(evidence), ensure_ascii=False, sort_keys=True)


def _with_status(case: CaseRow, event: CaseEventRow) -> CaseRow:
    """The case after an event that changes its status (not REFUSED)."""
    if event.kind == REFUSED:
        return case
    status = event.status
    keep = status != STATUS_OPEN  # a resolution applied or waiting; none while open
    return case._replace(
        status=status,
        resolution=event.resolution if keep else None,
        operator=event.operator if keep else None,
        approver=event.approver if status == STATUS_RESOLVED else None,
        remark=event.remark if keep else None,
        resolved_at=event.occurred_at if status == STATUS_RESOLVED else None,
        amount_minor=event.amount_minor if event.amount_minor is not None
        else case.amount_minor,
        currency=event.currency if event.currency is not None else case.currency,
        last_event_id=event.event_id, last_event_kind=event.kind,
        last_event_at=event.occurred_at)


def apply_event(current: CaseRow | None, news: CaseNews) -> CaseRow | None:
    """The case row after `news` (from `current`, None: no row yet), or None when the event
    changes nothing (REFUSED, a replay, a RESOLVED case, an event older than the row's)."""
    event = news.event
    if event.kind == REFUSED:
        return None
    if current is None:
        return news.case
    if current.last_event_id == event.event_id:
        return None
    if event.kind == OPENED:
        # Only ever the first event: seen late (a later one made the row), it dates it.
        if current.opened_at is None:
            return current._replace(opened_at=event.occurred_at)
        return None
    if current.status == STATUS_RESOLVED or event.occurred_at < current.last_event_at:
        return None
    return _with_status(current._replace(
        merchant_id=current.merchant_id or news.case.merchant_id,
        channel=current.channel or news.case.channel), event)
