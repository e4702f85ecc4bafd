"""The settle worker on the real stack with disputes and manual matches: a dispute's hold,
release and fee net into the merchant's batches (a hold after payout is carried), a
MATCHED_MANUAL payment settles at its settled amount, each result once however often it is
published."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.config import Settings
from infra.registry import registry_client
from schemas.codec import AvroSerializer
from schemas.topics import TopicNames
from tests.integration.test_settle_stage import (
    SHORT_GRACE_S,
    SHORT_WINDOW_S,
    _now_ms,
    _Results,
    _stage_env,
)
from tests.support.stages import READY_TIMEOUT_S, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


@pytest.fixture()
def short_env(stack: Settings, tmp_path: Path) -> Iterator[tuple[dict[str, str], TopicNames]]:
    yield from _stage_env(stack, tmp_path, SHORT_WINDOW_S, SHORT_GRACE_S)


class _DisputeResults(_Results):
    """Also publishes dispute results and manual matches, as the reconcile stage does."""

    def __init__(self, stack: Settings, topics: TopicNames, registry: Any, name: str) -> None:
        super().__init__(stack, topics, registry, name)
        self.disputes = AvroSerializer(registry, topics.dispute_results, "DisputeResult")

    def dispute(self, pid: str, did: str, event: str, amount: int, fee: int = 0) -> None:
        now = _now_ms()
        status = {"WON": "WON", "LOST": "LOST"}.get(event, "OPENED")
        self.producer.produce(
            self.topics.dispute_results, key=pid.encode(), value=self.disputes.encode({
                "result_id": f"{pid}/{did}:{event}:e-{did}-{event}", "dispute_id": did,
                "payment_id": pid, "merchant_id": self.merchant, "order_id": f"o-{pid}",
                "channel": "CARD", "channel_dispute_id": f"cb-{did}", "event": event,
                "stage": "DISPUTE", "status": status, "amount_minor": amount,
                "currency": "CNY", "funds_withdrawn": True, "fee_minor": fee, "reasons": [],
                "captured_minor": 1000, "held_minor": 0, "disputed_lost_minor": 0,
                "refundable_minor": 0, "occurred_at": now - 5, "decided_at": now,
                "detail": ""}))

    def manual(self, pid: str, settled: int, fee: int) -> None:
        now = _now_ms()
        self.producer.produce(self.topics.results, key=pid.encode(), value=self.payments.encode({
            "result_id": f"{pid}:MATCHED_MANUAL:a-{pid}", "payment_id": pid,
            "merchant_id": self.merchant, "channel": "ALIPAY", "outcome": "MATCHED_MANUAL",
            "terminal": True, "late": False, "expected_amount_minor": 1000,
            "expected_currency": "CNY", "confirmed_amount_minor": settled,
            "confirmed_currency": "CNY", "confirmation_id": f"c-{pid}", "channel_txn_id": "t",
            "created_at": now - 10, "decided_at": now, "detail": "", "fee_minor": fee,
            "net_minor": settled - fee, "settled_amount_minor": settled,
            "case_id": f"CS-{pid}", "operator": "alice", "approver": None}))


def test_disputes_and_manual_matches_net_into_batches_once(
    stack: Settings, short_env: tuple[dict[str, str], TopicNames], tmp_path: Path
) -> None:
    """A payment, a force-matched one and a dispute held and lost with a fee in one window;
    after it closed, another dispute held (a negative batch, carried), then released with a
    payment that absorbs what is left; every result published twice, settled once; results
    that move no money ignored."""
    worker_env, topics = short_env
    registry = registry_client(stack)
    results = _DisputeResults(stack, topics, registry, "it-settle-disputes")
    worker = Worker("settle", worker_env, tmp_path / "settle-disputes.log")
    try:
        worker.wait_ready(READY_TIMEOUT_S)
        for _copy in range(2):
            results.pay("a-1", 1000, 6)
            results.manual("a-2", 950, 6)
            results.dispute("a-1", "d-1", "OPENED", 300)
            results.dispute("a-1", "d-1", "LOST", 300, fee=150)
            results.dispute("a-2", "d-0", "STAGE_CHANGED", 100)  # moves nothing
            results.dispute("a-2", "d-9", "LOST", 100)  # no fee: nothing more to take
        first = {("PAYMENT", "a-1"), ("PAYMENT", "a-2"), ("DISPUTE_HOLD", "a-1/d-1"),
                 ("DISPUTE_FEE", "a-1/d-1")}
        results.wait_for(first)
        for _copy in range(2):
            results.dispute("a-2", "d-2", "OPENED", 950)
        second = {("DISPUTE_HOLD", "a-2/d-2")}
        results.wait_for(first | second)
        for _copy in range(2):
            results.dispute("a-2", "d-2", "WON", 950)
        results.pay("c-1", 2000, 12)
        everything = first | second | {("DISPUTE_RELEASE", "a-2/d-2"), ("PAYMENT", "c-1")}
        batches = results.settled(everything)
    finally:
        worker.stop()
        results.close()
        registry.close()

    items = {(i["kind"], i["item_id"]): i for b in batches for i in b["items"]}
    assert [items[("PAYMENT", "a-2")][k] for k in ("gross_minor", "fee_minor", "net_minor")] == [
        950, 6, 944]
    assert [items[("DISPUTE_FEE", "a-1/d-1")][k] for k in
            ("payment_id", "gross_minor", "fee_minor", "net_minor")] == ["a-1", -150, 0, -150]
    assert all(b["payment_count"] == sum(i["kind"] == "PAYMENT" for i in b["items"])
               for b in batches)
    # 994 + 944 - 300 - 150 paid first; the hold of 950 after that carried; its release and
    # c-1's 1988 pay the rest.
    assert batches[-1]["carried_out_minor"] == 0
    assert sum(b["payout_minor"] for b in batches) == 994 + 944 - 450 - 950 + 950 + 1988
    assert any(b["payout_minor"] == 0 and b["carried_out_minor"] < 0 for b in batches), batches
