"""The settle worker on the real stack: killed mid-window, its table comes back from the
changelog and the batch closes with every payment exactly once; refunds and the channel's
reversals net into batches, a negative one pays nothing and carries its balance into the next."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.admin import admin_client, create_topics, delete_topics
from infra.config import Settings
from infra.kafka import make_consumer, make_producer
from infra.registry import registry_client
from schemas.codec import AvroSerializer
from schemas.topics import TopicNames
from settlement.windows import SHANGHAI_MIDNIGHT_ORIGIN_MS, WindowPolicy, window_for
from stream_processors.settle_stage import ITEM_KEY_SEP
from tests.support.stages import READY_TIMEOUT_S, Topics, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

WINDOW_S, GRACE_S = 60, 3
POLICY = WindowPolicy(WINDOW_S, GRACE_S, SHANGHAI_MIDNIGHT_ORIGIN_MS)
BEFORE, REPLAYED, AFTER = 300, 60, 40
SHORT_WINDOW_S, SHORT_GRACE_S = 5, 1


def _stage_env(
    stack: Settings, tmp_path: Path, window_s: int, grace_s: int
) -> Iterator[tuple[dict[str, str], TopicNames]]:
    prefix = f"it-settle-{uuid.uuid4().hex[:8]}."
    create_topics(stack.kafka, name_prefix=prefix)
    try:
        yield {
            **os.environ,
            "SETTLE_TOPIC_PREFIX": prefix,
            "SETTLE_FAUST_DATA_DIR": str(tmp_path / "faust"),
            "SETTLE_WINDOW_SECONDS": str(window_s),
            "SETTLE_WINDOW_GRACE_SECONDS": str(grace_s),
            "SETTLE_TICK_INTERVAL_MS": "500",
        }, TopicNames(prefix)
    finally:
        names = admin_client(stack.kafka).list_topics(timeout=15).topics
        delete_topics(stack.kafka, [n for n in names if n.startswith(prefix)])


@pytest.fixture()
def env(stack: Settings, tmp_path: Path) -> Iterator[tuple[dict[str, str], TopicNames]]:
    yield from _stage_env(stack, tmp_path, WINDOW_S, GRACE_S)


@pytest.fixture()
def short_env(stack: Settings, tmp_path: Path) -> Iterator[tuple[dict[str, str], TopicNames]]:
    yield from _stage_env(stack, tmp_path, SHORT_WINDOW_S, SHORT_GRACE_S)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_settle_worker_killed_mid_window_recovers_its_batch(
    stack: Settings, env: tuple[dict[str, str], TopicNames], tmp_path: Path
) -> None:
    worker_env, topics = env
    registry = registry_client(stack)
    ser = AvroSerializer(registry, topics.results, "ReconciliationResult")
    producer = make_producer(stack.kafka, "it-settle")
    reader = Topics(stack, registry)
    merchant = f"m-{uuid.uuid4().hex[:6]}"
    changelog = f"{worker_env['SETTLE_TOPIC_PREFIX']}settle-settle-settle-batches-changelog"
    sent: dict[str, bytes] = {}

    def publish(pids: list[str]) -> None:
        for pid in pids:
            if pid not in sent:
                now = _now_ms()
                sent[pid] = ser.encode({
                    "result_id": f"{pid}:MATCHED:c-{pid}", "payment_id": pid,
                    "merchant_id": merchant, "channel": "ALIPAY", "outcome": "MATCHED",
                    "terminal": True, "late": False, "expected_amount_minor": 1000,
                    "expected_currency": "CNY", "confirmed_amount_minor": 1000,
                    "confirmed_currency": "CNY", "confirmation_id": f"c-{pid}",
                    "channel_txn_id": "t", "created_at": now - 10, "decided_at": now,
                    "detail": "", "fee_minor": 6, "net_minor": 994})
            producer.produce(topics.results, key=pid.encode(), value=sent[pid])
        assert producer.flush(15) == 0

    first = Worker("settle", worker_env, tmp_path / "settle-1.log")
    second: Worker | None = None
    try:
        first.wait_ready(READY_TIMEOUT_S)
        # Start at the beginning of a window, so the kill and restart happen while it is open.
        window = window_for(_now_ms(), POLICY)
        if window.end_ms - _now_ms() < 50_000:
            time.sleep((window.end_ms - _now_ms()) / 1000 + 0.5)
        before = [f"p-{n:04d}" for n in range(BEFORE)]
        publish(before)

        # Every add reached the changelog: one item key each, and no value grows with the batch.
        item_keys: set[str] = set()
        sizes: list[int] = []
        consumer = make_consumer(stack.kafka, f"it-read-{uuid.uuid4()}")
        consumer.subscribe([changelog])
        deadline = time.monotonic() + 90
        while len(item_keys) < BEFORE and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                key = json.loads(msg.key() or b'""')  # the table's keys are JSON there
                sizes.append(len(msg.value() or b""))
                if ITEM_KEY_SEP in key:
                    item_keys.add(key)
        consumer.close()
        assert len(item_keys) == BEFORE, (
            f"{len(item_keys)} item keys in {len(sizes)} changelog records; worker log:\n"
            + first.log_text()[-3000:])
        assert max(sizes) < 1_000, max(sizes)  # the version-1 entry held all 300 items
        time.sleep(4.0)  # let most offsets commit; the rest are replayed after the kill
        assert reader.poll_until(topics.batches, lambda bs: False, 1) == [], "closed too early"
        first.proc.kill()  # a crash, not a clean stop
        first.proc.wait(timeout=10)
        first.stop()

        second = Worker("settle", worker_env, tmp_path / "settle-2.log")
        second.wait_ready(READY_TIMEOUT_S)
        after = [f"q-{n:04d}" for n in range(AFTER)]
        publish(before[:REPLAYED] + after)  # replays of batched payments, then new ones
        everyone = set(before) | set(after)

        def settled(bs: list[dict[str, Any]]) -> set[str]:
            return {i["payment_id"] for b in bs for i in b["items"]}

        batches = reader.poll_until(
            topics.batches, lambda bs: settled(bs) >= everyone, WINDOW_S + GRACE_S + 90)
        time.sleep(3.0)  # a second copy of anything would arrive now
        copies = reader.poll_until(topics.batches, lambda bs: False, 1)
        # A tick read again after the kill or a rebalance re-sends the batches it closed: the
        # same batch_id with the same body (the settlement sink keeps one). Anything else
        # would be a payment in two batches.
        by_id: dict[str, dict[str, Any]] = {}
        for b in copies:
            first_copy = by_id.setdefault(b["batch_id"], b)
            assert {k: v for k, v in b.items() if k != "_key"} == {
                k: v for k, v in first_copy.items() if k != "_key"}, b["batch_id"]
        batches = list(by_id.values())
        counts = Counter(i["payment_id"] for b in batches for i in b["items"])
        assert set(counts) == everyone and set(counts.values()) == {1}, counts.most_common(3)
        for b in batches:
            assert b["merchant_id"] == merchant and b["payment_count"] == len(b["items"])
            assert (b["gross_minor"], b["fee_minor"], b["net_minor"]) == (
                1000 * len(b["items"]), 6 * len(b["items"]), 994 * len(b["items"]))
        # The batch open at the kill was closed by the restarted worker, with every item
        # added before the kill in it.
        oldest = min(batches, key=lambda b: b["window_start"])
        assert set(before) <= settled([oldest])
    finally:
        if second is not None:
            second.stop()
        first.stop()
        reader.close()
        registry.close()


class _Results:
    """Publishes payment and refund results (and their reversals) of one merchant, as the
    reconcile stage does, and reads back the batches they settle into."""

    def __init__(self, stack: Settings, topics: TopicNames, registry: Any, name: str) -> None:
        self.topics = topics
        self.payments = AvroSerializer(registry, topics.results, "ReconciliationResult")
        self.refunds = AvroSerializer(registry, topics.refund_results, "RefundResult")
        self.producer = make_producer(stack.kafka, name)
        self.reader = Topics(stack, registry)
        self.merchant = f"m-{uuid.uuid4().hex[:6]}"

    def pay(self, pid: str, amount: int, fee: int, outcome: str = "MATCHED") -> None:
        now = _now_ms()
        cid = f"c-{pid}" if outcome == "MATCHED" else f"rv-{pid}"
        self.producer.produce(self.topics.results, key=pid.encode(), value=self.payments.encode({
            "result_id": f"{pid}:{outcome}:{cid}", "payment_id": pid,
            "merchant_id": self.merchant, "channel": "ALIPAY", "outcome": outcome,
            "terminal": outcome == "MATCHED", "late": False,
            "expected_amount_minor": amount, "expected_currency": "CNY",
            "confirmed_amount_minor": amount, "confirmed_currency": "CNY",
            "confirmation_id": cid, "channel_txn_id": "t", "created_at": now - 10,
            "decided_at": now, "detail": "", "fee_minor": fee, "net_minor": amount - fee}))

    def refund(self, pid: str, rid: str, amount: int, fee_back: int,
               outcome: str = "MATCHED") -> None:
        now = _now_ms()
        money = outcome in ("MATCHED", "REFUND_REVERSED")
        self.producer.produce(
            self.topics.refund_results, key=pid.encode(), value=self.refunds.encode({
                "result_id": f"{pid}/{rid}:{outcome}:rc-{rid}", "refund_id": rid,
                "payment_id": pid, "merchant_id": self.merchant, "order_id": f"o-{pid}",
                "channel": "ALIPAY", "outcome": outcome,
                "terminal": outcome not in ("REFUND_REVERSED", "REVERSAL_EXCEPTION"),
                "late": False, "amount_minor": amount, "currency": "CNY",
                "confirmed_amount_minor": amount, "confirmed_currency": "CNY",
                "confirmation_id": f"rc-{rid}", "channel_refund_id": f"cr-{rid}",
                "fee_returned_minor": fee_back if money else None,
                "net_minor": amount - fee_back if money else None,
                "captured_minor": 1000, "refunded_minor": amount, "refundable_minor": 0,
                "requested_at": now - 50, "decided_at": now, "detail": ""}))

    def wait_for(self, wanted: set[tuple[str, str]]) -> list[dict[str, Any]]:
        assert self.producer.flush(15) == 0
        return self.reader.poll_until(self.topics.batches, lambda bs: _items(bs) >= wanted,
                                      SHORT_WINDOW_S + SHORT_GRACE_S + 60)

    def settled(self, everything: set[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every batch once, in window order, after a wait in which any second copy of an
        item would have arrived; each item in exactly one batch, the carried chain checked."""
        self.wait_for(everything)
        time.sleep(2.0)  # a second copy of anything would arrive now
        copies = self.reader.poll_until(self.topics.batches, lambda bs: False, 1)
        by_id: dict[str, dict[str, Any]] = {}
        for b in copies:
            assert {k: v for k, v in b.items() if k != "_key"} == {
                k: v for k, v in by_id.setdefault(b["batch_id"], b).items() if k != "_key"}
        batches = sorted(by_id.values(), key=lambda b: b["window_start"])
        settled = Counter((i["kind"], i["item_id"]) for b in batches for i in b["items"])
        assert set(settled) == everything and set(settled.values()) == {1}, settled
        carried = 0
        for b in batches:
            kinds = [i["kind"] for i in b["items"]]
            assert (b["payment_count"], b["refund_count"]) == (
                kinds.count("PAYMENT"), kinds.count("REFUND"))
            assert b["net_minor"] == sum(i["net_minor"] for i in b["items"])
            assert b["carried_in_minor"] == carried, batches
            balance = b["net_minor"] + carried
            assert (b["payout_minor"], b["carried_out_minor"]) == (
                max(balance, 0), min(balance, 0))
            carried = b["carried_out_minor"]
        return batches

    def close(self) -> None:
        self.reader.close()


def _items(bs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(i["kind"], i["item_id"]) for b in bs for i in b["items"]}


def test_refunds_net_into_batches_and_a_negative_balance_is_carried(
    stack: Settings, short_env: tuple[dict[str, str], TopicNames], tmp_path: Path
) -> None:
    """Payments and a partial refund in one window; after that batch closed, refunds of the
    rest (a negative batch: payout 0, balance carried); then a payment that absorbs it. A
    refund result published twice is settled once."""
    worker_env, topics = short_env
    registry = registry_client(stack)
    results = _Results(stack, topics, registry, "it-settle-refunds")
    pay, refund, wait_for = results.pay, results.refund, results.wait_for

    worker = Worker("settle", worker_env, tmp_path / "settle-refunds.log")
    try:
        worker.wait_ready(READY_TIMEOUT_S)
        # 1: two payments and a partial refund of one, netted.
        pay("a-1", 1000, 6)
        pay("a-2", 1000, 6)
        refund("a-1", "r-1", 400, 2)
        refund("a-1", "r-1", 400, 2)  # the same result again: settled once
        refund("a-2", "r-0", 1000, 6, outcome="DECLINED")  # not a refund: ignored
        first = {("PAYMENT", "a-1"), ("PAYMENT", "a-2"), ("REFUND", "a-1/r-1")}
        wait_for(first)
        # 2: after those batches closed, refunds of the rest: a negative batch.
        refund("a-2", "r-1", 1000, 6)
        refund("a-1", "r-2", 600, 4)
        second = {("REFUND", "a-2/r-1"), ("REFUND", "a-1/r-2")}
        wait_for(first | second)
        # 3: a payment that pays the carried balance off.
        pay("c-1", 2000, 12)
        everything = first | second | {("PAYMENT", "c-1")}
        batches = results.settled(everything)
    finally:
        worker.stop()
        results.close()
        registry.close()

    carried = batches[-1]["carried_out_minor"]
    nets = 994 * 2 - 398 - 994 - 596 + 1988
    # Paid: 1590 for the first window, 0 for the refunds, 1988 - 1590 = 398 for the last.
    assert carried == 0 and sum(b["payout_minor"] for b in batches) == nets - carried == 1988
    assert any(b["payout_minor"] == 0 and b["carried_out_minor"] < 0 for b in batches), batches
    refund_item = next(i for b in batches for i in b["items"] if i["item_id"] == "a-2/r-1")
    assert (refund_item["payment_id"], refund_item["gross_minor"], refund_item["fee_minor"],
            refund_item["net_minor"]) == ("a-2", -1000, -6, -994)


def test_reversals_net_into_batches_once(
    stack: Settings, short_env: tuple[dict[str, str], TopicNames], tmp_path: Path
) -> None:
    """Two payments and a refund in one window; after it closed, the channel reverses one
    payment and the refund (each result published twice): a negative batch carried; a
    REVERSAL_EXCEPTION moves nothing; then a payment that absorbs the balance."""
    worker_env, topics = short_env
    registry = registry_client(stack)
    results = _Results(stack, topics, registry, "it-settle-reversals")
    worker = Worker("settle", worker_env, tmp_path / "settle-reversals.log")
    try:
        worker.wait_ready(READY_TIMEOUT_S)
        results.pay("a-1", 1000, 6)
        results.pay("a-2", 1000, 6)
        results.refund("a-2", "r-1", 400, 2)
        first = {("PAYMENT", "a-1"), ("PAYMENT", "a-2"), ("REFUND", "a-2/r-1")}
        results.wait_for(first)
        for _copy in range(2):
            results.pay("a-1", 1000, 6, outcome="PAYMENT_REVERSED")
            results.refund("a-2", "r-1", 400, 2, outcome="REFUND_REVERSED")
        results.pay("a-2", 1000, 6, outcome="REVERSAL_EXCEPTION")  # moves nothing
        second = {("PAYMENT_REVERSAL", "a-1"), ("REFUND_REVERSAL", "a-2/r-1")}
        results.wait_for(first | second)
        results.pay("c-1", 2000, 12)
        batches = results.settled(first | second | {("PAYMENT", "c-1")})
    finally:
        worker.stop()
        results.close()
        registry.close()

    # 994 + 994 - 398 paid; -994 + 398 carried (the reversals, after the first batches
    # closed; on two topics, so maybe in two windows); 1988 - 596 paid.
    assert batches[-1]["carried_out_minor"] == 0
    assert sum(b["payout_minor"] for b in batches) == 994 * 2 - 398 - 994 + 398 + 1988 == 2982
    assert any(b["payout_minor"] == 0 and b["carried_out_minor"] < 0 for b in batches), batches
    items = {(i["kind"], i["item_id"]): i for b in batches for i in b["items"]}
    assert [items[("PAYMENT_REVERSAL", "a-1")][k] for k in
            ("payment_id", "gross_minor", "fee_minor", "net_minor")] == ["a-1", -1000, -6, -994]
    assert [items[("REFUND_REVERSAL", "a-2/r-1")][k] for k in
            ("payment_id", "gross_minor", "fee_minor", "net_minor")] == ["a-2", 400, 2, 398]
