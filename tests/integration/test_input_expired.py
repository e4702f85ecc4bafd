"""Inputs deleted before validate processed them: counted, logged, and the stage reads on.

The group's committed offset on one partition of payments.requested is set below records
that are then deleted (DeleteRecords, what retention does). At its first rebalance the
validate worker must count them (settle_input_records_expired_total), say so in its log,
read on from the first offset left, and commit again on that partition: before, its commit
floor stayed at the old offset and the partition was never committed past it.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from infra.admin import admin_client
from infra.config import Settings
from infra.kafka import make_consumer
from infra.registry import registry_client
from producers.producer import AvroProducer
from schemas.topics import TopicNames
from settle.audit_ingest import read_topic
from tests.support.stages import _committed, now_ms, payment, start_worker, stop

pytestmark = pytest.mark.integration

METRICS_PORT = 19393


def _routed_keys(stack: Settings, topics: TopicNames) -> list[bytes | None]:
    consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
    try:
        return [r.key for t in topics.all_routed for r in read_topic(consumer, t)]
    finally:
        consumer.close()


def test_inputs_deleted_before_processing_are_counted_and_read_past(
        stack: Settings, prefix: str, tmp_path: Path) -> None:
    topics = TopicNames(prefix)
    group = f"{prefix}settle-validate"
    registry = registry_client(stack)
    pids = [f"{uuid.uuid4().hex[:8]}-ali" for _ in range(16)]
    with AvroProducer(stack.kafka, registry, client_id="test-expired") as producer:
        producer.send(topics.merchants, "m-ok", {
            "merchant_id": "m-ok", "name": "OK", "status": "ACTIVE",
            "settlement_currency": "CNY", "updated_at": now_ms()})
        for pid in pids:
            producer.send(topics.requested, pid, payment(pid))
        producer.flush()

    consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
    try:
        records = list(read_topic(consumer, topics.requested))
    finally:
        consumer.close()
    by_partition: dict[int, list[bytes]] = {}
    for r in records:
        assert r.key is not None
        by_partition.setdefault(r.partition, []).append(r.key)
    victim = max(by_partition, key=lambda p: len(by_partition[p]))
    victim_keys = by_partition[victim]
    assert len(victim_keys) >= 2, by_partition  # 16 keys over 4 partitions

    # The group committed offset 1 on the victim partition, then retention deleted it all.
    committer = make_consumer(stack.kafka, group_id=group)
    try:
        committer.commit(offsets=[TopicPartition(topics.requested, victim, 1)],
                         asynchronous=False)
    finally:
        committer.close()
    admin = admin_client(stack.kafka)
    end = len(victim_keys)
    for future in admin.delete_records([TopicPartition(topics.requested, victim, end)]
                                       ).values():
        future.result(timeout=30)

    log = tmp_path / "validate.log"
    proc = start_worker(prefix, str(log), merchants_wait_s=120, loglevel="info",
                        SETTLE_METRICS_PORT=str(METRICS_PORT))
    try:
        survivors = {k for p, keys in by_partition.items() if p != victim for k in keys}
        deadline = time.monotonic() + 150
        routed: list[bytes | None] = []
        while time.monotonic() < deadline and not survivors <= set(routed):
            routed = _routed_keys(stack, topics)
            time.sleep(1)
        assert survivors <= set(routed), (sorted(survivors - set(routed)),
                                          log.read_text(errors="replace")[-3000:])
        # The deleted requests never reached validate: none of them was routed.
        assert not set(victim_keys) & set(routed)

        # A request re-sent under a deleted payment_id lands on the same partition, past the
        # deleted range: it is routed, and the partition's commit moves past it.
        resent = victim_keys[0].decode()
        with AvroProducer(stack.kafka, registry, client_id="test-expired") as producer:
            producer.send(topics.requested, resent, payment(resent))
            producer.flush()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            committed = _committed(stack, group, topics.requested).get(victim, -1)
            if committed > end and resent.encode() in _routed_keys(stack, topics):
                break
            time.sleep(1)
        assert committed == end + 1, (committed, end, log.read_text(errors="replace")[-3000:])

        page = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics",
                                      timeout=10).read().decode()
    finally:
        stop(proc)
    wanted = (f'settle_input_records_expired_total{{topic="{topics.requested}"}} '
              f'{float(end - 1)}')
    assert wanted in page, [line for line in page.splitlines() if "expired" in line]
    text = log.read_text(errors="replace")
    assert f"retention deleted {end - 1} records this group never processed" in text, \
        text[-3000:]
