"""Topic provisioning on the broker: the contract's topics created and checked idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from infra.config import KafkaSettings
from schemas.topics import CONTRACT, TopicError, TopicSpec


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
        want = spec.partitions(settings.partitions)
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
