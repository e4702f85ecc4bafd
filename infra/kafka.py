"""The one place where confluent-kafka clients are configured: every option set on purpose."""

from __future__ import annotations

import socket
from typing import Any

from confluent_kafka import Consumer, Producer

from infra.config import KafkaSettings


def producer_config(
    settings: KafkaSettings, client_id: str, **overrides: Any
) -> dict[str, Any]:
    """An idempotent producer: acks from all in-sync replicas, no reordering on retry."""
    conf: dict[str, Any] = {
        **settings.client_config(),
        "client.id": f"{settings.client_id_prefix}-{client_id}-{socket.gethostname()}",
        # Idempotence makes a retried send land exactly once per partition and keeps order;
        # it requires acks=all and at most 5 in-flight requests, set here explicitly.
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        # librdkafka's default partitioner (CRC32) differs from the Java and aiokafka one
        # (murmur2), which faust uses for the routed topics. The stages move a record that is
        # not on its payment_id's murmur2 partition (stream_processors.placement); the
        # pipeline's own producers use murmur2 so that theirs never need the extra hop.
        "partitioner": "murmur2_random",
        "compression.type": settings.compression,
        "linger.ms": settings.producer_linger_ms,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 200000,
        # Give up on a message after two minutes and say so through the delivery report,
        # instead of buffering forever while the broker is away.
        "message.timeout.ms": 120000,
    }
    conf.update(overrides)
    return conf


def consumer_config(
    settings: KafkaSettings, group_id: str, **overrides: Any
) -> dict[str, Any]:
    """A consumer that reads only committed records and commits offsets only when told to."""
    conf: dict[str, Any] = {
        **settings.client_config(),
        "group.id": group_id,
        "client.id": f"{settings.client_id_prefix}-{group_id}-{socket.gethostname()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Skip records of aborted transactions (faust may produce transactionally).
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
    }
    conf.update(overrides)
    return conf


def make_producer(settings: KafkaSettings, client_id: str, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, client_id, **overrides))


def make_consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **overrides))
