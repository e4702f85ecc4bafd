"""Ledger sink row builders for refund results (pure): refunds, REFUND journals, exceptions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from settlement.postings_v2 import KindJournal, refund_journal, refund_reversal_journal
from settlement.reconciliation import (
    MATCHED,
    MATCHED_MANUAL,
    OUTCOMES,
    PAYMENT_REVERSED,
    REFUND_REVERSED,
    TERMINAL_OUTCOMES,
)
from settlement.refund_model import valid_refund_id
from sinks import fields as f
from sinks.errors import InvalidRecord


class RefundRow(NamedTuple):
    """A refunds row: the refund's terminal outcome; columns in COPY order (REFUND_TYPES)."""

    payment_id: str
    refund_id: str
    merchant_id: str | None
    channel: str | None
    order_id: str | None
    amount_minor: int | None
    currency: str | None
    state: str
    late: bool
    result_id: str
    fee_returned_minor: int | None
    net_minor: int | None
    requested_at: datetime | None
    decided_at: datetime


class RefundExceptionRow(NamedTuple):
    """A refund_exceptions row (every non-MATCHED refund result); columns in COPY order."""

    result_id: str
    payment_id: str
    refund_id: str
    merchant_id: str | None
    channel: str | None
    outcome: str
    amount_minor: int | None
    currency: str | None
    confirmed_amount_minor: int | None
    confirmed_currency: str | None
    confirmation_id: str | None
    channel_refund_id: str | None
    detail: str
    decided_at: datetime


class Reversal(NamedTuple):
    """A PAYMENT_REVERSED or REFUND_REVERSED result: the mirror journal it would post, to be
    checked against the posted original before it is, and the row it marks REVERSED."""

    result_id: str
    payment_id: str
    refund_id: str | None  # None: the payment itself is reversed
    journal: KindJournal
    decided_at: datetime


_T, _B, _BOOL, _TS = "text", "int8", "bool", "timestamptz"
REFUND_TYPES = (_T, _T, _T, _T, _T, _B, _T, _T, _BOOL, _T, _B, _B, _TS, _TS)
REFUND_EXCEPTION_TYPES = (_T, _T, _T, _T, _T, _T, _B, _T, _B, _T, _T, _T, _T, _TS)


def _matched(result: Mapping[str, Any], payment_id: str, refund_id: str,
             merchant_id: str | None, channel: str | None) -> KindJournal:
    if merchant_id is None or channel is None:
        raise InvalidRecord("a MATCHED refund result needs merchant_id and channel to post")
    amount = f.amount(result, "amount_minor")
    currency = f.currency(result, "currency")
    if amount is None or currency is None:
        raise InvalidRecord("a MATCHED refund result needs amount_minor and currency")
    confirmed = (f.amount(result, "confirmed_amount_minor"),
                 f.currency(result, "confirmed_currency"))
    if confirmed != (None, None) and confirmed != (amount, currency):
        raise InvalidRecord(f"MATCHED refund with requested {(amount, currency)} but "
                            f"confirmed {confirmed}")
    fee, net = f.amount(result, "fee_returned_minor"), f.amount(result, "net_minor")
    if fee is None or net is None:
        raise InvalidRecord("a MATCHED refund result needs fee_returned_minor and net_minor")
    if amount <= 0 or fee < 0 or net < 0 or amount != net + fee:
        raise InvalidRecord(f"refund {payment_id}/{refund_id}: need R > 0, f >= 0, net >= 0 "
                            f"and R = net + f; got R={amount} f={fee} net={net}")
    # Built with its checks again (balanced, R = net + f, debits = R).
    return refund_journal(payment_id, refund_id, merchant_id, channel, amount, fee, net,
                          currency)


def _refund_reversal(result: Mapping[str, Any], result_id: str, payment_id: str,
                     refund_id: str, merchant_id: str | None, channel: str | None,
                     decided_at: datetime) -> Reversal:
    """A REFUND_REVERSED result: the mirror of the refund's journal, from the split the
    reconciler published (R = amount_minor, f = fee_returned_minor, net = R - f)."""
    if merchant_id is None or channel is None:
        raise InvalidRecord("a REFUND_REVERSED result needs merchant_id and channel to post")
    amount = f.amount(result, "amount_minor")
    currency = f.currency(result, "currency")
    fee, net = f.amount(result, "fee_returned_minor"), f.amount(result, "net_minor")
    if amount is None or currency is None or fee is None or net is None:
        raise InvalidRecord("a REFUND_REVERSED result needs amount_minor, currency, "
                            "fee_returned_minor and net_minor")
    confirmed = (f.amount(result, "confirmed_amount_minor"),
                 f.currency(result, "confirmed_currency"))
    if confirmed != (None, None) and confirmed != (amount, currency):
        raise InvalidRecord(f"REFUND_REVERSED of {(amount, currency)} but the channel "
                            f"reversed {confirmed}")
    if amount <= 0 or fee < 0 or net < 0 or net != amount - fee:
        raise InvalidRecord(f"REFUND_REVERSED of refund {payment_id}/{refund_id}: need R > 0, "
                            f"f >= 0 and net = R - f >= 0; got R={amount} f={fee} net={net}")
    journal = refund_reversal_journal(payment_id, refund_id, merchant_id, channel, amount, fee,
                                      net, currency)
    return Reversal(result_id, payment_id, refund_id, journal, decided_at)


def refund_rows(result: Mapping[str, Any]
                ) -> tuple[RefundRow | None, KindJournal | None, RefundExceptionRow | None,
                           Reversal | None]:
    """The rows of one decoded RefundResult; InvalidRecord (or a domain error) if it is bad.

    A terminal result is a refunds row; MATCHED also a REFUND journal; REFUND_REVERSED a
    Reversal (its mirror journal, posted once checked against the REFUND journal); every other
    outcome (terminal or follow-up) a refund_exceptions row.
    """
    result_id = f.required_text(result, "result_id")
    payment_id = f.required_text(result, "payment_id")
    refund_id = f.required_text(result, "refund_id")
    if not valid_refund_id(refund_id):
        raise InvalidRecord(f"refund_id {refund_id!r} is not a valid refund id")
    outcome = result.get("outcome")
    if outcome not in OUTCOMES:
        raise InvalidRecord(f"unknown outcome {outcome!r}")
    terminal = result.get("terminal")
    if terminal is not (outcome in TERMINAL_OUTCOMES):
        raise InvalidRecord(f"{outcome} with terminal={terminal!r}")
    late = result.get("late", False)
    if not isinstance(late, bool):
        raise InvalidRecord(f"late must be a boolean, got {late!r}")
    channel = f.channel(result)
    merchant_id = f.text(result, "merchant_id", required=False)
    order_id = f.text(result, "order_id", required=False)
    amount = f.amount(result, "amount_minor")
    currency = f.currency(result, "currency")
    decided_at = f.timestamp(result, "decided_at")
    assert decided_at is not None
    requested_at = f.timestamp(result, "requested_at", required=False)
    detail = f.detail(result)

    journal = exception = row = None
    fee = net = None
    if outcome in (PAYMENT_REVERSED, MATCHED_MANUAL):
        raise InvalidRecord(f"{outcome} is a payment's outcome, not a refund's")
    if outcome == REFUND_REVERSED:
        reversal = _refund_reversal(result, result_id, payment_id, refund_id, merchant_id,
                                    channel, decided_at)
        return None, None, None, reversal
    if outcome == MATCHED:
        journal = _matched(result, payment_id, refund_id, merchant_id, channel)
        fee, net = journal.fee_minor, journal.net_minor
    else:
        exception = RefundExceptionRow(
            result_id, payment_id, refund_id, merchant_id, channel, outcome, amount, currency,
            f.amount(result, "confirmed_amount_minor"), f.currency(result, "confirmed_currency"),
            f.text(result, "confirmation_id", required=False),
            f.text(result, "channel_refund_id", required=False), detail, decided_at,
        )
    if terminal:
        if amount is not None and amount <= 0:
            raise InvalidRecord(f"amount_minor must be > 0, got {amount}")
        row = RefundRow(payment_id, refund_id, merchant_id, channel, order_id, amount, currency,
                        outcome, late, result_id, fee, net, requested_at, decided_at)
    return row, journal, exception, None
