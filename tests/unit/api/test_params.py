"""Query parameters: each bad value is a 400 that names its parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from api.auth import Principal
from api.errors import ApiError
from api.params import merchant_filter, parse_enum, parse_limit, parse_time

MERCHANT = Principal(key_id="0" * 12, scope="merchant", merchant_id="m-1")
ANALYST = Principal(key_id="1" * 12, scope="analyst", merchant_id=None)


def _bad(param: str, call: object) -> ApiError:
    assert callable(call)
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.status == 400
    assert err.value.code == "invalid_parameter"
    assert err.value.param == param
    assert param in err.value.message
    return err.value


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T12:30:00z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01 12:30:00.250", datetime(2024, 5, 1, 12, 30, 0, 250000, tzinfo=UTC)),
    ("2024-05-01T20:30:00+08:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T20:30:00+0800", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
])
def test_times_are_iso_8601_and_naive_means_utc(text: str, expected: datetime) -> None:
    parsed = parse_time("created_gte", text)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


def test_an_absent_time_is_none() -> None:
    assert parse_time("created_gte", None) is None
    assert parse_time("created_gte", "") is None


@pytest.mark.parametrize("text", [
    "yesterday", "2024-13-01", "2024-02-30", "2024-05-01T25:00:00Z", "1714560000",
    "2024-05-01T12:30:00+25:00", "05/01/2024", "2024-05-01T12:30:00Zjunk", "2024-5-1"])
def test_a_bad_time_is_a_400_naming_the_parameter(text: str) -> None:
    _bad("decided_lt", lambda: parse_time("decided_lt", text))


def test_an_offset_is_kept_as_the_instant() -> None:
    parsed = parse_time("as_of", "2024-05-01T00:00:00-05:00")
    assert parsed == datetime(2024, 5, 1, 5, tzinfo=UTC)
    assert parsed == datetime(2024, 5, 1, tzinfo=timezone(timedelta(hours=-5)))


@pytest.mark.parametrize(("value", "expected"), [(None, 20), ("", 20), ("1", 1), ("100", 100),
                                                 (" 7 ", 7), (50, 50)])
def test_limit_is_1_to_100_and_20_by_default(value: str | int | None, expected: int) -> None:
    assert parse_limit(value) == expected


@pytest.mark.parametrize("value", ["0", "101", "-1", "abc", "1.5", "1e2", "99999", 0, 101, True])
def test_a_bad_limit_is_a_400_naming_limit(value: str | int) -> None:
    _bad("limit", lambda: parse_limit(value))


def test_a_limit_of_another_name_names_that_parameter() -> None:
    _bad("items_limit", lambda: parse_limit("0", param="items_limit"))


def test_enum_values_are_exact() -> None:
    assert parse_enum("state", "MATCHED", ("MATCHED", "DECLINED")) == "MATCHED"
    assert parse_enum("state", None, ("MATCHED",)) is None
    err = _bad("state", lambda: parse_enum("state", "matched", ("MATCHED", "DECLINED")))
    assert "MATCHED, DECLINED" in err.message
    _bad("state", lambda: parse_enum("state", "BOGUS", ("MATCHED",)))


def test_a_merchant_key_always_reads_its_own_merchant() -> None:
    assert merchant_filter(MERCHANT, None) == "m-1"
    assert merchant_filter(MERCHANT, "") == "m-1"
    assert merchant_filter(MERCHANT, "m-1") == "m-1"
    _bad("merchant", lambda: merchant_filter(MERCHANT, "m-2"))


def test_an_analyst_reads_what_it_names_or_everyone() -> None:
    assert merchant_filter(ANALYST, None) is None
    assert merchant_filter(ANALYST, "m-2") == "m-2"
