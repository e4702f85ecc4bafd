"""The settle stage's table: batch entries and item records, their keys, formats and reads.

One table, two kinds of key, both written only on the key's own partition:

- batch_key(merchant, currency) -> the key's entry, O(1) in size whatever the batches hold:
  {"v": 2, "partition", "merchant_id", "currency",
   "open": {str(window_start_ms): BatchTotals dict},
   "last_closed_start_ms", "last_closed_at_ms", "recent": [[window_start_ms, count], ...]}
- item_key(batch key, payment_id) -> one batched payment:
  {"partition", "key", "window_start_ms", "seq", "item": BatchItem dict}
  ("item" is None for ids carried over from the version-1 entry, which kept no amounts).

An add writes its item, then the entry: two small values, whatever the size of the batch
(the version-1 entry held every item and was re-written on each add). Closing a window
reads its items through an in-memory index (batch key -> window -> payment ids), which is
rebuilt from the table by the same scan that rebuilds the deadlines, the first time a
partition is touched after a rebalance or restart (faust restores the table from its
changelog before the agents run).

Why one table and not an items table beside the entries: both writes of an event go to
the same changelog partition, which Kafka keeps in order, so after a crash the restored
table holds a prefix of the writes. The entry is written last and is the commit point: an
item is counted when its window is open with seq < the window's payment_count, or its
window is in `recent` (closing drops uncounted items). An item found but not counted was
written by an event whose entry write was lost: its replay adds it again.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final

from settlement.batches import BatchError, BatchItem, BatchTotals, OpenBatch
from settlement.errors import SettleError

log = logging.getLogger(__name__)

# Version 2: items under their own keys, totals only in the entry; version 1 (no "v") kept
# every item in the entry and is migrated on its key's next event.
ENTRY_FORMAT_VERSION: Final = 2
ITEM_KEY_SEP: Final = "\x00"

# key -> window start -> payment ids with a record in the table.
ItemIndex = dict[str, dict[int, set[str]]]


class BadItem(SettleError, ValueError):
    """A record cannot become (or is not) a valid settlement item."""

    reason = "BAD_ITEM"


def batch_key(merchant_id: str, currency: str) -> str:
    """Table and repartition key: one merchant and currency, hence one partition."""
    return f"{merchant_id}|{currency}"


def item_key(bkey: str, payment_id: str) -> str:
    """Table key of one batched payment. Neither part holds ITEM_KEY_SEP (checked on input),
    so the key is unambiguous and never equal to a batch key."""
    return f"{bkey}{ITEM_KEY_SEP}{payment_id}"


def check_text(merchant_id: Any, currency: Any, payment_id: Any) -> None:
    for name, value in (("merchant_id", merchant_id), ("currency", currency),
                        ("payment_id", payment_id)):
        if not isinstance(value, str) or ITEM_KEY_SEP in value:
            raise BadItem(f"{name} must be a string without NUL, got {value!r}")
    if "|" in currency:
        raise BadItem(f"currency must not contain '|', got {currency!r}")


def counted(entry: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether an item record is part of the key's batches (see the module doc)."""
    start = record["window_start_ms"]
    totals = entry["open"].get(str(start))
    if totals is not None:
        return bool(record["seq"] < totals["payment_count"])
    return any(s == start for s, _n in entry["recent"])


def open_totals(entry: dict[str, Any]) -> dict[int, BatchTotals]:
    """The entry's open batches by window start (a version-1 entry's too, for the scan)."""
    if entry.get("v") == ENTRY_FORMAT_VERSION:
        return {int(s): BatchTotals.from_dict(b) for s, b in entry["open"].items()}
    return {int(s): BatchTotals.of(OpenBatch.from_dict(b)) for s, b in entry["open"].items()}


def new_entry(partition: int, merchant_id: str, currency: str) -> dict[str, Any]:
    return {"v": ENTRY_FORMAT_VERSION, "partition": partition, "merchant_id": merchant_id,
            "currency": currency, "open": {}, "last_closed_start_ms": None,
            "last_closed_at_ms": None, "recent": []}


def migrate_entry(
    store: MutableMapping[str, Any], index: ItemIndex, bkey: str, raw: dict[str, Any],
    partition: int,
) -> dict[str, Any]:
    """Move a version-1 entry's items (and closed batches' ids) to their own keys."""
    if raw.get("v") is not None:
        raise BatchError(f"{bkey}: unknown entry format version {raw.get('v')!r}")
    windows = index.setdefault(bkey, {})
    open_: dict[str, Any] = {}
    for batch in (OpenBatch.from_dict(b) for b in raw["open"].values()):
        for seq, item in enumerate(batch.items):
            store[item_key(bkey, item.payment_id)] = {
                "partition": partition, "key": bkey, "window_start_ms": batch.window_start_ms,
                "seq": seq, "item": item.to_dict()}
            windows.setdefault(batch.window_start_ms, set()).add(item.payment_id)
        open_[str(batch.window_start_ms)] = BatchTotals.of(batch).to_dict()
    recent = []
    for start, ids in raw["recent"]:
        for seq, pid in enumerate(ids):
            store[item_key(bkey, pid)] = {
                "partition": partition, "key": bkey, "window_start_ms": start, "seq": seq,
                "item": None}
            windows.setdefault(start, set()).add(pid)
        recent.append([start, len(ids)])
    migrated = {**raw, "v": ENTRY_FORMAT_VERSION, "open": open_, "recent": recent}
    store[bkey] = migrated  # after the items, as on every add
    log.info("settle: moved the items of %s to their own keys (entry format %d)",
             bkey, ENTRY_FORMAT_VERSION)
    return dict(migrated)


def window_items(
    store: MutableMapping[str, Any], index: ItemIndex, bkey: str, totals: BatchTotals
) -> tuple[list[BatchItem], list[str]]:
    """(the window's counted items in the order they were added, ids of uncounted ones)."""
    start = totals.window_start_ms
    counted_: list[tuple[int, BatchItem]] = []
    uncounted: list[str] = []
    for pid in index.get(bkey, {}).get(start, ()):
        record = store.get(item_key(bkey, pid))
        if record is None or record["window_start_ms"] != start:
            continue  # a stale index entry: the item was re-added to another window
        if record["seq"] >= totals.payment_count or record["item"] is None:
            uncounted.append(pid)
        else:
            counted_.append((record["seq"], BatchItem.from_dict(record["item"])))
    counted_.sort(key=lambda pair: pair[0])
    return [item for _seq, item in counted_], uncounted


def drop_items(
    store: MutableMapping[str, Any], index: ItemIndex, bkey: str, starts: list[int]
) -> None:
    """Delete the item records of these (closed) windows of the key."""
    windows = index.get(bkey, {})
    for start in starts:
        for pid in windows.pop(start, ()):
            ikey = item_key(bkey, pid)
            record = store.get(ikey)
            if record is not None and record["window_start_ms"] == start:
                del store[ikey]
