"""Refund decisions: pure transitions over one payment's refund book.

A payment becomes refundable when reconciliation MATCHES it (also late): the reconcile stage
then opens its book (captured amount, fee, channel). Every refund request and every channel
answer about the payment's refunds is decided against that book, in the partition that holds
it, so two refunds racing for the last unit are decided one after the other.

Amounts (all integer minor units of the payment's currency):
- reserved   = Σ refunds PENDING (routed, no answer yet), SUCCEEDED, or in EXCEPTION (the
               channel answered another amount or currency: where the money is is unknown),
               + Σ disputes OPEN (held) or LOST (settlement.disputes decides them);
- refundable = captured - reserved: pending refunds count, so racing refunds cannot both pass;
- refunded   = Σ SUCCEEDED refunds <= captured, always (checked on construction).
A DECLINED or MISSING refund frees its amount again. A late success after MISSING is taken
only while its amount is still refundable; otherwise it is a LATE_CONFIRMATION for an operator.

The fee given back with a succeeded refund follows the channel's policy: PROPORTIONAL (the
default) rounds cumulatively, f_k = r(F·S_k/G) - r(F·S_(k-1)/G) with S the running total of
succeeded refunds and r half-up rounding, so partial refunds never give back more than the
payment's fee F and a full refund gives back exactly F; KEEP gives back nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

from settlement.disputes import OPEN as DISPUTE_OPEN
from settlement.disputes import STATE_LOST as DISPUTE_LOST
from settlement.disputes import Dispute
from settlement.errors import DomainError
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    DECLINED,
    DUPLICATE_CONFIRMATION,
    FAILED,
    LATE_CONFIRMATION,
    MATCHED,
    MISSING_CONFIRMATION,
    ORPHAN_CONFIRMATION,
    PAYMENT_REVERSED,
    REFUND_REVERSED,
    REVERSAL_EXCEPTION,
    REVERSED,
    SUCCEEDED,
    TERMINAL_OUTCOMES,
)
from settlement.refund_model import RefundRequest, refund_source_id, valid_refund_id

# Refund states in the book.
PENDING: Final = "PENDING"
REFUNDED: Final = "SUCCEEDED"
FAILED_STATE: Final = "FAILED"
EXCEPTION: Final = "EXCEPTION"
REVERSED_STATE: Final = "REVERSED"  # refunded, then the refund came back: refundable again
STATES: Final = frozenset({PENDING, REFUNDED, FAILED_STATE, EXCEPTION, REVERSED_STATE})

# Rejection reason codes on refunds.rejected (besides the SIGNATURE_* codes of signing).
PAYMENT_UNKNOWN: Final = "PAYMENT_UNKNOWN"
PAYMENT_NOT_CAPTURED: Final = "PAYMENT_NOT_CAPTURED"
MERCHANT_MISMATCH: Final = "MERCHANT_MISMATCH"
CURRENCY_DIFFERS: Final = "CURRENCY_MISMATCH"
AMOUNT_NOT_POSITIVE: Final = "AMOUNT_NOT_POSITIVE"
REFUND_EXCEEDS_REFUNDABLE: Final = "REFUND_EXCEEDS_REFUNDABLE"
MAX_REFUNDS_REACHED: Final = "MAX_REFUNDS_REACHED"
REFUND_WINDOW_EXPIRED: Final = "REFUND_WINDOW_EXPIRED"
REFUND_ID_INVALID: Final = "REFUND_ID_INVALID"
DUPLICATE_CONFLICT: Final = "DUPLICATE_CONFLICT"
PAYMENT_WAS_REVERSED: Final = "PAYMENT_REVERSED"
REFUND_REASON_CODES: Final = frozenset({
    PAYMENT_UNKNOWN, PAYMENT_NOT_CAPTURED, MERCHANT_MISMATCH, CURRENCY_DIFFERS,
    AMOUNT_NOT_POSITIVE, REFUND_EXCEEDS_REFUNDABLE, MAX_REFUNDS_REACHED, REFUND_WINDOW_EXPIRED,
    REFUND_ID_INVALID, DUPLICATE_CONFLICT, PAYMENT_WAS_REVERSED,
})

FEE_PROPORTIONAL: Final = "proportional"
FEE_KEEP: Final = "keep"
FEE_POLICIES: Final = frozenset({FEE_PROPORTIONAL, FEE_KEEP})

DAY_MS: Final = 24 * 3600 * 1000
DEFAULT_MAX_REFUNDS: Final = 50
DEFAULT_MAX_AGE_MS: Final = 365 * DAY_MS
DEFAULT_REFUND_SLA_MS: Final = 30_000
SEEN_CONFIRMATION_IDS_MAX: Final = 16
BOOK_FORMAT_VERSION: Final = 1


class RefundError(DomainError, ValueError):
    """Refund rules were called with input that breaks them (a caller bug)."""


class RefundInvariantError(RefundError):
    """A refund book or result would break an invariant; nothing may be emitted."""


def _round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def fee_returned(fee_minor: int, captured_minor: int, refunded_before: int, refund: int,
                 policy: str = FEE_PROPORTIONAL, returned_before: int | None = None) -> int:
    """The part of the payment's fee given back with a refund of `refund` after
    `refunded_before` already succeeded (cumulative rounding; see the module doc).

    `returned_before` is the fee those refunds gave back; it is r(F·S/G) unless a refund was
    reversed since (its fee came back too). The running total then catches up with the
    exact proportion, never passing it nor the refund itself: Σ given back <= F always, and
    = F once the whole capture is refunded.
    """
    for name, value in (("fee_minor", fee_minor), ("captured_minor", captured_minor),
                        ("refunded_before", refunded_before), ("refund", refund)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RefundError(f"{name} must be an int >= 0, got {value!r}")
    if captured_minor <= 0 or fee_minor > captured_minor:
        raise RefundError(f"need 0 < captured and fee <= captured: {captured_minor}, {fee_minor}")
    if refunded_before + refund > captured_minor:
        raise RefundInvariantError(
            f"refunds {refunded_before} + {refund} exceed captured {captured_minor}")
    if policy == FEE_KEEP:
        return 0
    if policy != FEE_PROPORTIONAL:
        raise RefundError(f"unknown fee policy {policy!r}")
    after = _round_half_up(fee_minor * (refunded_before + refund), captured_minor)
    if returned_before is None:
        returned_before = _round_half_up(fee_minor * refunded_before, captured_minor)
    return min(refund, max(0, after - returned_before))


@dataclass(frozen=True, slots=True)
class RefundPolicy:
    """Per-channel refund limits, fee policy and the SLA for the channel's answer."""

    max_refunds: int = DEFAULT_MAX_REFUNDS
    max_age_ms: int = DEFAULT_MAX_AGE_MS
    sla_ms: int = DEFAULT_REFUND_SLA_MS
    fee_policy: str = FEE_PROPORTIONAL
    # Per channel overrides: channel -> value.
    max_refunds_by_channel: Mapping[str, int] = field(default_factory=dict)
    max_age_ms_by_channel: Mapping[str, int] = field(default_factory=dict)
    sla_ms_by_channel: Mapping[str, int] = field(default_factory=dict)
    fee_policy_by_channel: Mapping[str, str] = field(default_factory=dict)
    # How long a decided book is kept after its refund window (replays, late answers).
    retain_ms: int = 10 * 60 * 1000

    def __post_init__(self) -> None:
        for name in ("max_refunds_by_channel", "max_age_ms_by_channel", "sla_ms_by_channel",
                     "fee_policy_by_channel"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        ints = {"max_refunds": self.max_refunds, "max_age_ms": self.max_age_ms,
                "sla_ms": self.sla_ms, **{f"max_refunds[{k}]": v for k, v in
                                          self.max_refunds_by_channel.items()},
                **{f"max_age_ms[{k}]": v for k, v in self.max_age_ms_by_channel.items()},
                **{f"sla_ms[{k}]": v for k, v in self.sla_ms_by_channel.items()}}
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RefundError(f"RefundPolicy {name} must be an int > 0, got {value!r}")
        if isinstance(self.retain_ms, bool) or not isinstance(self.retain_ms, int) \
                or self.retain_ms < 0:
            raise RefundError(f"RefundPolicy retain_ms must be an int >= 0: {self.retain_ms!r}")
        for name, fee_policy in {"fee_policy": self.fee_policy,
                                 **self.fee_policy_by_channel}.items():
            if fee_policy not in FEE_POLICIES:
                raise RefundError(f"RefundPolicy fee policy {name}={fee_policy!r}: "
                                  f"one of {sorted(FEE_POLICIES)}")

    def max_refunds_for(self, channel: str) -> int:
        return self.max_refunds_by_channel.get(channel, self.max_refunds)

    def max_age_ms_for(self, channel: str) -> int:
        return self.max_age_ms_by_channel.get(channel, self.max_age_ms)

    def sla_ms_for(self, channel: str) -> int:
        return self.sla_ms_by_channel.get(channel, self.sla_ms)

    def fee_policy_for(self, channel: str) -> str:
        return self.fee_policy_by_channel.get(channel, self.fee_policy)


def body_digest(request: RefundRequest) -> str:
    """A short digest of the request's signed fields: same digest, same request."""
    text = json.dumps(request.body(), ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class RefundConfirmation:
    """A channel's answer about one refund, as read from channel.refund_confirmations."""

    confirmation_id: str
    channel: str
    refund_id: str
    payment_id: str
    channel_refund_id: str
    status: str
    amount_minor: int
    currency: str
    confirmed_at_ms: int

    def __post_init__(self) -> None:
        for name in ("confirmation_id", "channel", "refund_id", "payment_id",
                     "channel_refund_id", "currency"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise RefundError(f"RefundConfirmation.{name} must be a non-empty string")
        for name in ("amount_minor", "confirmed_at_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RefundError(f"RefundConfirmation.{name} must be an int, got {value!r}")
        if self.status not in (SUCCEEDED, FAILED, REVERSED):
            raise RefundError(f"RefundConfirmation.status must be SUCCEEDED, FAILED or "
                              f"REVERSED: {self.status!r}")
        if self.amount_minor < 0:
            raise RefundError(f"RefundConfirmation.amount_minor must be >= 0: "
                              f"{self.amount_minor}")


@dataclass(frozen=True, slots=True)
class Refund:
    """One accepted refund of the book."""

    refund_id: str
    amount_minor: int
    digest: str
    requested_at_ms: int
    routed_at_ms: int
    reason: str | None = None
    state: str = PENDING
    outcome: str | None = None
    decided_at_ms: int | None = None
    decided_by: str | None = None  # the confirmation behind the outcome; None for MISSING
    missing_declared: bool = False
    late_confirmation_id: str | None = None
    fee_returned_minor: int | None = None
    channel_refund_id: str | None = None
    seen_confirmation_ids: tuple[str, ...] = ()
    reversed_by: str | None = None  # the channel's answer that reversed the refund
    reversed_at_ms: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seen_confirmation_ids", tuple(self.seen_confirmation_ids))
        checks = {
            "state known": self.state in STATES,
            "amount > 0": isinstance(self.amount_minor, int) and self.amount_minor > 0,
            "pending iff undecided": (self.state == PENDING) == (self.outcome is None),
            "outcome terminal": self.outcome is None or self.outcome in TERMINAL_OUTCOMES,
            "refunded or reversed iff MATCHED": (self.state in (REFUNDED, REVERSED_STATE))
            == (self.outcome == MATCHED),
            "reversed iff reversed_by": (self.state == REVERSED_STATE)
            == (self.reversed_by is not None),
            "fee returned iff MATCHED": (self.fee_returned_minor is not None)
            == (self.outcome == MATCHED),
            "fee returned within amount": self.fee_returned_minor is None
            or 0 <= self.fee_returned_minor <= self.amount_minor,
            "missing declared only with MISSING or a late match": not self.missing_declared
            or self.outcome in (MISSING_CONFIRMATION, MATCHED),
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise RefundInvariantError(f"refund {self.refund_id}: broken {broken}")

    @property
    def reserves(self) -> bool:
        return self.state in (PENDING, REFUNDED, EXCEPTION)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["seen_confirmation_ids"] = list(self.seen_confirmation_ids)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Refund:
        try:
            return cls(**{**data, "seen_confirmation_ids": tuple(
                data.get("seen_confirmation_ids", ()))})
        except TypeError as exc:
            raise RefundError(f"cannot read a Refund from {dict(data)!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class RefundBook:
    """A captured payment and its refunds: a value in the reconcile stage's table."""

    payment_id: str
    merchant_id: str
    channel: str
    currency: str
    captured_minor: int
    fee_minor: int
    captured_at_ms: int
    order_id: str | None = None
    channel_txn_id: str | None = None
    refunds: tuple[Refund, ...] = ()
    # The channel took the whole payment back (at most once; nothing refundable after it).
    reversed_by: str | None = None
    reversed_at_ms: int | None = None
    # Chargebacks on the payment (settlement.disputes): open or lost ones reserve their amount.
    disputes: tuple[Dispute, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "refunds", tuple(self.refunds))
        object.__setattr__(self, "disputes", tuple(self.disputes))
        ids = [r.refund_id for r in self.refunds]
        dispute_ids = [d.dispute_id for d in self.disputes]
        checks = {
            "a reversed payment has no refund or dispute outstanding": self.reversed_by is None
            or self.reserved_minor == 0,
            "dispute ids unique": len(set(dispute_ids)) == len(dispute_ids),
            "held >= 0": self.held_minor >= 0,
            "captured > 0": self.captured_minor > 0,
            "0 <= fee <= captured": 0 <= self.fee_minor <= self.captured_minor,
            "refund ids unique": len(set(ids)) == len(ids),
            "reserved <= captured": self.reserved_minor <= self.captured_minor,
            "refunded <= captured": self.refunded_minor <= self.captured_minor,
            "fees returned <= fee": self.fee_returned_minor <= self.fee_minor,
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise RefundInvariantError(f"refund book {self.payment_id}: broken {broken}")

    @property
    def reserved_minor(self) -> int:
        return (sum(r.amount_minor for r in self.refunds if r.reserves)
                + sum(d.amount_minor for d in self.disputes if d.reserves))

    @property
    def held_minor(self) -> int:
        """Under open disputes: held from the merchant until won or lost."""
        return sum(d.amount_minor for d in self.disputes if d.state == DISPUTE_OPEN)

    @property
    def disputed_lost_minor(self) -> int:
        return sum(d.amount_minor for d in self.disputes if d.state == DISPUTE_LOST)

    @property
    def refunded_minor(self) -> int:
        return sum(r.amount_minor for r in self.refunds if r.state == REFUNDED)

    @property
    def refundable_minor(self) -> int:
        return 0 if self.reversed_by is not None else self.captured_minor - self.reserved_minor

    @property
    def fee_returned_minor(self) -> int:
        """Fee given back by the refunds that stand (a reversed refund's came back)."""
        return sum(r.fee_returned_minor or 0 for r in self.refunds if r.state == REFUNDED)

    def get(self, refund_id: str) -> Refund | None:
        return next((r for r in self.refunds if r.refund_id == refund_id), None)

    def with_refund(self, refund: Refund) -> RefundBook:
        kept = tuple(refund if r.refund_id == refund.refund_id else r for r in self.refunds)
        if refund.refund_id not in {r.refund_id for r in self.refunds}:
            kept = (*kept, refund)
        return replace(self, refunds=kept)

    def get_dispute(self, dispute_id: str) -> Dispute | None:
        return next((d for d in self.disputes if d.dispute_id == dispute_id), None)

    def with_dispute(self, dispute: Dispute) -> RefundBook:
        kept = tuple(dispute if d.dispute_id == dispute.dispute_id else d
                     for d in self.disputes)
        if dispute.dispute_id not in {d.dispute_id for d in self.disputes}:
            kept = (*kept, dispute)
        return replace(self, disputes=kept)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["refunds"] = [r.to_dict() for r in self.refunds]
        data["disputes"] = [d.to_dict() for d in self.disputes]
        data["v"] = BOOK_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefundBook:
        values = dict(data)
        if values.pop("v", None) != BOOK_FORMAT_VERSION:
            raise RefundError(f"unknown refund book format version {data.get('v')!r}")
        values["refunds"] = tuple(Refund.from_dict(r) for r in values.get("refunds", ()))
        # Books written before disputes have none.
        values["disputes"] = tuple(Dispute.from_dict(d) for d in values.get("disputes", ()))
        try:
            return cls(**values)
        except TypeError as exc:
            raise RefundError(f"cannot read a RefundBook: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """One decided refund answer: a record on refunds.results."""

    result_id: str
    refund_id: str
    payment_id: str
    outcome: str
    terminal: bool
    late: bool
    decided_at_ms: int
    detail: str
    refund: Refund | None  # the refund as decided (None: an orphan answer)
    confirmation: RefundConfirmation | None
    refunded_minor: int
    refundable_minor: int

    def __post_init__(self) -> None:
        if self.result_id != result_id_for(self.payment_id, self.refund_id, self.outcome,
                                           self.confirmation.confirmation_id
                                           if self.confirmation else None):
            raise RefundInvariantError(f"result_id {self.result_id!r} is not deterministic")
        if self.outcome in (MATCHED, REFUND_REVERSED):
            refund, conf = self.refund, self.confirmation
            if refund is None or conf is None or refund.fee_returned_minor is None \
                    or conf.amount_minor != refund.amount_minor:
                raise RefundInvariantError(f"{self.outcome} refund without equal amounts: "
                                           f"{self}")
        if self.outcome == REFUND_REVERSED and (
                self.refund is None or self.refund.state != REVERSED_STATE):
            raise RefundInvariantError(f"REFUND_REVERSED of a refund not reversed: {self}")


def result_id_for(payment_id: str, refund_id: str, outcome: str,
                  confirmation_id: str | None) -> str:
    """Deterministic, so a replayed decision repeats it and sinks dedupe on it."""
    return f"{payment_id}/{refund_id}:{outcome}:{confirmation_id or '-'}"


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestDecision:
    """What became of a refund request: accepted (a new PENDING refund in `book`), rejected
    with reasons, or a duplicate of an accepted one (dropped and counted)."""

    book: RefundBook | None
    accepted: Refund | None = None
    rejections: tuple[Rejection, ...] = ()
    duplicate: bool = False


def decide_request(
    book: RefundBook | None,
    request: RefundRequest,
    now_ms: int,
    policy: RefundPolicy,
    *,
    payment_known: bool = False,
    signature_failure: Rejection | None = None,
) -> RequestDecision:
    """Accept or reject a refund request against the payment's book.

    `book` is None when the payment was never MATCHED; `payment_known` then says whether
    reconciliation knows it at all (PAYMENT_NOT_CAPTURED) or not (PAYMENT_UNKNOWN).
    Identical re-sends of an accepted refund are duplicates; another body under an accepted
    refund id is a DUPLICATE_CONFLICT. Every other rule broken is listed.
    """
    if book is not None and book.payment_id != request.payment_id:
        raise RefundError(f"request for {request.payment_id} against {book.payment_id}'s book")
    if book is not None:
        existing = book.get(request.refund_id)
        if existing is not None:
            if existing.digest == body_digest(request):
                return RequestDecision(book, duplicate=True)
            return RequestDecision(book, rejections=(Rejection(
                DUPLICATE_CONFLICT,
                f"refund_id {request.refund_id!r} was accepted with another body"),))
    reasons: list[Rejection] = []
    if signature_failure is not None:
        reasons.append(signature_failure)
    if not valid_refund_id(request.refund_id):
        reasons.append(Rejection(REFUND_ID_INVALID, f"refund_id {request.refund_id!r}: 1-128 "
                                 "characters of A-Z a-z 0-9 . _ : -"))
    asked = request.amount_minor
    amount: int | None = asked
    if isinstance(asked, bool) or not isinstance(asked, int) or asked <= 0:
        reasons.append(Rejection(AMOUNT_NOT_POSITIVE, f"amount_minor {asked!r} must be > 0"))
        amount = None
    if book is None:
        if payment_known:
            reasons.append(Rejection(PAYMENT_NOT_CAPTURED,
                                     f"payment {request.payment_id} is not MATCHED"))
        else:
            reasons.append(Rejection(PAYMENT_UNKNOWN, f"payment {request.payment_id} is unknown"))
        return RequestDecision(None, rejections=tuple(reasons))
    if book.reversed_by is not None:
        reasons.append(Rejection(PAYMENT_WAS_REVERSED,
                                 f"the channel reversed payment {book.payment_id}"))
    if request.merchant_id != book.merchant_id:
        reasons.append(Rejection(MERCHANT_MISMATCH, f"payment belongs to another merchant "
                                 f"than {request.merchant_id!r}"))
    if request.currency != book.currency:
        reasons.append(Rejection(CURRENCY_DIFFERS,
                                 f"payment is in {book.currency}, refund in {request.currency}"))
    max_age = policy.max_age_ms_for(book.channel)
    if now_ms - book.captured_at_ms > max_age:
        reasons.append(Rejection(REFUND_WINDOW_EXPIRED,
                                 f"payment captured more than {max_age // DAY_MS} days ago"))
    max_refunds = policy.max_refunds_for(book.channel)
    if len(book.refunds) >= max_refunds:
        reasons.append(Rejection(MAX_REFUNDS_REACHED,
                                 f"payment already has {len(book.refunds)} refunds"))
    if amount is not None and book.reversed_by is None and amount > book.refundable_minor:
        reasons.append(Rejection(
            REFUND_EXCEEDS_REFUNDABLE,
            f"{amount} > refundable {book.refundable_minor} (captured {book.captured_minor}, "
            f"reserved {book.reserved_minor})"))
    if reasons:
        return RequestDecision(book, rejections=tuple(reasons))
    assert amount is not None
    refund = Refund(request.refund_id, amount, body_digest(request), request.requested_at_ms,
                    now_ms, request.reason)
    return RequestDecision(book.with_refund(refund), accepted=refund)


# -- channel answers ------------------------------------------------------------------------


def _outcome(book: RefundBook | None, refund: Refund | None, conf: RefundConfirmation | None,
             outcome: str, now_ms: int, detail: str, refund_id: str, payment_id: str,
             late: bool = False) -> RefundOutcome:
    return RefundOutcome(
        result_id=result_id_for(payment_id, refund_id, outcome,
                                conf.confirmation_id if conf else None),
        refund_id=refund_id, payment_id=payment_id, outcome=outcome,
        terminal=outcome in TERMINAL_OUTCOMES, late=late, decided_at_ms=now_ms, detail=detail,
        refund=refund, confirmation=conf,
        refunded_minor=book.refunded_minor if book else 0,
        refundable_minor=book.refundable_minor if book else 0,
    )


def _classify(book: RefundBook, refund: Refund, conf: RefundConfirmation) -> tuple[str, str]:
    if conf.status == FAILED:
        return DECLINED, f"channel declined the refund ({conf.channel_refund_id})"
    if conf.currency != book.currency:
        return CURRENCY_MISMATCH, f"refund in {book.currency}, channel refunded {conf.currency}"
    if conf.amount_minor != refund.amount_minor:
        return AMOUNT_MISMATCH, (f"refund of {refund.amount_minor}, channel refunded "
                                 f"{conf.amount_minor}")
    return MATCHED, "channel refunded the amount asked"


def _decide(book: RefundBook, refund: Refund, outcome: str, now_ms: int, policy: RefundPolicy,
            conf: RefundConfirmation | None, **changes: Any) -> RefundBook:
    state = {MATCHED: REFUNDED, DECLINED: FAILED_STATE, MISSING_CONFIRMATION: FAILED_STATE}.get(
        outcome, EXCEPTION)
    fee = None
    if outcome == MATCHED:
        fee = fee_returned(book.fee_minor, book.captured_minor, book.refunded_minor,
                           refund.amount_minor, policy.fee_policy_for(book.channel),
                           returned_before=book.fee_returned_minor)
    channel_refund_id = conf.channel_refund_id if conf else refund.channel_refund_id
    decided = replace(refund, state=state, outcome=outcome, decided_at_ms=now_ms,
                      decided_by=conf.confirmation_id if conf else None,
                      fee_returned_minor=fee, channel_refund_id=channel_refund_id, **changes)
    return book.with_refund(decided)


def _remember(refund: Refund, confirmation_id: str) -> Refund:
    seen = (*refund.seen_confirmation_ids, confirmation_id)[-SEEN_CONFIRMATION_IDS_MAX:]
    return replace(refund, seen_confirmation_ids=seen)


def on_confirmation(
    book: RefundBook | None, conf: RefundConfirmation, now_ms: int, policy: RefundPolicy,
) -> tuple[RefundBook | None, list[RefundOutcome]]:
    """A channel's answer about a refund: decide it, or report a duplicate, late or orphan."""
    refund = book.get(conf.refund_id) if book is not None else None
    if book is None or refund is None:
        detail = (f"no routed refund {conf.refund_id} for payment {conf.payment_id}")
        return book, [_outcome(book, None, conf, ORPHAN_CONFIRMATION, now_ms, detail,
                               conf.refund_id, conf.payment_id)]
    if book.payment_id != conf.payment_id:
        raise RefundError(f"answer for {conf.payment_id} against {book.payment_id}'s book")
    if conf.confirmation_id in refund.seen_confirmation_ids \
            or conf.confirmation_id in (refund.decided_by, refund.late_confirmation_id):
        return book, []  # redelivered
    refund = _remember(refund, conf.confirmation_id)
    book = book.with_refund(refund)
    pid, rid = book.payment_id, refund.refund_id
    if conf.channel != book.channel:
        detail = f"answer from {conf.channel}, refund was routed to {book.channel}"
        return book, [_outcome(book, refund, conf, ORPHAN_CONFIRMATION, now_ms, detail, rid, pid)]
    if conf.status == REVERSED:
        return _refund_reversal(book, refund, conf, now_ms)
    outcome, detail = _classify(book, refund, conf)
    if refund.state == PENDING:
        book = _decide(book, refund, outcome, now_ms, policy, conf)
        decided = book.get(rid)
        return book, [_outcome(book, decided, conf, outcome, now_ms, detail, rid, pid)]
    if refund.outcome == MISSING_CONFIRMATION and refund.late_confirmation_id is None:
        cid = conf.confirmation_id
        if outcome == MATCHED and refund.amount_minor <= book.refundable_minor:
            book = _decide(book, refund, MATCHED, now_ms, policy, conf,
                           late_confirmation_id=cid, missing_declared=True)
            decided = book.get(rid)
            detail = f"late: {detail}, after MISSING_CONFIRMATION"
            return book, [_outcome(book, decided, conf, MATCHED, now_ms, detail, rid, pid,
                                   late=True)]
        book = book.with_refund(replace(refund, late_confirmation_id=cid))
        if outcome == MATCHED:
            detail = (f"after MISSING_CONFIRMATION the channel refunded {conf.amount_minor}, "
                      f"but only {book.refundable_minor} is still refundable")
        else:
            detail = f"after MISSING_CONFIRMATION, would be {outcome}: {detail}"
        return book, [_outcome(book, book.get(rid), conf, LATE_CONFIRMATION, now_ms, detail,
                               rid, pid, late=True)]
    detail = f"refund already {refund.outcome} by {refund.decided_by or 'timer'}"
    return book, [_outcome(book, refund, conf, DUPLICATE_CONFIRMATION, now_ms, detail, rid, pid)]


def _refund_reversal(book: RefundBook, refund: Refund, conf: RefundConfirmation, now_ms: int,
                     ) -> tuple[RefundBook, list[RefundOutcome]]:
    """The channel says a succeeded refund came back: its amount is refundable again."""
    pid, rid = book.payment_id, refund.refund_id
    problem = None
    if refund.state != REFUNDED:
        problem = f"refund is {refund.state}, not refunded"
    elif conf.currency != book.currency or conf.amount_minor != refund.amount_minor:
        problem = (f"reversal of {conf.amount_minor} {conf.currency}, refund was "
                   f"{refund.amount_minor} {book.currency}")
    if problem is not None:
        return book, [_outcome(book, refund, conf, REVERSAL_EXCEPTION, now_ms, problem, rid, pid)]
    reversed_ = replace(refund, state=REVERSED_STATE, reversed_by=conf.confirmation_id,
                        reversed_at_ms=now_ms)
    book = book.with_refund(reversed_)
    detail = f"{book.channel} returned the refund ({conf.channel_refund_id})"
    return book, [_outcome(book, reversed_, conf, REFUND_REVERSED, now_ms, detail, rid, pid)]


@dataclass(frozen=True, slots=True)
class PaymentReversal:
    """A channel's REVERSED answer for a captured payment (from channel.confirmations)."""

    confirmation_id: str
    channel: str
    amount_minor: int
    currency: str


def on_payment_reversal(book: RefundBook, reversal: PaymentReversal, now_ms: int,
                        ) -> tuple[RefundBook, str, str]:
    """(book, PAYMENT_REVERSED or REVERSAL_EXCEPTION, detail) for a channel taking a captured
    payment back. Only the whole capture, in its currency, by its channel, with no refund
    outstanding or succeeded and no dispute open or lost (the channel would take the same
    money twice), and once: the reversal mirrors the payment's journal exactly.
    The same answer again is (book, "", "") : nothing to publish."""
    if reversal.confirmation_id == book.reversed_by:
        return book, "", ""
    problems = []
    if book.reversed_by is not None:
        problems.append(f"already reversed by {book.reversed_by}")
    if reversal.channel != book.channel:
        problems.append(f"reversal from {reversal.channel}, payment captured by {book.channel}")
    if (reversal.amount_minor, reversal.currency) != (book.captured_minor, book.currency):
        problems.append(f"reversal of {reversal.amount_minor} {reversal.currency}, captured "
                        f"{book.captured_minor} {book.currency}")
    disputed = book.held_minor + book.disputed_lost_minor
    if book.reserved_minor - disputed:
        problems.append(f"{book.reserved_minor - disputed} refunded or being refunded")
    if disputed:
        problems.append(f"{disputed} under open or lost disputes")
    if problems:
        return book, REVERSAL_EXCEPTION, "; ".join(problems)
    book = replace(book, reversed_by=reversal.confirmation_id, reversed_at_ms=now_ms)
    return book, PAYMENT_REVERSED, f"{book.channel} reversed the captured payment"


# -- timers ---------------------------------------------------------------------------------


def deadline_ms(book: RefundBook, policy: RefundPolicy) -> int | None:
    """When the next PENDING refund's answer is overdue, or None."""
    sla = policy.sla_ms_for(book.channel)
    dues = [r.routed_at_ms + sla for r in book.refunds if r.state == PENDING]
    return min(dues) if dues else None


def stored_deadline_ms(data: Mapping[str, Any], policy: RefundPolicy) -> int | None:
    """deadline_ms of a book as stored (RefundBook.to_dict), without reading it whole: the
    stage asks on every write, where a full read (and its checks) is not needed."""
    sla = policy.sla_ms_for(data["channel"])
    dues = [r["routed_at_ms"] + sla for r in data["refunds"] if r["state"] == PENDING]
    return min(dues) if dues else None


def on_tick(book: RefundBook, now_ms: int, policy: RefundPolicy,
            ) -> tuple[RefundBook, list[RefundOutcome]]:
    """Declare MISSING_CONFIRMATION for every pending refund past the channel's SLA; its
    amount is refundable again."""
    sla = policy.sla_ms_for(book.channel)
    results = []
    for refund in book.refunds:
        if refund.state == PENDING and now_ms >= refund.routed_at_ms + sla:
            book = _decide(book, refund, MISSING_CONFIRMATION, now_ms, policy, None,
                           missing_declared=True)
            detail = f"no answer from {book.channel} by {refund.routed_at_ms + sla}"
            results.append(_outcome(book, book.get(refund.refund_id), None,
                                    MISSING_CONFIRMATION, now_ms, detail, refund.refund_id,
                                    book.payment_id))
    return book, results


def evict_at_ms(book: RefundBook, policy: RefundPolicy) -> int | None:
    """When the book may be forgotten: after the refund window, once nothing is pending and
    no dispute is open (a dispute may come long after the window and must find its hold)."""
    if any(r.state == PENDING for r in book.refunds) \
            or any(d.state == DISPUTE_OPEN for d in book.disputes):
        return None
    last = max([book.captured_at_ms + policy.max_age_ms_for(book.channel),
                *(r.decided_at_ms or 0 for r in book.refunds),
                *(d.closed_at_ms or 0 for d in book.disputes)])
    return last + policy.retain_ms


def source_id(book: RefundBook, refund: Refund) -> str:
    """The refund's ledger journal and settlement item id."""
    return refund_source_id(book.payment_id, refund.refund_id)
