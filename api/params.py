"""Query parameters: times, limits, enumerations and the merchant a key may ask about.

Each parser raises `bad_param(<name>, ...)` (400 naming the parameter) on anything it cannot
read, so a route never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time

from api.auth import Principal
from api.errors import bad_param

LIMIT_DEFAULT = 20
LIMIT_MAX = 100

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# ISO 8601 date-time with a "T" or space, optional fraction and offset ("Z" or ±hh:mm).
_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?$", re.I)


def parse_time(param: str, value: str | None) -> datetime | None:
    """An ISO 8601 date (midnight UTC) or date-time (naive means UTC) as an aware datetime."""
    if value is None or value == "":
        return None
    text = value.strip()
    try:
        if _DATE.match(text):
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        if _DATETIME.match(text):
            parsed = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except ValueError as exc:
        raise bad_param(param, f"{value!r} is not a valid date or date-time ({exc})") from exc
    raise bad_param(param, f"{value!r} is not an ISO 8601 date or date-time "
                           "(2024-05-01 or 2024-05-01T12:00:00Z)")


def parse_limit(value: str | int | None, param: str = "limit") -> int:
    """The page size: 1..100, 20 when absent."""
    if value is None or value == "":
        return LIMIT_DEFAULT
    if isinstance(value, bool):
        raise bad_param(param, "must be an integer from 1 to 100")
    if isinstance(value, str):
        if not re.fullmatch(r"\d{1,4}", value.strip()):
            raise bad_param(param, f"{value!r} is not an integer from 1 to {LIMIT_MAX}")
        value = int(value.strip())
    if not 1 <= value <= LIMIT_MAX:
        raise bad_param(param, f"{value} is not between 1 and {LIMIT_MAX}")
    return value


def parse_enum(param: str, value: str | None, allowed: Iterable[str]) -> str | None:
    """One of `allowed` (exact match), or None when absent."""
    if value is None or value == "":
        return None
    choices = tuple(allowed)
    if value not in choices:
        raise bad_param(param, f"{value!r} is not one of {', '.join(choices)}")
    return value


def merchant_filter(who: Principal, value: str | None) -> str | None:
    """The merchant a query is limited to.

    A merchant key always gets its own merchant (naming another is a 400 on `merchant`, not an
    empty list that would look like an answer); an analyst key gets what it asked for, or None
    for every merchant.
    """
    value = value or None
    if who.scope == "merchant":
        if value is not None and value != who.merchant_id:
            raise bad_param("merchant", "a merchant key reads only its own merchant")
        return who.merchant_id
    return value
