"""Channel-gateway simulator decisions: when and what a channel answers to a routed payment
or a routed refund.

Pure: every decision is a function of (seed, payment_id) (of (seed, payment_id/refund_id) for a
refund) through SHA-256, never of RNG state or arrival order, so the same seed gives the same
declines, faults and reversals on any replay.

Reversals: a share (`reversal_rate`) of the payments answered SUCCEEDED without a fault get a
second ChannelConfirmation `reversal_delay_ms` after the first, status REVERSED, for the full
amount, with its own confirmation_id (the channel took the captured payment back); a share
(`refund_reversal_rate`) of the refunds answered SUCCEEDED without a fault get a REVERSED
ChannelRefundConfirmation for the refund's amount (the refund came back to the channel). A
faulted answer (mismatch, duplicate, orphan, late) is never reversed, so the expected results
stay exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from producers.dispute_flow import DisputeSimConfig
from producers.errors import SimulatorConfigError
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
    REVERSED,
    SUCCEEDED,
)
from settlement.refund_model import refund_source_id

__all__ = [
    "DECLINE_CODES",
    "FAULTS",
    "FAULT_AMOUNT_MISMATCH",
    "FAULT_CURRENCY_MISMATCH",
    "FAULT_DUPLICATE",
    "FAULT_LATE",
    "FAULT_MISSING",
    "FAULT_NONE",
    "FAULT_ORPHAN",
    "ORPHAN_PREFIX",
    "PAYMENT_REVERSED",
    "REFUND_DECLINE_CODES",
    "REFUND_FAULTS",
    "REFUND_REVERSED",
    "REVERSED",
    "ChannelSimConfig",
    "Decision",
    "PlannedConfirmation",
    "confirmation_id",
    "decide",
    "decide_refund",
    "expected_refund_results",
    "expected_results",
    "plan_confirmations",
    "plan_refund_confirmations",
    "refund_confirmation_id",
    "refund_reversal_confirmation_id",
    "reversal_confirmation_id",
]

FAULT_NONE: Final = "none"
FAULT_AMOUNT_MISMATCH: Final = "amount_mismatch"
FAULT_CURRENCY_MISMATCH: Final = "currency_mismatch"
FAULT_MISSING: Final = "missing"
FAULT_DUPLICATE: Final = "duplicate"
FAULT_ORPHAN: Final = "orphan"
FAULT_LATE: Final = "late"
FAULTS: Final = (
    FAULT_AMOUNT_MISMATCH, FAULT_CURRENCY_MISMATCH, FAULT_MISSING, FAULT_DUPLICATE,
    FAULT_ORPHAN, FAULT_LATE,
)

# The faults a refund answer can carry (a currency mismatch or an orphan belong to payments).
REFUND_FAULTS: Final = (FAULT_AMOUNT_MISMATCH, FAULT_MISSING, FAULT_DUPLICATE, FAULT_LATE)

ORPHAN_PREFIX: Final = "orphan-"
REFUND_DECLINE_CODES: Final = (
    "ACCOUNT_CLOSED", "CARD_EXPIRED", "REFUND_WINDOW_CLOSED", "INSUFFICIENT_MERCHANT_BALANCE",
)
DECLINE_CODES: Final = (
    "INSUFFICIENT_FUNDS", "DO_NOT_HONOR", "RISK_REJECTED", "EXPIRED_CARD", "USER_CANCELLED",
    "LIMIT_EXCEEDED",
)
_TXN_PREFIX: Final = {"ALIPAY": "ALI", "WECHAT_PAY": "WX", "UNIONPAY": "UP", "CARD": "CRD"}
_MISMATCH_CURRENCIES: Final = ("CNY", "USD", "HKD", "EUR")
_U64: Final = 2**64


@dataclass(frozen=True, slots=True)
class ChannelSimConfig:
    """How the simulated channels behave; rates are probabilities per routed payment."""

    seed: int = 0
    latency_ms: int = 50
    decline_rate: float = 0.05
    fault_rate: float = 0.02
    faults: tuple[str, ...] = FAULTS
    late_ms: int = 20_000
    # The second answer of a duplicate comes this long after the first.
    duplicate_gap_ms: int = 500
    # Routed refunds: their own decline and fault rates and faults (from REFUND_FAULTS).
    refund_decline_rate: float = 0.02
    refund_fault_rate: float = 0.02
    refund_faults: tuple[str, ...] = REFUND_FAULTS
    # Reversals: shares of the clean SUCCEEDED payments and refunds the channel takes back
    # `reversal_delay_ms` after its answer (0 turns them off).
    reversal_rate: float = 0.005
    refund_reversal_rate: float = 0.01
    reversal_delay_ms: int = 3_000
    # Disputes (chargebacks) of captured card and UnionPay payments (producers.dispute_flow).
    disputes: DisputeSimConfig = field(default_factory=DisputeSimConfig)

    def __post_init__(self) -> None:
        for name in ("decline_rate", "fault_rate", "refund_decline_rate", "refund_fault_rate",
                     "reversal_rate", "refund_reversal_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise SimulatorConfigError(f"{name} must lie in [0, 1], got {rate}")
        for name in ("latency_ms", "late_ms", "duplicate_gap_ms", "reversal_delay_ms"):
            if getattr(self, name) < 0:
                raise SimulatorConfigError(f"{name} must be >= 0")
        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise SimulatorConfigError(
                f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}"
            )
        unknown = sorted(set(self.refund_faults) - set(REFUND_FAULTS))
        if unknown:
            raise SimulatorConfigError(
                f"unknown refund fault(s) {', '.join(unknown)}; known: {', '.join(REFUND_FAULTS)}"
            )
        # Canonical order, so "late,missing" and "missing,late" assign the same faults.
        object.__setattr__(self, "faults", tuple(f for f in FAULTS if f in self.faults))
        object.__setattr__(self, "refund_faults",
                           tuple(f for f in REFUND_FAULTS if f in self.refund_faults))


@dataclass(frozen=True, slots=True)
class PlannedConfirmation:
    """A ChannelConfirmation to publish at `due_ms`, and the fault it carries ("none" if clean)."""

    due_ms: int
    record: dict[str, Any]
    fault: str

    @property
    def key(self) -> str:
        return str(self.record["payment_id"])

    @property
    def is_refund(self) -> bool:
        return "refund_id" in self.record


@dataclass(frozen=True, slots=True)
class Decision:
    """What the channel does with one payment (or refund); `reversed`: it later sends a
    REVERSED answer (only for a clean SUCCEEDED one)."""

    fault: str
    declined: bool
    decline_code: str | None
    reversed: bool = False

    @property
    def captured(self) -> bool:
        """Answered SUCCEEDED without a fault and never reversed: a payment that may be
        disputed."""
        return self.fault == FAULT_NONE and not self.declined and not self.reversed


def _digest(seed: int, payment_id: str, salt: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{payment_id}\x1f{salt}".encode()).digest()


def _unit(seed: int, payment_id: str, salt: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, payment_id, salt)."""
    return int.from_bytes(_digest(seed, payment_id, salt)[:8], "big") / _U64


def _index(seed: int, payment_id: str, salt: str, size: int) -> int:
    return int.from_bytes(_digest(seed, payment_id, salt)[:8], "big") % size


def decide(payment_id: str, config: ChannelSimConfig) -> Decision:
    """The fault and decline for a payment: the same (seed, payment_id) always decide the same."""
    fault = FAULT_NONE
    if config.faults and _unit(config.seed, payment_id, "fault") < config.fault_rate:
        fault = config.faults[_index(config.seed, payment_id, "fault-kind", len(config.faults))]
    # A mismatch only means something on a capture, so those two are never declined.
    declinable = fault not in (FAULT_AMOUNT_MISMATCH, FAULT_CURRENCY_MISMATCH)
    declined = declinable and _unit(config.seed, payment_id, "decline") < config.decline_rate
    code = None
    if declined:
        code = DECLINE_CODES[_index(config.seed, payment_id, "decline-code", len(DECLINE_CODES))]
    reversed_ = (fault == FAULT_NONE and not declined and config.reversal_rate > 0
                 and _unit(config.seed, payment_id, "reversal") < config.reversal_rate)
    return Decision(fault, declined, code, reversed_)


def confirmation_id(payment_id: str, attempt: int) -> str:
    """Deterministic per (payment_id, attempt): a replayed answer keeps its id, so it dedupes."""
    digest = hashlib.sha256(f"{payment_id}\x1f{attempt}".encode()).hexdigest()
    return f"cnf-{digest[:32]}"


def reversal_confirmation_id(payment_id: str) -> str:
    """The id of a payment's REVERSED answer (at most one per payment), distinct from its
    answers' ids."""
    digest = hashlib.sha256(f"reversal\x1f{payment_id}".encode()).hexdigest()
    return f"cnf-{digest[:32]}"


def _txn_id(channel: str, payment_id: str, attempt: int) -> str:
    digest = hashlib.sha256(f"txn\x1f{payment_id}\x1f{attempt}".encode()).digest()
    number = int.from_bytes(digest[:8], "big") % 10**16
    return f"{_TXN_PREFIX.get(channel, channel[:3])}{number:016d}"


def _jittered_latency_ms(config: ChannelSimConfig, payment_id: str) -> int:
    # Between half and one and a half times the configured latency, fixed per payment.
    if config.latency_ms == 0:
        return 0
    spread = _index(config.seed, payment_id, "latency", config.latency_ms + 1)
    return config.latency_ms // 2 + spread


def _confirmation(
    routed: Mapping[str, Any], payment_id: str, attempt: int, due_ms: int, decision: Decision
) -> dict[str, Any]:
    channel = str(routed["channel"])
    return {
        "confirmation_id": confirmation_id(payment_id, attempt),
        "channel": channel,
        "channel_txn_id": _txn_id(channel, payment_id, attempt),
        "payment_id": payment_id,
        "status": FAILED if decision.declined else SUCCEEDED,
        "amount_minor": routed["amount_minor"],
        "currency": routed["currency"],
        "confirmed_at": due_ms,
        "decline_code": decision.decline_code,
    }


def plan_confirmations(
    routed: Mapping[str, Any], now_ms: int, config: ChannelSimConfig
) -> list[PlannedConfirmation]:
    """What the channel publishes for one RoutedPayment record received at `now_ms`.

    `routed` needs payment_id, channel (the Channel enum symbol), amount_minor and currency.
    Returns nothing for a missing confirmation, two for a duplicate (different ids) and an
    orphan (one for the payment, one for a payment_id that was never routed), two for a
    reversed payment (SUCCEEDED, then REVERSED `reversal_delay_ms` later), one otherwise.
    """
    payment_id = str(routed["payment_id"])
    decision = decide(payment_id, config)
    fault = decision.fault
    if fault == FAULT_MISSING:
        return []
    due_ms = now_ms + _jittered_latency_ms(config, payment_id)
    if fault == FAULT_LATE:
        due_ms = now_ms + config.late_ms
    first = _confirmation(routed, payment_id, 0, due_ms, decision)
    if fault == FAULT_AMOUNT_MISMATCH:
        amount = int(first["amount_minor"])
        # Off by a little (at most 1%, at least one minor unit), as a rounding bug would be.
        delta = 1 + _index(config.seed, payment_id, "delta", max(1, amount // 100))
        lower = _unit(config.seed, payment_id, "delta-sign") < 0.5 and amount - delta >= 1
        first["amount_minor"] = amount - delta if lower else amount + delta
    elif fault == FAULT_CURRENCY_MISMATCH:
        others = [c for c in _MISMATCH_CURRENCIES if c != first["currency"]]
        first["currency"] = others[_index(config.seed, payment_id, "currency", len(others))]
    planned = [PlannedConfirmation(due_ms, first, fault)]
    if fault == FAULT_DUPLICATE:
        second_ms = due_ms + config.duplicate_gap_ms
        second = _confirmation(routed, payment_id, 1, second_ms, decision)
        planned.append(PlannedConfirmation(second_ms, second, fault))
    elif fault == FAULT_ORPHAN:
        orphan_id = ORPHAN_PREFIX + payment_id
        clean = Decision(FAULT_NONE, False, None)
        orphan = _confirmation(routed, orphan_id, 0, due_ms, clean)
        planned.append(PlannedConfirmation(due_ms, orphan, fault))
    if decision.reversed:
        # The channel takes the whole capture back: same transaction, its own answer id.
        reversal_ms = due_ms + config.reversal_delay_ms
        reversal = {**first, "confirmation_id": reversal_confirmation_id(payment_id),
                    "status": REVERSED, "confirmed_at": reversal_ms}
        planned.append(PlannedConfirmation(reversal_ms, reversal, fault))
    return planned


def expected_results(decision: Decision) -> tuple[str, ...]:
    """The reconciliation results a payment with this decision should produce, in order.

    A late answer is expected after the reconciler's SLA (late_ms must exceed it): the
    payment goes MISSING first and the late answer then matches it (or is recorded as late).
    A reversed payment (a clean capture) is MATCHED, then PAYMENT_REVERSED.
    """
    answer = DECLINED if decision.declined else MATCHED
    if decision.reversed:
        return (MATCHED, PAYMENT_REVERSED)
    return {
        FAULT_NONE: (answer,),
        FAULT_AMOUNT_MISMATCH: (AMOUNT_MISMATCH,),
        FAULT_CURRENCY_MISMATCH: (CURRENCY_MISMATCH,),
        FAULT_MISSING: (MISSING_CONFIRMATION,),
        FAULT_DUPLICATE: (answer, DUPLICATE_CONFIRMATION),
        FAULT_ORPHAN: (answer, ORPHAN_CONFIRMATION),
        FAULT_LATE: (
            (MISSING_CONFIRMATION, MATCHED) if not decision.declined
            else (MISSING_CONFIRMATION, LATE_CONFIRMATION)
        ),
    }[decision.fault]



# -- refunds ------------------------------------------------------------------------------------


def decide_refund(payment_id: str, refund_id: str, config: ChannelSimConfig) -> Decision:
    """The fault and decline for a routed refund, fixed by (seed, payment_id/refund_id)."""
    name = refund_source_id(payment_id, refund_id)
    seed, faults = config.seed, config.refund_faults
    fault = FAULT_NONE
    if faults and _unit(seed, name, "refund-fault") < config.refund_fault_rate:
        fault = faults[_index(seed, name, "refund-fault-kind", len(faults))]
    declinable = fault != FAULT_AMOUNT_MISMATCH
    declined = declinable and _unit(seed, name, "refund-decline") < config.refund_decline_rate
    code = None
    if declined:
        code = REFUND_DECLINE_CODES[_index(seed, name, "refund-decline-code",
                                           len(REFUND_DECLINE_CODES))]
    reversed_ = (fault == FAULT_NONE and not declined and config.refund_reversal_rate > 0
                 and _unit(seed, name, "refund-reversal") < config.refund_reversal_rate)
    return Decision(fault, declined, code, reversed_)


def refund_confirmation_id(payment_id: str, refund_id: str, attempt: int) -> str:
    """Deterministic per (payment_id, refund_id, attempt): a replayed answer keeps its id."""
    digest = hashlib.sha256(f"refund\x1f{payment_id}\x1f{refund_id}\x1f{attempt}".encode())
    return f"rcf-{digest.hexdigest()[:32]}"


def refund_reversal_confirmation_id(payment_id: str, refund_id: str) -> str:
    """The id of a refund's REVERSED answer (at most one per refund)."""
    digest = hashlib.sha256(f"refund-reversal\x1f{payment_id}\x1f{refund_id}".encode())
    return f"rcf-{digest.hexdigest()[:32]}"


def _refund_txn_id(channel: str, name: str) -> str:
    digest = hashlib.sha256(f"refund-txn\x1f{name}".encode()).digest()
    number = int.from_bytes(digest[:8], "big") % 10**16
    return f"R{_TXN_PREFIX.get(channel, channel[:3])}{number:016d}"


def _refund_confirmation(
    routed: Mapping[str, Any], attempt: int, due_ms: int, decision: Decision
) -> dict[str, Any]:
    channel, payment_id, refund_id = (str(routed["channel"]), str(routed["payment_id"]),
                                      str(routed["refund_id"]))
    return {
        "confirmation_id": refund_confirmation_id(payment_id, refund_id, attempt),
        "channel": channel,
        "refund_id": refund_id,
        "payment_id": payment_id,
        "channel_refund_id": _refund_txn_id(channel, refund_source_id(payment_id, refund_id)),
        "status": FAILED if decision.declined else SUCCEEDED,
        "amount_minor": routed["amount_minor"],
        "currency": routed["currency"],
        "confirmed_at": due_ms,
        "decline_code": decision.decline_code,
    }


def plan_refund_confirmations(
    routed: Mapping[str, Any], now_ms: int, config: ChannelSimConfig
) -> list[PlannedConfirmation]:
    """What the channel publishes on channel.refund_confirmations for one RoutedRefund record
    received at `now_ms` (it needs refund_id, payment_id, channel, amount_minor, currency).

    Nothing for a missing answer; for a duplicate three records: the answer, the same answer
    redelivered (same confirmation_id, dropped downstream) and a second answer with its own
    confirmation_id (a DUPLICATE_CONFIRMATION); for a reversed refund two (SUCCEEDED, then
    REVERSED `reversal_delay_ms` later); one otherwise.
    """
    payment_id, refund_id = str(routed["payment_id"]), str(routed["refund_id"])
    name = refund_source_id(payment_id, refund_id)
    decision = decide_refund(payment_id, refund_id, config)
    fault = decision.fault
    if fault == FAULT_MISSING:
        return []
    due_ms = now_ms + _jittered_latency_ms(config, name)
    if fault == FAULT_LATE:
        due_ms = now_ms + config.late_ms
    first = _refund_confirmation(routed, 0, due_ms, decision)
    if fault == FAULT_AMOUNT_MISMATCH:
        amount = int(first["amount_minor"])
        delta = 1 + _index(config.seed, name, "refund-delta", max(1, amount // 100))
        lower = _unit(config.seed, name, "refund-delta-sign") < 0.5 and amount - delta >= 1
        first["amount_minor"] = amount - delta if lower else amount + delta
    planned = [PlannedConfirmation(due_ms, first, fault)]
    if fault == FAULT_DUPLICATE:
        gap = config.duplicate_gap_ms
        planned.append(PlannedConfirmation(due_ms + gap // 2, dict(first), fault))
        second = _refund_confirmation(routed, 1, due_ms + gap, decision)
        planned.append(PlannedConfirmation(due_ms + gap, second, fault))
    if decision.reversed:
        reversal_ms = due_ms + config.reversal_delay_ms
        reversal = {**first, "confirmation_id": refund_reversal_confirmation_id(payment_id,
                                                                                refund_id),
                    "status": REVERSED, "confirmed_at": reversal_ms}
        planned.append(PlannedConfirmation(reversal_ms, reversal, fault))
    return planned


def expected_refund_results(decision: Decision) -> tuple[str, ...]:
    """The refund results a routed refund with this decision should produce, in order (the
    redelivered copy of a duplicate is dropped, the second answer is a duplicate; a reversed
    refund is MATCHED, then REFUND_REVERSED)."""
    answer = DECLINED if decision.declined else MATCHED
    if decision.reversed:
        return (MATCHED, REFUND_REVERSED)
    return {
        FAULT_NONE: (answer,),
        FAULT_AMOUNT_MISMATCH: (AMOUNT_MISMATCH,),
        FAULT_MISSING: (MISSING_CONFIRMATION,),
        FAULT_DUPLICATE: (answer, DUPLICATE_CONFIRMATION),
        FAULT_LATE: (
            (MISSING_CONFIRMATION, MATCHED) if not decision.declined
            else (MISSING_CONFIRMATION, LATE_CONFIRMATION)
        ),
    }[decision.fault]
