"""Amounts as the API shows them: integer minor units, the currency and its exponent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from settlement.currencies import exponent, format_minor


def money(amount_minor: int | Decimal | None, currency: str | None) -> dict[str, Any] | None:
    """`{"amount_minor": 1234, "currency": "CNY", "exponent": 2}`; None when either is None."""
    if amount_minor is None or currency is None:
        return None
    return {"amount_minor": _minor(amount_minor), "currency": currency,
            "exponent": exponent(currency)}


def display(amount_minor: int | Decimal, currency: str) -> str:
    """For people: 1234 CNY -> "12.34 CNY" (integer arithmetic, exact)."""
    return format_minor(_minor(amount_minor), currency)


def _minor(amount: int | Decimal) -> int:
    """An int count of minor units; PostgreSQL's SUM of BIGINT arrives as an integral Decimal.

    A float, a bool or a fractional Decimal is a bug upstream, not an amount.
    """
    if isinstance(amount, bool) or not isinstance(amount, int | Decimal):
        raise TypeError(f"an amount is an int of minor units, not {type(amount).__name__}")
    if isinstance(amount, Decimal):
        if amount != amount.to_integral_value():
            raise ValueError(f"an amount in minor units has no fraction: {amount}")
        return int(amount)
    return amount
