"""The payment flow of a chaos run, published at a steady rate, with storms of bad input
and refunds of a share of its payments (every refund scenario of producers.refund_flow)."""

from __future__ import annotations

import threading
import time

from producers.order_faults import INJECTED_KINDS
from producers.order_flow import FlowStats, RefundSender, publish_order
from producers.orders import VALID, Accounting, OrderMix, SimulatedOrder, generate_orders
from producers.producer import AvroProducer
from producers.refund_flow import RefundMix, RefundPlanner
from settle.chaos.plan import STORM, Plan
from settle.e2e import IsolatedPipeline

# Refunds of 5 % of the valid payments, 3 s after them: during the faults, some meet their
# payment undecided (PAYMENT_NOT_CAPTURED), which is as valid an end as any other.
REFUND_RATIO, REFUND_DELAY_MS = 0.05, 3_000


class Publisher(threading.Thread):
    """Publishes the flow at a steady rate; a storm mixes bad records in (2 per valid one);
    refunds follow their payments and the last ones go out after the last payment."""

    def __init__(self, pipeline: IsolatedPipeline, producer: AvroProducer, plan: Plan,
                 schema_id: int) -> None:
        super().__init__(name="chaos-publisher", daemon=True)
        self.pipeline, self.producer, self.plan = pipeline, producer, plan
        mix = OrderMix(bad_ratio=plan.bad_ratio, duplicate_ratio=0.01, conflict_ratio=0.002,
                       schema_id=schema_id)
        self.orders = generate_orders(plan.seed, plan.count, pipeline.merchants, mix)
        # Storm records: every kind of bad input, ids of their own (another seed's namespace).
        storm_mix = OrderMix(bad_ratio=1.0, bad_kinds=INJECTED_KINDS, schema_id=schema_id)
        storm_total = sum(f.size for f in plan.faults if f.kind == STORM)
        self.storm_orders = generate_orders(plan.seed + 1_000_003, storm_total,
                                            pipeline.merchants, storm_mix)
        self.expected = Accounting()
        self.stats = FlowStats()  # .refunds: the refund requests sent
        self.refunds = RefundSender(
            producer, pipeline.topics.refunds_requested,
            RefundPlanner(plan.seed, RefundMix(ratio=REFUND_RATIO, delay_ms=REFUND_DELAY_MS)),
            self.stats, lambda: time.time_ns() // 1_000_000)
        self.sent = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self.error: BaseException | None = None
        self._storm_left = 0
        self._lock = threading.Lock()

    def storm(self, size: int) -> None:
        with self._lock:
            self._storm_left += size

    def _send(self, order: SimulatedOrder) -> None:
        publish_order(self.producer, self.pipeline.topics.requested, order)
        self.expected.add(order)
        self.sent += 1
        if order.record is not None and order.kind == VALID:
            self.refunds.planner.on_payment(order.record, time.time_ns() // 1_000_000)

    def run(self) -> None:
        try:
            self.started_at = time.monotonic()
            for n, order in enumerate(self.orders):
                delay = self.started_at + n / self.plan.rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._send(order)
                for _ in range(2):
                    with self._lock:
                        if self._storm_left <= 0:
                            break
                        self._storm_left -= 1
                    self._send(next(self.storm_orders))
                self.refunds.send_due()
                self.producer.poll(0)
            # A storm asked for after the last valid record still goes out.
            with self._lock:
                left, self._storm_left = self._storm_left, 0
            for _ in range(left):
                self._send(next(self.storm_orders))
            self.refunds.wait_for_the_rest(time.sleep)
            self.producer.flush(120)
        except BaseException as exc:  # reported by the runner, never swallowed
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
