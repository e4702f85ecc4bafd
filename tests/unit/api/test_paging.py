"""Keyset cursors: round trips, and every malformed token is a 400 naming the parameter."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import ApiError
from api.paging import decode_cursor, encode_cursor, page

_values = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.datetimes(timezones=st.just(UTC)),
)


@given(st.lists(_values, min_size=1, max_size=5))
def test_a_cursor_decodes_to_the_key_it_encodes(values: list[object]) -> None:
    token = encode_cursor(values)  # type: ignore[arg-type]
    assert decode_cursor(token, len(values)) == tuple(values)
    assert "=" not in token and "+" not in token and "/" not in token


def test_datetimes_keep_their_instant_and_microseconds() -> None:
    when = datetime(2024, 5, 1, 23, 30, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    (back,) = decode_cursor(encode_cursor([when]), 1)
    assert isinstance(back, datetime)
    assert back == when and back.microsecond == 123456


def test_naive_datetimes_and_other_types_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError):
        encode_cursor([datetime(2024, 1, 1)])
    with pytest.raises(TypeError):
        encode_cursor([1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        encode_cursor([True])


def _raw(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize("token", [
    "",
    "not base64 !",
    "%%%",
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    _raw([1, 2]),
    _raw({"v": 2, "k": ["a", 1]}),
    _raw({"v": 1, "k": ["a"]}),
    _raw({"v": 1, "k": ["a", 1, 2]}),
    _raw({"v": 1, "k": "ab"}),
    _raw({"v": 1, "k": ["a", 1.5]}),
    _raw({"v": 1, "k": ["a", True]}),
    _raw({"v": 1, "k": ["a", ["x"]]}),
    _raw({"v": 1, "k": ["a", {"ts": "yesterday"}]}),
    _raw({"v": 1, "k": ["a", {"ts": "2024-01-01T00:00:00"}]}),
    _raw({"v": 1, "k": ["a", {"ts": "2024-01-01T00:00:00Z", "x": 1}]}),
    "A" * 5000,
])
def test_a_malformed_cursor_is_a_400_on_its_parameter(token: str) -> None:
    with pytest.raises(ApiError) as err:
        decode_cursor(token, 2, param="starting_after")
    assert err.value.status == 400
    assert err.value.code == "invalid_parameter"
    assert err.value.param == "starting_after"


def test_the_parameter_name_is_the_callers() -> None:
    with pytest.raises(ApiError) as err:
        decode_cursor("junk", 2, param="items_starting_after")
    assert err.value.param == "items_starting_after"


def _rows(n: int) -> list[dict[str, object]]:
    return [{"id": f"p{i:03d}", "n": i} for i in range(n)]


def test_page_with_an_extra_row_has_more_and_a_cursor_of_the_last_row_shown() -> None:
    result = page(_rows(4), 3, key=lambda r: (r["n"], r["id"]))
    assert result["object"] == "list"
    assert [r["id"] for r in result["data"]] == ["p000", "p001", "p002"]
    assert result["has_more"] is True
    assert decode_cursor(result["next_cursor"], 2) == (2, "p002")


@pytest.mark.parametrize("n", [0, 2, 3])
def test_page_without_an_extra_row_is_the_last(n: int) -> None:
    result = page(_rows(n), 3, key=lambda r: (r["id"],))
    assert len(result["data"]) == n
    assert result["has_more"] is False
    assert result["next_cursor"] is None
