"""Unit tests for settlement.currencies: the ISO 4217 table and integer-only formatting."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.currencies import (
    CURRENCY_EXPONENTS,
    InvalidAmount,
    UnknownCurrency,
    exponent,
    format_minor,
    is_known,
    minor_units_per_major,
)
from settlement.errors import DomainError, SettleError

KNOWN = sorted(CURRENCY_EXPONENTS)


def parse_formatted(text: str) -> tuple[int, str]:
    """Reference parser for format_minor's output: "-123.45 CNY" -> (-12345, "CNY")."""
    number, currency = text.split(" ")
    negative = number.startswith("-")
    digits = number.removeprefix("-")
    major, _, minor = digits.partition(".")
    assert len(minor) == CURRENCY_EXPONENTS[currency]
    magnitude = int(major + minor)
    return (-magnitude if negative else magnitude), currency


@pytest.mark.parametrize(
    ("code", "places"),
    [("JPY", 0), ("KRW", 0), ("VND", 0), ("CLP", 0), ("CNY", 2), ("USD", 2), ("EUR", 2)]
    + [(code, 3) for code in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")]
    + [("CLF", 4)],
)
def test_exponents_follow_iso_4217(code: str, places: int) -> None:
    assert exponent(code) == places
    assert minor_units_per_major(code) == 10**places


def test_table_holds_only_well_formed_codes_with_minor_units() -> None:
    assert len(CURRENCY_EXPONENTS) > 150
    for code, places in CURRENCY_EXPONENTS.items():
        assert re.fullmatch(r"[A-Z]{3}", code)
        assert places in {0, 2, 3, 4}


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XXX", "XTS", "HRK", "VEF"])
def test_codes_without_minor_unit_or_withdrawn_are_absent(code: str) -> None:
    assert not is_known(code)


def test_table_is_immutable() -> None:
    with pytest.raises(TypeError):
        CURRENCY_EXPONENTS["ABC"] = 2  # type: ignore[index]


@pytest.mark.parametrize("code", ["cny", "CN", "CNYY", "", " CNY", None, 156, b"CNY"])
def test_unknown_codes_are_refused_with_a_typed_error(code: object) -> None:
    assert not is_known(code)
    with pytest.raises(UnknownCurrency) as info:
        exponent(code)  # type: ignore[arg-type]
    assert isinstance(info.value, DomainError)
    assert isinstance(info.value, SettleError)
    assert info.value.code == code


def test_unknown_currency_message_is_bounded() -> None:
    with pytest.raises(UnknownCurrency) as info:
        exponent("Z" * 10_000)
    assert len(str(info.value)) < 80


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (12345, "CNY", "123.45 CNY"),
        (500, "JPY", "500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (5, "CNY", "0.05 CNY"),
        (0, "CNY", "0.00 CNY"),
        (0, "JPY", "0 JPY"),
        (-12345, "CNY", "-123.45 CNY"),
        (-5, "CNY", "-0.05 CNY"),
        (-500, "JPY", "-500 JPY"),
        (-1, "KWD", "-0.001 KWD"),
        (12345, "CLF", "1.2345 CLF"),
        (10**30, "USD", "10000000000000000000000000000.00 USD"),
    ],
)
def test_format_minor_examples(amount: int, currency: str, text: str) -> None:
    assert format_minor(amount, currency) == text


@pytest.mark.parametrize("amount", [True, False, 1.5, 100.0, "100", None])
def test_format_minor_refuses_non_int_amounts(amount: object) -> None:
    with pytest.raises(InvalidAmount):
        format_minor(amount, "CNY")  # type: ignore[arg-type]


def test_format_minor_refuses_unknown_currency() -> None:
    with pytest.raises(UnknownCurrency):
        format_minor(100, "XAU")


@given(amount=st.integers(), currency=st.sampled_from(KNOWN))
def test_format_minor_round_trips_through_a_simple_parser(amount: int, currency: str) -> None:
    assert parse_formatted(format_minor(amount, currency)) == (amount, currency)


@given(amount=st.integers(min_value=1), currency=st.sampled_from(KNOWN))
def test_negation_only_adds_a_sign(amount: int, currency: str) -> None:
    assert format_minor(-amount, currency) == "-" + format_minor(amount, currency)
