"""The reconcile stage's harness (a processor on an in-memory table and registry) and a
registry that can be taken down, for the unit tests."""

from __future__ import annotations

from typing import Any

from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.errors import RegistryUnavailable
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.fees import FeeSchedule
from settlement.reconciliation import ReconPolicy
from stream_processors.reconcile import ReconcileProcessor, ReconDecision

T0 = 1_764_000_000_000
SLA_MS = 30_000
GRACE_MS = 20_000
RETAIN_MS = 60_000
TOPICS = TopicNames()
TICKS = "settle-reconcile-ticks"
FEES = FeeSchedule.from_spec("alipay=60,card=180")


class Harness:
    def __init__(self, registry: InMemoryRegistry | None = None) -> None:
        self.now = T0
        self.registry = registry or InMemoryRegistry()
        self.store: dict[str, Any] = {}
        policy = ReconPolicy({"card": 60_000}, SLA_MS, GRACE_MS, RETAIN_MS)
        self.proc = ReconcileProcessor(
            self.registry, self.store, policy, FEES, TOPICS, TICKS, clock=lambda: self.now
        )
        self.routed_ser = {
            ch: AvroSerializer(self.registry, TOPICS.routed(ch), "RoutedPayment")
            for ch in TOPICS.channels
        }
        self.conf_ser = AvroSerializer(self.registry, TOPICS.confirmations, "ChannelConfirmation")
        self.refund_ser = AvroSerializer(self.registry, TOPICS.refunds_requested,
                                         "RefundRequested")
        self.refund_conf_ser = AvroSerializer(self.registry, TOPICS.refund_confirmations,
                                              "ChannelRefundConfirmation")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0
        self.fed: dict[int, tuple[bytes | None, bytes | None, str, int]] = {}

    def feed(self, topic: str, value: bytes | None, key: bytes | None, partition: int = 0
             ) -> ReconDecision:
        self.offset += 1
        self.fed[self.offset] = (key, value, topic, partition)
        return self.proc.process(key, value, topic, partition, self.offset)

    def replay(self, offset: int) -> ReconDecision:
        """The record at `offset` read again, as after a crash before the commit."""
        key, value, topic, partition = self.fed[offset]
        return self.proc.process(key, value, topic, partition, offset)

    def routed(self, pid: str = "p-1", channel: str = "alipay", partition: int = 0,
               on_topic: str | None = None, **over: Any) -> ReconDecision:
        rec = {
            "payment_id": pid, "merchant_id": "m-1", "order_id": "o-1", "payer_id": "u-1",
            "amount_minor": 1000, "currency": "CNY", "method": "ALIPAY", "interface": "APP",
            "region": "CN", "created_at": self.now - 500, "metadata": {},
            "channel": channel.upper(), "rule_id": "r-1", "routed_at": self.now,
        }
        rec.update(over)
        topic = TOPICS.routed(on_topic or channel)
        return self.feed(topic, self.routed_ser[channel].encode(rec), pid.encode(), partition)

    def confirm(self, cid: str, pid: str = "p-1", channel: str = "alipay", partition: int = 0,
                **over: Any) -> ReconDecision:
        rec = {
            "confirmation_id": cid, "channel": channel.upper(), "channel_txn_id": f"t-{cid}",
            "payment_id": pid, "status": "SUCCEEDED", "amount_minor": 1000, "currency": "CNY",
            "confirmed_at": self.now, "decline_code": None,
        }
        rec.update(over)
        return self.feed(TOPICS.confirmations, self.conf_ser.encode(rec), pid.encode(), partition)

    def refund(self, rid: str, amount: int = 400, pid: str = "p-1", partition: int = 0,
               **over: Any) -> ReconDecision:
        rec = {
            "refund_id": rid, "payment_id": pid, "merchant_id": "m-1", "amount_minor": amount,
            "currency": "CNY", "reason": None, "requested_at": self.now, "metadata": {},
            "signature_key_id": None, "signature": None,
        }
        rec.update(over)
        return self.feed(TOPICS.refunds_requested, self.refund_ser.encode(rec), pid.encode(),
                         partition)

    def refund_answer(self, rid: str, amount: int = 400, pid: str = "p-1",
                      channel: str = "alipay", partition: int = 0, cid: str | None = None,
                      **over: Any) -> ReconDecision:
        rec = {
            "confirmation_id": cid or f"rc-{rid}", "channel": channel.upper(),
            "refund_id": rid, "payment_id": pid, "channel_refund_id": f"cr-{rid}",
            "status": "SUCCEEDED", "amount_minor": amount, "currency": "CNY",
            "confirmed_at": self.now, "decline_code": None,
        }
        rec.update(over)
        return self.feed(TOPICS.refund_confirmations, self.refund_conf_ser.encode(rec),
                         pid.encode(), partition)

    def decoded(self, d: ReconDecision, topic: str) -> list[dict[str, Any]]:
        return [self.decoder.decode(o.value) for o in d.outputs if o.topic == topic]

    def tick(self, partition: int = 0) -> ReconDecision:
        return self.feed(TICKS, str(self.now).encode(), b"tick", partition)

    def results(self, d: ReconDecision) -> list[dict[str, Any]]:
        """The decision's reconciliation results (beside them: only the case events of the
        exceptions they opened)."""
        assert all(o.topic in (TOPICS.results, TOPICS.case_events) for o in d.outputs)
        return self.decoded(d, TOPICS.results)

    def case_events(self, d: ReconDecision) -> list[dict[str, Any]]:
        return self.decoded(d, TOPICS.case_events)



class FlakyRegistry(InMemoryRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def register(self, subject: str, schema_str: str) -> int:
        if self.down:
            raise RegistryUnavailable("registry down (test)")
        return super().register(subject, schema_str)

    def get_schema(self, schema_id: int) -> str:
        if self.down:
            raise RegistryUnavailable("registry down (test)")
        return super().get_schema(schema_id)
