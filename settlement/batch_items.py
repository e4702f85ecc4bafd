"""Settlement items (a matched payment, a succeeded refund, the channel's reversal of either,
and a dispute's hold, release and fee, netted together) and the payout split of a closed batch
with the merchant's carried negative balance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from settlement.errors import DomainError
from settlement.fees import FeeSchedule
from settlement.refund_model import (
    DISPUTE_ITEM_KINDS,
    ITEM_DISPUTE_FEE,
    ITEM_DISPUTE_HOLD,
    ITEM_DISPUTE_RELEASE,
    ITEM_KINDS,
    ITEM_PAYMENT,
    ITEM_PAYMENT_REVERSAL,
    ITEM_REFUND,
    ITEM_REFUND_REVERSAL,
    RefundIdError,
    dispute_source_id,
    refund_source_id,
    split_source_id,
)

# The kinds that add to what the merchant is owed (gross > 0, fee >= 0, net >= 0) and those
# that take from it (gross < 0, fee <= 0, net <= 0): a reversal is its original's mirror, a
# released dispute gives back what its hold took.
CREDIT_KINDS: Final = frozenset({ITEM_PAYMENT, ITEM_REFUND_REVERSAL, ITEM_DISPUTE_RELEASE})
DEBIT_KINDS: Final = frozenset({ITEM_REFUND, ITEM_PAYMENT_REVERSAL, ITEM_DISPUTE_HOLD,
                                ITEM_DISPUTE_FEE})
# The kinds named by their payment_id; the others by `<payment_id>/<refund_id>` or
# `<payment_id>/<dispute_id>`.
PAYMENT_ID_KINDS: Final = frozenset({ITEM_PAYMENT, ITEM_PAYMENT_REVERSAL})


class BatchError(DomainError, ValueError):
    """A batch or batch item broke the batch rules (a caller bug)."""


def require_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BatchError(f"{name} must be an int, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One money event in a batch, with the same split the ledger posted.

    A PAYMENT (item_id = payment_id) adds gross > 0, fee >= 0, net >= 0; a REFUND (item_id =
    `<payment_id>/<refund_id>`, payment_id = the refunded payment) takes them back: gross < 0,
    fee <= 0, net <= 0. A reversal mirrors its original: a PAYMENT_REVERSAL (item_id =
    payment_id) is negative like a refund, a REFUND_REVERSAL (item_id = the refund's
    `<payment_id>/<refund_id>`) positive like a payment. A dispute's items (item_id =
    `<payment_id>/<dispute_id>`, fee 0): DISPUTE_HOLD and DISPUTE_FEE negative,
    DISPUTE_RELEASE positive. Always gross = fee + net. The identity is (kind, item_id): a
    refund's id can never be mistaken for a payment's, nor a reversal for what it reverses,
    whatever characters payment ids hold.
    An item_id left empty is the payment_id (items written before kinds existed).
    """

    payment_id: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    matched_at_ms: int
    kind: str = ITEM_PAYMENT
    item_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.payment_id, str) or not self.payment_id:
            raise BatchError(f"payment_id must be a non-empty string, got {self.payment_id!r}")
        if self.kind not in ITEM_KINDS:
            raise BatchError(f"item {self.payment_id}: unknown kind {self.kind!r}")
        if self.item_id == "" and self.kind == ITEM_PAYMENT:
            object.__setattr__(self, "item_id", self.payment_id)
        if not isinstance(self.item_id, str) or not self.item_id:
            raise BatchError(f"item of {self.payment_id}: item_id must be a non-empty string")
        gross = require_int("gross_minor", self.gross_minor)
        fee = require_int("fee_minor", self.fee_minor)
        net = require_int("net_minor", self.net_minor)
        require_int("matched_at_ms", self.matched_at_ms)
        if self.kind in PAYMENT_ID_KINDS:
            if self.item_id != self.payment_id:
                raise BatchError(f"{self.kind} item {self.item_id!r} is not its payment_id "
                                 f"{self.payment_id!r}")
        else:
            try:
                refunded, _refund_id = split_source_id(self.item_id)
            except RefundIdError as exc:
                raise BatchError(f"{self.kind} item: {exc}") from exc
            if refunded != self.payment_id:
                raise BatchError(f"{self.kind} item {self.item_id!r} is not of payment "
                                 f"{self.payment_id!r}")
        if self.kind in CREDIT_KINDS:
            signs_ok = gross > 0 and fee >= 0 and net >= 0
            rule = "gross > 0, fee >= 0, net >= 0"
        else:
            signs_ok = gross < 0 and fee <= 0 and net <= 0
            rule = "gross < 0, fee <= 0, net <= 0"
        if self.kind in DISPUTE_ITEM_KINDS:
            signs_ok = signs_ok and fee == 0  # a dispute's amount and fee carry no fee split
            rule += ", fee == 0"
        if not signs_ok or fee + net != gross:
            raise BatchError(
                f"{self.kind} item {self.item_id}: need {rule} and fee + net == gross; "
                f"got gross={gross} fee={fee} net={net}"
            )

    @property
    def identity(self) -> tuple[str, str]:
        """What makes two items the same item: (kind, item_id)."""
        return (self.kind, self.item_id)

    @classmethod
    def for_match(
        cls,
        payment_id: str,
        channel: str,
        gross_minor: int,
        matched_at_ms: int,
        fees: FeeSchedule,
    ) -> BatchItem:
        """Split with the schedule the ledger uses, so batch nets equal the merchant payable."""
        fee = fees.fee_for(channel, gross_minor)
        return cls(payment_id, gross_minor, fee, gross_minor - fee, matched_at_ms)

    @classmethod
    def for_refund(
        cls,
        payment_id: str,
        refund_id: str,
        amount_minor: int,
        fee_returned_minor: int,
        net_minor: int,
        matched_at_ms: int,
    ) -> BatchItem:
        """The negative item of a succeeded refund of R = amount_minor, of which
        f = fee_returned_minor is fee given back: gross -R, fee -f, net -(R - f).

        The split is the one the reconcile stage decided and the ledger posted; it is checked
        here (R > 0, 0 <= f, net == R - f), never recomputed.
        """
        _check_split(f"refund {payment_id}/{refund_id}", amount_minor, fee_returned_minor,
                     net_minor)
        return cls(payment_id, -amount_minor, -fee_returned_minor, -net_minor, matched_at_ms,
                   ITEM_REFUND, _refund_item_id(payment_id, refund_id))

    @classmethod
    def for_payment_reversal(
        cls,
        payment_id: str,
        gross_minor: int,
        fee_minor: int,
        net_minor: int,
        matched_at_ms: int,
    ) -> BatchItem:
        """The negative item of a captured payment of G = gross_minor the channel took back,
        F = fee_minor of it fee: gross -G, fee -F, net -(G - F), the mirror of its PAYMENT.

        The split is the one published with the reversal (the payment's own); it is checked
        here (G > 0, 0 <= F, net == G - F), never recomputed.
        """
        _check_split(f"reversal of payment {payment_id}", gross_minor, fee_minor, net_minor)
        return cls(payment_id, -gross_minor, -fee_minor, -net_minor, matched_at_ms,
                   ITEM_PAYMENT_REVERSAL, payment_id)

    @classmethod
    def for_refund_reversal(
        cls,
        payment_id: str,
        refund_id: str,
        amount_minor: int,
        fee_returned_minor: int,
        net_minor: int,
        matched_at_ms: int,
    ) -> BatchItem:
        """The positive item of a succeeded refund of R = amount_minor (f = fee_returned_minor
        of it fee given back) that came back to the channel: gross +R, fee +f, net +(R - f),
        the mirror of its REFUND item. The published split is checked, never recomputed."""
        _check_split(f"reversal of refund {payment_id}/{refund_id}", amount_minor,
                     fee_returned_minor, net_minor)
        return cls(payment_id, amount_minor, fee_returned_minor, net_minor, matched_at_ms,
                   ITEM_REFUND_REVERSAL, _refund_item_id(payment_id, refund_id))

    @classmethod
    def for_dispute_hold(cls, payment_id: str, dispute_id: str, amount_minor: int,
                         matched_at_ms: int) -> BatchItem:
        """The negative item of an opened dispute of D = amount_minor: gross -D, fee 0, net -D
        (held from the merchant's payout while the dispute is open)."""
        amount = _dispute_amount(f"hold of dispute {payment_id}/{dispute_id}", amount_minor)
        return cls(payment_id, -amount, 0, -amount, matched_at_ms, ITEM_DISPUTE_HOLD,
                   _dispute_item_id(payment_id, dispute_id))

    @classmethod
    def for_dispute_release(cls, payment_id: str, dispute_id: str, amount_minor: int,
                            matched_at_ms: int) -> BatchItem:
        """The positive item of a won dispute of D = amount_minor: gross +D, fee 0, net +D,
        the mirror of its hold."""
        amount = _dispute_amount(f"release of dispute {payment_id}/{dispute_id}",
                                 amount_minor)
        return cls(payment_id, amount, 0, amount, matched_at_ms, ITEM_DISPUTE_RELEASE,
                   _dispute_item_id(payment_id, dispute_id))

    @classmethod
    def for_dispute_fee(cls, payment_id: str, dispute_id: str, fee_minor: int,
                        matched_at_ms: int) -> BatchItem:
        """The negative item of a lost dispute's fee X = fee_minor > 0: gross -X, fee 0,
        net -X (its amount was taken by the hold; a lost dispute without fee has no item)."""
        fee = _dispute_amount(f"fee of dispute {payment_id}/{dispute_id}", fee_minor)
        return cls(payment_id, -fee, 0, -fee, matched_at_ms, ITEM_DISPUTE_FEE,
                   _dispute_item_id(payment_id, dispute_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "gross_minor": self.gross_minor,
            "fee_minor": self.fee_minor,
            "net_minor": self.net_minor,
            "matched_at_ms": self.matched_at_ms,
            "kind": self.kind,
            "item_id": self.item_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchItem:
        """An item back from to_dict; one written before kinds existed reads as a PAYMENT."""
        known = {"payment_id", "gross_minor", "fee_minor", "net_minor", "matched_at_ms",
                 "kind", "item_id"}
        unknown = set(data) - known
        if unknown:
            raise BatchError(f"unknown item fields {sorted(unknown)}")
        fields = dict(data)
        if fields.get("item_id") is None:
            fields.pop("item_id", None)
        return cls(**fields)


def _check_split(what: str, gross_minor: int, fee_minor: int, net_minor: int) -> None:
    """A published split of a positive amount: gross > 0, 0 <= fee and net == gross - fee
    (so net >= 0 too: no fee beyond the amount)."""
    for name, value in (("gross", gross_minor), ("fee", fee_minor), ("net", net_minor)):
        require_int(f"{what}: {name}", value)
    if gross_minor <= 0 or fee_minor < 0 or net_minor < 0 or net_minor != gross_minor - fee_minor:
        raise BatchError(
            f"{what}: need amount > 0, 0 <= fee and net == amount - fee >= 0; got "
            f"amount={gross_minor} fee={fee_minor} net={net_minor}")


def _dispute_amount(what: str, amount_minor: int) -> int:
    if require_int(f"{what}: amount", amount_minor) <= 0:
        raise BatchError(f"{what}: need an amount > 0, got {amount_minor}")
    return amount_minor


def _dispute_item_id(payment_id: str, dispute_id: str) -> str:
    try:
        return dispute_source_id(payment_id, dispute_id)
    except RefundIdError as exc:
        raise BatchError(str(exc)) from exc


def _refund_item_id(payment_id: str, refund_id: str) -> str:
    try:
        return refund_source_id(payment_id, refund_id)
    except RefundIdError as exc:
        raise BatchError(str(exc)) from exc


def payout_split(net_minor: int, carried_in_minor: int) -> tuple[int, int]:
    """(payout_minor, carried_out_minor) of a batch of this net with this carried balance.

    The merchant is paid what is positive of net + carried_in; a negative rest is carried
    into its next batch. So payout >= 0 >= carried_out and payout + carried_out is always
    net + carried_in: nothing is paid twice and no debt is forgotten.
    """
    require_int("net_minor", net_minor)
    require_int("carried_in_minor", carried_in_minor)
    if carried_in_minor > 0:
        raise BatchError(f"carried_in_minor must be <= 0, got {carried_in_minor}")
    balance = net_minor + carried_in_minor
    return max(balance, 0), min(balance, 0)
