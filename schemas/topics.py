"""The topic contract: names, keys, partitioning, retention, records and subjects."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from settlement.errors import SettleError

ROUTED_TOPIC_PREFIX: Final = "payments.routed."

TOPIC_RECORDS: Final = MappingProxyType(
    {
        "payments.requested": "PaymentRequested",
        "payments.rejected": "PaymentRejected",
        "payments.dlq": "DeadLetter",
        "payments.routed.alipay": "RoutedPayment",
        "payments.routed.wechat_pay": "RoutedPayment",
        "payments.routed.unionpay": "RoutedPayment",
        "payments.routed.card": "RoutedPayment",
        "channel.confirmations": "ChannelConfirmation",
        "reconciliation.results": "ReconciliationResult",
        "settlements.batches": "SettlementBatch",
        "merchants": "Merchant",
        "refunds.requested": "RefundRequested",
        "refunds.rejected": "RefundRejected",
        "refunds.routed": "RoutedRefund",
        "channel.refund_confirmations": "ChannelRefundConfirmation",
        "refunds.results": "RefundResult",
        "channel.disputes": "ChannelDispute",
        "disputes.results": "DisputeResult",
        "cases.actions": "CaseAction",
        "cases.events": "CaseEvent",
    }
)


def value_subject(topic: str) -> str:
    """Return the TopicNameStrategy subject of a topic's values: `<topic>-value`."""
    return f"{topic}-value"


DAY_MS = 24 * 3600 * 1000

CHANNELS = ("alipay", "wechat_pay", "unionpay", "card")

PAYMENTS_REQUESTED = "payments.requested"
PAYMENTS_REJECTED = "payments.rejected"
PAYMENTS_DLQ = "payments.dlq"
CHANNEL_CONFIRMATIONS = "channel.confirmations"
RECONCILIATION_RESULTS = "reconciliation.results"
SETTLEMENTS_BATCHES = "settlements.batches"
MERCHANTS = "merchants"
REFUNDS_REQUESTED = "refunds.requested"
REFUNDS_REJECTED = "refunds.rejected"
# One routed topic for every channel, the channel in the record (refunds are few beside
# payments; a channel's adapter filters on the field).
REFUNDS_ROUTED = "refunds.routed"
REFUND_CONFIRMATIONS = "channel.refund_confirmations"
REFUND_RESULTS = "refunds.results"
# Disputes (chargebacks) and exception cases: keyed by payment_id, decided where the
# payment's state lives.
CHANNEL_DISPUTES = "channel.disputes"
DISPUTE_RESULTS = "disputes.results"
CASE_ACTIONS = "cases.actions"
CASE_EVENTS = "cases.events"


def routed_topic(channel: str) -> str:
    """The topic a channel's gateway consumes: alipay or the Avro symbol ALIPAY ->
    ``payments.routed.alipay``."""
    name = channel.lower()
    if name not in CHANNELS:
        raise TopicError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
    return ROUTED_TOPIC_PREFIX + name


ROUTED_TOPICS = tuple(routed_topic(c) for c in CHANNELS)


class TopicError(SettleError):
    """A topic could not be created or does not match the contract."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic of the contract; ``copartitioned`` topics share the payment-keyed count.

    ``external`` topics are written by clients outside the pipeline (order systems, channel
    adapters, merchant systems), with whatever partitioner their client library defaults to:
    a stage that keeps per-key state moves their misplaced records itself
    (stream_processors.placement), and a stage reading one must be listed in its tests.
    """

    name: str
    retention_ms: int
    cleanup_policy: str = "delete"
    copartitioned: bool = True
    external: bool = False
    partitions_override: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def partitions(self, payment_keyed: int) -> int:
        """This topic's partition count when payment-keyed topics have `payment_keyed`."""
        if self.partitions_override is not None:
            return self.partitions_override
        return payment_keyed

    def configs(self) -> dict[str, str]:
        conf = {"cleanup.policy": self.cleanup_policy, **self.extra}
        if self.cleanup_policy == "delete":
            conf["retention.ms"] = str(self.retention_ms)
        return conf


# Every payment-keyed topic must have the same partition count: the reconciler joins
# payments.routed.* with channel.confirmations through a table lookup, which only works
# when a payment_id lands in the same partition number on both sides.
CONTRACT: tuple[TopicSpec, ...] = (
    TopicSpec(PAYMENTS_REQUESTED, retention_ms=7 * DAY_MS, external=True),
    TopicSpec(PAYMENTS_REJECTED, retention_ms=30 * DAY_MS),
    TopicSpec(PAYMENTS_DLQ, retention_ms=30 * DAY_MS),
    *(TopicSpec(t, retention_ms=7 * DAY_MS) for t in ROUTED_TOPICS),
    TopicSpec(CHANNEL_CONFIRMATIONS, retention_ms=7 * DAY_MS, external=True),
    TopicSpec(RECONCILIATION_RESULTS, retention_ms=30 * DAY_MS),
    # Money back: keyed by payment_id like the payment's own topics, so every decision about
    # one payment's refunds is made in the partition that holds its reconciled state.
    TopicSpec(REFUNDS_REQUESTED, retention_ms=7 * DAY_MS, external=True),
    TopicSpec(REFUNDS_REJECTED, retention_ms=30 * DAY_MS),
    TopicSpec(REFUNDS_ROUTED, retention_ms=7 * DAY_MS),
    TopicSpec(REFUND_CONFIRMATIONS, retention_ms=7 * DAY_MS, external=True),
    TopicSpec(REFUND_RESULTS, retention_ms=30 * DAY_MS),
    TopicSpec(CHANNEL_DISPUTES, retention_ms=30 * DAY_MS, external=True),
    TopicSpec(DISPUTE_RESULTS, retention_ms=90 * DAY_MS),
    # Operators' actions (settle cases, or any client) and the cases' history.
    TopicSpec(CASE_ACTIONS, retention_ms=30 * DAY_MS, external=True),
    TopicSpec(CASE_EVENTS, retention_ms=90 * DAY_MS),
    # Keyed by batch_id, not payment_id, so it need not be co-partitioned.
    TopicSpec(SETTLEMENTS_BATCHES, retention_ms=90 * DAY_MS, copartitioned=False),
    # Compacted: the latest Merchant record per merchant_id is the merchant's state.
    TopicSpec(
        MERCHANTS,
        retention_ms=-1,
        cleanup_policy="compact",
        extra={"min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)},
        external=True,
    ),
)

TOPIC_NAMES = tuple(spec.name for spec in CONTRACT)
# Written by clients outside the pipeline, with any partitioner.
EXTERNAL_TOPICS = tuple(spec.name for spec in CONTRACT if spec.external)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The contract's topic names, each with an optional prefix."""

    prefix: str = ""

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS

    @property
    def requested(self) -> str:
        return self.prefix + PAYMENTS_REQUESTED

    @property
    def rejected(self) -> str:
        return self.prefix + PAYMENTS_REJECTED

    @property
    def dlq(self) -> str:
        return self.prefix + PAYMENTS_DLQ

    @property
    def confirmations(self) -> str:
        return self.prefix + CHANNEL_CONFIRMATIONS

    @property
    def results(self) -> str:
        return self.prefix + RECONCILIATION_RESULTS

    @property
    def batches(self) -> str:
        return self.prefix + SETTLEMENTS_BATCHES

    @property
    def merchants(self) -> str:
        return self.prefix + MERCHANTS

    @property
    def refunds_requested(self) -> str:
        return self.prefix + REFUNDS_REQUESTED

    @property
    def refunds_rejected(self) -> str:
        return self.prefix + REFUNDS_REJECTED

    @property
    def refunds_routed(self) -> str:
        return self.prefix + REFUNDS_ROUTED

    @property
    def refund_confirmations(self) -> str:
        return self.prefix + REFUND_CONFIRMATIONS

    @property
    def refund_results(self) -> str:
        return self.prefix + REFUND_RESULTS

    @property
    def disputes(self) -> str:
        return self.prefix + CHANNEL_DISPUTES

    @property
    def dispute_results(self) -> str:
        return self.prefix + DISPUTE_RESULTS

    @property
    def case_actions(self) -> str:
        return self.prefix + CASE_ACTIONS

    @property
    def case_events(self) -> str:
        return self.prefix + CASE_EVENTS

    def routed(self, channel: str) -> str:
        return self.prefix + routed_topic(channel)

    @property
    def all_routed(self) -> tuple[str, ...]:
        return tuple(self.routed(c) for c in CHANNELS)

    @property
    def external(self) -> tuple[str, ...]:
        """The topics clients outside the pipeline write (any partitioner, any key order)."""
        return tuple(self.prefix + name for name in EXTERNAL_TOPICS)

    @property
    def all(self) -> tuple[str, ...]:
        """Every contract topic under this prefix (tests delete their copies with it)."""
        return tuple(self.prefix + name for name in TOPIC_NAMES)
