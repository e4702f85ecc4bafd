"""settle monitor on the real broker and PostgreSQL: routed payments left without a terminal state.

Routed records go to a prefixed copy of a routed topic, the reconcile group's committed
offset is set by hand (what reconcile does as it consumes), and `payments` rows are written
as the ledger sink would. The monitor must count exactly the payments reconcile consumed
longer than the grace ago that have no row: not one still waiting in front of reconcile, not
one within its grace, not a decided one; and stop counting one once its row appears.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from infra.admin import create_topics, delete_topics
from infra.config import Settings
from infra.kafka import make_consumer, make_producer
from schemas.topics import CONTRACT, routed_topic
from settle.monitor import Monitor, MonitorOptions
from settle.undecided import Overdue, RoutedSource
from sinks.db import connect

pytestmark = pytest.mark.integration

GRACE_S = 3.0


@pytest.fixture()
def prefix(stack: Settings) -> Iterator[str]:
    p = f"t{uuid.uuid4().hex[:8]}."
    routed = {routed_topic(c) for c in ("card", "alipay")}
    create_topics(stack.kafka, [s for s in CONTRACT if s.name in routed], name_prefix=p)
    yield p
    delete_topics(stack.kafka, [p + t for t in routed])


def _commit(stack: Settings, group: str, topic: str, offset: int) -> None:
    """What reconcile does once it has processed the records below ``offset``."""
    committer = make_consumer(stack.kafka, group_id=group)
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        committer.close()


def _decide(stack: Settings, payment_id: str) -> None:
    """The row the ledger sink writes for a terminal result."""
    with connect(stack.postgres, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO payments (payment_id, channel, state, result_id, decided_at)"
            " VALUES (%s, 'card', 'MISSING_CONFIRMATION', %s, now())",
            (payment_id, f"r-{payment_id}"))


def _check(monitor: Monitor) -> dict[str, Overdue]:
    before = monitor.snapshot.books_at
    monitor.poll_books()
    assert monitor.snapshot.books_at > before, "the books check did not complete"
    return monitor.snapshot.undecided


def test_the_monitor_counts_routed_payments_consumed_and_never_decided(
        stack: Settings, prefix: str) -> None:
    card, alipay = prefix + routed_topic("card"), prefix + routed_topic("alipay")
    group = f"{prefix}settle-reconcile"
    run = uuid.uuid4().hex[:8]
    decided, stuck, waiting = (f"{run}-{name}" for name in ("decided", "stuck", "waiting"))
    producer = make_producer(stack.kafka, "test-undecided")
    for pid in (decided, stuck, waiting):  # offsets 0, 1, 2; the body is never decoded
        producer.produce(card, key=pid.encode(), value=b"routed", partition=0)
    producer.produce(alipay, key=f"{run}-ali".encode(), value=b"routed", partition=0)
    assert producer.flush(30) == 0
    _decide(stack, decided)
    _commit(stack, group, card, 2)  # reconcile consumed `decided` and `stuck`, not `waiting`
    _commit(stack, group, alipay, 1)
    _decide(stack, f"{run}-ali")

    monitor = Monitor(stack, MonitorOptions(
        topics=(), routed=(RoutedSource(card, "card", GRACE_S),
                           RoutedSource(alipay, "alipay", GRACE_S)),
        reconcile_group=group, undecided_lookback_s=600))
    try:
        # Consumed just now: within the grace, nothing is owed yet.
        assert _check(monitor) == {"card": Overdue(0, 0.0), "alipay": Overdue(0, 0.0)}
        time.sleep(GRACE_S + 0.5)
        overdue = _check(monitor)
        assert overdue["card"].count == 1, overdue  # `stuck` only
        assert overdue["card"].oldest_age_s > GRACE_S
        assert overdue["alipay"] == Overdue(0, 0.0)
        registry = CollectorRegistry()
        registry.register(monitor)
        text = generate_latest(registry).decode()
        assert 'settle_routed_undecided_payments{channel="card"} 1.0' in text
        assert 'settle_routed_undecided_payments{channel="alipay"} 0.0' in text

        # Its terminal state arrives: no longer counted.
        _decide(stack, stuck)
        assert _check(monitor)["card"] == Overdue(0, 0.0)

        # Reconcile consumes `waiting` and never decides it: counted once its grace is over.
        _commit(stack, group, card, 3)
        assert _check(monitor)["card"].count == 0
        time.sleep(GRACE_S + 0.5)
        assert _check(monitor)["card"].count == 1
    finally:
        monitor.close()
        producer.flush(5)
