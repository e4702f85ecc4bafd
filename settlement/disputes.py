"""Dispute (chargeback) decisions: pure transitions over one payment's refund book.

A channel reports every change of a dispute as a ChannelDispute record. Each is decided against
the payment's RefundBook (opened when the payment was MATCHED), where the dispute is kept beside
the refunds, so a refund and a dispute racing for the same money are decided one after the other.

States of a dispute in the book: OPEN (its amount D is held from the merchant), WON (released),
LOST (taken for good, the record's fee X charged). The channel's statuses map onto them: OPENED
-> OPEN; WON, CANCELLED -> WON; LOST, ACCEPTED, EXPIRED -> LOST. Amounts (minor units of the
payment's currency): held = Σ D of OPEN disputes; lost = Σ D of LOST disputes; both count as
reserved, so refundable = captured - refunds reserving - held - lost, and a new dispute may not
exceed what is refundable (a fully refunded payment cannot be disputed).

Every record with a new event_id yields at least one outcome (each record is answered); the same
event_id again yields none. Outcomes name their money event: OPENED holds, WON releases, LOST
takes; STAGE_CHANGED and REJECTED move nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from settlement.errors import DomainError

if TYPE_CHECKING:  # refunds imports this module for the book's disputes
    from settlement.refunds import RefundBook

DISPUTE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# The channel's stages and statuses (the Avro enums DisputeStage, DisputeStatus).
PRE_DISPUTE: Final = "PRE_DISPUTE"
DISPUTE: Final = "DISPUTE"
PRE_ARBITRATION: Final = "PRE_ARBITRATION"
STAGES: Final = frozenset({PRE_DISPUTE, DISPUTE, PRE_ARBITRATION})
OPENED: Final = "OPENED"
WON: Final = "WON"
LOST: Final = "LOST"
ACCEPTED: Final = "ACCEPTED"
EXPIRED: Final = "EXPIRED"
CANCELLED: Final = "CANCELLED"
STATUSES: Final = frozenset({OPENED, WON, LOST, ACCEPTED, EXPIRED, CANCELLED})
WON_STATUSES: Final = frozenset({WON, CANCELLED})
LOST_STATUSES: Final = frozenset({LOST, ACCEPTED, EXPIRED})

# A dispute's state in the book.
OPEN: Final = "OPEN"
STATE_WON: Final = "WON"
STATE_LOST: Final = "LOST"
DISPUTE_STATES: Final = frozenset({OPEN, STATE_WON, STATE_LOST})
RESERVING_STATES: Final = frozenset({OPEN, STATE_LOST})

# Events on disputes.results (the Avro enum DisputeEvent).
EVENT_OPENED: Final = "OPENED"
EVENT_WON: Final = "WON"
EVENT_LOST: Final = "LOST"
EVENT_STAGE_CHANGED: Final = "STAGE_CHANGED"
EVENT_REJECTED: Final = "REJECTED"
EVENTS: Final = frozenset({EVENT_OPENED, EVENT_WON, EVENT_LOST, EVENT_STAGE_CHANGED,
                           EVENT_REJECTED})
MONEY_EVENTS: Final = frozenset({EVENT_OPENED, EVENT_WON, EVENT_LOST})

# Reason codes of a REJECTED result.
DISPUTE_ID_INVALID: Final = "DISPUTE_ID_INVALID"
PAYMENT_UNKNOWN: Final = "PAYMENT_UNKNOWN"
PAYMENT_NOT_CAPTURED: Final = "PAYMENT_NOT_CAPTURED"
PAYMENT_REVERSED: Final = "PAYMENT_REVERSED"
CHANNEL_MISMATCH: Final = "CHANNEL_MISMATCH"
CURRENCY_MISMATCH: Final = "CURRENCY_MISMATCH"
AMOUNT_NOT_POSITIVE: Final = "AMOUNT_NOT_POSITIVE"
FEE_NEGATIVE: Final = "FEE_NEGATIVE"
DISPUTE_AMOUNT_CHANGED: Final = "DISPUTE_AMOUNT_CHANGED"
DISPUTE_EXCEEDS_DISPUTABLE: Final = "DISPUTE_EXCEEDS_DISPUTABLE"
DISPUTE_ALREADY_CLOSED: Final = "DISPUTE_ALREADY_CLOSED"
DISPUTE_REASON_CODES: Final = frozenset({
    DISPUTE_ID_INVALID, PAYMENT_UNKNOWN, PAYMENT_NOT_CAPTURED, PAYMENT_REVERSED,
    CHANNEL_MISMATCH, CURRENCY_MISMATCH, AMOUNT_NOT_POSITIVE, FEE_NEGATIVE,
    DISPUTE_AMOUNT_CHANGED, DISPUTE_EXCEEDS_DISPUTABLE, DISPUTE_ALREADY_CLOSED,
})

SEEN_EVENT_IDS_MAX: Final = 16


class DisputeError(DomainError, ValueError):
    """Dispute rules were called with input that breaks them (a caller bug, or a record that
    cannot be read as a dispute at all)."""


class DisputeInvariantError(DisputeError):
    """A dispute or an outcome would break an invariant; nothing may be emitted."""


def valid_dispute_id(dispute_id: object) -> bool:
    return isinstance(dispute_id, str) and DISPUTE_ID_PATTERN.fullmatch(dispute_id) is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class DisputeNews:
    """One ChannelDispute record. Types and enums are checked here (a record that breaks them
    is unreadable); what the rules judge (the dispute id's shape, amounts, fee) is not."""

    event_id: str
    dispute_id: str
    channel: str  # lower case, like the book's
    channel_dispute_id: str
    payment_id: str
    stage: str
    status: str
    amount_minor: int
    currency: str
    occurred_at_ms: int
    funds_withdrawn: bool = False
    fee_minor: int = 0
    reason_code: str | None = None
    respond_by_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("event_id", "channel", "payment_id", "currency"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise DisputeError(f"DisputeNews.{name} must be a non-empty string: {value!r}")
        for name in ("dispute_id", "channel_dispute_id"):
            if not isinstance(getattr(self, name), str):
                raise DisputeError(f"DisputeNews.{name} must be a string")
        for name in ("amount_minor", "fee_minor", "occurred_at_ms"):
            if not _is_int(getattr(self, name)):
                raise DisputeError(f"DisputeNews.{name} must be an int: {getattr(self, name)!r}")
        if self.respond_by_ms is not None and not _is_int(self.respond_by_ms):
            raise DisputeError(f"DisputeNews.respond_by_ms must be an int or None: "
                               f"{self.respond_by_ms!r}")
        if self.reason_code is not None and not isinstance(self.reason_code, str):
            raise DisputeError("DisputeNews.reason_code must be a string or None")
        if not isinstance(self.funds_withdrawn, bool):
            raise DisputeError(f"DisputeNews.funds_withdrawn must be a bool: "
                               f"{self.funds_withdrawn!r}")
        if self.stage not in STAGES:
            raise DisputeError(f"DisputeNews.stage {self.stage!r}: one of {sorted(STAGES)}")
        if self.status not in STATUSES:
            raise DisputeError(f"DisputeNews.status {self.status!r}: one of {sorted(STATUSES)}")


@dataclass(frozen=True, slots=True)
class Dispute:
    """One dispute of a payment, as the book keeps it."""

    dispute_id: str
    channel_dispute_id: str
    state: str
    stage: str
    status: str  # the channel's status in the last record applied
    amount_minor: int
    funds_withdrawn: bool  # as the dispute opened: it decides the channel side of every posting
    opened_at_ms: int
    occurred_at_ms: int  # the channel's time of the last record applied
    fee_minor: int = 0  # charged when LOST; 0 otherwise
    reason_code: str | None = None
    respond_by_ms: int | None = None
    closed_at_ms: int | None = None
    seen_event_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "seen_event_ids", tuple(self.seen_event_ids))
        checks = {
            "dispute id valid": valid_dispute_id(self.dispute_id),
            "state known": self.state in DISPUTE_STATES,
            "stage known": self.stage in STAGES,
            "status known": self.status in STATUSES,
            "amount > 0": _is_int(self.amount_minor) and self.amount_minor > 0,
            "fee >= 0": _is_int(self.fee_minor) and self.fee_minor >= 0,
            "fee only when lost": self.fee_minor == 0 or self.state == STATE_LOST,
            "closed iff not open": (self.closed_at_ms is None) == (self.state == OPEN),
            "event ids bounded": len(self.seen_event_ids) <= SEEN_EVENT_IDS_MAX,
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise DisputeInvariantError(f"dispute {self.dispute_id!r}: broken {broken}")

    @property
    def reserves(self) -> bool:
        """Open (held) or lost (gone): either way not refundable."""
        return self.state in RESERVING_STATES

    def remembering(self, event_id: str) -> Dispute:
        seen = (*self.seen_event_ids, event_id)[-SEEN_EVENT_IDS_MAX:]
        return replace(self, seen_event_ids=seen)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["seen_event_ids"] = list(self.seen_event_ids)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Dispute:
        try:
            return cls(**{**data, "seen_event_ids": tuple(data.get("seen_event_ids", ()))})
        except TypeError as exc:
            raise DisputeError(f"cannot read a Dispute from {dict(data)!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class DisputeReason:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class DisputeOutcome:
    """One decided dispute record (or half of one): a record on disputes.results."""

    result_id: str
    event: str
    dispute_id: str
    payment_id: str
    channel: str
    channel_dispute_id: str
    stage: str
    status: str
    amount_minor: int
    currency: str
    funds_withdrawn: bool
    fee_minor: int
    reasons: tuple[DisputeReason, ...]
    reason_code: str | None
    respond_by_ms: int | None
    merchant_id: str | None
    order_id: str | None
    captured_minor: int | None  # None: the payment has no book
    held_minor: int
    disputed_lost_minor: int
    refundable_minor: int
    occurred_at_ms: int
    decided_at_ms: int
    detail: str
    event_id: str

    def __post_init__(self) -> None:
        checks = {
            "result id deterministic": self.result_id == result_id_for(
                self.payment_id, self.dispute_id, self.event, self.event_id),
            "event known": self.event in EVENTS,
            "rejected iff reasons": (self.event == EVENT_REJECTED) == bool(self.reasons),
            "reason codes known": all(r.code in DISPUTE_REASON_CODES for r in self.reasons),
            "money events move a positive amount": self.event not in MONEY_EVENTS
            or self.amount_minor > 0,
            "fee only on LOST": self.fee_minor == 0 or (
                self.event == EVENT_LOST and self.fee_minor > 0),
            "totals >= 0": min(self.held_minor, self.disputed_lost_minor,
                               self.refundable_minor) >= 0,
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise DisputeInvariantError(f"dispute outcome {self.result_id!r}: broken {broken}")

    @property
    def reason_codes(self) -> list[str]:
        return [r.code for r in self.reasons]


def result_id_for(payment_id: str, dispute_id: str, event: str, event_id: str) -> str:
    """Deterministic, so a replayed decision repeats it and sinks dedupe on it."""
    return f"{payment_id}/{dispute_id}:{event}:{event_id}"


def state_for(status: str) -> str:
    """The book's state a channel status leads to."""
    if status in WON_STATUSES:
        return STATE_WON
    if status in LOST_STATUSES:
        return STATE_LOST
    if status == OPENED:
        return OPEN
    raise DisputeError(f"unknown dispute status {status!r}")


# -- deciding -------------------------------------------------------------------------------


def _checks(book: RefundBook | None, news: DisputeNews, existing: Dispute | None,
            payment_known: bool) -> list[DisputeReason]:
    reasons: list[DisputeReason] = []
    if not valid_dispute_id(news.dispute_id):
        reasons.append(DisputeReason(DISPUTE_ID_INVALID, f"dispute_id {news.dispute_id!r}: "
                                     "1-128 characters of A-Z a-z 0-9 . _ : -"))
    if book is None:
        if payment_known:
            reasons.append(DisputeReason(PAYMENT_NOT_CAPTURED,
                                         f"payment {news.payment_id} is not MATCHED"))
        else:
            reasons.append(DisputeReason(PAYMENT_UNKNOWN,
                                         f"payment {news.payment_id} is unknown"))
    else:
        if book.reversed_by is not None:
            reasons.append(DisputeReason(PAYMENT_REVERSED,
                                         f"the channel reversed payment {book.payment_id}"))
        if news.channel != book.channel:
            reasons.append(DisputeReason(CHANNEL_MISMATCH, f"dispute from {news.channel}, "
                                         f"payment captured by {book.channel}"))
        if news.currency != book.currency:
            reasons.append(DisputeReason(CURRENCY_MISMATCH, f"payment is in {book.currency}, "
                                         f"dispute in {news.currency}"))
    if news.amount_minor <= 0:
        reasons.append(DisputeReason(AMOUNT_NOT_POSITIVE,
                                     f"amount_minor {news.amount_minor} must be > 0"))
    if news.fee_minor < 0:
        reasons.append(DisputeReason(FEE_NEGATIVE, f"fee_minor {news.fee_minor} must be >= 0"))
    if existing is not None:
        if news.amount_minor != existing.amount_minor:
            reasons.append(DisputeReason(DISPUTE_AMOUNT_CHANGED, f"amount {news.amount_minor}, "
                                         f"the dispute is for {existing.amount_minor}"))
        if existing.state != OPEN:
            reasons.append(DisputeReason(DISPUTE_ALREADY_CLOSED,
                                         f"the dispute was already {existing.state} "
                                         f"({existing.status}); now {news.status}"))
    elif book is not None and book.reversed_by is None \
            and news.amount_minor > book.refundable_minor:
        reasons.append(DisputeReason(DISPUTE_EXCEEDS_DISPUTABLE, (
            f"{news.amount_minor} > disputable {book.refundable_minor} (captured "
            f"{book.captured_minor}, refunds and disputes reserving {book.reserved_minor})")))
    return reasons


def _outcome(book: RefundBook | None, news: DisputeNews, event: str, now_ms: int, detail: str,
             dispute: Dispute | None = None, reasons: tuple[DisputeReason, ...] = (),
             fee_minor: int = 0) -> DisputeOutcome:
    stage = dispute.stage if dispute is not None else news.stage
    return DisputeOutcome(
        result_id=result_id_for(news.payment_id, news.dispute_id, event, news.event_id),
        event=event, dispute_id=news.dispute_id, payment_id=news.payment_id,
        channel=news.channel, channel_dispute_id=news.channel_dispute_id, stage=stage,
        status=news.status,
        amount_minor=dispute.amount_minor if dispute is not None else news.amount_minor,
        currency=news.currency,
        funds_withdrawn=dispute.funds_withdrawn if dispute is not None
        else news.funds_withdrawn,
        fee_minor=fee_minor, reasons=reasons,
        reason_code=dispute.reason_code if dispute is not None else news.reason_code,
        respond_by_ms=dispute.respond_by_ms if dispute is not None else news.respond_by_ms,
        merchant_id=book.merchant_id if book else None,
        order_id=book.order_id if book else None,
        captured_minor=book.captured_minor if book else None,
        held_minor=book.held_minor if book else 0,
        disputed_lost_minor=book.disputed_lost_minor if book else 0,
        refundable_minor=book.refundable_minor if book else 0,
        occurred_at_ms=news.occurred_at_ms, decided_at_ms=now_ms, detail=detail,
        event_id=news.event_id,
    )


def on_dispute(book: RefundBook | None, news: DisputeNews, now_ms: int, *,
               payment_known: bool = False) -> tuple[RefundBook | None, list[DisputeOutcome]]:
    """Decide one ChannelDispute record against the payment's book.

    `book` is None when the payment was never MATCHED; `payment_known` then says whether
    reconciliation knows it at all (PAYMENT_NOT_CAPTURED) or not (PAYMENT_UNKNOWN). Returns
    the book after the record and its outcomes: none for an event_id the dispute has seen, one
    REJECTED with every broken rule (the book unchanged but for the event_id remembered), or
    the transition's events (OPENED then LOST for a dispute first seen lost).
    """
    if book is not None and book.payment_id != news.payment_id:
        raise DisputeError(f"dispute for {news.payment_id} against {book.payment_id}'s book")
    existing = book.get_dispute(news.dispute_id) if book is not None else None
    if existing is not None and news.event_id in existing.seen_event_ids:
        return book, []  # redelivered
    reasons = _checks(book, news, existing, payment_known)
    if reasons:
        if book is not None and existing is not None:
            book = book.with_dispute(existing.remembering(news.event_id))
        detail = "; ".join(r.detail for r in reasons)
        # A rejection reports the record as sent.
        return book, [_outcome(book, news, EVENT_REJECTED, now_ms, detail,
                               reasons=tuple(reasons))]
    assert book is not None
    if existing is None:
        return _first(book, news, now_ms)
    return _next(book, existing.remembering(news.event_id), news, now_ms)


def _first(book: RefundBook, news: DisputeNews, now_ms: int,
           ) -> tuple[RefundBook, list[DisputeOutcome]]:
    """A dispute the book has not seen yet."""
    state = state_for(news.status)
    opened = Dispute(
        dispute_id=news.dispute_id, channel_dispute_id=news.channel_dispute_id,
        state=OPEN if state != STATE_WON else STATE_WON, stage=news.stage, status=news.status,
        amount_minor=news.amount_minor, funds_withdrawn=news.funds_withdrawn,
        opened_at_ms=now_ms, occurred_at_ms=news.occurred_at_ms,
        reason_code=news.reason_code, respond_by_ms=news.respond_by_ms,
        closed_at_ms=now_ms if state == STATE_WON else None, seen_event_ids=(news.event_id,))
    book = book.with_dispute(opened)
    if state == STATE_WON:
        detail = (f"dispute first seen {news.status}: nothing was held, nothing moves")
        return book, [_outcome(book, news, EVENT_STAGE_CHANGED, now_ms, detail, opened)]
    held = _outcome(book, news, EVENT_OPENED, now_ms,
                    f"{news.amount_minor} held: dispute {news.status} at {news.stage}", opened)
    if state == OPEN:
        return book, [held]
    lost = replace(opened, state=STATE_LOST, fee_minor=news.fee_minor, closed_at_ms=now_ms)
    book = book.with_dispute(lost)
    detail = f"dispute first seen {news.status}: held and lost, fee {news.fee_minor}"
    return book, [held, _outcome(book, news, EVENT_LOST, now_ms, detail, lost,
                                 fee_minor=news.fee_minor)]


def _next(book: RefundBook, dispute: Dispute, news: DisputeNews, now_ms: int,
          ) -> tuple[RefundBook, list[DisputeOutcome]]:
    """A new record of an OPEN dispute."""
    state = state_for(news.status)
    changed = replace(dispute, stage=news.stage, status=news.status,
                      occurred_at_ms=news.occurred_at_ms,
                      reason_code=news.reason_code or dispute.reason_code,
                      respond_by_ms=news.respond_by_ms if news.respond_by_ms is not None
                      else dispute.respond_by_ms)
    if state == OPEN:
        book = book.with_dispute(changed)
        detail = f"dispute at {news.stage}, respond by {changed.respond_by_ms}; no money moves"
        return book, [_outcome(book, news, EVENT_STAGE_CHANGED, now_ms, detail, changed)]
    if state == STATE_WON:
        won = replace(changed, state=STATE_WON, closed_at_ms=now_ms)
        book = book.with_dispute(won)
        detail = f"dispute {news.status}: {won.amount_minor} released"
        return book, [_outcome(book, news, EVENT_WON, now_ms, detail, won)]
    lost = replace(changed, state=STATE_LOST, fee_minor=news.fee_minor, closed_at_ms=now_ms)
    book = book.with_dispute(lost)
    detail = f"dispute {news.status}: {lost.amount_minor} lost, fee {news.fee_minor}"
    return book, [_outcome(book, news, EVENT_LOST, now_ms, detail, lost,
                           fee_minor=news.fee_minor)]
