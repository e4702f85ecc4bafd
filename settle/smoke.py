"""A smoke round trip through the real stack: produce one payment, read it back, compare."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import TopicPartition

from infra.admin import create_topics
from infra.config import Settings
from infra.kafka import make_consumer
from infra.keyring import generate
from infra.registry import registry_client
from producers.producer import AvroProducer, DeliveryReport
from producers.signing import RequestSigner
from schemas.codec import AvroDeserializer
from schemas.registry import register_all
from schemas.topics import PAYMENTS_REQUESTED
from settlement.errors import SettleError
from settlement.model import PaymentRequest
from settlement.signing import verify


class SmokeFailed(SettleError):
    """The round trip did not come back as sent."""


@dataclass(frozen=True, slots=True)
class SmokeResult:
    payment_id: str
    partition: int
    offset: int
    schema_id: int
    elapsed_ms: int

    def summary(self) -> str:
        return (
            f"[green]✓[/] payment {self.payment_id} produced idempotently to "
            f"{PAYMENTS_REQUESTED}[{self.partition}]@{self.offset}, read back and decoded "
            f"with schema id {self.schema_id} in {self.elapsed_ms} ms"
        )


SMOKE_MERCHANT = "m-smoke"


def sample_payment(payment_id: str | None = None) -> dict[str, Any]:
    payment_id = payment_id or f"smoke-{uuid.uuid4()}"
    return {
        "payment_id": payment_id,
        "merchant_id": SMOKE_MERCHANT,
        "order_id": f"o-{payment_id}",
        "payer_id": "payer-1",
        "amount_minor": 12345,
        "currency": "CNY",
        "method": "ALIPAY",
        "interface": "APP",
        "region": "CN",
        "created_at": datetime.now(UTC).replace(microsecond=0),
        "metadata": {"source": "smoke"},
    }


def run_smoke(settings: Settings, timeout_s: float = 30.0) -> SmokeResult:
    started = time.monotonic()
    create_topics(settings.kafka)
    registry = registry_client(settings)
    register_all(registry)
    # A throwaway key for the smoke merchant: this record is never validated, but its
    # signature must survive the round trip byte for byte.
    keyring = generate([SMOKE_MERCHANT])
    record = RequestSigner(keyring).sign_record(sample_payment())
    reports: list[DeliveryReport] = []
    with AvroProducer(settings.kafka, registry, client_id="smoke",
                      on_delivery=reports.append, signer=None) as producer:
        producer.send(PAYMENTS_REQUESTED, record["payment_id"], record)
    if not reports or not reports[0].ok:
        raise SmokeFailed(f"delivery failed: {reports}")
    report = reports[0]

    consumer = make_consumer(settings.kafka, group_id=f"smoke-{uuid.uuid4()}")
    try:
        consumer.assign([TopicPartition(PAYMENTS_REQUESTED, report.partition, report.offset)])
        deadline = time.monotonic() + timeout_s
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        if msg is None or msg.error() is not None:
            raise SmokeFailed(f"no record came back within {timeout_s}s")
    finally:
        consumer.close()
    schema_id, decoded = AvroDeserializer(registry).decode_with_id(msg.value())
    if msg.key() != record["payment_id"].encode():
        raise SmokeFailed(f"key {msg.key()!r} != payment_id {record['payment_id']!r}")
    if decoded != record:
        raise SmokeFailed(f"decoded record differs:\n sent {record}\n got  {decoded}")
    failure = verify(PaymentRequest.from_record(decoded), keyring)
    if failure is not None:
        raise SmokeFailed(f"signature did not survive the round trip: {failure.code}")
    return SmokeResult(
        payment_id=record["payment_id"],
        partition=report.partition,
        offset=report.offset,
        schema_id=schema_id,
        elapsed_ms=int((time.monotonic() - started) * 1000),
    )
