"""Unit tests for settlement.money: exact amounts that never mix currencies."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.currencies import CURRENCY_EXPONENTS, InvalidAmount, UnknownCurrency
from settlement.errors import DomainError
from settlement.money import CurrencyMismatch, Money

KNOWN = sorted(CURRENCY_EXPONENTS)
currencies = st.sampled_from(KNOWN)


def money_in(currency: str) -> st.SearchStrategy[Money]:
    return st.integers().map(lambda amount: Money(amount, currency))


def test_construction_keeps_amount_and_currency() -> None:
    amount = Money(12345, "CNY")
    assert (amount.amount_minor, amount.currency) == (12345, "CNY")
    assert str(amount) == "123.45 CNY"
    assert str(Money(-500, "JPY")) == "-500 JPY"


@pytest.mark.parametrize("amount", [True, False, 1.0, 0.5, "100", None, b"1"])
def test_non_int_amounts_are_refused(amount: object) -> None:
    with pytest.raises(InvalidAmount) as info:
        Money(amount, "CNY")  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, DomainError)


@pytest.mark.parametrize("currency", ["XAU", "cny", "", None])
def test_unknown_currencies_are_refused(currency: object) -> None:
    with pytest.raises(UnknownCurrency):
        Money(1, currency)  # type: ignore[arg-type]


def test_money_is_frozen_slotted_and_hashable() -> None:
    amount = Money(1, "CNY")
    with pytest.raises(dataclasses.FrozenInstanceError):
        amount.amount_minor = 2  # type: ignore[misc]
    assert not hasattr(amount, "__dict__")
    assert {amount, Money(1, "CNY")} == {amount}


def test_same_currency_arithmetic() -> None:
    assert Money(150, "CNY") + Money(50, "CNY") == Money(200, "CNY")
    assert Money(150, "CNY") - Money(200, "CNY") == Money(-50, "CNY")
    assert -Money(5, "KWD") == Money(-5, "KWD")
    assert abs(Money(-5, "KWD")) == Money(5, "KWD")
    assert Money.total([Money(1, "JPY"), Money(2, "JPY")], "JPY") == Money(3, "JPY")
    assert Money.total([], "JPY") == Money.zero("JPY")


@pytest.mark.parametrize("operation", ["add", "subtract"])
def test_arithmetic_across_currencies_raises(operation: str) -> None:
    cny, usd = Money(1, "CNY"), Money(1, "USD")
    with pytest.raises(CurrencyMismatch) as info:
        _ = cny + usd if operation == "add" else cny - usd
    assert (info.value.left, info.value.right, info.value.operation) == ("CNY", "USD", operation)


def test_total_refuses_a_foreign_amount() -> None:
    with pytest.raises(CurrencyMismatch):
        Money.total([Money(1, "CNY"), Money(1, "USD")], "CNY")


def test_arithmetic_with_plain_numbers_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _ = Money(1, "CNY") + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = Money(1, "CNY") - 1.0  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = Money(1, "CNY") < 2  # type: ignore[operator]


def test_comparisons_within_a_currency() -> None:
    small, large = Money(1, "CNY"), Money(2, "CNY")
    assert small < large and small <= large and large > small and large >= small
    assert small <= Money(1, "CNY") and small >= Money(1, "CNY")
    assert small != large


@pytest.mark.parametrize("compare", ["<", "<=", ">", ">="])
def test_ordering_across_currencies_raises(compare: str) -> None:
    cny, usd = Money(1, "CNY"), Money(1, "USD")
    operations = {
        "<": lambda: cny < usd,
        "<=": lambda: cny <= usd,
        ">": lambda: cny > usd,
        ">=": lambda: cny >= usd,
    }
    with pytest.raises(CurrencyMismatch):
        operations[compare]()


def test_equality_across_currencies_is_false_not_an_error() -> None:
    assert Money(1, "CNY") != Money(1, "USD")
    assert Money(0, "CNY") != 0


def test_sign_predicates() -> None:
    assert Money(0, "CNY").is_zero()
    assert Money(1, "CNY").is_positive() and not Money(1, "CNY").is_negative()
    assert Money(-1, "CNY").is_negative() and not Money(-1, "CNY").is_positive()


@given(data=st.data(), currency=currencies)
def test_addition_is_associative_and_commutative(data: st.DataObject, currency: str) -> None:
    a, b, c = (data.draw(money_in(currency)) for _ in range(3))
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert (a + b).currency == currency
    assert (a + b) - b == a


@given(a=st.integers(), b=st.integers(), left=currencies, right=currencies)
def test_arithmetic_never_mixes_currencies(a: int, b: int, left: str, right: str) -> None:
    x, y = Money(a, left), Money(b, right)
    if left == right:
        assert (x + y).amount_minor == a + b
        assert (x < y) == (a < b)
    else:
        with pytest.raises(CurrencyMismatch):
            _ = x + y
        with pytest.raises(CurrencyMismatch):
            _ = x - y
        with pytest.raises(CurrencyMismatch):
            _ = x < y


@given(amounts=st.lists(st.integers(), max_size=20), currency=currencies)
def test_total_matches_integer_sum(amounts: list[int], currency: str) -> None:
    total = Money.total((Money(amount, currency) for amount in amounts), currency)
    assert total == Money(sum(amounts), currency)
