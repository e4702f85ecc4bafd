"""The settle stage without a broker: a dict table that logs its changelog, and a harness
driving SettleProcessor with payment and refund results (and their reversals), dispute
results, items and ticks on a fake clock."""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.fees import FeeSchedule
from settlement.windows import WindowPolicy
from stream_processors.outputs import Output
from stream_processors.settle_stage import (
    ITEMIZED,
    TICK_OUTBOX_KEY,
    SettleDecision,
    SettleProcessor,
)
from stream_processors.settle_table import ITEM_KEY_SEP

__all__ = ["FEES", "GRACE_S", "ITEMS", "NO_DISPUTES", "POLICY", "SIZE_S", "TICKS",
           "TICK_OUTBOX_KEY", "TOPICS", "W0", "Changelog", "Harness", "remembered"]

SIZE_S, GRACE_S = 10, 5
POLICY = WindowPolicy(SIZE_S, GRACE_S, 0)
W0 = 1_764_000_000_000  # a window start (divisible by 10 s)
TOPICS = TopicNames()
ITEMS = "settle-settle-items"
TICKS = "settle-settle-ticks"
FEES = FeeSchedule.from_spec("alipay=60,card=180")
# batch_amounts of a batch without dispute items: its dispute labels at 0.
NO_DISPUTES = {f"dispute_{kind}_{part}": 0 for kind in ("hold", "release", "fee")
               for part in ("gross", "fee", "net")}


def remembered(store: dict[str, Any]) -> set[str]:
    """The payment ids with an item record in the table."""
    return {key.partition(ITEM_KEY_SEP)[2] for key in store if ITEM_KEY_SEP in key}


class Changelog(dict[str, Any]):
    """A dict table that also logs what faust would send to the changelog topic: each set as
    the table's JSON value serializer encodes it, each delete as a tombstone (None)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, bytes | None]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, codecs.dumps("json", value)))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((key, None))
        super().__delitem__(key)

    def restored(self, upto: int | None = None) -> Changelog:
        """The table a restarted worker recovers from (a prefix of) the log: last write per
        key wins, tombstones delete. Keys are inserted in reverse order, so nothing may rely
        on the order a store iterates in (rocksdb iterates in key order, not write order)."""
        state: dict[str, bytes] = {}
        for key, raw in self.log[:upto]:
            if raw is None:
                state.pop(key, None)
            else:
                state[key] = raw
        out = Changelog()
        for key in sorted(state, reverse=True):
            dict.__setitem__(out, key, codecs.loads("json", state[key]))
        out.log = list(state.items())  # the compacted changelog the next restart reads
        return out


class Harness:
    def __init__(
        self, ids_windows: int = 4, ids_max: int = 100_000, store: Changelog | None = None,
        max_batch_bytes: int = 1_000_000,
    ) -> None:
        self.now = W0
        self.registry = InMemoryRegistry()
        self.store = Changelog() if store is None else store
        self.proc = SettleProcessor(
            self.registry, self.store, POLICY, FEES, TOPICS, ITEMS, TICKS,
            ids_windows=ids_windows, ids_max=ids_max, idle_evict_ms=60_000,
            clock=lambda: self.now, max_batch_bytes=max_batch_bytes,
        )
        self.result_ser = AvroSerializer(self.registry, TOPICS.results, "ReconciliationResult")
        self.refund_ser = AvroSerializer(self.registry, TOPICS.refund_results, "RefundResult")
        self.dispute_ser = AvroSerializer(self.registry, TOPICS.dispute_results,
                                          "DisputeResult")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0

    def result(self, pid: str, **over: Any) -> SettleDecision:
        rec = {
            "result_id": f"{pid}:MATCHED:c-{pid}", "payment_id": pid, "merchant_id": "m-1",
            "channel": "ALIPAY", "outcome": "MATCHED", "terminal": True, "late": False,
            "expected_amount_minor": 1000, "expected_currency": "CNY",
            "confirmed_amount_minor": 1000, "confirmed_currency": "CNY",
            "confirmation_id": f"c-{pid}", "channel_txn_id": "t", "created_at": self.now - 10,
            "decided_at": self.now, "detail": "", "fee_minor": 6, "net_minor": 994,
        }
        rec.update(over)
        self.offset += 1
        return self.proc.on_result(pid.encode(), self.result_ser.encode(rec), TOPICS.results,
                                   0, self.offset)

    def refund(self, pid: str, rid: str, amount: int = 400, fee_returned: int = 2,
               **over: Any) -> SettleDecision:
        """A RefundResult (MATCHED unless told) read from refunds.results."""
        rec = {
            "result_id": f"{pid}/{rid}:MATCHED:rc-{rid}", "refund_id": rid, "payment_id": pid,
            "merchant_id": "m-1", "order_id": f"o-{pid}", "channel": "ALIPAY",
            "outcome": "MATCHED", "terminal": True, "late": False, "amount_minor": amount,
            "currency": "CNY", "confirmed_amount_minor": amount, "confirmed_currency": "CNY",
            "confirmation_id": f"rc-{rid}", "channel_refund_id": f"cr-{rid}",
            "fee_returned_minor": fee_returned, "net_minor": amount - fee_returned,
            "captured_minor": 1000, "refunded_minor": amount, "refundable_minor": 1000 - amount,
            "requested_at": self.now - 50, "decided_at": self.now, "detail": "",
        }
        rec.update(over)
        self.offset += 1
        return self.proc.on_result(pid.encode(), self.refund_ser.encode(rec),
                                   TOPICS.refund_results, 0, self.offset)

    def payment_reversal(self, pid: str, gross: int = 1000, fee: int = 6,
                         **over: Any) -> SettleDecision:
        """A PAYMENT_REVERSED ReconciliationResult (the channel took pid's capture back), as
        the reconcile stage publishes it: the payment's own split, terminal=false."""
        return self.result(pid, **{
            "result_id": f"{pid}:PAYMENT_REVERSED:rv-{pid}", "outcome": "PAYMENT_REVERSED",
            "terminal": False, "expected_amount_minor": gross, "confirmed_amount_minor": gross,
            "confirmation_id": f"rv-{pid}", "fee_minor": fee, "net_minor": gross - fee,
            **over})

    def refund_reversal(self, pid: str, rid: str, amount: int = 400, fee_returned: int = 2,
                        **over: Any) -> SettleDecision:
        """A REFUND_REVERSED RefundResult (refund rid of pid came back to the channel): the
        refund's own split, terminal=false, the amount refundable again."""
        return self.refund(pid, rid, amount, fee_returned, **{
            "result_id": f"{pid}/{rid}:REFUND_REVERSED:rv-{rid}", "outcome": "REFUND_REVERSED",
            "terminal": False, "confirmation_id": f"rv-{rid}", "refunded_minor": 0,
            "refundable_minor": 1000, **over})

    def manual(self, pid: str, settled: int = 950, fee: int = 6, **over: Any
               ) -> SettleDecision:
        """A MATCHED_MANUAL ReconciliationResult: pid force-matched at the confirmed `settled`
        (expected 1000), fee and net split at that amount."""
        return self.result(pid, **{
            "result_id": f"{pid}:MATCHED_MANUAL:a-{pid}", "outcome": "MATCHED_MANUAL",
            "confirmed_amount_minor": settled, "settled_amount_minor": settled,
            "fee_minor": fee, "net_minor": settled - fee, "case_id": f"CS-{pid}",
            "operator": "alice", **over})

    def dispute(self, pid: str, did: str, event: str = "OPENED", amount: int = 300,
                fee: int = 0, **over: Any) -> SettleDecision:
        """A DisputeResult read from disputes.results."""
        status = {"OPENED": "OPENED", "WON": "WON", "LOST": "LOST",
                  "STAGE_CHANGED": "OPENED", "REJECTED": "OPENED"}[event]
        rec = {
            "result_id": f"{pid}/{did}:{event}:e-{did}-{event}", "dispute_id": did,
            "payment_id": pid, "merchant_id": "m-1", "order_id": f"o-{pid}",
            "channel": "CARD", "channel_dispute_id": f"cb-{did}", "event": event,
            "stage": "DISPUTE", "status": status, "amount_minor": amount, "currency": "CNY",
            "funds_withdrawn": True, "fee_minor": fee, "reasons": [], "captured_minor": 1000,
            "held_minor": amount if event == "OPENED" else 0, "disputed_lost_minor": 0,
            "refundable_minor": 1000 - amount, "occurred_at": self.now - 5,
            "decided_at": self.now, "detail": "",
        }
        rec.update(over)
        self.offset += 1
        return self.proc.on_result(pid.encode(), self.dispute_ser.encode(rec),
                                   TOPICS.dispute_results, 0, self.offset)

    def settle_dispute(self, pid: str, did: str, event: str = "OPENED", **over: Any
                       ) -> SettleDecision:
        d = self.dispute(pid, did, event, **over)
        assert d.outcome == ITEMIZED, d
        return self.item(d.outputs[0])

    def settle_payment_reversal(self, pid: str, **over: Any) -> SettleDecision:
        d = self.payment_reversal(pid, **over)
        assert d.outcome == ITEMIZED, d
        return self.item(d.outputs[0])

    def settle_refund_reversal(self, pid: str, rid: str, **over: Any) -> SettleDecision:
        d = self.refund_reversal(pid, rid, **over)
        assert d.outcome == ITEMIZED, d
        return self.item(d.outputs[0])

    def settle_refund(self, pid: str, rid: str, **over: Any) -> SettleDecision:
        d = self.refund(pid, rid, **over)
        assert d.outcome == ITEMIZED, d
        return self.item(d.outputs[0])

    def item(self, out: Output, partition: int = 0) -> SettleDecision:
        self.offset += 1
        return self.proc.process(out.key, out.value, ITEMS, partition, self.offset)

    def settle(self, pid: str, **over: Any) -> SettleDecision:
        d = self.result(pid, **over)
        assert d.outcome == ITEMIZED, d
        return self.item(d.outputs[0])

    def tick(self, partition: int = 0) -> SettleDecision:
        self.offset += 1
        return self.proc.process(b"tick", str(self.now).encode(), TICKS, partition, self.offset)

    def batches(self, d: SettleDecision) -> list[dict[str, Any]]:
        assert all(o.topic == TOPICS.batches for o in d.outputs)
        return [self.decoder.decode(o.value) for o in d.outputs]

    def restart(self, upto: int | None = None) -> Harness:
        """A new worker (new processor, empty memory) on the table restored from the log."""
        h = Harness(self.proc._ids_windows, self.proc._ids_max, self.store.restored(upto))
        h.now, h.offset = self.now, self.offset
        return h
