"""Helpers of the stage tests on the real stack: workers as subprocesses, sample payments,
a reader of prefixed topics, a publisher of routed payments and confirmations."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions

from infra.admin import admin_client
from infra.config import REPO_ROOT, Settings
from infra.kafka import make_consumer, make_producer
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.topics import TopicNames

# -- the validate worker and its inputs -------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def start_worker(prefix: str, log_path: str, merchants_wait_s: int = 30,
                 loglevel: str = "warning", **extra_env: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SETTLE_TOPIC_PREFIX": prefix,
           "SETTLE_MERCHANTS_WAIT_S": str(merchants_wait_s), **extra_env}
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        [sys.executable, "-m", "settle.cli", "worker", "validate", "--loglevel", loglevel],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def payment(pid: str, **over: Any) -> dict[str, Any]:
    rec = {
        "payment_id": pid, "merchant_id": "m-ok", "order_id": f"o-{pid}", "payer_id": "u",
        "amount_minor": 2500, "currency": "CNY", "method": "ALIPAY", "interface": "H5",
        "region": "CN", "created_at": now_ms(), "metadata": {"k": "v"},
    }
    rec.update(over)
    return rec


# -- reconcile and settle workers, a topics reader, a publisher -------------------------------


READY_TIMEOUT_S = 90.0

WORKER = """
import sys
import faust
from infra import config
from infra.registry import registry_client
from stream_processors import stages
s = config.load()
ps = s.processor
make = {"reconcile": stages.make_reconcile_app, "settle": stages.make_settle_app}[sys.argv[1]]
app = make(s, ps, registry_client(s))
faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()
"""


class Worker:
    """One stage as a subprocess; its log is kept for the failure message."""

    def __init__(self, stage: str, env: dict[str, str], log_path: Path) -> None:
        self.stage = stage
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, stage],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "[^Worker]: Ready" in self.log_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"{self.stage} worker not ready:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class Topics:
    """Reads a prefixed topic from the beginning, decoding Avro values."""

    def __init__(self, settings: Settings, registry: Any) -> None:
        self._settings = settings
        self._decoder = AvroDeserializer(registry)
        self._consumers: dict[str, Any] = {}
        self.records: dict[str, list[dict[str, Any]]] = {}

    def poll_until(
        self, topic: str, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float
    ) -> list[dict[str, Any]]:
        consumer = self._consumers.get(topic)
        if consumer is None:
            consumer = make_consumer(self._settings.kafka, f"it-read-{uuid.uuid4()}")
            consumer.subscribe([topic])
            self._consumers[topic] = consumer
        records = self.records.setdefault(topic, [])
        deadline = time.monotonic() + timeout_s
        while not done(records) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                records.append({**self._decoder.decode(msg.value()), "_key": msg.key()})
        return records

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()


class Publisher:
    def __init__(self, settings: Settings, registry: Any, topics: TopicNames) -> None:
        self.topics = topics
        self.producer = make_producer(settings.kafka, "it-reconcile")
        self.routed_ser = {
            ch: AvroSerializer(registry, topics.routed(ch), "RoutedPayment")
            for ch in topics.channels
        }
        self.conf_ser = AvroSerializer(registry, topics.confirmations, "ChannelConfirmation")
        self.refund_ser = AvroSerializer(registry, topics.refunds_requested, "RefundRequested")
        self.refund_conf_ser = AvroSerializer(registry, topics.refund_confirmations,
                                              "ChannelRefundConfirmation")

    def refund(self, pid: str, rid: str, merchant: str, amount: int, **over: Any) -> None:
        rec = {
            "refund_id": rid, "payment_id": pid, "merchant_id": merchant,
            "amount_minor": amount, "currency": "CNY", "reason": None,
            "requested_at": time.time_ns() // 1_000_000, "metadata": {},
            "signature_key_id": None, "signature": None, **over,
        }
        self.producer.produce(self.topics.refunds_requested, key=pid.encode(),
                              value=self.refund_ser.encode(rec))

    def refund_answer(self, pid: str, rid: str, cid: str, channel: str, amount: int,
                      status: str = "SUCCEEDED") -> None:
        rec = {
            "confirmation_id": cid, "channel": channel.upper(), "refund_id": rid,
            "payment_id": pid, "channel_refund_id": f"cr-{cid}", "status": status,
            "amount_minor": amount, "currency": "CNY",
            "confirmed_at": time.time_ns() // 1_000_000,
            "decline_code": "05" if status == "FAILED" else None,
        }
        self.producer.produce(self.topics.refund_confirmations, key=pid.encode(),
                              value=self.refund_conf_ser.encode(rec))

    def routed(self, pid: str, merchant: str, channel: str, amount: int) -> None:
        now = time.time_ns() // 1_000_000
        rec = {
            "payment_id": pid, "merchant_id": merchant, "order_id": f"o-{pid}",
            "payer_id": "u-1", "amount_minor": amount, "currency": "CNY", "method": "ALIPAY",
            "interface": "APP", "region": "CN", "created_at": now - 100, "metadata": {},
            "channel": channel.upper(), "rule_id": "it", "routed_at": now,
        }
        self.producer.produce(self.topics.routed(channel), key=pid.encode(),
                              value=self.routed_ser[channel].encode(rec))

    def confirm(self, pid: str, cid: str, channel: str, amount: int, currency: str = "CNY",
                status: str = "SUCCEEDED") -> None:
        rec = {
            "confirmation_id": cid, "channel": channel.upper(), "channel_txn_id": f"t-{cid}",
            "payment_id": pid, "status": status, "amount_minor": amount, "currency": currency,
            "confirmed_at": time.time_ns() // 1_000_000,
            "decline_code": "NSF" if status == "FAILED" else None,
        }
        self.producer.produce(self.topics.confirmations, key=pid.encode(),
                              value=self.conf_ser.encode(rec))

    def flush(self) -> None:
        assert self.producer.flush(15) == 0


# -- consumer groups --------------------------------------------------------------------------


def _committed(stack: Settings, group: str, topic: str) -> dict[int, int]:
    admin = admin_client(stack.kafka)
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    return {tp.partition: tp.offset for tp in result.topic_partitions or []
            if tp.topic == topic and tp.offset >= 0}
