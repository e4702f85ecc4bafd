"""Reconcile and settle workers on the real stack: every outcome, then a closed batch."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.admin import admin_client, create_topics, delete_topics
from infra.config import Settings
from infra.kafka import make_consumer
from infra.registry import registry_client
from schemas.topics import TopicNames
from tests.support.stages import READY_TIMEOUT_S, Publisher, Topics, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SLA_MS = 6_000
GRACE_MS = 6_000
WINDOW_S, WINDOW_GRACE_S = 10, 3

@pytest.fixture()
def pipeline(stack: Settings, tmp_path: Path) -> Iterator[tuple[TopicNames, Settings]]:
    prefix = f"it-recon-{uuid.uuid4().hex[:8]}."
    create_topics(stack.kafka, name_prefix=prefix)
    env = {
        **os.environ,
        "SETTLE_TOPIC_PREFIX": prefix,
        "SETTLE_FAUST_DATA_DIR": str(tmp_path / "faust"),
        "SETTLE_RECON_SLA_MS": str(SLA_MS),
        "SETTLE_ORPHAN_GRACE_MS": str(GRACE_MS),
        "SETTLE_RECON_RETAIN_MS": "120000",
        "SETTLE_WINDOW_SECONDS": str(WINDOW_S),
        "SETTLE_WINDOW_GRACE_SECONDS": str(WINDOW_GRACE_S),
        "SETTLE_TICK_INTERVAL_MS": "500",
        "SETTLE_FEES": "alipay=60,wechat_pay=60,unionpay=45,card=180",
    }
    workers = [Worker(s, env, tmp_path / f"{s}.log") for s in ("reconcile", "settle")]
    try:
        for worker in workers:
            worker.wait_ready(READY_TIMEOUT_S)
        yield TopicNames(prefix), stack
    finally:
        for worker in workers:
            worker.stop()
        names = admin_client(stack.kafka).list_topics(timeout=15).topics
        delete_topics(stack.kafka, [n for n in names if n.startswith(prefix)])


def test_reconcile_and_settle_on_the_real_stack(
    pipeline: tuple[TopicNames, Settings],
) -> None:
    topics, settings = pipeline
    registry = registry_client(settings)
    pub = Publisher(settings, registry, topics)
    reader = Topics(settings, registry)
    run = uuid.uuid4().hex[:6]
    merchant = f"m-{run}"
    pid = {name: f"{name}-{run}" for name in (
        "matched", "declined", "amount", "currency", "missing", "duplicate", "orphan",
        "late", "early")}
    try:
        pub.routed(pid["matched"], merchant, "alipay", 1000)
        pub.confirm(pid["matched"], "c-m", "alipay", 1000)
        pub.confirm(pid["matched"], "c-m", "alipay", 1000)  # redelivered: no second result
        pub.routed(pid["declined"], merchant, "alipay", 1000)
        pub.confirm(pid["declined"], "c-d", "alipay", 1000, status="FAILED")
        pub.routed(pid["amount"], merchant, "unionpay", 1000)
        pub.confirm(pid["amount"], "c-a", "unionpay", 999)
        pub.routed(pid["currency"], merchant, "alipay", 1000)
        pub.confirm(pid["currency"], "c-c", "alipay", 1000, currency="USD")
        pub.routed(pid["missing"], merchant, "alipay", 1000)
        pub.routed(pid["duplicate"], merchant, "alipay", 2000)
        pub.confirm(pid["duplicate"], "c-1", "alipay", 2000)
        pub.confirm(pid["duplicate"], "c-2", "alipay", 2000)
        pub.confirm(pid["orphan"], "c-o", "alipay", 1000)
        pub.routed(pid["late"], merchant, "wechat_pay", 4000)
        pub.confirm(pid["early"], "c-e", "card", 3000)  # before its routed payment
        pub.producer.produce(topics.confirmations, key=b"junk", value=b"not avro")
        pub.flush()
        time.sleep(1.0)
        pub.routed(pid["early"], merchant, "card", 3000)
        pub.flush()

        def has(outcome: str, payment: str) -> Callable[[list[dict[str, Any]]], bool]:
            return lambda rs: any(
                r["outcome"] == outcome and r["payment_id"] == payment for r in rs)

        # The late payment is declared MISSING by a tick, then its confirmation still pays.
        reader.poll_until(topics.results, has("MISSING_CONFIRMATION", pid["late"]), 60)
        pub.confirm(pid["late"], "c-l", "wechat_pay", 4000)
        pub.flush()
        expected = {
            (pid["matched"], "MATCHED"), (pid["declined"], "DECLINED"),
            (pid["amount"], "AMOUNT_MISMATCH"), (pid["currency"], "CURRENCY_MISMATCH"),
            (pid["missing"], "MISSING_CONFIRMATION"), (pid["duplicate"], "MATCHED"),
            (pid["duplicate"], "DUPLICATE_CONFIRMATION"), (pid["orphan"], "ORPHAN_CONFIRMATION"),
            (pid["late"], "MISSING_CONFIRMATION"), (pid["late"], "MATCHED"),
            (pid["early"], "MATCHED"),
        }
        results = reader.poll_until(
            topics.results,
            lambda rs: expected <= {(r["payment_id"], r["outcome"]) for r in rs}, 60)
        time.sleep(2.0)  # anything extra (a second verdict) would arrive now
        results = reader.poll_until(topics.results, lambda rs: False, 1)
        got = sorted((r["payment_id"], r["outcome"]) for r in results)
        assert sorted(expected) == got, got
        by = {(r["payment_id"], r["outcome"]): r for r in results}
        late = by[(pid["late"], "MATCHED")]
        assert late["late"] is True and late["fee_minor"] == 24 and late["net_minor"] == 3976
        assert by[(pid["early"], "MATCHED")]["fee_minor"] == 54  # card: 180 bps of 3000
        assert by[(pid["orphan"], "ORPHAN_CONFIRMATION")]["merchant_id"] is None
        assert all(r["_key"] == r["payment_id"].encode() for r in results)

        letters = reader.poll_until(topics.dlq, lambda ls: len(ls) >= 1, 30)
        assert [(x["stage"], x["original_value"]) for x in letters] == [
            ("reconcile", b"not avro")]

        # Settlement: every MATCHED payment in exactly one closed batch, totals exact.
        matched = {pid["matched"]: (1000, 6), pid["duplicate"]: (2000, 12),
                   pid["early"]: (3000, 54), pid["late"]: (4000, 24)}

        def settled(bs: list[dict[str, Any]]) -> set[str]:
            return {i["payment_id"] for b in bs for i in b["items"]}

        batches = reader.poll_until(
            topics.batches, lambda bs: settled(bs) >= set(matched),
            WINDOW_S + WINDOW_GRACE_S + 30)
        items = [i for b in batches for i in b["items"]]
        assert sorted(i["payment_id"] for i in items) == sorted(matched)  # each once
        for item in items:
            gross, fee = matched[item["payment_id"]]
            assert (item["gross_minor"], item["fee_minor"], item["net_minor"]) == (
                gross, fee, gross - fee)
        for batch in batches:
            assert batch["merchant_id"] == merchant and batch["currency"] == "CNY"
            assert batch["_key"] == batch["batch_id"].encode()
            assert batch["payment_count"] == len(batch["items"])
            assert batch["gross_minor"] == sum(i["gross_minor"] for i in batch["items"])
            assert batch["fee_minor"] == sum(i["fee_minor"] for i in batch["items"])
            assert batch["net_minor"] == batch["gross_minor"] - batch["fee_minor"]
            assert batch["closed_at"] >= batch["window_end"]
        assert sum(b["gross_minor"] for b in batches) == 10_000
        assert sum(b["net_minor"] for b in batches) == 10_000 - 96
        assert len({b["batch_id"] for b in batches}) == len(batches)
    finally:
        reader.close()
        registry.close()


def test_table_changelog_keys_keep_their_bytes_and_values_are_compact(
    pipeline: tuple[TopicNames, Settings],
) -> None:
    """stream_processors.json_codec on the real broker: a non-ASCII payment id's changelog key
    is the standard library's escaped JSON (what every earlier release wrote, so compaction
    and rocksdb lookups still meet the old records), its value orjson's compact JSON."""
    topics, settings = pipeline
    registry = registry_client(settings)
    pub = Publisher(settings, registry, topics)
    reader = Topics(settings, registry)
    pid = f"支付-é-{uuid.uuid4().hex[:6]}"
    changelog = f"{topics.prefix}settle-reconcile-recon-state-changelog"
    consumer = make_consumer(settings.kafka, f"it-read-{uuid.uuid4()}")
    try:
        pub.routed(pid, "m-codec", "alipay", 1000)
        pub.confirm(pid, f"c-{pid}", "alipay", 1000)
        pub.flush()
        results = reader.poll_until(
            topics.results, lambda rs: any(r["payment_id"] == pid for r in rs), 60)
        assert [r["outcome"] for r in results if r["payment_id"] == pid] == ["MATCHED"]
        consumer.subscribe([changelog])
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while len(records) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and msg.key() == json.dumps(pid).encode():
                records.append((msg.key(), msg.value()))
        assert len(records) == 2, f"{len(records)} changelog records under {pid!r}'s old bytes"
        assert records[0][0].isascii() and b"\\u" in records[0][0]
        routed_value, matched_value = (json.loads(value) for _key, value in records)
        assert routed_value["state"]["outcome"] is None
        assert matched_value["state"]["outcome"] == "MATCHED"
        assert all(b'": ' not in value for _key, value in records)  # orjson, not the stdlib
    finally:
        consumer.close()
        reader.close()
        registry.close()
