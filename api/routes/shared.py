"""Pieces the ledger-side routes share: times as RFC 3339 text, journal and item kinds, and
parsers for the parameters the generic ones in api.params do not cover.

Times leave the API as RFC 3339 UTC text with microseconds (`2025-06-01T08:30:00.000000Z`).
The flat queries (the CSV exports' and `settle report`'s) format them in SQL with
`ts_text`, the JSON objects in Python with `rfc3339`: the two give the same text, so a CSV
row and its JSON object agree character for character.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import Request

from api.errors import bad_param
from api.paging import decode_cursor
from settlement.refund_model import (
    DISPUTE_JOURNAL_KINDS,
    ITEM_KINDS,
    JOURNAL_KINDS,
    JOURNAL_PAYOUT,
)

# to_char's picture of `rfc3339`'s text.
_SQL_PICTURE: Final = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_PY_PICTURE: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def ts_text(expr: str) -> str:
    """SQL: the timestamptz `expr` as RFC 3339 UTC text (NULL stays NULL)."""
    return f"to_char(({expr}) AT TIME ZONE 'UTC', '{_SQL_PICTURE}')"


def rfc3339(value: datetime | None) -> str | None:
    """An aware datetime as the API's RFC 3339 UTC text."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no place in the API's output")
    return value.astimezone(UTC).strftime(_PY_PICTURE)


def from_text(value: str) -> datetime:
    """`ts_text`'s text back as an aware datetime (a cursor's key)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# Journal kind -> the kind of the settlement item that settles it (settle/books_sql.py's
# table; a lost dispute settles only its fee, and a PAYOUT journal is the batch's own).
ITEM_KIND_OF: Final = {
    "PAYMENT": "PAYMENT", "REFUND": "REFUND", "PAYMENT_REVERSAL": "PAYMENT_REVERSAL",
    "REFUND_REVERSAL": "REFUND_REVERSAL", "DISPUTE_OPEN": "DISPUTE_HOLD",
    "DISPUTE_WON": "DISPUTE_RELEASE", "DISPUTE_LOST": "DISPUTE_FEE",
}
JOURNAL_KIND_OF: Final = {item: journal for journal, item in ITEM_KIND_OF.items()}
assert set(ITEM_KIND_OF) == JOURNAL_KINDS - {JOURNAL_PAYOUT}
assert set(JOURNAL_KIND_OF) == ITEM_KINDS

JOURNAL_KIND_CHOICES: Final = tuple(sorted(JOURNAL_KINDS))
ITEM_KIND_CHOICES: Final = tuple(sorted(ITEM_KINDS))
_REFUND_KINDS: Final = ("REFUND", "REFUND_REVERSAL")
_DISPUTE_KINDS: Final = tuple(sorted(DISPUTE_JOURNAL_KINDS))


def _case(column: str, mapping: dict[str, str]) -> str:
    whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in mapping.items())
    return f"(CASE {column} {whens} END)"


def item_kind_sql(journal_kind: str) -> str:
    """SQL: the item kind that settles a journal of kind `journal_kind` (NULL for PAYOUT)."""
    return _case(journal_kind, ITEM_KIND_OF)


def journal_kind_sql(item_kind: str) -> str:
    """SQL: the journal kind an item of kind `item_kind` settles."""
    return _case(item_kind, JOURNAL_KIND_OF)


def _kinds(kinds: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{k}'" for k in kinds) + ")"


def refund_id_sql(kind: str, source_id: str, payment_id: str) -> str:
    """SQL: the refund id in a refund (or refund reversal) journal's or item's source id."""
    return (f"CASE WHEN {kind} IN {_kinds(_REFUND_KINDS)}"
            f" THEN substr({source_id}, length({payment_id}) + 2) END")


def dispute_id_sql(kind: str, source_id: str, payment_id: str,
                   kinds: Iterable[str] = _DISPUTE_KINDS) -> str:
    """SQL: the dispute id in a dispute journal's (or item's: pass the item kinds) source id."""
    return (f"CASE WHEN {kind} IN {_kinds(kinds)}"
            f" THEN substr({source_id}, length({payment_id}) + 2) END")


DISPUTE_ITEM_KINDS_SQL: Final = ("DISPUTE_HOLD", "DISPUTE_RELEASE", "DISPUTE_FEE")

# -- parameters -------------------------------------------------------------------------------

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_ID_MAX_CHARS = 256


def reject_unknown(request: Request, allowed: Iterable[str]) -> None:
    """400 naming a query parameter the route does not take (a misspelt filter would
    otherwise be ignored and the answer look like a filtered one)."""
    known = set(allowed)
    for name in request.query_params:
        if name not in known:
            raise bad_param(name, f"unknown parameter; this route takes {', '.join(sorted(known))}")


def parse_currency(param: str, value: str | None) -> str | None:
    """An ISO 4217-shaped code (three capital letters), None when absent."""
    if value is None or value == "":
        return None
    if not _CURRENCY.match(value):
        raise bad_param(param, f"{value!r} is not a currency code (three capital letters)")
    return value


def parse_id(param: str, value: str | None) -> str | None:
    """An identifier (payment, batch, merchant): non-blank, printable, of sane length."""
    if value is None or value == "":
        return None
    if len(value) > _ID_MAX_CHARS or not value.isprintable() or value.strip() != value:
        raise bad_param(param, f"not an identifier (1-{_ID_MAX_CHARS} printable characters, "
                               "no surrounding spaces)")
    return value


def check_range(low_param: str, low: datetime | None, high_param: str,
                high: datetime | None) -> None:
    """400 when a half-open range [low, high) is empty by construction."""
    if low is not None and high is not None and low >= high:
        raise bad_param(high_param, f"must be after {low_param}")


def decode_key(token: str | None, types: Sequence[type],
               param: str = "starting_after") -> tuple[Any, ...] | None:
    """A cursor's key values, each of the list key's type (None when no cursor was sent):
    400 on `param` for a token of another list or none at all."""
    if token is None:
        return None
    values = decode_cursor(token, len(types), param)
    if not all(isinstance(v, t) for v, t in zip(values, types, strict=True)):
        raise bad_param(param, "not a cursor of this list")
    return values
