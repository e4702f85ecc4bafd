"""Refund requests and the identities every part of the pipeline agrees on for them and for
disputes.

A refund is named by its payment and the merchant's refund id (the client's idempotency key,
unique within its payment). Its ledger journal, its settlement item and its database row
all carry one source id, `<payment_id>/<refund_id>`: a refund id never holds '/', so the
last '/' splits it back, whatever the payment id holds. A dispute is named the same way by
its payment and the channel adapter's dispute id (same pattern): `<payment_id>/<dispute_id>`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from settlement.errors import DomainError

REFUND_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SOURCE_SEP: Final = "/"

# Journal kinds of ledger v2: one journal per money event, unique by (kind, source id).
JOURNAL_PAYMENT: Final = "PAYMENT"  # source: payment_id
JOURNAL_REFUND: Final = "REFUND"  # source: refund_source_id(payment_id, refund_id)
JOURNAL_PAYOUT: Final = "PAYOUT"  # source: batch_id
# The channel took a captured payment back: the exact mirror of its PAYMENT journal.
JOURNAL_PAYMENT_REVERSAL: Final = "PAYMENT_REVERSAL"  # source: payment_id
# A succeeded refund came back to the channel: the exact mirror of its REFUND journal.
JOURNAL_REFUND_REVERSAL: Final = "REFUND_REVERSAL"  # source: refund_source_id(...)
# A dispute's money events (source: dispute_source_id(payment_id, dispute_id)): the amount
# held from the merchant when it opens, released when the merchant wins, taken (with the
# dispute fee) when the merchant loses.
JOURNAL_DISPUTE_OPEN: Final = "DISPUTE_OPEN"
JOURNAL_DISPUTE_WON: Final = "DISPUTE_WON"
JOURNAL_DISPUTE_LOST: Final = "DISPUTE_LOST"
DISPUTE_JOURNAL_KINDS: Final = frozenset({JOURNAL_DISPUTE_OPEN, JOURNAL_DISPUTE_WON,
                                          JOURNAL_DISPUTE_LOST})
JOURNAL_KINDS: Final = frozenset({JOURNAL_PAYMENT, JOURNAL_REFUND, JOURNAL_PAYOUT,
                                  JOURNAL_PAYMENT_REVERSAL, JOURNAL_REFUND_REVERSAL,
                                  *DISPUTE_JOURNAL_KINDS})

# Settlement item kinds (the Avro enum SettlementItemKind).
ITEM_PAYMENT: Final = "PAYMENT"
ITEM_REFUND: Final = "REFUND"
ITEM_PAYMENT_REVERSAL: Final = "PAYMENT_REVERSAL"  # item_id payment_id, all amounts negative
ITEM_REFUND_REVERSAL: Final = "REFUND_REVERSAL"  # item_id refund source id, amounts positive
# A dispute's items (item_id: its source id, fee always 0): the held amount taken from the
# open batch (negative), given back when the merchant wins (positive), the fee of a lost
# dispute (negative). A lost dispute's amount was taken by its hold already.
ITEM_DISPUTE_HOLD: Final = "DISPUTE_HOLD"
ITEM_DISPUTE_RELEASE: Final = "DISPUTE_RELEASE"
ITEM_DISPUTE_FEE: Final = "DISPUTE_FEE"
DISPUTE_ITEM_KINDS: Final = frozenset({ITEM_DISPUTE_HOLD, ITEM_DISPUTE_RELEASE,
                                       ITEM_DISPUTE_FEE})
ITEM_KINDS: Final = frozenset({ITEM_PAYMENT, ITEM_REFUND, ITEM_PAYMENT_REVERSAL,
                               ITEM_REFUND_REVERSAL, *DISPUTE_ITEM_KINDS})


class RefundIdError(DomainError, ValueError):
    """A refund id, dispute id or source id that breaks the id rules."""


def valid_refund_id(refund_id: object) -> bool:
    return isinstance(refund_id, str) and REFUND_ID_PATTERN.fullmatch(refund_id) is not None


def refund_source_id(payment_id: str, refund_id: str) -> str:
    """The refund's journal and settlement item id: `<payment_id>/<refund_id>`."""
    if not isinstance(payment_id, str) or not payment_id:
        raise RefundIdError(f"payment_id must be a non-empty string, got {payment_id!r}")
    if not valid_refund_id(refund_id):
        raise RefundIdError(f"refund_id {refund_id!r} must match {REFUND_ID_PATTERN.pattern}")
    return f"{payment_id}{SOURCE_SEP}{refund_id}"


def dispute_source_id(payment_id: str, dispute_id: str) -> str:
    """The dispute's journal and settlement item id: `<payment_id>/<dispute_id>` (a dispute id
    follows the refund id's pattern, so split_source_id reads it back the same way)."""
    if not isinstance(payment_id, str) or not payment_id:
        raise RefundIdError(f"payment_id must be a non-empty string, got {payment_id!r}")
    if not valid_refund_id(dispute_id):
        raise RefundIdError(f"dispute_id {dispute_id!r} must match {REFUND_ID_PATTERN.pattern}")
    return f"{payment_id}{SOURCE_SEP}{dispute_id}"


def split_source_id(source_id: str) -> tuple[str, str]:
    """(payment_id, refund_id or dispute_id) of a refund or dispute source id."""
    payment_id, sep, refund_id = source_id.rpartition(SOURCE_SEP)
    if not sep or not payment_id or not valid_refund_id(refund_id):
        raise RefundIdError(f"{source_id!r} is not <payment_id>/<refund_id>")
    return payment_id, refund_id


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A merchant's refund request as read from refunds.requested (types not yet checked:
    the decision rules judge them, and the signature covers them as sent)."""

    refund_id: str
    payment_id: str
    merchant_id: str
    amount_minor: int
    currency: str
    requested_at_ms: int
    reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    signature_key_id: str | None = None
    signature: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def body(self) -> tuple[object, ...]:
        """What makes two requests under one refund id the same request (idempotency):
        every signed field, not the signature (a re-signed copy is the same request)."""
        return (self.refund_id, self.payment_id, self.merchant_id, self.amount_minor,
                self.currency, self.requested_at_ms, tuple(sorted(self.metadata.items())))
