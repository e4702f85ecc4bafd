"""The statement page's chart and amounts: integer pixels, exact text (no database)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.money import money
from api.statement import (
    BAR,
    FEES_H,
    SLOT,
    VOLUME_H,
    bar_height,
    chart_days,
    daily_chart,
    grouped,
)


@pytest.mark.parametrize("minor, currency, text", [
    (123456789, "CNY", "1,234,567.89 CNY"),
    (-70172, "USD", "-701.72 USD"),
    (5, "CNY", "0.05 CNY"),
    (0, "JPY", "0 JPY"),
    (4993574, "JPY", "4,993,574 JPY"),
    (-1234567, "KWD", "-1,234.567 KWD"),
    (999, "KWD", "0.999 KWD"),
])
def test_grouped_adds_thousands_separators_to_the_exact_amount(minor: int, currency: str,
                                                               text: str) -> None:
    assert grouped(minor, currency) == text


@given(st.integers(min_value=-10**30, max_value=10**30), st.sampled_from(["CNY", "JPY", "KWD"]))
def test_grouped_reads_back_to_the_same_minor_units(minor: int, currency: str) -> None:
    number = grouped(minor, currency).split(" ")[0].replace(",", "")
    assert int(number.replace(".", "")) == minor


def test_bar_heights_are_integer_shares_of_the_panel() -> None:
    assert bar_height(0, 100, 140) == 0
    assert bar_height(100, 100, 140) == 140
    assert bar_height(50, 100, 140) == 70
    assert bar_height(1, 3, 140) == 46  # floor, never a float
    assert bar_height(1, 10**18, 140) == 1  # anything above 0 stays visible
    assert bar_height(-5, 100, 140) == 0
    assert bar_height(5, 0, 140) == 0


def test_a_bar_never_exceeds_its_panel_even_for_huge_amounts() -> None:
    largest = 9_223_372_036_854_775_807  # BIGINT's maximum
    assert bar_height(largest, largest, 140) == 140
    assert bar_height(largest // 2, largest, 140) == 69


def test_chart_days_are_the_fourteen_days_ending_with_the_newest() -> None:
    days = chart_days(date(2025, 3, 2))
    assert len(days) == 14
    assert days[0] == date(2025, 2, 17) and days[-1] == date(2025, 3, 2)


def _row(day: str, gross: int, fee: int, currency: str = "CNY") -> dict[str, object]:
    return {"day": day, "currency": currency, "payment_count": 3, "settled_count": 2,
            "gross": money(gross, currency), "fee": money(fee, currency)}


def test_daily_chart_scales_each_panel_to_its_own_largest_day() -> None:
    days = chart_days(date(2025, 3, 3), 3)
    rows = {"2025-03-01": _row("2025-03-01", 10_000, 60),
            "2025-03-03": _row("2025-03-03", 40_000, 30)}
    chart = daily_chart("CNY", days, rows)
    assert [b.height for b in chart.volume] == [VOLUME_H // 4, 0, VOLUME_H]
    assert [b.height for b in chart.fees] == [FEES_H, 0, FEES_H // 2]
    # bars stand on their panel's base line
    assert all(b.y + b.height == chart.volume_base for b in chart.volume)
    assert all(b.y + b.height == chart.fees_base for b in chart.fees)
    assert [b.x for b in chart.volume] == [8 + i * SLOT + (SLOT - BAR) // 2 for i in range(3)]
    assert chart.volume_max == "400.00 CNY" and chart.fees_max == "0.60 CNY"
    assert [d["gross"] for d in chart.days] == ["100.00 CNY", "0.00 CNY", "400.00 CNY"]
    assert chart.days[1]["payment_count"] == 0  # a day without payments is a 0, not a gap
    assert chart.volume[2].title == "2025-03-03: volume 400.00 CNY"
    assert all(isinstance(v, int) for b in chart.volume for v in (b.x, b.y, b.width, b.height))


def test_a_chart_with_nothing_in_it_has_no_bars_above_zero() -> None:
    chart = daily_chart("JPY", chart_days(date(2025, 3, 3), 2), {})
    assert [b.height for b in (*chart.volume, *chart.fees)] == [0, 0, 0, 0]
    assert chart.volume_max == "0 JPY"
