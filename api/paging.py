"""Keyset pagination with opaque cursors.

A list is ordered by a key that never changes once a row is written (a column no sink
updates), tie-broken by a unique column; the next page is the rows strictly after the last
one's key. A walk then never skips or repeats a row that existed when it began, whatever is
inserted meanwhile, and costs the same on page 1 and page 10,000 (no OFFSET).

A cursor is urlsafe base64 (unpadded) of compact JSON `{"v": 1, "k": [...]}`: the last row's
key values, datetimes tagged as `{"ts": "<ISO 8601>"}` so they come back as datetimes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from api.errors import bad_param

CURSOR_VERSION = 1
CURSOR_MAX_CHARS = 2048

KeyValue = str | int | datetime | None


def encode_cursor(values: Sequence[KeyValue]) -> str:
    """The opaque token for a row's sort key."""
    items: list[Any] = []
    for value in values:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("a cursor's datetime must be timezone-aware")
            items.append({"ts": value.isoformat()})
        elif value is None or isinstance(value, str) or (
                isinstance(value, int) and not isinstance(value, bool)):
            items.append(value)
        else:
            raise TypeError(f"a cursor holds str, int, datetime or None, not "
                            f"{type(value).__name__}")
    raw = json.dumps({"v": CURSOR_VERSION, "k": items}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str, arity: int, param: str = "starting_after") -> tuple[KeyValue, ...]:
    """The key values of a token from `encode_cursor`; 400 on `param` for anything else."""
    if not token or len(token) > CURSOR_MAX_CHARS:
        raise bad_param(param, "not a cursor of this list")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad_param(param, "not a cursor of this list") from exc
    if (not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION
            or not isinstance(payload.get("k"), list) or len(payload["k"]) != arity):
        raise bad_param(param, "not a cursor of this list")
    out: list[KeyValue] = []
    for item in payload["k"]:
        if isinstance(item, dict):
            stamp = item.get("ts")
            if set(item) != {"ts"} or not isinstance(stamp, str):
                raise bad_param(param, "not a cursor of this list")
            try:
                when = datetime.fromisoformat(stamp)
            except ValueError as exc:
                raise bad_param(param, "not a cursor of this list") from exc
            if when.tzinfo is None:
                raise bad_param(param, "not a cursor of this list")
            out.append(when)
        elif item is None or isinstance(item, str) or (
                isinstance(item, int) and not isinstance(item, bool)):
            out.append(item)
        else:
            raise bad_param(param, "not a cursor of this list")
    return tuple(out)


def page(rows: list[dict[str, Any]], limit: int,
         key: Callable[[dict[str, Any]], Sequence[KeyValue]]) -> dict[str, Any]:
    """A list response from up to `limit + 1` fetched rows: the extra row only says there is more.

    `key` reads the sort key from a row as the route returns it (the cursor then names the
    last row shown).
    """
    has_more = len(rows) > limit
    data = rows[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_cursor": encode_cursor(key(data[-1])) if has_more and data else None,
    }
