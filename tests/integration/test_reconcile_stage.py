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
        # Unsigned refund requests from the test's merchants (signatures: unit tests and e2e).
        "SETTLE_SIGNATURES": "off",
    }
    env.pop("SETTLE_SIGNING_KEYRING", None)
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


def test_refunds_are_decided_reconciled_and_netted_on_the_real_stack(
    pipeline: tuple[TopicNames, Settings],
) -> None:
    """A refund's whole path through the real reconcile and settle workers: decided where
    the payment's state lives, reconciled against the channel's answer, netted into a batch."""
    topics, settings = pipeline
    registry = registry_client(settings)
    pub = Publisher(settings, registry, topics)
    reader = Topics(settings, registry)
    run = uuid.uuid4().hex[:6]
    merchant = f"m-{run}"
    paid, open_, declined = (f"{n}-{run}" for n in ("paid", "open", "declined"))
    try:
        pub.routed(paid, merchant, "alipay", 1000)
        pub.confirm(paid, "c-p", "alipay", 1000)
        pub.routed(declined, merchant, "alipay", 500)
        pub.confirm(declined, "c-d", "alipay", 500, status="FAILED")
        pub.routed(open_, merchant, "card", 700)  # never answered while we refund it
        pub.flush()
        reader.poll_until(topics.results, lambda rs: {r["payment_id"] for r in rs} >= {
            paid, declined}, 60)
        asked = time.time_ns() // 1_000_000
        pub.refund(paid, "r1", merchant, 400, requested_at=asked)
        pub.refund(paid, "r1", merchant, 400, requested_at=asked)  # identical: dropped
        pub.refund(paid, "r1", merchant, 401, requested_at=asked)  # another body: a conflict
        pub.refund(paid, "r2", merchant, 601)  # 400 pending + 601 > 1000
        pub.refund(paid, "r3", f"{merchant}-x", 10)  # another merchant's refund
        pub.refund(declined, "r4", merchant, 100)
        pub.refund(open_, "r5", merchant, 100)
        pub.refund(f"ghost-{run}", "r6", merchant, 100)
        pub.producer.produce(topics.refunds_requested, key=b"junk", value=b"not avro")
        pub.flush()

        routed = reader.poll_until(topics.refunds_routed, lambda rs: len(rs) >= 1, 60)
        assert [(r["payment_id"], r["refund_id"], r["amount_minor"], r["channel"])
                for r in routed] == [(paid, "r1", 400, "ALIPAY")]
        want = {("r1", "DUPLICATE_CONFLICT"), ("r2", "REFUND_EXCEEDS_REFUNDABLE"),
                ("r3", "MERCHANT_MISMATCH"), ("r4", "PAYMENT_NOT_CAPTURED"),
                ("r5", "PAYMENT_NOT_CAPTURED"), ("r6", "PAYMENT_UNKNOWN")}
        rejected = reader.poll_until(topics.refunds_rejected, lambda rs: want <= {
            (r["refund_id"], c["code"]) for r in rs for c in r["reasons"]}, 60)
        assert len(rejected) == len(want)
        assert all(r["_key"] == r["payment_id"].encode() for r in rejected)
        letters = reader.poll_until(topics.dlq, lambda ls: len(ls) >= 1, 30)
        assert [x["original_value"] for x in letters] == [b"not avro"]

        pub.refund_answer(paid, "r1", "rc-1", "alipay", 400)
        pub.refund_answer(paid, "r1", "rc-1", "alipay", 400)  # redelivered
        pub.refund_answer(paid, "r1", "rc-2", "alipay", 400)  # a second answer
        pub.refund_answer(paid, "zz", "rc-3", "alipay", 5)  # no such refund
        pub.flush()
        results = reader.poll_until(topics.refund_results, lambda rs: len(rs) >= 3, 60)
        time.sleep(2.0)
        results = reader.poll_until(topics.refund_results, lambda rs: False, 1)
        assert sorted((r["refund_id"], r["outcome"]) for r in results) == [
            ("r1", "DUPLICATE_CONFIRMATION"), ("r1", "MATCHED"), ("zz", "ORPHAN_CONFIRMATION")]
        ok = next(r for r in results if r["outcome"] == "MATCHED")
        # 60 bps of 1000 is 6; 400 back returns round(6 * 0.4) = 2.
        assert (ok["fee_returned_minor"], ok["net_minor"], ok["refundable_minor"]) == (2, 398, 600)
        assert ok["order_id"] == f"o-{paid}" and ok["merchant_id"] == merchant

        # Settlement nets the refund against the payment: 994 in, 398 out, in one batch or
        # carried from one into the next; payouts never negative, the total exact.
        def items(bs: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
            return [(i["kind"], i["item_id"]) for b in bs for i in b["items"]]

        batches = reader.poll_until(
            topics.batches, lambda bs: ("REFUND", f"{paid}/r1") in items(bs),
            WINDOW_S + WINDOW_GRACE_S + 30)
        assert sorted(items(batches)) == [("PAYMENT", paid), ("REFUND", f"{paid}/r1")]
        refund_item = next(i for b in batches for i in b["items"] if i["kind"] == "REFUND")
        assert (refund_item["gross_minor"], refund_item["fee_minor"],
                refund_item["net_minor"]) == (-400, -2, -398)
        assert sum(b["net_minor"] for b in batches) == 994 - 398
        for b in batches:
            assert b["payout_minor"] is not None and b["payout_minor"] >= 0
            assert b["payout_minor"] == max(b["net_minor"] + b["carried_in_minor"], 0)
            assert b["carried_out_minor"] == min(b["net_minor"] + b["carried_in_minor"], 0)
    finally:
        reader.close()
        registry.close()
