"""The settle stage's table: batch entries and item records, their keys, formats and reads.

One table, two kinds of key, both written only on the key's own partition:

- batch_key(merchant, currency) -> the key's entry, O(1) in size whatever the batches hold:
  {"v": 3, "partition", "merchant_id", "currency",
   "open": {str(window_start_ms): BatchTotals dict},
   "carried_minor": the carried_out_minor of the key's last closed batch (<= 0),
   "last_closed_start_ms", "last_closed_at_ms",
   "recent": [[window_start_ms, item count, carried_in_minor], ...]}
- item_key(batch key, item_tag(kind, item_id)) -> one batched item:
  {"partition", "key", "window_start_ms", "seq", "item": BatchItem dict}
  ("item" is None for ids carried over from the version-1 entry, which kept no amounts).

An item's tag is its payment_id for a PAYMENT (the key it had before kinds existed) and
`<kind>NUL<item_id>` for any other kind: ids never hold NUL, so a refund's key can never be
a payment's, nor a reversal's the key of what it reverses, whatever a payment id looks like.

An add writes its item, then the entry: two small values, whatever the size of the batch
(the version-1 entry held every item and was re-written on each add). Closing a window
reads its items through an in-memory index (batch key -> window -> item tags), which is
rebuilt from the table by the same scan that rebuilds the deadlines, the first time a
partition is touched after a rebalance or restart (faust restores the table from its
changelog before the agents run).

Why one table and not an items table beside the entries: both writes of an event go to
the same changelog partition, which Kafka keeps in order, so after a crash the restored
table holds a prefix of the writes. The entry is written last and is the commit point: an
item is counted when its window is open with seq < the window's item count (payments plus
refunds), or its window is in `recent` (closing drops uncounted items). An item found but
not counted was written by an event whose entry write was lost: its replay adds it again.
(The item count is of every kind: payments, refunds, reversals of either, and disputes'
holds, releases and fees.)

The carried balance: closing a batch takes the entry's carried_minor as its carried_in and
leaves the batch's carried_out there; `recent` keeps each closed window's carried_in, so a
tick replayed after a crash rebuilds the very same batch (payout and carried_out follow
from net and carried_in). An entry whose carried balance is not zero is never evicted.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final

from settlement.batches import COUNT_FIELDS, BatchError, BatchItem, BatchTotals, OpenBatch
from settlement.errors import SettleError
from settlement.refund_model import ITEM_PAYMENT

log = logging.getLogger(__name__)

# Version 3: the carried balance, recent windows with their carried_in, refund items.
# Version 2 (items under their own keys, payments only) and version 1 (no "v": every item
# in the entry) are migrated on their key's next event.
ENTRY_FORMAT_VERSION: Final = 3
ITEM_KEY_SEP: Final = "\x00"

# key -> window start -> item tags with a record in the table.
ItemIndex = dict[str, dict[int, set[str]]]


class BadItem(SettleError, ValueError):
    """A record cannot become (or is not) a valid settlement item."""

    reason = "BAD_ITEM"


class BadRefundItem(BadItem):
    """A MATCHED refund result whose amounts are not a refund's (missing, or net is not
    amount - fee_returned, or fee_returned < 0)."""

    reason = "BAD_REFUND_ITEM"


class BadDisputeItem(BadItem):
    """A DisputeResult that cannot be its dispute item: merchant, currency or amount missing,
    or an amount (a fee) that is not > 0."""

    reason = "BAD_DISPUTE_ITEM"


class BadReversalItem(BadItem):
    """A PAYMENT_REVERSED or REFUND_REVERSED result that cannot be its reversal item: merchant,
    currency or split missing, or the split not amount > 0, 0 <= fee, net == amount - fee."""

    reason = "BAD_REVERSAL_ITEM"


def batch_key(merchant_id: str, currency: str) -> str:
    """Table and repartition key: one merchant and currency, hence one partition."""
    return f"{merchant_id}|{currency}"


def item_tag(kind: str, item_id: str) -> str:
    """An item's part of its table key: the payment_id of a PAYMENT, `kind NUL item_id` else."""
    return item_id if kind == ITEM_PAYMENT else f"{kind}{ITEM_KEY_SEP}{item_id}"


def item_key(bkey: str, tag: str) -> str:
    """Table key of one batched item. The batch key holds no ITEM_KEY_SEP (checked on input),
    so the key is unambiguous and never equal to a batch key."""
    return f"{bkey}{ITEM_KEY_SEP}{tag}"


def check_text(merchant_id: Any, currency: Any, *ids: Any) -> None:
    for name, value in (("merchant_id", merchant_id), ("currency", currency),
                        *(("id", i) for i in ids)):
        if not isinstance(value, str) or ITEM_KEY_SEP in value:
            raise BadItem(f"{name} must be a string without NUL, got {value!r}")
    if "|" in currency:
        raise BadItem(f"currency must not contain '|', got {currency!r}")


def item_count(totals: dict[str, Any]) -> int:
    """Items of every kind in a stored BatchTotals dict (format 1 had payments only, format 2
    no reversals, format 3 no dispute items)."""
    return sum(int(totals.get(name, 0)) for name in COUNT_FIELDS.values())


def counted(entry: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether an item record is part of the key's batches (see the module doc)."""
    start = record["window_start_ms"]
    totals = entry["open"].get(str(start))
    if totals is not None:
        return bool(record["seq"] < item_count(totals))
    return any(r[0] == start for r in entry["recent"])


def recent_window(entry: dict[str, Any], start: int) -> tuple[int, int] | None:
    """(item count, carried_in_minor) of a recently closed window, or None."""
    for r in entry.get("recent", []):
        if r[0] == start:
            return int(r[1]), int(r[2]) if len(r) > 2 else 0
    return None


def open_totals(entry: dict[str, Any]) -> dict[int, BatchTotals]:
    """The entry's open batches by window start (a version-1 entry's too, for the scan)."""
    if entry.get("v") is not None:
        return {int(s): BatchTotals.from_dict(b) for s, b in entry["open"].items()}
    return {int(s): BatchTotals.of(OpenBatch.from_dict(b)) for s, b in entry["open"].items()}


def carried(entry: dict[str, Any]) -> int:
    """The key's carried balance (<= 0); BatchError if the stored one is not."""
    value = entry.get("carried_minor", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value > 0:
        raise BatchError(f"{entry.get('merchant_id')}|{entry.get('currency')}: carried "
                         f"balance must be an int <= 0, got {value!r}")
    return value


def new_entry(partition: int, merchant_id: str, currency: str) -> dict[str, Any]:
    return {"v": ENTRY_FORMAT_VERSION, "partition": partition, "merchant_id": merchant_id,
            "currency": currency, "open": {}, "carried_minor": 0,
            "last_closed_start_ms": None, "last_closed_at_ms": None, "recent": []}


def migrate_entry(
    store: MutableMapping[str, Any], index: ItemIndex, bkey: str, raw: dict[str, Any],
    partition: int,
) -> dict[str, Any]:
    """An entry of an older format in the current one, written back.

    Version 1: its items (and closed batches' ids) move to their own keys. Version 2: its
    closed windows get carried_in 0 and the key a carried balance of 0 (nothing was carried
    before refunds existed); its item records are read as they are (no kind: PAYMENT).
    """
    version = raw.get("v")
    if version is None:
        raw = _migrate_v1(store, index, bkey, raw, partition)
    elif version != 2:
        raise BatchError(f"{bkey}: unknown entry format version {version!r}")
    migrated = {
        **raw, "v": ENTRY_FORMAT_VERSION, "carried_minor": 0,
        "open": {s: BatchTotals.from_dict(b).to_dict() for s, b in raw["open"].items()},
        "recent": [[start, count, 0] for start, count in raw["recent"]],
    }
    store[bkey] = migrated  # after the items, as on every add
    log.info("settle: migrated the entry of %s from format %s to %d",
             bkey, version or 1, ENTRY_FORMAT_VERSION)
    return dict(migrated)


def _migrate_v1(
    store: MutableMapping[str, Any], index: ItemIndex, bkey: str, raw: dict[str, Any],
    partition: int,
) -> dict[str, Any]:
    """A version-1 entry as version 2 (not stored): its items under their own keys."""
    windows = index.setdefault(bkey, {})
    open_: dict[str, Any] = {}
    for batch in (OpenBatch.from_dict(b) for b in raw["open"].values()):
        for seq, item in enumerate(batch.items):
            tag = item_tag(item.kind, item.item_id)
            store[item_key(bkey, tag)] = {
                "partition": partition, "key": bkey, "window_start_ms": batch.window_start_ms,
                "seq": seq, "item": item.to_dict()}
            windows.setdefault(batch.window_start_ms, set()).add(tag)
        open_[str(batch.window_start_ms)] = BatchTotals.of(batch).to_dict()
    recent = []
    for start, ids in raw["recent"]:
        for seq, pid in enumerate(ids):
            store[item_key(bkey, pid)] = {
                "partition": partition, "key": bkey, "window_start_ms": start, "seq": seq,
                "item": None}
            windows.setdefault(start, set()).add(pid)
        recent.append([start, len(ids)])
    return {**raw, "v": 2, "open": open_, "recent": recent}


def window_items(
    store: MutableMapping[str, Any], index: ItemIndex, bkey: str, start: int, count: int
) -> tuple[list[BatchItem], list[str]]:
    """(the window's counted items in the order they were added, tags of uncounted ones);
    `count` is the window's item count, every kind."""
    counted_: list[tuple[int, BatchItem]] = []
    uncounted: list[str] = []
    for tag in index.get(bkey, {}).get(start, ()):
        record = store.get(item_key(bkey, tag))
        if record is None or record["window_start_ms"] != start:
            continue  # a stale index entry: the item was re-added to another window
        if record["seq"] >= count or record["item"] is None:
            uncounted.append(tag)
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
        for tag in windows.pop(start, ()):
            ikey = item_key(bkey, tag)
            record = store.get(ikey)
            if record is not None and record["window_start_ms"] == start:
                del store[ikey]
