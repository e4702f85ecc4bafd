"""A plain confluent-kafka client, written from the README alone, plays a channel adapter
reporting chargebacks.

Nothing of this project's code writes the disputes: the client fetches the ChannelDispute value
schema from the registry by subject, encodes the Confluent wire format with fastavro and
produces with librdkafka's default partitioner (CRC32, so a record usually lands on another
partition than the pipeline's murmur2 one). The real reconcile worker must hold the disputed
amount, take it when the dispute is lost, ignore a redelivered record, and reject what cannot
apply (a closed dispute changed again, a dispute of an unknown payment) with reason codes.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer

from infra.admin import admin_client, create_topics, delete_topics
from infra.config import Settings
from infra.registry import registry_client
from schemas.registry.registration import register_all
from schemas.topics import TOPIC_RECORDS, TopicNames
from tests.support.stages import READY_TIMEOUT_S, Publisher, Topics, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MERCHANT = "m-1"
DAY_MS = 86_400_000


class PlainClient:
    """What a channel adapter has: the broker address and the registry URL."""

    def __init__(self, bootstrap: str, registry_url: str) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.producer = Producer({"bootstrap.servers": bootstrap})  # default partitioner
        self._schemas: dict[str, tuple[int, Any]] = {}

    def _schema(self, topic: str) -> tuple[int, Any]:
        if topic not in self._schemas:
            url = f"{self.registry_url}/subjects/{topic}-value/versions/latest"
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.loads(resp.read())
            self._schemas[topic] = (doc["id"], fastavro.parse_schema(json.loads(doc["schema"])))
        return self._schemas[topic]

    def send(self, topic: str, key: str, record: dict[str, Any]) -> None:
        schema_id, schema = self._schema(topic)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, record)
        value = b"\x00" + struct.pack(">I", schema_id) + body.getvalue()
        self.producer.produce(topic, key=key.encode(), value=value)

    def flush(self) -> None:
        assert self.producer.flush(15) == 0


def dispute(pid: str, event_id: str, status: str, **over: Any) -> dict[str, Any]:
    """A ChannelDispute as the README lists its fields."""
    now = int(time.time() * 1000)
    record = {
        "event_id": event_id, "dispute_id": "dp-plain-1", "channel": "CARD",
        "channel_dispute_id": "cb-7731", "payment_id": pid, "stage": "DISPUTE",
        "status": status, "amount_minor": 3000, "currency": "CNY", "funds_withdrawn": True,
        "fee_minor": 1500, "reason_code": "10.4", "respond_by": now + 7 * DAY_MS,
        "occurred_at": now,
    }
    return record | over


@pytest.fixture()
def pipeline(stack: Settings, tmp_path: Path) -> Iterator[tuple[TopicNames, Settings]]:
    prefix = f"it-dispute-{uuid.uuid4().hex[:8]}."
    create_topics(stack.kafka, name_prefix=prefix)
    with registry_client(stack) as registry:  # `settle schemas register`, for the prefix
        register_all(registry, {prefix + t: r for t, r in TOPIC_RECORDS.items()})
    env = {**os.environ, "SETTLE_TOPIC_PREFIX": prefix,
           "SETTLE_FAUST_DATA_DIR": str(tmp_path / "faust"), "SETTLE_TICK_INTERVAL_MS": "500"}
    worker = Worker("reconcile", env, tmp_path / "reconcile.log")
    try:
        worker.wait_ready(READY_TIMEOUT_S)
        yield TopicNames(prefix), stack
    finally:
        worker.stop()
        names = admin_client(stack.kafka).list_topics(timeout=15).topics
        delete_topics(stack.kafka, [n for n in names if n.startswith(prefix)])


def test_a_plain_client_reports_a_chargeback_from_the_readme_alone(
    pipeline: tuple[TopicNames, Settings],
) -> None:
    topics, settings = pipeline
    registry = registry_client(settings)
    ours = Publisher(settings, registry, topics)  # the payment itself, through the pipeline
    reader = Topics(settings, registry)
    client = PlainClient(settings.kafka.bootstrap_servers, settings.registry.url)
    pid = f"pay-{uuid.uuid4().hex[:8]}"
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    try:
        ours.routed(pid, MERCHANT, "card", 5000)
        ours.confirm(pid, "c-1", "card", 5000)
        ours.flush()
        reader.poll_until(topics.results, lambda rs: any(r["payment_id"] == pid for r in rs), 60)

        client.send(topics.disputes, pid, dispute(pid, "ev-1", "OPENED"))
        client.send(topics.disputes, pid, dispute(pid, "ev-1", "OPENED"))  # redelivered
        client.send(topics.disputes, pid, dispute(pid, "ev-2", "LOST", stage="PRE_ARBITRATION"))
        client.send(topics.disputes, pid, dispute(pid, "ev-3", "WON"))  # after lost
        client.send(topics.disputes, ghost, dispute(ghost, "ev-9", "OPENED"))
        client.flush()

        answers = reader.poll_until(topics.dispute_results, lambda rs: len(rs) >= 4, 90)
        time.sleep(2)  # nothing more may come (the redelivery is ignored)
        answers = reader.poll_until(topics.dispute_results, lambda rs: False, 1)
        mine = [r for r in answers if r["payment_id"] == pid]
        assert [r["event"] for r in mine] == ["OPENED", "LOST", "REJECTED"]
        opened, lost, rejected = mine
        assert (opened["result_id"], opened["merchant_id"], opened["channel"]) == (
            f"{pid}/dp-plain-1:OPENED:ev-1", MERCHANT, "CARD")
        assert (opened["amount_minor"], opened["held_minor"], opened["refundable_minor"],
                opened["captured_minor"], opened["funds_withdrawn"]) == (3000, 3000, 2000, 5000,
                                                                          True)
        assert (lost["fee_minor"], lost["held_minor"], lost["disputed_lost_minor"],
                lost["refundable_minor"], lost["stage"]) == (1500, 0, 3000, 2000,
                                                             "PRE_ARBITRATION")
        assert [r["code"] for r in rejected["reasons"]] == ["DISPUTE_ALREADY_CLOSED"]
        assert all(r["_key"] == pid.encode() for r in mine)
        [unknown] = [r for r in answers if r["payment_id"] == ghost]
        assert unknown["event"] == "REJECTED" and unknown["merchant_id"] is None
        assert [r["code"] for r in unknown["reasons"]] == ["PAYMENT_UNKNOWN"]

        # What is lost to the dispute is no longer refundable.
        ours.refund(pid, "rf-after-dispute", MERCHANT, 2001)
        ours.flush()
        [refused] = reader.poll_until(topics.refunds_rejected, lambda rs: len(rs) >= 1, 60)
        # (unsigned here: a signature code may stand beside it, as the worker's keyring says)
        assert "REFUND_EXCEEDS_REFUNDABLE" in [r["code"] for r in refused["reasons"]]
    finally:
        reader.close()
        registry.close()
