"""Unit and property tests for settlement.fees against a Fraction-based reference."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.errors import DomainError, SettleError
from settlement.fees import (
    DEFAULT_FEE_SPEC,
    FeeError,
    FeeSchedule,
    FeeSpecError,
    fee_minor,
    net_minor,
)

grosses = st.integers(min_value=0, max_value=10**15)
rates = st.integers(min_value=0, max_value=10_000)


def reference_fee(gross: int, bps: int) -> int:
    """Round half up of the exact rational fee, computed independently of the integer trick."""
    exact = Fraction(gross * bps, 10_000)
    return math.floor(exact + Fraction(1, 2))


@pytest.mark.parametrize(
    ("gross", "bps", "fee"),
    [
        (10_000, 60, 60),
        (12_345, 180, 222),  # 222.21 rounds down
        (25, 200, 1),  # 0.5 rounds up
        (1, 5_000, 1),  # 0.5 rounds up
        (1, 4_999, 0),  # 0.4999 rounds down
        (0, 60, 0),
        (999, 0, 0),
        (999, 10_000, 999),
    ],
)
def test_fee_examples(gross: int, bps: int, fee: int) -> None:
    assert fee_minor(gross, bps) == fee
    assert net_minor(gross, bps) == gross - fee


@pytest.mark.parametrize(
    ("gross", "bps"),
    [(-1, 60), (100, -1), (100, 10_001), (True, 60), (100, True), (1.0, 60), (100, 60.0), ("1", 6)],
)
def test_fee_rejects_bad_input(gross: object, bps: object) -> None:
    with pytest.raises(FeeError) as info:
        fee_minor(gross, bps)  # type: ignore[arg-type]
    assert isinstance(info.value, DomainError)
    assert isinstance(info.value, ValueError)


@given(grosses, rates)
def test_fee_matches_reference_and_splits_gross(gross: int, bps: int) -> None:
    fee = fee_minor(gross, bps)
    assert fee == reference_fee(gross, bps)
    assert 0 <= fee <= gross
    assert fee + net_minor(gross, bps) == gross


@given(grosses, rates)
def test_fee_is_monotonic_in_gross(gross: int, bps: int) -> None:
    assert fee_minor(gross, bps) <= fee_minor(gross + 1, bps)


def test_default_spec_parses() -> None:
    schedule = FeeSchedule.from_spec(DEFAULT_FEE_SPEC)
    assert dict(schedule.bps_by_channel) == {
        "alipay": 60,
        "wechat_pay": 60,
        "unionpay": 45,
        "card": 180,
    }
    assert schedule.default_bps == 0
    assert schedule.bps_for("card") == 180
    assert schedule.bps_for("unknown") == 0
    assert schedule.fee_for("card", 10_000) == 180
    assert schedule.net_for("card", 10_000) == 9_820


def test_spec_default_entry_and_whitespace() -> None:
    schedule = FeeSchedule.from_spec(" alipay = 60 , *=25 ", default_bps=7)
    assert schedule.bps_for("alipay") == 60
    assert schedule.bps_for("other") == 25
    assert FeeSchedule.from_spec("alipay=60", default_bps=7).bps_for("other") == 7


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "alipay",
        "alipay=",
        "=60",
        "alipay=x",
        "alipay=-1",
        "alipay=+5",
        "alipay=1_0",
        "alipay=\u0665",  # ARABIC-INDIC DIGIT FIVE: int() would accept it
        "alipay=10001",
        "alipay=60,alipay=60",
        "*=1,*=2",
        "alipay=60,",
    ],
)
def test_bad_spec_is_a_typed_error(spec: str) -> None:
    with pytest.raises(FeeSpecError) as info:
        FeeSchedule.from_spec(spec)
    assert isinstance(info.value, SettleError)


def test_bad_default_in_from_spec_is_a_spec_error() -> None:
    with pytest.raises(FeeSpecError):
        FeeSchedule.from_spec("alipay=60", default_bps=10_001)


def test_schedule_validates_and_freezes_its_mapping() -> None:
    rates_in = {"alipay": 60}
    schedule = FeeSchedule(rates_in, 0)
    rates_in["alipay"] = 9_999
    assert schedule.bps_for("alipay") == 60
    with pytest.raises(TypeError):
        schedule.bps_by_channel["alipay"] = 1  # type: ignore[index]
    with pytest.raises(FeeError):
        FeeSchedule({"alipay": 10_001}, 0)
    with pytest.raises(FeeError):
        FeeSchedule({"": 1}, 0)
    with pytest.raises(FeeError):
        FeeSchedule({}, -1)


@given(
    st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), rates
    ),
    rates,
)
def test_spec_round_trips(bps_by_channel: dict[str, int], default_bps: int) -> None:
    schedule = FeeSchedule(bps_by_channel, default_bps)
    again = FeeSchedule.from_spec(schedule.to_spec())
    assert dict(again.bps_by_channel) == bps_by_channel
    assert again.default_bps == default_bps
