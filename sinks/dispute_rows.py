"""Ledger sink rows of dispute results (pure): the disputes row each result leads to, its
journal, and rejections.

A DisputeResult OPENED posts DISPUTE_OPEN and opens the dispute's row; WON and LOST post
DISPUTE_WON or DISPUTE_LOST and close it; STAGE_CHANGED only updates the row (or records a
dispute first seen won, when nothing was ever held); REJECTED is a dispute_rejections row.
`step` applies one result to the row as stored, so a replay posts nothing and a result
that does not fit the stored dispute (a close without its hold, a second opening, other
amounts) is refused, never posted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple

from settlement.disputes import (
    EVENT_LOST,
    EVENT_OPENED,
    EVENT_REJECTED,
    EVENT_STAGE_CHANGED,
    EVENT_WON,
    EVENTS,
    LOST_STATUSES,
    OPEN,
    STAGES,
    STATE_LOST,
    STATE_WON,
    STATUSES,
    WON_STATUSES,
    state_for,
    valid_dispute_id,
)
from settlement.postings_v2 import (
    KindJournal,
    dispute_lost_journal,
    dispute_open_journal,
    dispute_won_journal,
)
from sinks import fields as f
from sinks.errors import InvalidRecord


class DisputeRow(NamedTuple):
    """A disputes row; columns in COPY order (DISPUTE_TYPES)."""

    payment_id: str
    dispute_id: str
    merchant_id: str
    order_id: str | None
    channel: str
    channel_dispute_id: str
    stage: str
    status: str
    state: str
    amount_minor: int
    currency: str
    funds_withdrawn: bool
    fee_minor: int
    reason_code: str | None
    respond_by: datetime | None
    opened_at: datetime | None
    closed_at: datetime | None
    opened_result_id: str | None
    closed_result_id: str | None
    last_result_id: str
    decided_at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.payment_id, self.dispute_id)


class RejectionRow(NamedTuple):
    """A dispute_rejections row; columns in COPY order (REJECTION_TYPES). reasons: JSON text
    of [{"code", "detail"}, ...], cast to jsonb when moved from staging."""

    result_id: str
    payment_id: str
    dispute_id: str
    merchant_id: str | None
    channel: str
    channel_dispute_id: str
    stage: str
    status: str
    amount_minor: int
    currency: str
    funds_withdrawn: bool
    fee_minor: int
    reasons: str
    reason_code: str | None
    detail: str
    occurred_at: datetime
    decided_at: datetime


_T, _B, _BOOL, _TS = "text", "int8", "bool", "timestamptz"
DISPUTE_TYPES: Final = (_T, _T, _T, _T, _T, _T, _T, _T, _T, _B, _T, _BOOL, _B, _T, _TS, _TS,
                        _TS, _T, _T, _T, _TS)
REJECTION_TYPES: Final = (_T, _T, _T, _T, _T, _T, _T, _T, _B, _T, _BOOL, _B, _T, _T, _T, _TS,
                          _TS)

# The channel statuses each event may carry (a dispute first seen lost opens with its
# status LOST, ACCEPTED or EXPIRED, then loses).
_EVENT_STATUSES: Final = {
    EVENT_OPENED: STATUSES - WON_STATUSES,
    EVENT_WON: WON_STATUSES,
    EVENT_LOST: LOST_STATUSES,
    EVENT_STAGE_CHANGED: STATUSES - LOST_STATUSES,
}

APPLY: Final = "apply"  # the row changes (and the journal, if any, is posted)
DUPLICATE: Final = "duplicate"  # this result was applied already: nothing to write
STALE: Final = "stale"  # an older stage change than the row's: history only
CONFLICT: Final = "conflict"  # does not fit the stored dispute: dead-lettered, never posted


class DisputeNews(NamedTuple):
    """One decoded, checked DisputeResult that moves a dispute (not REJECTED)."""

    result_id: str
    event: str
    row: DisputeRow  # the row as this result leaves a dispute it applies to
    journal: KindJournal | None  # OPENED, WON, LOST: what it posts


class Step(NamedTuple):
    """What one result does to the stored dispute."""

    verdict: str
    row: DisputeRow | None = None
    journal: KindJournal | None = None
    message: str = ""


def dispute_rows(result: Mapping[str, Any]) -> DisputeNews | RejectionRow:
    """A DisputeResult read and checked: a RejectionRow for REJECTED, else the DisputeNews;
    InvalidRecord (or a domain error) if it is bad."""
    result_id = f.required_text(result, "result_id")
    payment_id = f.required_text(result, "payment_id")
    dispute_id = f.required_text(result, "dispute_id")
    event = result.get("event")
    if event not in EVENTS:
        raise InvalidRecord(f"unknown dispute event {event!r}")
    channel = f.channel(result)
    channel_dispute_id = f.required_text(result, "channel_dispute_id")
    stage, status = result.get("stage"), result.get("status")
    if stage not in STAGES or status not in STATUSES:
        raise InvalidRecord(f"unknown stage {stage!r} or status {status!r}")
    amount = f.amount(result, "amount_minor")
    fee = f.amount(result, "fee_minor")
    withdrawn = result.get("funds_withdrawn", False)
    if amount is None or fee is None or not isinstance(withdrawn, bool):
        raise InvalidRecord("amount_minor and fee_minor must be integers, funds_withdrawn a "
                            f"boolean; got {amount!r}, {fee!r}, {withdrawn!r}")
    merchant_id = f.text(result, "merchant_id", required=False)
    reason_code = f.text(result, "reason_code", required=False)
    occurred_at = f.timestamp(result, "occurred_at")
    decided_at = f.timestamp(result, "decided_at")
    assert occurred_at is not None and decided_at is not None and channel is not None
    if event == EVENT_REJECTED:
        currency = f.text(result, "currency")
        assert currency is not None
        return RejectionRow(
            result_id, payment_id, dispute_id, merchant_id, channel, channel_dispute_id, stage,
            status, amount, currency, withdrawn, fee, _reasons(result), reason_code,
            f.detail(result), occurred_at, decided_at)

    currency = f.currency(result, "currency")
    if not valid_dispute_id(dispute_id) or merchant_id is None or currency is None:
        raise InvalidRecord(f"a {event} dispute result needs a valid dispute_id, merchant_id "
                            f"and currency; got {dispute_id!r}, {merchant_id!r}, {currency!r}")
    if status not in _EVENT_STATUSES[event]:
        raise InvalidRecord(f"a {event} dispute result with the channel's status {status}")
    if amount <= 0 or fee < 0 or (fee and event != EVENT_LOST):
        raise InvalidRecord(f"{event}: need amount > 0 and a fee >= 0 on LOST only; got "
                            f"amount {amount}, fee {fee}")
    if result.get("reasons"):
        raise InvalidRecord(f"a {event} dispute result has no rejection reasons")
    respond_by = f.timestamp(result, "respond_by", required=False)
    order_id = f.text(result, "order_id", required=False)
    journal: KindJournal | None = None
    if event == EVENT_OPENED:
        journal = dispute_open_journal(payment_id, dispute_id, merchant_id, channel, amount,
                                       withdrawn, currency)
    elif event == EVENT_WON:
        journal = dispute_won_journal(payment_id, dispute_id, merchant_id, channel, amount,
                                      withdrawn, currency)
    elif event == EVENT_LOST:
        journal = dispute_lost_journal(payment_id, dispute_id, merchant_id, channel, amount,
                                       withdrawn, fee, currency)
    state = {EVENT_OPENED: OPEN, EVENT_WON: STATE_WON, EVENT_LOST: STATE_LOST}.get(
        event, state_for(status))
    opened = event == EVENT_OPENED
    closed = state != OPEN
    row = DisputeRow(
        payment_id, dispute_id, merchant_id, order_id, channel, channel_dispute_id, stage,
        status, state, amount, currency, withdrawn, fee, reason_code, respond_by,
        occurred_at if opened else None, occurred_at if closed else None,
        result_id if opened else None, result_id if event in (EVENT_WON, EVENT_LOST) else None,
        result_id, decided_at)
    return DisputeNews(result_id, event, row, journal)


def _reasons(result: Mapping[str, Any]) -> str:
    reasons = result.get("reasons")
    if not isinstance(reasons, list) or not reasons:
        raise InvalidRecord(f"a REJECTED dispute result needs its reasons, got {reasons!r}")
    out = []
    for reason in reasons:
        if not isinstance(reason, Mapping):
            raise InvalidRecord(f"a rejection reason must be a record, got {reason!r}")
        out.append({"code": f.required_text(reason, "code"),
                    "detail": f.text(reason, "detail", required=False) or ""})
    return json.dumps(out, ensure_ascii=False)


def step(current: DisputeRow | None, news: DisputeNews) -> Step:
    """What `news` does to the dispute stored as `current` (None: no row yet)."""
    new = news.row
    if news.event == EVENT_OPENED:
        if current is None:
            return Step(APPLY, new, news.journal)
        if current.opened_result_id == news.result_id:
            return Step(DUPLICATE)
        return Step(CONFLICT, message=(
            f"OPENED result {news.result_id} for dispute {_name(new)}, which is already "
            f"{current.state} by {current.last_result_id}: not posted"))
    if current is None:
        if news.event == EVENT_STAGE_CHANGED and new.state == STATE_WON:
            return Step(APPLY, new)  # first seen won: nothing held, nothing moves
        return Step(CONFLICT, message=(
            f"{news.event} result {news.result_id} for dispute {_name(new)}, which was never "
            "opened (no hold posted): not posted"))
    if news.result_id in (current.closed_result_id, current.last_result_id):
        return Step(DUPLICATE)
    differs = _differs(current, new)
    if differs:
        return Step(CONFLICT, message=(
            f"{news.event} result {news.result_id} for dispute {_name(new)} with {differs} "
            "other than the stored dispute's: not posted"))
    if news.event == EVENT_STAGE_CHANGED:
        if current.state != OPEN or new.decided_at < current.decided_at:
            return Step(STALE)  # decided before what the row holds: history only
        if new.state != OPEN:
            return Step(CONFLICT, message=(
                f"STAGE_CHANGED result {news.result_id} closes open dispute {_name(new)} "
                f"({new.status}) without releasing its hold: not applied"))
        return Step(APPLY, current._replace(
            stage=new.stage, status=new.status,
            reason_code=new.reason_code or current.reason_code,
            respond_by=new.respond_by or current.respond_by,
            last_result_id=news.result_id, decided_at=new.decided_at))
    if current.state != OPEN:
        return Step(CONFLICT, message=(
            f"{news.event} result {news.result_id} for dispute {_name(new)}, which is already "
            f"{current.state} by {current.closed_result_id or current.last_result_id}: "
            "not posted"))
    return Step(APPLY, current._replace(
        stage=new.stage, status=new.status, state=new.state, fee_minor=new.fee_minor,
        reason_code=new.reason_code or current.reason_code,
        respond_by=new.respond_by or current.respond_by, closed_at=new.closed_at,
        closed_result_id=news.result_id, last_result_id=news.result_id,
        decided_at=new.decided_at), news.journal)


def _differs(current: DisputeRow, new: DisputeRow) -> str:
    """The facts a dispute keeps from its opening that `new` changes, as text ('' if none)."""
    names = ("merchant_id", "channel", "amount_minor", "currency", "funds_withdrawn")
    changed = [f"{name} {getattr(new, name)!r} (stored {getattr(current, name)!r})"
               for name in names if getattr(new, name) != getattr(current, name)]
    return ", ".join(changed)


def _name(row: DisputeRow) -> str:
    return f"{row.payment_id}/{row.dispute_id}"
