"""Money: an exact integer count of one currency's minor unit; arithmetic never mixes currencies."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from settlement.currencies import InvalidAmount, exponent, format_minor
from settlement.errors import DomainError

__all__ = ["CurrencyMismatch", "InvalidAmount", "Money"]


class CurrencyMismatch(DomainError):
    """Two amounts in different currencies were added, subtracted or compared."""

    def __init__(self, left: str, right: str, operation: str) -> None:
        super().__init__(f"cannot {operation} {left} and {right}: currencies differ")
        self.left = left
        self.right = right
        self.operation = operation


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of `amount_minor` minor units of ISO 4217 `currency` (e.g. 12345 CNY = 123.45)."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True CNY is a bug upstream, never one fen.
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise InvalidAmount(
                f"amount_minor must be an int, got {type(self.amount_minor).__name__}"
            )
        exponent(self.currency)  # raises UnknownCurrency

    @classmethod
    def zero(cls, currency: str) -> Money:
        """The zero amount of `currency`."""
        return cls(0, currency)

    @classmethod
    def total(cls, amounts: Iterable[Money], currency: str) -> Money:
        """Sum of `amounts`, all in `currency`; the zero of `currency` when empty."""
        result = cls.zero(currency)
        for amount in amounts:
            result = result + amount
        return result

    def _same_currency(self, other: Money, operation: str) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(self.currency, other.currency, operation)

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount_minor), self.currency)

    # Ordering across currencies has no meaning without a rate, so it raises instead of
    # returning False: a silent False would let a limit check pass.
    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount_minor <= other.amount_minor

    def __gt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount_minor > other.amount_minor

    def __ge__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount_minor >= other.amount_minor

    def is_zero(self) -> bool:
        """True for zero minor units."""
        return self.amount_minor == 0

    def is_positive(self) -> bool:
        """True for more than zero minor units."""
        return self.amount_minor > 0

    def is_negative(self) -> bool:
        """True for less than zero minor units."""
        return self.amount_minor < 0

    def __str__(self) -> str:
        return format_minor(self.amount_minor, self.currency)
