"""Exception cases through the reconcile and settle workers on the real stack: a mismatch
opens a case, a plain client's CaseAction force-matches it (above the approval limit: only
once a second operator approves), and the payment settles at the confirmed amount."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.admin import admin_client, create_topics, delete_topics
from infra.config import Settings
from infra.registry import registry_client
from schemas.codec import AvroSerializer
from schemas.topics import TopicNames
from tests.support.stages import READY_TIMEOUT_S, Publisher, Topics, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WINDOW_S, WINDOW_GRACE_S = 10, 3


@pytest.fixture()
def pipeline(stack: Settings, tmp_path: Path) -> Iterator[tuple[TopicNames, Settings]]:
    prefix = f"it-cases-{uuid.uuid4().hex[:8]}."
    create_topics(stack.kafka, name_prefix=prefix)
    env = {
        **os.environ,
        "SETTLE_TOPIC_PREFIX": prefix,
        "SETTLE_FAUST_DATA_DIR": str(tmp_path / "faust"),
        "SETTLE_RECON_SLA_MS": "6000",
        "SETTLE_RECON_RETAIN_MS": "120000",
        "SETTLE_WINDOW_SECONDS": str(WINDOW_S),
        "SETTLE_WINDOW_GRACE_SECONDS": str(WINDOW_GRACE_S),
        "SETTLE_TICK_INTERVAL_MS": "500",
        "SETTLE_FEES": "alipay=60,wechat_pay=60,unionpay=45,card=180",
        "SETTLE_CASE_APPROVAL_ABOVE_MINOR": "1000",
        "SETTLE_SIGNATURES": "off",
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


def test_cases_are_opened_resolved_with_approval_and_settled(
    pipeline: tuple[TopicNames, Settings],
) -> None:
    topics, settings = pipeline
    registry = registry_client(settings)
    pub = Publisher(settings, registry, topics)
    actions = AvroSerializer(registry, topics.case_actions, "CaseAction")
    reader = Topics(settings, registry)
    run = uuid.uuid4().hex[:6]
    merchant = f"m-{run}"
    small, big = f"small-{run}", f"big-{run}"

    def act(pid: str, case_id: str, aid: str, kind: str, operator: str,
            resolution: str | None = None) -> None:
        record = {"action_id": aid, "case_id": case_id, "payment_id": pid, "kind": kind,
                  "resolution": resolution, "operator": operator, "remark": "bill checked",
                  "requested_at": time.time_ns() // 1_000_000}
        # A plain client: any key order, the contract's record on its topic.
        pub.producer.produce(topics.case_actions, key=pid.encode(), value=actions.encode(record))
        pub.flush()

    def event(pid: str, kind: str) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda es: any(e["payment_id"] == pid and e["kind"] == kind for e in es)

    try:
        pub.routed(small, merchant, "alipay", 1000)
        pub.confirm(small, "c-s", "alipay", 990)  # 990 at stake: at most the limit
        pub.routed(big, merchant, "alipay", 5000)
        pub.confirm(big, "c-b", "alipay", 4990)  # above the limit of 1000
        pub.flush()
        events = reader.poll_until(
            topics.case_events, lambda es: event(small, "OPENED")(es)
            and event(big, "OPENED")(es), 60)
        case = {e["payment_id"]: e["case_id"] for e in events if e["kind"] == "OPENED"}
        act(small, case[small], f"a-{run}-1", "RESOLVE", "alice", "FORCE_MATCH")
        act(big, case[big], f"a-{run}-2", "RESOLVE", "alice", "FORCE_MATCH")
        reader.poll_until(topics.case_events, event(big, "PROPOSED"), 60)
        act(big, case[big], f"a-{run}-3", "APPROVE", "alice")  # the proposer: refused
        act(big, case[big], f"a-{run}-4", "APPROVE", "bob")
        act(big, case[big], f"a-{run}-4", "APPROVE", "bob")  # the same action again
        events = reader.poll_until(
            topics.case_events, lambda es: event(small, "RESOLVED")(es)
            and event(big, "RESOLVED")(es) and event(big, "REFUSED")(es), 60)
        results = reader.poll_until(
            topics.results, lambda rs: sum(r["outcome"] == "MATCHED_MANUAL" for r in rs) == 2,
            60)
        time.sleep(2.0)  # anything extra (a second resolution) would arrive now
        events = reader.poll_until(topics.case_events, lambda es: False, 1)
        mine = [(e["payment_id"], e["kind"], e["reason"]) for e in events
                if e["payment_id"] in (small, big)]
        assert sorted(mine) == sorted([
            (small, "OPENED", None), (small, "RESOLVED", None), (big, "OPENED", None),
            (big, "PROPOSED", None), (big, "REFUSED", "SAME_OPERATOR"),
            (big, "RESOLVED", None)])
        manual = {r["payment_id"]: r for r in results if r["outcome"] == "MATCHED_MANUAL"}
        assert (manual[small]["settled_amount_minor"], manual[small]["fee_minor"],
                manual[small]["approver"]) == (990, 6, None)
        assert (manual[big]["settled_amount_minor"], manual[big]["fee_minor"],
                manual[big]["operator"], manual[big]["approver"]) == (4990, 30, "alice", "bob")

        # Settled like a match, at the confirmed amount, each once.
        def settled(bs: list[dict[str, Any]]) -> list[str]:
            return [i["payment_id"] for b in bs for i in b["items"]
                    if i["payment_id"] in (small, big)]

        batches = reader.poll_until(
            topics.batches, lambda bs: set(settled(bs)) == {small, big},
            WINDOW_S + WINDOW_GRACE_S + 30)
        items = {i["payment_id"]: i for b in batches for i in b["items"]}
        assert sorted(settled(batches)) == sorted([small, big])
        assert (items[small]["gross_minor"], items[small]["net_minor"]) == (990, 984)
        assert (items[big]["gross_minor"], items[big]["net_minor"]) == (4990, 4960)
    finally:
        reader.close()
        registry.close()
