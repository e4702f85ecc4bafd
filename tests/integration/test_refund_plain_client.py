"""A plain confluent-kafka client, written from the README alone, refunds a payment.

Nothing of this project's code writes the refund or the channel's answer: the client fetches
the value schema from the registry by subject, encodes the Confluent wire format with fastavro,
signs the canonical form refund-v1 with hmac as the README spells it, and produces with
librdkafka's default partitioner (CRC32, so the record usually lands on another partition than
the pipeline's murmur2 one). It then plays a channel adapter without the simulator: it reads
refunds.routed and answers on channel.refund_confirmations. The real reconcile worker must
route, then refund, the payment; a forged signature must be rejected.
"""

from __future__ import annotations

import hashlib
import hmac
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

MERCHANT = "m-1"  # has a key in the session keyring (tests/conftest.py)


def netstring(text: str) -> bytes:  # README: `<byte length>:<UTF-8 bytes>,`
    data = text.encode("utf-8")
    return str(len(data)).encode() + b":" + data + b","


def sign_refund(r: dict[str, Any], key_id: str, secret_hex: str) -> str:
    fields = ["refund-v1", key_id, r["refund_id"], r["payment_id"], r["merchant_id"],
              str(r["amount_minor"]), r["currency"], str(r["requested_at"]),
              str(len(r["metadata"]))]
    for name, value in sorted(r["metadata"].items()):
        fields += [name, value]
    canonical = b"".join(netstring(f) for f in fields)
    return hmac.new(bytes.fromhex(secret_hex), canonical, hashlib.sha256).hexdigest()


class PlainClient:
    """What a third party has: the broker address, the registry URL, its key."""

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


@pytest.fixture()
def pipeline(stack: Settings, tmp_path: Path) -> Iterator[tuple[TopicNames, Settings]]:
    prefix = f"it-plain-{uuid.uuid4().hex[:8]}."
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


def test_a_plain_client_refunds_a_payment_from_the_readme_alone(
    pipeline: tuple[TopicNames, Settings],
) -> None:
    topics, settings = pipeline
    keyring = json.loads(Path(os.environ["SETTLE_SIGNING_KEYRING"]).read_text())
    key = next(k for k in keyring["keys"] if k["merchant_id"] == MERCHANT)
    registry = registry_client(settings)
    ours = Publisher(settings, registry, topics)  # the payment itself, through the pipeline
    reader = Topics(settings, registry)
    client = PlainClient(settings.kafka.bootstrap_servers, settings.registry.url)
    pid = f"pay-{uuid.uuid4().hex[:8]}"
    try:
        ours.routed(pid, MERCHANT, "card", 5000)
        ours.confirm(pid, "c-1", "card", 5000)
        ours.flush()
        reader.poll_until(topics.results, lambda rs: any(r["payment_id"] == pid for r in rs), 60)

        refund = {"refund_id": "rf-plain-1", "payment_id": pid, "merchant_id": MERCHANT,
                  "amount_minor": 2000, "currency": "CNY", "reason": "size too small",
                  "requested_at": int(time.time() * 1000), "metadata": {"note": "尺码小"}}
        refund["signature_key_id"] = key["key_id"]
        refund["signature"] = sign_refund(refund, key["key_id"], key["secret_hex"])
        forged = {**refund, "refund_id": "rf-plain-2", "signature": "0" * 64}
        client.send(topics.refunds_requested, pid, refund)
        client.send(topics.refunds_requested, pid, forged)
        client.flush()

        [routed] = reader.poll_until(topics.refunds_routed, lambda rs: len(rs) >= 1, 60)
        assert (routed["refund_id"], routed["amount_minor"], routed["channel"]) == (
            "rf-plain-1", 2000, "CARD")
        [rejected] = reader.poll_until(topics.refunds_rejected, lambda rs: len(rs) >= 1, 30)
        assert [r["code"] for r in rejected["reasons"]] == ["SIGNATURE_INVALID"]

        # The channel adapter: no simulator, the same plain client answers the routed refund.
        client.send(topics.refund_confirmations, pid, {
            "confirmation_id": "rc-plain-1", "channel": "CARD", "refund_id": "rf-plain-1",
            "payment_id": pid, "channel_refund_id": "card-r-1", "status": "SUCCEEDED",
            "amount_minor": 2000, "currency": "CNY", "confirmed_at": int(time.time() * 1000),
            "decline_code": None})
        client.flush()
        [result] = reader.poll_until(topics.refund_results, lambda rs: len(rs) >= 1, 60)
        # card 180 bps of 5000 is 90; 2000 back returns round(90 * 0.4) = 36.
        assert (result["outcome"], result["fee_returned_minor"], result["net_minor"]) == (
            "MATCHED", 36, 1964)
        assert (result["refunded_minor"], result["refundable_minor"]) == (2000, 3000)
    finally:
        reader.close()
        registry.close()
