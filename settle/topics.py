"""The topic contract: names, partition counts, retention and cleanup, provisioned idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from settle.config import KafkaSettings
from settlement.errors import SettleError

DAY_MS = 24 * 3600 * 1000

CHANNELS = ("alipay", "wechat_pay", "unionpay", "card")

PAYMENTS_REQUESTED = "payments.requested"
PAYMENTS_REJECTED = "payments.rejected"
PAYMENTS_DLQ = "payments.dlq"
CHANNEL_CONFIRMATIONS = "channel.confirmations"
RECONCILIATION_RESULTS = "reconciliation.results"
SETTLEMENTS_BATCHES = "settlements.batches"
MERCHANTS = "merchants"


def routed_topic(channel: str) -> str:
    """The topic a channel's gateway consumes, e.g. ``payments.routed.alipay``."""
    if channel not in CHANNELS:
        raise TopicError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
    return f"payments.routed.{channel}"


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

    def partitions(self, settings: KafkaSettings) -> int:
        if self.partitions_override is not None:
            return self.partitions_override
        return settings.partitions

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
class TopicOutcome:
    name: str
    partitions: int
    action: str  # "created" | "exists" | "mismatch"
    detail: str = ""


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config())


def create_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] = CONTRACT,
    timeout_s: float = 30.0,
    name_prefix: str = "",
) -> list[TopicOutcome]:
    """Create missing topics and check existing ones against the contract (idempotent).

    An existing topic with a different partition count is reported as a mismatch, not
    changed: repartitioning a payment-keyed topic would break co-partitioning and ordering.
    """
    specs = list(specs)
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    outcomes: list[TopicOutcome] = []
    to_create: list[NewTopic] = []
    for spec in specs:
        name = name_prefix + spec.name
        want = spec.partitions(settings)
        if name in existing:
            have = len(existing[name].partitions)
            if have != want:
                outcomes.append(
                    TopicOutcome(name, have, "mismatch", f"has {have} partitions, contract {want}")
                )
            else:
                outcomes.append(TopicOutcome(name, have, "exists"))
            continue
        to_create.append(
            NewTopic(
                name,
                num_partitions=want,
                replication_factor=settings.replication_factor,
                config=spec.configs(),
            )
        )
    if to_create:
        futures = admin.create_topics(to_create, request_timeout=timeout_s)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout_s)
                n = next(t.num_partitions for t in to_create if t.topic == name)
                outcomes.append(TopicOutcome(name, n, "created"))
            except Exception as exc:  # KafkaException wraps the broker's error
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    outcomes.append(TopicOutcome(name, -1, "exists", "created concurrently"))
                else:
                    raise TopicError(f"creating topic {name}: {exc}") from exc
    order = {name_prefix + s.name: i for i, s in enumerate(specs)}
    outcomes.sort(key=lambda o: order.get(o.name, 0))
    return outcomes


def describe_configs(settings: KafkaSettings, name: str, timeout_s: float = 15.0) -> dict[str, str]:
    """The broker's view of a topic's configuration (for tests and ``settle topics list``)."""
    admin = admin_client(settings)
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    fut = admin.describe_configs([resource])[resource]
    entries = fut.result(timeout=timeout_s)
    return {k: v.value for k, v in entries.items() if v.value is not None}


def delete_prefixed_topics(settings: KafkaSettings, prefix: str) -> None:
    """Every topic of an isolated run: the contract's copies, faust's changelog, tick and
    items topics (they carry the prefix too) and Quix Streams' `changelog__<prefix>...`."""
    if not prefix:
        raise TopicError("refusing to delete topics without a prefix")
    names = [t for t in admin_client(settings).list_topics(timeout=15).topics
             if t.startswith((prefix, f"changelog__{prefix}"))]
    delete_topics(settings, names)


def delete_topics(settings: KafkaSettings, names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Delete topics (used by tests for their own per-test topics)."""
    names = list(names)
    if not names:
        return
    admin = admin_client(settings)
    for _name, fut in admin.delete_topics(names, request_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except Exception as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise TopicError(f"deleting topic {_name}: {exc}") from exc
