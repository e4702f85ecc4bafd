"""Settle, one record or tick at a time: itemize MATCHED results, batch them per window, close."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import AvroDeserializer, AvroSerializer, to_epoch_ms
from schemas.errors import DecodeError, RegistryUnavailable
from settlement.batches import BatchError, BatchItem, OpenBatch, SettlementBatch, due_batches
from settlement.errors import SettleError
from settlement.fees import FeeSchedule
from settlement.reconciliation import MATCHED
from settlement.windows import WindowPolicy, assign_window
from stream_processors.dead_letters import DeadLetters, error_label
from stream_processors.ingest import SOURCE_HEADER, Output, now_ms, source_ref
from stream_processors.ticks import DeadlineQueue, items_by_partition

log = logging.getLogger(__name__)

STAGE: Final = "settle"
ITEM_FORMAT_VERSION: Final = 1

# What became of one input (the `settle_stage_records_total` outcome label).
ITEMIZED: Final = "itemized"  # a MATCHED result became a settlement item
IGNORED: Final = "ignored"  # any other result: nothing to settle
ADDED: Final = "added"  # an item joined an open batch
DUPLICATE: Final = "duplicate"  # an item already batched (a replay): dropped and counted
TICKED: Final = "ticked"
DEAD_LETTERED: Final = "dead_lettered"

TICK_KEYS_MAX: Final = 5_000
TICK_RETRY_MS: Final = 60_000


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
    error_type: str | None = None
    tick_errors: int = 0


def batch_key(merchant_id: str, currency: str) -> str:
    """Table and repartition key: one merchant and currency, hence one partition."""
    return f"{merchant_id}|{currency}"


class SettleProcessor:
    """The settle stage without faust: dicts for the table in tests, a faust Table live.

    Table value under batch_key(merchant, currency):
    {"partition", "merchant_id", "currency", "open": {str(window_start_ms): OpenBatch dict},
     "last_closed_start_ms", "last_closed_at_ms", "recent": [[window_start_ms, [ids]], ...]}.

    Never twice: an item is dropped when its payment_id is in any open batch of the key (a
    replay may be assigned another window than the first copy, so checking only the assigned
    batch is not enough) or in `recent`, the ids of the key's last `ids_windows` closed
    batches (at most `ids_max` ids). The bound: a replay re-delivers records read after the
    last committed offset, which precede any record that arrives after them in the partition,
    so it can only meet batches that were open before the crash and closed since. Those are
    at most the windows open at once, about grace / window size + 1 (2 with the defaults);
    4 leaves room. A replay older than that (or past ids_max) is caught by the settlement
    sink's unique payment_id per batch item. Never lost: assign_window sends an item whose
    window has closed to the next open one.

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
        self._decoder = AvroDeserializer(registry)
        self._batch_ser = AvroSerializer(registry, topics.batches, "SettlementBatch")
        self._dlq = DeadLetters(registry, topics.dlq, STAGE)
        self.deadlines = DeadlineQueue(self._scan)
        self._open: dict[int, dict[str, int]] = {}  # partition -> key -> open batches
        # key -> (the "open" dict last written, its batches decoded). Reading a batch back
        # re-validates every item, which dominated the cost of an add; the stored dict's
        # identity proves the cache current (a store that returns copies just misses).
        self._decoded: dict[str, tuple[dict[str, Any], dict[int, OpenBatch]]] = {}
        # key -> (the "recent" list last seen, its ids as a set), same identity rule.
        self._recent: dict[str, tuple[list[Any], frozenset[str]]] = {}

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
            log.exception("settle: cannot batch %s", ref.decode())
            return self._dead_letter(key, value, topic, partition, offset, exc)

    def _on_item(self, key: bytes | None, value: bytes | None, partition: int) -> SettleDecision:
        body = json.loads(value or b"")
        if not isinstance(body, dict) or body.get("v") != ITEM_FORMAT_VERSION:
            raise BadItem(f"not a settlement item: {str(value)[:200]}")
        item = BatchItem.from_dict(body["item"])
        merchant_id, currency = body["merchant_id"], body["currency"]
        bkey = batch_key(merchant_id, currency)
        if key is not None and key != bkey.encode():
            raise BadItem(f"key {key!r} is not {bkey!r}")
        self.deadlines.ensure(partition)
        entry, batches = self._load(bkey, partition)
        entry = entry or _new_entry(partition, merchant_id, currency)
        if any(item.payment_id in b for b in batches.values()) or (
            item.payment_id in self._recent_ids(bkey, entry["recent"])
        ):
            return SettleDecision(DUPLICATE)
        last_closed = entry["last_closed_start_ms"]
        window = assign_window(
            item.matched_at_ms,
            self._clock(),
            self._windows,
            closed=lambda start: last_closed is not None and start <= last_closed,
        )
        batch = batches.get(window.start_ms) or OpenBatch.new(merchant_id, currency, window)
        batches[window.start_ms] = batch.add(item)
        self._save(bkey, entry, batches, partition)
        return SettleDecision(ADDED)

    def on_tick(self, partition: int, ref: bytes = b"tick") -> SettleDecision:
        """Close this partition's due batches and evict idle keys; never raises."""
        now = self._clock()
        decision = SettleDecision(TICKED)
        try:
            due = self.deadlines.pop_due(partition, now, TICK_KEYS_MAX)
        except Exception:  # a tick is never dead-lettered; the next one tries again
            log.exception("settle: cannot rebuild the deadlines of partition %d", partition)
            decision.tick_errors += 1
            return decision
        for bkey in due:
            try:
                self._tick_key(bkey, partition, now, ref, decision)
            except RegistryUnavailable as exc:
                log.warning("settle: registry unavailable during a tick: %s", exc)
                self.deadlines.schedule(partition, bkey, now)
                decision.tick_errors += 1
                break
            except Exception:
                log.exception("settle: tick failed for %s; retrying in %d ms", bkey, TICK_RETRY_MS)
                self.deadlines.schedule(partition, bkey, now + TICK_RETRY_MS)
                decision.tick_errors += 1
        return decision

    def _tick_key(
        self, bkey: str, partition: int, now: int, ref: bytes, decision: SettleDecision
    ) -> None:
        entry, batches = self._load(bkey, partition)
        if entry is None:
            self._open.get(partition, {}).pop(bkey, None)
            return
        due = due_batches(batches.values(), now, self._windows)
        closed = [batch.close(now) for batch in due]
        # Encode all before changing anything: a registry error leaves the entry as it was.
        outputs = [
            Output(self._topics.batches, c.batch_id.encode(),
                   self._batch_ser.encode(_avro_batch(c)), ((SOURCE_HEADER, ref),))
            for c in closed
        ]
        recent = list(entry["recent"])
        for batch in due:
            del batches[batch.window_start_ms]
            last = entry["last_closed_start_ms"]
            entry["last_closed_start_ms"] = (
                batch.window_start_ms if last is None else max(last, batch.window_start_ms)
            )
            entry["last_closed_at_ms"] = now
            recent.append([batch.window_start_ms, [i.payment_id for i in batch.items]])
        entry["recent"] = self._trim(recent)
        decision.outputs.extend(outputs)
        decision.closed.extend(closed)
        if not batches and self._idle_since(entry) + self._idle_evict_ms <= now:
            del self._store[bkey]
            self._open.get(partition, {}).pop(bkey, None)
            self._decoded.pop(bkey, None)
            self._recent.pop(bkey, None)
        elif due:
            self._save(bkey, entry, batches, partition)
        else:  # early or idle: nothing to write, only the next deadline
            self.deadlines.schedule(partition, bkey, self._next_due(entry, batches))

    def forget_partitions(self) -> None:
        """Drop in-memory indexes (on rebalance); each partition is rebuilt on its next event."""
        self.deadlines.forget()
        self._open.clear()
        self._decoded.clear()
        self._recent.clear()

    def open_batches(self) -> int:
        return sum(sum(keys.values()) for keys in self._open.values())

    def __len__(self) -> int:
        return len(self._store)

    # -- state --------------------------------------------------------------------------------

    def _load(
        self, bkey: str, partition: int
    ) -> tuple[dict[str, Any] | None, dict[int, OpenBatch]]:
        """(a copy of the entry, its open batches by window start), or (None, {})."""
        raw = self._store.get(bkey)
        if raw is None:
            return None, {}
        if raw["partition"] != partition:
            raise NotCopartitioned(f"{bkey} is kept on partition {raw['partition']}, "
                                   f"record is on {partition}")
        cached = self._decoded.get(bkey)
        if cached is not None and cached[0] is raw["open"]:
            batches = dict(cached[1])
        else:
            batches = {int(s): OpenBatch.from_dict(b) for s, b in raw["open"].items()}
        # A shallow copy: the live value changes only by re-assignment (faust changelogs only
        # those), and nested values are replaced, never changed in place.
        return dict(raw), batches

    def _save(
        self, bkey: str, entry: dict[str, Any], batches: dict[int, OpenBatch], partition: int
    ) -> None:
        entry["open"] = {str(start): b.to_dict() for start, b in sorted(batches.items())}
        self._store[bkey] = entry
        self._decoded[bkey] = (entry["open"], dict(batches))
        self.deadlines.schedule(partition, bkey, self._next_due(entry, batches))
        self._open.setdefault(partition, {})[bkey] = len(batches)

    def _next_due(self, entry: dict[str, Any], batches: dict[int, OpenBatch]) -> int | None:
        if batches:
            return min(b.close_at_ms(self._windows) for b in batches.values())
        return self._idle_since(entry) + self._idle_evict_ms

    @staticmethod
    def _idle_since(entry: dict[str, Any]) -> int:
        return int(entry.get("last_closed_at_ms") or 0)

    def _recent_ids(self, bkey: str, recent: list[Any]) -> frozenset[str]:
        cached = self._recent.get(bkey)
        if cached is not None and cached[0] is recent:
            return cached[1]
        ids = frozenset(pid for _start, pids in recent for pid in pids)
        self._recent[bkey] = (recent, ids)
        return ids

    def _trim(self, recent: list[list[Any]]) -> list[list[Any]]:
        recent = recent[-self._ids_windows :]
        while len(recent) > 1 and sum(len(ids) for _s, ids in recent) > self._ids_max:
            recent = recent[1:]
        return recent

    def _scan(self, partition: int) -> list[tuple[str, int | None]]:
        """Rebuild a partition's deadlines and open-batch counts from the table."""
        out: list[tuple[str, int | None]] = []
        counts = self._open.setdefault(partition, {})
        for bkey, raw in items_by_partition(self._store, partition):
            try:
                batches = {int(s): OpenBatch.from_dict(b) for s, b in raw["open"].items()}
            except Exception:
                log.exception("settle: unreadable entry for %s", bkey)
                continue
            counts[bkey] = len(batches)
            out.append((bkey, self._next_due(raw, batches)))
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


def _new_entry(partition: int, merchant_id: str, currency: str) -> dict[str, Any]:
    return {"partition": partition, "merchant_id": merchant_id, "currency": currency,
            "open": {}, "last_closed_start_ms": None, "last_closed_at_ms": None, "recent": []}


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
