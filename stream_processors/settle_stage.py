"""Settle, one record or tick at a time: itemize MATCHED results, batch them per window, close."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from schemas.codec import AvroDeserializer, AvroSerializer, RegistryPrefetch, to_epoch_ms
from schemas.errors import DecodeError, RegistryUnavailable
from settlement.batches import (
    BatchError,
    BatchItem,
    BatchTotals,
    OpenBatch,
    SettlementBatch,
    due_batches,
)
from settlement.errors import SettleError
from settlement.fees import FeeSchedule
from settlement.reconciliation import MATCHED
from settlement.windows import WindowPolicy, assign_window, window_for
from stream_processors.dead_letters import DeadLetters, error_label
from stream_processors.outputs import SOURCE_HEADER, Output, now_ms, source_ref
from stream_processors.ticks import DeadlineQueue
from stream_processors.transient import is_transient

log = logging.getLogger(__name__)

STAGE: Final = "settle"
ITEM_FORMAT_VERSION: Final = 1
# Version 2: items under their own keys, totals only in the entry; version 1 (no "v") kept
# every item in the entry and is migrated on its key's next event.
ENTRY_FORMAT_VERSION: Final = 2
ITEM_KEY_SEP: Final = "\x00"

# What became of one input (the `settle_stage_records_total` outcome label).
ITEMIZED: Final = "itemized"  # a MATCHED result became a settlement item
IGNORED: Final = "ignored"  # any other result: nothing to settle
ADDED: Final = "added"  # an item joined an open batch
DUPLICATE: Final = "duplicate"  # an item already batched (a replay): dropped and counted
TICKED: Final = "ticked"
DEAD_LETTERED: Final = "dead_lettered"

TICK_KEYS_MAX: Final = 5_000
TICK_RETRY_MS: Final = 60_000
# Batches closed by recent ticks, per partition: {"partition": p, "outbox": [[tick ref,
# [[batch key, window start, closed at], ...]], ...]}. faust changelogs the table and sends
# the batches through one producer without a transaction; a worker that dies after a close
# reached the changelog re-reads the tick and, from this, re-publishes what it closed
# (same batch_id; the settlement sink dedupes on it). The key has neither "|" nor NUL, so it
# is never a batch or item key.
TICK_OUTBOX_KEY: Final = "tick-outbox#"
TICK_OUTBOX_KEEP: Final = 16
# faust's default producer_max_request_size; a bigger record fails in the producer after the
# table has changed, so a batch whose record would not fit is not closed (see _tick_key).
DEFAULT_MAX_BATCH_BYTES: Final = 1_000_000
RECORD_OVERHEAD_BYTES: Final = 512  # record and batch headers, generously


class BadItem(SettleError, ValueError):
    """A record cannot become (or is not) a valid settlement item."""

    reason = "BAD_ITEM"


class NotCopartitioned(SettleError, ValueError):
    """An item's merchant+currency is kept on another partition than the one it arrived on."""

    reason = "NOT_COPARTITIONED"


@dataclass(slots=True)
class SettleDecision:
    """What became of one input record or tick."""

    outcome: str
    outputs: list[Output] = field(default_factory=list)
    closed: list[SettlementBatch] = field(default_factory=list)
    # (batch key, window start, closed at) of each batch closed, for the tick outbox.
    closed_windows: list[list[Any]] = field(default_factory=list)
    error_type: str | None = None
    tick_errors: int = 0


def batch_key(merchant_id: str, currency: str) -> str:
    """Table and repartition key: one merchant and currency, hence one partition."""
    return f"{merchant_id}|{currency}"


class SettleProcessor:
    """The settle stage without faust: a dict for the table in tests, a faust Table live.

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

    Never twice: an item is dropped when its counted record exists, whatever window a replay
    would now be assigned. Closed windows keep their items' records as long as they are in
    `recent` (the key's last `ids_windows` closed batches, at most `ids_max` ids). The bound:
    a replay re-delivers records read after the last committed offset, which precede any
    record that arrives after them in the partition, so it can only meet batches that were
    open before the crash and closed since. Those are at most the windows open at once, about
    grace / window size + 1 (2 with the defaults); 4 leaves room. A replay older than that (or
    past ids_max) is caught by the settlement sink's unique payment_id per batch item. Never
    lost: assign_window sends an item whose window has closed to the next open one.

    Failure policy: undecodable or invalid records -> dead letter; RegistryUnavailable is
    raised before anything is written so the caller retries; ticks never raise.
    """

    def __init__(
        self,
        registry: Any,
        store: MutableMapping[str, Any],
        windows: WindowPolicy,
        fees: FeeSchedule,
        topics: Any,
        items_topic: str,
        tick_topic: str,
        ids_windows: int = 4,
        ids_max: int = 100_000,
        idle_evict_ms: int = 24 * 3600 * 1000,
        clock: Callable[[], int] = now_ms,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        self._store = store
        self._windows = windows
        self._fees = fees
        self._topics = topics
        self.items_topic = items_topic
        self.tick_topic = tick_topic
        self._ids_windows = ids_windows
        self._ids_max = ids_max
        self._idle_evict_ms = idle_evict_ms
        self._clock = clock
        self._max_batch_bytes = max_batch_bytes
        self._decoder = AvroDeserializer(registry)
        self._batch_ser = AvroSerializer(registry, topics.batches, "SettlementBatch")
        self._dlq = DeadLetters(registry, topics.dlq, STAGE)
        # Both agents: the items agent's values are JSON, which needs no registry.
        self.prefetch = RegistryPrefetch([self._decoder], [self._batch_ser, self._dlq.serializer])
        self.deadlines = DeadlineQueue(self._scan)
        self._open: dict[int, dict[str, int]] = {}  # partition -> key -> open batches
        # key -> window start -> payment ids with a record in the table (open windows and
        # those in `recent`). Rebuilt with the deadlines; may hold stale ids (an item re-added
        # to another window), so readers check each record's window.
        self._index: dict[str, dict[int, set[str]]] = {}
        # The table's entries grouped by partition, read in one pass by the first scan after a
        # rebalance and handed out to each partition's scan: one O(table) pass, not one per
        # partition. Still current when a partition's turn comes, as a partition's keys change
        # only in its own events, and its first event scans before it changes anything.
        self._unscanned: dict[int, list[tuple[str, Any]]] | None = None
        # (key, window start) -> when to try again to close a batch too big to send.
        self._retry_at: dict[tuple[str, int], int] = {}

    # -- agent 1: reconciliation.results -> items ---------------------------------------------

    def on_result(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> SettleDecision:
        ref = source_ref(topic, partition, offset).encode()
        try:
            record = self._decoder.decode(value)
            if record.get("outcome") != MATCHED or not record.get("terminal"):
                return SettleDecision(IGNORED)
            item, bkey = self._item(record)
        except RegistryUnavailable:
            raise
        except (DecodeError, BatchError, BadItem, KeyError, TypeError, ValueError) as exc:
            log.warning("settle: dead-lettering %s: %s", ref.decode(), exc)
            return self._dead_letter(key, value, topic, partition, offset, exc)
        except Exception as exc:  # per-event catch: an escaped exception skips the event
            if is_transient(exc):
                raise  # the agent retries the event (see stream_processors.transient)
            log.exception("settle: cannot itemize %s", ref.decode())
            return self._dead_letter(key, value, topic, partition, offset, exc)
        out = Output(self.items_topic, bkey.encode(), json.dumps(item).encode(),
                     ((SOURCE_HEADER, ref),))
        return SettleDecision(ITEMIZED, [out])

    def _item(self, record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        merchant_id, currency = record.get("merchant_id"), record.get("expected_currency")
        gross, channel = record.get("expected_amount_minor"), record.get("channel")
        if not merchant_id or not currency or gross is None or not channel:
            raise BadItem(f"MATCHED result {record.get('result_id')!r} lacks merchant, "
                          "currency, amount or channel")
        _check_text(merchant_id, currency, record["payment_id"])
        fee, net = record.get("fee_minor"), record.get("net_minor")
        if fee is None or net is None:
            # Results written before the reconciler computed fees: same schedule, same split.
            fee = self._fees.fee_for(str(channel).lower(), gross)
            net = gross - fee
        item = BatchItem(record["payment_id"], gross, fee, net, to_epoch_ms(record["decided_at"]))
        body = {"v": ITEM_FORMAT_VERSION, "merchant_id": merchant_id, "currency": currency,
                "result_id": record["result_id"], "item": item.to_dict()}
        return body, batch_key(merchant_id, currency)

    # -- agent 2: items and ticks -> batches --------------------------------------------------

    def process(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> SettleDecision:
        ref = source_ref(topic, partition, offset).encode()
        if topic == self.tick_topic:
            return self.on_tick(partition, ref)
        try:
            return self._on_item(key, value, partition)
        except RegistryUnavailable:
            raise
        except (BatchError, BadItem, NotCopartitioned, KeyError, TypeError, ValueError) as exc:
            log.warning("settle: dead-lettering %s: %s", ref.decode(), exc)
            return self._dead_letter(key, value, topic, partition, offset, exc)
        except Exception as exc:
            if is_transient(exc):
                raise  # the agent retries the event (see stream_processors.transient)
            log.exception("settle: cannot batch %s", ref.decode())
            return self._dead_letter(key, value, topic, partition, offset, exc)

    def _on_item(self, key: bytes | None, value: bytes | None, partition: int) -> SettleDecision:
        body = json.loads(value or b"")
        if not isinstance(body, dict) or body.get("v") != ITEM_FORMAT_VERSION:
            raise BadItem(f"not a settlement item: {str(value)[:200]}")
        item = BatchItem.from_dict(body["item"])
        merchant_id, currency = body["merchant_id"], body["currency"]
        _check_text(merchant_id, currency, item.payment_id)
        bkey = batch_key(merchant_id, currency)
        if key is not None and key != bkey.encode():
            raise BadItem(f"key {key!r} is not {bkey!r}")
        self.deadlines.ensure(partition)
        entry = self._load(bkey, partition) or _new_entry(partition, merchant_id, currency)
        ikey = item_key(bkey, item.payment_id)
        stored = self._store.get(ikey)
        if stored is not None and _counted(entry, stored):
            return SettleDecision(DUPLICATE)
        last_closed = entry["last_closed_start_ms"]
        window = assign_window(
            item.matched_at_ms,
            self._clock(),
            self._windows,
            closed=lambda start: last_closed is not None and start <= last_closed,
        )
        batches = _open_totals(entry)
        totals = batches.get(window.start_ms) or BatchTotals.new(merchant_id, currency, window)
        # The item first, the entry last: the entry is the commit point (see the class doc).
        self._store[ikey] = {"partition": partition, "key": bkey,
                             "window_start_ms": window.start_ms, "seq": totals.payment_count,
                             "item": item.to_dict()}
        self._index.setdefault(bkey, {}).setdefault(window.start_ms, set()).add(item.payment_id)
        batches[window.start_ms] = totals.add(item)
        self._save(bkey, entry, batches, partition)
        return SettleDecision(ADDED)

    def on_tick(self, partition: int, ref: bytes = b"tick") -> SettleDecision:
        """Close this partition's due batches and evict idle keys; never raises.

        A tick read again after a crash (its closes reached the changelog, maybe not the
        batches topic) re-publishes the batches it closed, rebuilt from their stored items
        with the same closing time: the same records (see TICK_OUTBOX_KEY).
        """
        now = self._clock()
        decision = SettleDecision(TICKED)
        outbox_key = f"{TICK_OUTBOX_KEY}{partition}"
        outbox = self._store.get(outbox_key)
        replay = _tick_replay(outbox, ref)
        if replay is not None:
            self._republish(partition, replay, ref, decision)
            return decision
        try:
            due = self.deadlines.pop_due(partition, now, TICK_KEYS_MAX)
        except Exception:  # a tick is never dead-lettered; the next one tries again
            log.exception("settle: cannot rebuild the deadlines of partition %d", partition)
            decision.tick_errors += 1
            return decision
        for n, bkey in enumerate(due):
            try:
                self._tick_key(bkey, partition, now, ref, decision)
            except RegistryUnavailable as exc:
                # This key and every key not reached yet (popped with it) stay due.
                log.warning("settle: registry unavailable during a tick: %s", exc)
                for later in due[n:]:
                    self.deadlines.schedule(partition, later, now)
                decision.tick_errors += 1
                break
            except Exception:
                log.exception("settle: tick failed for %s; retrying in %d ms", bkey, TICK_RETRY_MS)
                self.deadlines.schedule(partition, bkey, now + TICK_RETRY_MS)
                decision.tick_errors += 1
        if decision.closed_windows:
            entries = list((outbox or {}).get("outbox", []))[-(TICK_OUTBOX_KEEP - 1):]
            self._store[outbox_key] = {
                "partition": partition,
                "outbox": [*entries, [ref.decode(), decision.closed_windows]]}
        return decision

    def _republish(self, partition: int, closed: list[list[Any]], ref: bytes,
                   decision: SettleDecision) -> None:
        """Rebuild and re-send the batches a replayed tick had closed."""
        self.deadlines.ensure(partition)  # the item index of the partition, after a restart
        for bkey, start, closed_at in closed:
            entry = self._store.get(bkey)
            if not isinstance(entry, dict):
                log.error("settle: cannot re-publish batch %s@%s: its key is gone", bkey, start)
                continue
            count = next((n for s_, n in entry.get("recent", []) if s_ == start), None)
            if count is None:
                log.error("settle: cannot re-publish batch %s@%s: no longer remembered",
                          bkey, start)
                continue
            window = window_for(start, self._windows)
            totals = BatchTotals.new(entry["merchant_id"], entry["currency"], window)
            items, _uncounted = self._window_items(
                bkey, replace(totals, payment_count=count))
            for item in items:
                totals = totals.add(item)
            batch = totals.close(closed_at, items)
            decision.outputs.append(Output(
                self._topics.batches, batch.batch_id.encode(),
                self._batch_ser.encode(_avro_batch(batch)), ((SOURCE_HEADER, ref),)))
            decision.closed.append(batch)

    def _tick_key(
        self, bkey: str, partition: int, now: int, ref: bytes, decision: SettleDecision
    ) -> None:
        entry = self._load(bkey, partition)
        if entry is None:
            self._open.get(partition, {}).pop(bkey, None)
            self._index.pop(bkey, None)
            return
        batches = _open_totals(entry)
        due = [b for b in due_batches(batches.values(), now, self._windows)
               if self._retry_at.get((bkey, b.window_start_ms), now) <= now]
        # Read and check every item, then encode, before changing anything: a registry error
        # or a broken invariant leaves the table as it was, and the next try does the same.
        closing = []
        outputs = []
        closed = []
        for totals in due:
            items, uncounted = self._window_items(bkey, totals)
            batch = totals.close(now, items)
            out = Output(self._topics.batches, batch.batch_id.encode(),
                         self._batch_ser.encode(_avro_batch(batch)), ((SOURCE_HEADER, ref),))
            if self._record_bytes(out) > self._max_batch_bytes:
                # Sending it would fail after the table changed, and the batch would be lost.
                # It stays open (new items go to the next window) and is retried later.
                log.error(
                    "settle: batch %s (%d items) is a %d-byte record, over the producer's %d: "
                    "raise max.message.bytes of the batches topic and the worker's "
                    "producer_max_request_size; retrying in %d ms", batch.batch_id,
                    batch.payment_count, self._record_bytes(out), self._max_batch_bytes,
                    TICK_RETRY_MS)
                self._retry_at[(bkey, totals.window_start_ms)] = now + TICK_RETRY_MS
                decision.tick_errors += 1
                continue
            closing.append((totals, uncounted))
            outputs.append(out)
            closed.append(batch)
        index = self._index.setdefault(bkey, {})
        recent = [list(r) for r in entry["recent"]]
        for totals, uncounted in closing:
            for pid in uncounted:  # an event whose entry write was lost: its replay re-adds
                del self._store[item_key(bkey, pid)]
                index[totals.window_start_ms].discard(pid)
            del batches[totals.window_start_ms]
            self._retry_at.pop((bkey, totals.window_start_ms), None)
            last = entry["last_closed_start_ms"]
            entry["last_closed_start_ms"] = (
                totals.window_start_ms if last is None else max(last, totals.window_start_ms)
            )
            entry["last_closed_at_ms"] = now
            recent.append([totals.window_start_ms, totals.payment_count])
            decision.closed_windows.append([bkey, totals.window_start_ms, now])
        decision.outputs.extend(outputs)
        decision.closed.extend(closed)
        if not batches and self._idle_since(entry) + self._idle_evict_ms <= now:
            self._drop_items(bkey, list(index))  # recent windows, and any orphan's
            del self._store[bkey]
            self._open.get(partition, {}).pop(bkey, None)
            self._index.pop(bkey, None)
        elif closing:
            kept = self._trim(recent)
            self._drop_items(bkey, [start for start, _n in recent[: len(recent) - len(kept)]])
            entry["recent"] = kept
            self._save(bkey, entry, batches, partition)
        else:  # early or idle: nothing to write, only the next deadline
            self.deadlines.schedule(partition, bkey, self._next_due(bkey, entry, batches))

    @staticmethod
    def _record_bytes(out: Output) -> int:
        return (len(out.key or b"") + len(out.value or b"") + RECORD_OVERHEAD_BYTES
                + sum(len(k) + len(v) for k, v in out.headers))

    def _window_items(
        self, bkey: str, totals: BatchTotals
    ) -> tuple[list[BatchItem], list[str]]:
        """(the window's counted items in the order they were added, ids of uncounted ones)."""
        start = totals.window_start_ms
        counted: list[tuple[int, BatchItem]] = []
        uncounted: list[str] = []
        for pid in self._index.get(bkey, {}).get(start, ()):
            record = self._store.get(item_key(bkey, pid))
            if record is None or record["window_start_ms"] != start:
                continue  # a stale index entry: the item was re-added to another window
            if record["seq"] >= totals.payment_count or record["item"] is None:
                uncounted.append(pid)
            else:
                counted.append((record["seq"], BatchItem.from_dict(record["item"])))
        counted.sort(key=lambda pair: pair[0])
        return [item for _seq, item in counted], uncounted

    def _drop_items(self, bkey: str, starts: list[int]) -> None:
        """Delete the item records of these (closed) windows of the key."""
        index = self._index.get(bkey, {})
        for start in starts:
            for pid in index.pop(start, ()):
                ikey = item_key(bkey, pid)
                record = self._store.get(ikey)
                if record is not None and record["window_start_ms"] == start:
                    del self._store[ikey]

    def forget_partitions(self) -> None:
        """Drop in-memory indexes (on rebalance); each partition is rebuilt on its next event."""
        self.deadlines.forget()
        self._open.clear()
        self._index.clear()
        self._unscanned = None
        self._retry_at.clear()

    def open_batches(self) -> int:
        return sum(sum(keys.values()) for keys in self._open.values())

    def __len__(self) -> int:
        return len(self._store)

    # -- state --------------------------------------------------------------------------------

    def _load(self, bkey: str, partition: int) -> dict[str, Any] | None:
        """A copy of the key's entry in the current format, or None."""
        raw = self._store.get(bkey)
        if raw is None:
            return None
        if raw["partition"] != partition:
            raise NotCopartitioned(f"{bkey} is kept on partition {raw['partition']}, "
                                   f"record is on {partition}")
        if raw.get("v") != ENTRY_FORMAT_VERSION:
            return self._migrate(bkey, raw, partition)
        # A shallow copy: the live value changes only by re-assignment (faust changelogs only
        # those), and nested values are replaced, never changed in place.
        return dict(raw)

    def _migrate(self, bkey: str, raw: dict[str, Any], partition: int) -> dict[str, Any]:
        """Move a version-1 entry's items (and closed batches' ids) to their own keys."""
        if raw.get("v") is not None:
            raise BatchError(f"{bkey}: unknown entry format version {raw.get('v')!r}")
        index = self._index.setdefault(bkey, {})
        open_: dict[str, Any] = {}
        for batch in (OpenBatch.from_dict(b) for b in raw["open"].values()):
            for seq, item in enumerate(batch.items):
                self._store[item_key(bkey, item.payment_id)] = {
                    "partition": partition, "key": bkey, "window_start_ms": batch.window_start_ms,
                    "seq": seq, "item": item.to_dict()}
                index.setdefault(batch.window_start_ms, set()).add(item.payment_id)
            open_[str(batch.window_start_ms)] = BatchTotals.of(batch).to_dict()
        recent = []
        for start, ids in raw["recent"]:
            for seq, pid in enumerate(ids):
                self._store[item_key(bkey, pid)] = {
                    "partition": partition, "key": bkey, "window_start_ms": start, "seq": seq,
                    "item": None}
                index.setdefault(start, set()).add(pid)
            recent.append([start, len(ids)])
        migrated = {**raw, "v": ENTRY_FORMAT_VERSION, "open": open_, "recent": recent}
        self._store[bkey] = migrated  # after the items, as on every add
        log.info("settle: moved the items of %s to their own keys (entry format %d)",
                 bkey, ENTRY_FORMAT_VERSION)
        return dict(migrated)

    def _save(
        self, bkey: str, entry: dict[str, Any], batches: dict[int, BatchTotals], partition: int
    ) -> None:
        entry["open"] = {str(start): b.to_dict() for start, b in sorted(batches.items())}
        self._store[bkey] = entry
        self.deadlines.schedule(partition, bkey, self._next_due(bkey, entry, batches))
        self._open.setdefault(partition, {})[bkey] = len(batches)

    def _next_due(
        self, bkey: str, entry: dict[str, Any], batches: dict[int, BatchTotals]
    ) -> int | None:
        if batches:
            return min(max(b.close_at_ms(self._windows),
                           self._retry_at.get((bkey, b.window_start_ms), 0))
                       for b in batches.values())
        return self._idle_since(entry) + self._idle_evict_ms

    @staticmethod
    def _idle_since(entry: dict[str, Any]) -> int:
        return int(entry.get("last_closed_at_ms") or 0)

    def _trim(self, recent: list[list[Any]]) -> list[list[Any]]:
        recent = recent[-self._ids_windows :]
        while len(recent) > 1 and sum(n for _s, n in recent) > self._ids_max:
            recent = recent[1:]
        return recent

    def _scan(self, partition: int) -> list[tuple[str, int | None]]:
        """Rebuild a partition's deadlines, open-batch counts and item index from the table.

        The first scan after a rebalance or restart reads the whole table once (O(table)).
        """
        if self._unscanned is None:
            self._unscanned = {}
            for key, raw in list(self._store.items()):
                if isinstance(raw, dict) and isinstance(raw.get("partition"), int):
                    self._unscanned.setdefault(raw["partition"], []).append((key, raw))
        out: list[tuple[str, int | None]] = []
        counts = self._open.setdefault(partition, {})
        for key, raw in self._unscanned.pop(partition, []):
            if key.startswith(TICK_OUTBOX_KEY):
                continue
            if ITEM_KEY_SEP in key:
                windows = self._index.setdefault(raw["key"], {})
                windows.setdefault(raw["window_start_ms"], set()).add(
                    key.partition(ITEM_KEY_SEP)[2])
                continue
            try:
                batches = _open_totals(raw)
            except Exception:
                log.exception("settle: unreadable entry for %s", key)
                continue
            counts[key] = len(batches)
            out.append((key, self._next_due(key, raw, batches)))
        return out

    def _dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        exc: BaseException,
    ) -> SettleDecision:
        out = self._dlq.letter(key, value, topic, partition, offset, exc, self._clock())
        return SettleDecision(DEAD_LETTERED, [out], error_type=error_label(exc))


def _tick_replay(outbox: Any, ref: bytes) -> list[list[Any]] | None:
    """The batches the tick at `ref` closed, if this partition already processed that tick."""
    if not isinstance(outbox, dict):
        return None
    wanted = ref.decode()
    for source, closed in outbox.get("outbox", ()):
        if source == wanted:
            return [list(c) for c in closed]
    return None


def item_key(bkey: str, payment_id: str) -> str:
    """Table key of one batched payment. Neither part holds ITEM_KEY_SEP (checked on input),
    so the key is unambiguous and never equal to a batch key."""
    return f"{bkey}{ITEM_KEY_SEP}{payment_id}"


def _check_text(merchant_id: Any, currency: Any, payment_id: Any) -> None:
    for name, value in (("merchant_id", merchant_id), ("currency", currency),
                        ("payment_id", payment_id)):
        if not isinstance(value, str) or ITEM_KEY_SEP in value:
            raise BadItem(f"{name} must be a string without NUL, got {value!r}")
    if "|" in currency:
        raise BadItem(f"currency must not contain '|', got {currency!r}")


def _counted(entry: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether an item record is part of the key's batches (see the class doc)."""
    start = record["window_start_ms"]
    totals = entry["open"].get(str(start))
    if totals is not None:
        return bool(record["seq"] < totals["payment_count"])
    return any(s == start for s, _n in entry["recent"])


def _open_totals(entry: dict[str, Any]) -> dict[int, BatchTotals]:
    """The entry's open batches by window start (a version-1 entry's too, for the scan)."""
    if entry.get("v") == ENTRY_FORMAT_VERSION:
        return {int(s): BatchTotals.from_dict(b) for s, b in entry["open"].items()}
    return {int(s): BatchTotals.of(OpenBatch.from_dict(b)) for s, b in entry["open"].items()}


def _new_entry(partition: int, merchant_id: str, currency: str) -> dict[str, Any]:
    return {"v": ENTRY_FORMAT_VERSION, "partition": partition, "merchant_id": merchant_id,
            "currency": currency, "open": {}, "last_closed_start_ms": None,
            "last_closed_at_ms": None, "recent": []}


def _avro_batch(batch: SettlementBatch) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        "merchant_id": batch.merchant_id,
        "currency": batch.currency,
        "window_start": batch.window_start_ms,
        "window_end": batch.window_end_ms,
        "payment_count": batch.payment_count,
        "gross_minor": batch.gross_minor,
        "fee_minor": batch.fee_minor,
        "net_minor": batch.net_minor,
        "closed_at": batch.closed_at_ms,
        "items": [
            {"payment_id": i.payment_id, "gross_minor": i.gross_minor, "fee_minor": i.fee_minor,
             "net_minor": i.net_minor, "matched_at": i.matched_at_ms}
            for i in batch.items
        ],
    }
