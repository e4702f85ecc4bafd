"""Amounts: integer minor units with the currency and its exponent; exact display."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.money import display, money
from settlement.currencies import UnknownCurrency


@pytest.mark.parametrize(("amount", "currency", "exponent"), [
    (1234, "CNY", 2), (500, "JPY", 0), (1001, "KWD", 3), (-7, "USD", 2), (0, "CNY", 2)])
def test_money_carries_the_currency_and_its_exponent(amount: int, currency: str,
                                                     exponent: int) -> None:
    assert money(amount, currency) == {"amount_minor": amount, "currency": currency,
                                       "exponent": exponent}


def test_a_sum_from_postgresql_arrives_as_an_integral_decimal_and_leaves_as_an_int() -> None:
    out = money(Decimal("92233720368547758070"), "CNY")
    assert out is not None
    assert out["amount_minor"] == 92233720368547758070
    assert type(out["amount_minor"]) is int


@pytest.mark.parametrize("bad", [12.5, 12.0, True, "12", Decimal("1.5")])
def test_anything_but_whole_minor_units_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        money(bad, "CNY")  # type: ignore[arg-type]


def test_none_amount_or_currency_is_none() -> None:
    assert money(None, "CNY") is None
    assert money(5, None) is None


def test_unknown_currency_is_an_error_not_a_guess() -> None:
    with pytest.raises(UnknownCurrency):
        money(5, "XXX")


@pytest.mark.parametrize(("amount", "currency", "text"), [
    (1234, "CNY", "12.34 CNY"), (5, "CNY", "0.05 CNY"), (-1234, "CNY", "-12.34 CNY"),
    (500, "JPY", "500 JPY"), (1001, "KWD", "1.001 KWD"), (Decimal(250), "USD", "2.50 USD")])
def test_display_is_exact(amount: int, currency: str, text: str) -> None:
    assert display(amount, currency) == text


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_display_round_trips_through_integers(amount: int) -> None:
    text = display(amount, "KWD").removesuffix(" KWD")
    negative = text.startswith("-")
    major, minor = text.lstrip("-").split(".")
    assert len(minor) == 3
    value = int(major) * 1000 + int(minor)
    assert (-value if negative else value) == amount
