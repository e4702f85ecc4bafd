"""The merchant registry publisher: load a merchants file, check it, publish to `merchants`."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from producers.errors import MerchantFileError
from producers.producer import AvroProducer
from schemas.codec import AvroDeserializer, to_epoch_ms
from schemas.errors import DecodeError
from schemas.registry import SchemaLookup
from settlement.currencies import is_known
from settlement.model import MERCHANT_ACTIVE, MERCHANT_STATUSES

FIELDS: Final = ("merchant_id", "name", "status", "settlement_currency")
_MERCHANT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_NAME_CHARS_MAX: Final = 200
# Reported one by one up to this many, so a wholly wrong file still gives a readable error.
_PROBLEMS_SHOWN_MAX: Final = 20


@dataclass(frozen=True, slots=True)
class MerchantEntry:
    """One merchant as written in a merchants file (the registry's input, not yet timestamped)."""

    merchant_id: str
    name: str
    status: str
    settlement_currency: str

    @property
    def is_active(self) -> bool:
        return self.status == MERCHANT_ACTIVE

    def to_record(self, updated_at_ms: int) -> dict[str, Any]:
        """The Avro `Merchant` record of this entry, effective at `updated_at_ms`."""
        return {
            "merchant_id": self.merchant_id,
            "name": self.name,
            "status": self.status,
            "settlement_currency": self.settlement_currency,
            "updated_at": updated_at_ms,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MerchantEntry:
        return cls(
            merchant_id=record["merchant_id"],
            name=record["name"],
            status=record["status"],
            settlement_currency=record["settlement_currency"],
        )


def sample_merchants_path() -> Path:
    """The demo's sample merchants file shipped with the package."""
    return Path(str(resources.files("producers") / "data" / "merchants.csv"))


def entry_problems(row: Mapping[str, Any]) -> list[str]:
    """What is wrong with one merchant row (empty when it is valid)."""
    problems: list[str] = []
    for name in FIELDS:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            problems.append(f"{name} is empty")
        elif not isinstance(value, str):
            problems.append(f"{name} must be text, got {type(value).__name__}")
    if problems:
        return problems
    merchant_id, name = row["merchant_id"], row["name"]
    if _MERCHANT_ID.fullmatch(merchant_id) is None:
        problems.append(
            f"merchant_id {merchant_id!r} must be 1-64 letters, digits or _.:- "
            "(starting with a letter or digit)"
        )
    if len(name) > _NAME_CHARS_MAX:
        problems.append(f"name is longer than {_NAME_CHARS_MAX} characters")
    if row["status"] not in MERCHANT_STATUSES:
        known = ", ".join(sorted(MERCHANT_STATUSES))
        problems.append(f"status {row['status']!r} is not one of {known}")
    if not is_known(row["settlement_currency"]):
        problems.append(
            f"settlement_currency {row['settlement_currency']!r} is not an ISO 4217 code "
            "(upper case, e.g. CNY)"
        )
    return problems


def check_entries(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[MerchantEntry]:
    """Validate (where, row) pairs; raise MerchantFileError listing every problem by location."""
    entries: list[MerchantEntry] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for where, row in rows:
        found = entry_problems(row)
        if found:
            problems.extend(f"{where}: {problem}" for problem in found)
            continue
        entry = MerchantEntry(*(row[name].strip() for name in FIELDS))
        if entry.merchant_id in first_seen:
            # Two rows for one id would publish two states, and which one wins is invisible.
            problems.append(
                f"{where}: merchant_id {entry.merchant_id} repeats "
                f"(first at {first_seen[entry.merchant_id]})"
            )
            continue
        first_seen[entry.merchant_id] = where
        entries.append(entry)
    if problems:
        shown = problems[:_PROBLEMS_SHOWN_MAX]
        more = len(problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        raise MerchantFileError(f"{len(problems)} problem(s) in merchants:\n  {text}", problems)
    if not entries:
        raise MerchantFileError("the merchants file has no merchants")
    return entries


def parse_csv(text: str) -> list[MerchantEntry]:
    """Merchants from CSV text with a header row naming at least FIELDS (extra columns ignored)."""
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [name for name in FIELDS if name not in header]
    if missing:
        raise MerchantFileError(
            f"line 1: header lacks column(s) {', '.join(missing)}; expected {','.join(FIELDS)}"
        )

    def rows() -> Iterable[tuple[str, Mapping[str, Any]]]:
        for row in reader:
            if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                continue  # a blank line
            yield f"line {reader.line_num}", row

    return check_entries(rows())


def parse_json(text: str) -> list[MerchantEntry]:
    """Merchants from a JSON array of objects (or {"merchants": [...]})."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise MerchantFileError(f"not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("merchants"), list):
        doc = doc["merchants"]
    if not isinstance(doc, list):
        raise MerchantFileError("JSON merchants file must be an array of merchant objects")
    rows: list[tuple[str, Mapping[str, Any]]] = []
    problems: list[str] = []
    for index, item in enumerate(doc, start=1):
        if isinstance(item, dict):
            rows.append((f"item {index}", item))
        else:
            problems.append(f"item {index}: expected an object, got {type(item).__name__}")
    if problems:
        raise MerchantFileError("\n  ".join(problems), problems)
    return check_entries(rows)


def load_merchants(path: str | Path) -> list[MerchantEntry]:
    """Read and validate a merchants file: `.json` as JSON, anything else as CSV."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MerchantFileError(f"cannot read {path}: {exc}") from exc
    try:
        return parse_json(text) if path.suffix.lower() == ".json" else parse_csv(text)
    except MerchantFileError as exc:
        raise MerchantFileError(f"{path}: {exc}", exc.problems) from exc


def publish_merchants(
    producer: AvroProducer,
    entries: Sequence[MerchantEntry],
    updated_at_ms: int,
    topic: str = "merchants",
    on_sent: Callable[[MerchantEntry], None] | None = None,
) -> None:
    """Enqueue one `Merchant` record per entry, keyed by merchant_id; the caller flushes.

    The merchant directory keeps the state with the newest updated_at, so a load at
    `updated_at_ms` = now supersedes older states of the same merchants.
    """
    for entry in entries:
        producer.send(topic, entry.merchant_id, entry.to_record(updated_at_ms))
        if on_sent is not None:
            on_sent(entry)


@dataclass(frozen=True, slots=True)
class MerchantState:
    """A merchant's current state as read back from the compacted topic."""

    entry: MerchantEntry
    updated_at_ms: int
    partition: int
    offset: int


def fold_merchant_records(
    messages: Iterable[Any], registry: SchemaLookup
) -> tuple[dict[str, MerchantState], int]:
    """Fold topic messages into the latest state per merchant_id; return (states, undecodable).

    The newest updated_at wins (what the merchant directory does); a tombstone (empty value)
    removes the merchant, as compaction eventually will.
    """
    decoder = AvroDeserializer(registry)
    states: dict[str, MerchantState] = {}
    undecodable = 0
    for msg in messages:
        key = (msg.key() or b"").decode("utf-8", "replace")
        if not msg.value():
            states.pop(key, None)
            continue
        try:
            record = decoder.decode(msg.value())
            entry = MerchantEntry.from_record(record)
        except (DecodeError, KeyError):
            undecodable += 1
            continue
        updated_at_ms = to_epoch_ms(record["updated_at"])
        current = states.get(entry.merchant_id)
        if current is None or updated_at_ms >= current.updated_at_ms:
            states[entry.merchant_id] = MerchantState(
                entry, updated_at_ms, msg.partition(), msg.offset()
            )
    return states, undecodable
