"""Settle, one record or tick at a time: itemize MATCHED (and MATCHED_MANUAL) payment and
refund results, their reversals and disputes' holds, releases and fees, net them per merchant,
currency and window, close with the carried balance."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import AvroDeserializer, AvroSerializer, RegistryPrefetch
from schemas.errors import DecodeError, RegistryUnavailable
from settlement.batch_items import BatchItem
from settlement.batches import BatchError, BatchTotals, SettlementBatch, due_batches
from settlement.fees import FeeSchedule
from settlement.reconciliation import MATCHED, MATCHED_MANUAL, PAYMENT_REVERSED, REFUND_REVERSED
from settlement.refund_model import (
    ITEM_DISPUTE_FEE,
    ITEM_DISPUTE_HOLD,
    ITEM_DISPUTE_RELEASE,
    ITEM_PAYMENT,
    ITEM_PAYMENT_REVERSAL,
    ITEM_REFUND,
    ITEM_REFUND_REVERSAL,
)
from settlement.windows import WindowPolicy, assign_window, window_for
from stream_processors.dead_letters import DeadLetters, error_label
from stream_processors.errors import NotCopartitioned
from stream_processors.outputs import SOURCE_HEADER, Output, now_ms, source_ref
from stream_processors.replay import tick_replay, with_tick
from stream_processors.settle_records import (
    batch_record,
    dispute_item_message,
    item_message,
    manual_item_message,
    payment_reversal_item_message,
    read_item,
    refund_item_message,
    refund_reversal_item_message,
)
from stream_processors.settle_table import (
    ENTRY_FORMAT_VERSION,
    ITEM_KEY_SEP,
    BadItem,
    ItemIndex,
    carried,
    counted,
    drop_items,
    item_key,
    item_tag,
    migrate_entry,
    new_entry,
    open_totals,
    recent_window,
    window_items,
)
from stream_processors.ticks import TICK_KEYS_MAX, TICK_RETRY_MS, DeadlineQueue
from stream_processors.transient import is_transient

log = logging.getLogger(__name__)

STAGE: Final = "settle"

# What became of one input (the `settle_stage_records_total` outcome label).
# A MATCHED (or MATCHED_MANUAL) or reversed payment or refund, or a dispute's money event,
# became an item.
ITEMIZED: Final = "itemized"
IGNORED: Final = "ignored"  # any other result: nothing to settle
ADDED: Final = "added"  # an item joined an open batch
DUPLICATE: Final = "duplicate"  # an item already batched (a replay): dropped and counted
TICKED: Final = "ticked"
DEAD_LETTERED: Final = "dead_lettered"

# Batches closed by recent ticks, per partition: {"partition": p, "outbox": [[tick ref,
# [[batch key, window start, closed at], ...]], ...]}. faust changelogs the table and sends
# the batches through one producer without a transaction; a worker that dies after a close
# reached the changelog re-reads the tick and, from this, re-publishes what it closed
# (same batch_id; the settlement sink dedupes on it). The key has neither "|" nor NUL, so it
# is never a batch or item key. See stream_processors.replay.
TICK_OUTBOX_KEY: Final = "tick-outbox#"
# faust's default producer_max_request_size; a bigger record fails in the producer after the
# table has changed, so a batch whose record would not fit is not closed (see _tick_key).
DEFAULT_MAX_BATCH_BYTES: Final = 1_000_000
RECORD_OVERHEAD_BYTES: Final = 512  # record and batch headers, generously

# batch_amounts' label prefix of each item kind.
_AMOUNT_PREFIX: Final = {ITEM_PAYMENT: "", ITEM_REFUND: "refund_",
                         ITEM_PAYMENT_REVERSAL: "payment_reversal_",
                         ITEM_REFUND_REVERSAL: "refund_reversal_",
                         ITEM_DISPUTE_HOLD: "dispute_hold_",
                         ITEM_DISPUTE_RELEASE: "dispute_release_",
                         ITEM_DISPUTE_FEE: "dispute_fee_"}


@dataclass(slots=True)
class SettleDecision:
    """What became of one input record or tick."""

    outcome: str
    outputs: list[Output] = field(default_factory=list)
    closed: list[SettlementBatch] = field(default_factory=list)
    # (batch key, window start, closed at) of each batch closed, for the tick outbox.
    closed_windows: list[list[Any]] = field(default_factory=list)
    error_type: str | None = None  # a dead letter's metrics label (dead_letters.error_label)
    tick_errors: int = 0


def batch_amounts(batch: SettlementBatch) -> dict[str, int]:
    """A closed batch's amounts as non-negative counter increments, by kind label: payments'
    gross, fee and net; refunds' refund_gross, refund_fee, refund_net; payment reversals'
    payment_reversal_*; refund reversals' refund_reversal_*; disputes' dispute_hold_*,
    dispute_release_*, dispute_fee_* (all as positive amounts); payout; carried_out (the
    negative balance carried on, as a positive amount)."""
    sums = {f"{prefix}{part}": 0 for prefix in _AMOUNT_PREFIX.values()
            for part in ("gross", "fee", "net")}
    for item in batch.items:
        prefix = _AMOUNT_PREFIX[item.kind]
        sums[f"{prefix}gross"] += abs(item.gross_minor)
        sums[f"{prefix}fee"] += abs(item.fee_minor)
        sums[f"{prefix}net"] += abs(item.net_minor)
    return {**sums, "payout": batch.payout, "carried_out": -batch.carried_out}


class SettleProcessor:
    """The settle stage without faust: a dict for the table in tests, a faust Table live.

    Its table holds an entry per merchant and currency and a record per batched payment; the
    entry is written last and is the commit point (stream_processors.settle_table).

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
        self._index: ItemIndex = {}
        # The table's entries grouped by partition, read in one pass by the first scan after a
        # rebalance and handed out to each partition's scan: one O(table) pass, not one per
        # partition. Still current when a partition's turn comes, as a partition's keys change
        # only in its own events, and its first event scans before it changes anything.
        self._unscanned: dict[int, list[tuple[str, Any]]] | None = None
        # (key, window start) -> when to try again to close a batch too big to send.
        self._retry_at: dict[tuple[str, int], int] = {}

    # -- agent 1: reconciliation, refund and dispute results -> items ------------------------

    def on_result(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> SettleDecision:
        """A terminal MATCHED payment result (reconciliation.results) becomes a PAYMENT item,
        and so does a MATCHED_MANUAL one (at its settled amount); a terminal MATCHED refund
        result (refunds.results) a REFUND item, a PAYMENT_REVERSED result a PAYMENT_REVERSAL
        item, a REFUND_REVERSED one a REFUND_REVERSAL item; a dispute result
        (disputes.results) OPENED a DISPUTE_HOLD, WON a DISPUTE_RELEASE, LOST with a fee a
        DISPUTE_FEE; anything else is IGNORED. All are keyed by merchant|currency, so they net
        in the same batches. A reversal is a record outcome (terminal=false); its flag is not
        looked at, as its money is in the record and the ledger posts it whatever the flag
        says."""
        ref = source_ref(topic, partition, offset).encode()
        try:
            record = self._decoder.decode(value)
            outcome = record.get("outcome")
            matched = outcome == MATCHED and record.get("terminal")
            if topic == self._topics.dispute_results:
                itemized = dispute_item_message(record)
                if itemized is None:
                    return SettleDecision(IGNORED)
                item, bkey = itemized
            elif topic == self._topics.refund_results:
                if matched:
                    item, bkey = refund_item_message(record)
                elif outcome == REFUND_REVERSED:
                    item, bkey = refund_reversal_item_message(record)
                else:
                    return SettleDecision(IGNORED)
            elif matched:
                item, bkey = item_message(record, self._fees)
            elif outcome == MATCHED_MANUAL and record.get("terminal"):
                item, bkey = manual_item_message(record)
            elif outcome == PAYMENT_REVERSED:
                item, bkey = payment_reversal_item_message(record)
            else:
                return SettleDecision(IGNORED)
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
        item, merchant_id, currency, bkey = read_item(key, value)
        self.deadlines.ensure(partition)
        entry = self._load(bkey, partition) or new_entry(partition, merchant_id, currency)
        tag = item_tag(item.kind, item.item_id)
        ikey = item_key(bkey, tag)
        stored = self._store.get(ikey)
        if stored is not None and counted(entry, stored):
            return SettleDecision(DUPLICATE)
        last_closed = entry["last_closed_start_ms"]
        window = assign_window(
            self._not_before_hold(bkey, item),
            self._clock(),
            self._windows,
            closed=lambda start: last_closed is not None and start <= last_closed,
        )
        batches = open_totals(entry)
        totals = batches.get(window.start_ms) or BatchTotals.new(merchant_id, currency, window)
        # The item first, the entry last: the entry is the commit point (see settle_table).
        self._store[ikey] = {"partition": partition, "key": bkey,
                             "window_start_ms": window.start_ms, "seq": totals.item_count,
                             "item": item.to_dict()}
        self._index.setdefault(bkey, {}).setdefault(window.start_ms, set()).add(tag)
        batches[window.start_ms] = totals.add(item)
        self._save(bkey, entry, batches, partition)
        return SettleDecision(ADDED)

    def _not_before_hold(self, bkey: str, item: BatchItem) -> int:
        """The time an item is settled by: its own, except that a dispute's release or fee
        never goes to an earlier window than its hold. A hold that came late went to the
        window open then, which can be after the release's own window: paying the release
        there would pay out, for a while, funds the hold had not yet taken back."""
        if item.kind not in (ITEM_DISPUTE_RELEASE, ITEM_DISPUTE_FEE):
            return item.matched_at_ms
        hold = self._store.get(item_key(bkey, item_tag(ITEM_DISPUTE_HOLD, item.item_id)))
        if not isinstance(hold, dict):
            return item.matched_at_ms  # batched and forgotten long ago, or never held
        return max(item.matched_at_ms, int(hold["window_start_ms"]))

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
        replay = tick_replay(outbox, ref)
        if replay is not None:
            self._republish(partition, [list(c) for c in replay], ref, decision)
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
            self._store[outbox_key] = with_tick(outbox, partition, ref, decision.closed_windows)
        return decision

    def _republish(self, partition: int, closed: list[list[Any]], ref: bytes,
                   decision: SettleDecision) -> None:
        """Rebuild and re-send the batches a replayed tick had closed."""
        self.deadlines.ensure(partition)  # the item index of the partition, after a restart
        for bkey, start, closed_at, *_rest in closed:
            entry = self._store.get(bkey)
            if not isinstance(entry, dict):
                log.error("settle: cannot re-publish batch %s@%s: its key is gone", bkey, start)
                continue
            remembered = recent_window(entry, start)
            if remembered is None:
                log.error("settle: cannot re-publish batch %s@%s: no longer remembered",
                          bkey, start)
                continue
            count, carried_in = remembered
            window = window_for(start, self._windows)
            totals = BatchTotals.new(entry["merchant_id"], entry["currency"], window)
            items, _uncounted = window_items(self._store, self._index, bkey, start, count)
            for item in items:
                totals = totals.add(item)
            # The same items and carried_in: the same payout and carried_out as the first time.
            batch = totals.close(closed_at, items, carried_in)
            decision.outputs.append(Output(
                self._topics.batches, batch.batch_id.encode(),
                self._batch_ser.encode(batch_record(batch)), ((SOURCE_HEADER, ref),)))
            decision.closed.append(batch)

    def _tick_key(
        self, bkey: str, partition: int, now: int, ref: bytes, decision: SettleDecision
    ) -> None:
        entry = self._load(bkey, partition)
        if entry is None:
            self._open.get(partition, {}).pop(bkey, None)
            self._index.pop(bkey, None)
            return
        batches = open_totals(entry)
        due = [b for b in due_batches(batches.values(), now, self._windows)
               if self._retry_at.get((bkey, b.window_start_ms), now) <= now]
        # Read and check every item, then encode, before changing anything: a registry error
        # or a broken invariant leaves the table as it was, and the next try does the same.
        closing = []
        outputs = []
        closed = []
        # The key's carried balance goes through its batches in the order they close.
        balance = carried(entry)
        for totals in due:
            items, uncounted = window_items(self._store, self._index, bkey,
                                            totals.window_start_ms, totals.item_count)
            batch = totals.close(now, items, balance)
            out = Output(self._topics.batches, batch.batch_id.encode(),
                         self._batch_ser.encode(batch_record(batch)), ((SOURCE_HEADER, ref),))
            if self._record_bytes(out) > self._max_batch_bytes:
                # Sending it would fail after the table changed, and the batch would be lost.
                # It stays open (new items go to the next window) and is retried later.
                log.error(
                    "settle: batch %s (%d items) is a %d-byte record, over the producer's %d: "
                    "raise max.message.bytes of the batches topic and the worker's "
                    "producer_max_request_size; retrying in %d ms", batch.batch_id,
                    len(batch.items), self._record_bytes(out),
                    self._max_batch_bytes,
                    TICK_RETRY_MS)
                self._retry_at[(bkey, totals.window_start_ms)] = now + TICK_RETRY_MS
                decision.tick_errors += 1
                continue
            closing.append((totals, uncounted, balance))
            outputs.append(out)
            closed.append(batch)
            balance = batch.carried_out
        index = self._index.setdefault(bkey, {})
        recent = [list(r) for r in entry["recent"]]
        for totals, uncounted, carried_in in closing:
            for tag in uncounted:  # an event whose entry write was lost: its replay re-adds
                del self._store[item_key(bkey, tag)]
                index[totals.window_start_ms].discard(tag)
            del batches[totals.window_start_ms]
            self._retry_at.pop((bkey, totals.window_start_ms), None)
            last = entry["last_closed_start_ms"]
            entry["last_closed_start_ms"] = (
                totals.window_start_ms if last is None else max(last, totals.window_start_ms)
            )
            entry["last_closed_at_ms"] = now
            recent.append([totals.window_start_ms, totals.item_count, carried_in])
            decision.closed_windows.append([bkey, totals.window_start_ms, now])
        entry["carried_minor"] = balance
        decision.outputs.extend(outputs)
        decision.closed.extend(closed)
        if not batches and self._idle_since(entry) + self._idle_evict_ms <= now:
            drop_items(self._store, self._index, bkey, list(index))  # recent, any orphan's
            self._index.pop(bkey, None)
            if balance == 0:
                del self._store[bkey]
                self._open.get(partition, {}).pop(bkey, None)
            elif closing or entry["recent"]:
                # A negative balance is owed by the merchant until a later batch absorbs it:
                # the entry stays (without its closed windows' ids) and waits for an item.
                entry["recent"] = []
                self._save(bkey, entry, batches, partition)
            else:
                self.deadlines.schedule(partition, bkey, None)
        elif closing:
            kept = self._trim(recent)
            drop_items(self._store, self._index, bkey,
                       [r[0] for r in recent[: len(recent) - len(kept)]])
            entry["recent"] = kept
            self._save(bkey, entry, batches, partition)
        else:  # early or idle: nothing to write, only the next deadline
            self.deadlines.schedule(partition, bkey, self._next_due(bkey, entry, batches))

    @staticmethod
    def _record_bytes(out: Output) -> int:
        return (len(out.key or b"") + len(out.value or b"") + RECORD_OVERHEAD_BYTES
                + sum(len(k) + len(v) for k, v in out.headers))

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
            return migrate_entry(self._store, self._index, bkey, raw, partition)
        # A shallow copy: the live value changes only by re-assignment (faust changelogs only
        # those), and nested values are replaced, never changed in place.
        return dict(raw)

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
        if entry.get("carried_minor", 0) and not entry["recent"]:
            return None  # kept for its carried balance, with nothing left to evict
        return self._idle_since(entry) + self._idle_evict_ms

    @staticmethod
    def _idle_since(entry: dict[str, Any]) -> int:
        return int(entry.get("last_closed_at_ms") or 0)

    def _trim(self, recent: list[list[Any]]) -> list[list[Any]]:
        recent = recent[-self._ids_windows :]
        while len(recent) > 1 and sum(r[1] for r in recent) > self._ids_max:
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
                batches = open_totals(raw)
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
