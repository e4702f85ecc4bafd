"""ISO 4217 currency codes with their minor-unit exponents, and integer-only amount formatting."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from settlement.errors import DomainError

__all__ = [
    "CURRENCY_EXPONENTS",
    "InvalidAmount",
    "UnknownCurrency",
    "exponent",
    "format_minor",
    "is_known",
    "minor_units_per_major",
]


class UnknownCurrency(DomainError):
    """The code is not an active ISO 4217 currency with a minor unit."""

    def __init__(self, code: object) -> None:
        shown = repr(code)
        # Codes come from untrusted records: keep a pathological one from flooding logs.
        if len(shown) > 40:
            shown = shown[:37] + "..."
        super().__init__(f"unknown currency code {shown}")
        self.code = code


class InvalidAmount(DomainError, TypeError):
    """An amount is not an int count of minor units (bool and float are not amounts)."""


def _codes(exponent_: int, codes: str) -> dict[str, int]:
    return dict.fromkeys(codes.split(), exponent_)


# ISO 4217 List One (SIX, 2025): every code with a numeric minor unit. Codes whose minor unit is
# "N.A." (metals XAU XAG XPD XPT, XDR, XSU, XUA, bond units XBA-XBD, XTS, XXX) are left out
# because an amount in them cannot be counted in minor units. Withdrawn codes (HRK, VEF, SLL, ZWL,
# CUC, MRO, STD) are left out so a stale upstream cannot open a book nobody settles. ANG stays
# beside its successor XCG while both circulate. Fund codes with a minor unit (BOV, CHE, CHW,
# CLF, COU, MXV, USN, UYI, UYW) are ISO currencies and stay; routing decides what is accepted.
_TABLE: dict[str, int] = {
    **_codes(0, "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"),
    **_codes(
        2,
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN"
        " BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB"
        " EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS"
        " KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN"
        " MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD"
        " SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS"
        " UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG",
    ),
    **_codes(3, "BHD IQD JOD KWD LYD OMR TND"),
    **_codes(4, "CLF UYW"),
}

CURRENCY_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(_TABLE)
"""Immutable map of ISO 4217 alphabetic code -> minor-unit exponent (JPY 0, CNY 2, KWD 3)."""


def is_known(code: object) -> bool:
    """True when `code` is an active ISO 4217 code in the table (exact, upper-case match)."""
    # Codes are matched exactly: silently upper-casing "cny" would hide a broken producer.
    return isinstance(code, str) and code in _TABLE


def exponent(code: str) -> int:
    """Minor-unit exponent of `code`; raises UnknownCurrency for anything not in the table."""
    if not is_known(code):
        raise UnknownCurrency(code)
    return _TABLE[code]


def minor_units_per_major(code: str) -> int:
    """How many minor units make one major unit (100 for CNY, 1 for JPY, 1000 for KWD)."""
    return 10 ** exponent(code)


def format_minor(amount_minor: int, currency: str) -> str:
    """Render an amount for people: 12345 CNY -> "123.45 CNY", -5 JPY -> "-5 JPY".

    Integer arithmetic only, so every amount renders exactly. Python refuses to turn ints of
    more than 4300 digits into text (ValueError); no real amount comes near that.
    """
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
        raise InvalidAmount(f"amount_minor must be an int, got {type(amount_minor).__name__}")
    places = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    magnitude = -amount_minor if amount_minor < 0 else amount_minor
    if places == 0:
        return f"{sign}{magnitude} {currency}"
    major, minor = divmod(magnitude, 10**places)
    return f"{sign}{major}.{minor:0{places}d} {currency}"
