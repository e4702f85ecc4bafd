"""Checked reads of a decoded record's fields: the values the tables can hold, or InvalidRecord."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sinks.errors import InvalidRecord

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def text(record: Mapping[str, Any], name: str, required: bool = True) -> str | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InvalidRecord(f"{name} must be a non-empty string, got {value!r}")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise InvalidRecord(f"{name} contains a NUL character")
    return value


def required_text(record: Mapping[str, Any], name: str) -> str:
    value = text(record, name)
    assert value is not None
    return value


def amount(record: Mapping[str, Any], name: str) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"{name} must be an integer count of minor units, got {value!r}")
    return value


def currency(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise InvalidRecord(f"{name} must be an ISO 4217 alpha-3 code, got {value!r}")
    return value


def timestamp(record: Mapping[str, Any], name: str, required: bool = True) -> datetime | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRecord(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def channel(record: Mapping[str, Any]) -> str | None:
    """The record's channel in lower case: accounts, fees and topics use that form (Avro's
    Channel enum is upper case)."""
    raw = text(record, "channel", required=False)
    return raw.lower() if raw is not None else None


def detail(record: Mapping[str, Any]) -> str:
    value = record.get("detail") or ""
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidRecord("detail must be a string without NUL characters")
    return value
