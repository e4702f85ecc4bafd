"""settle audit ingest's refund ledger on the real broker: outputs found by their header."""

from __future__ import annotations

import pytest

from infra.config import Settings
from infra.kafka import make_producer
from schemas.topics import TopicNames
from settle.audit_ingest import audit_refunds

pytestmark = pytest.mark.integration

HEADER = "settle-source"


def test_refund_requests_are_accounted_for_from_the_topics(stack: Settings, prefix: str) -> None:
    t = TopicNames(prefix)
    producer = make_producer(stack.kafka, "test-audit-refunds")
    # inputs at offsets 0..4 of partition 0: routed, rejected, dead-lettered, an identical
    # re-send of the routed one, and one nothing answered
    for value in (b"r1", b"r2", b"bad", b"r1", b"r3"):
        producer.produce(t.refunds_requested, key=b"p1", value=value, partition=0)
    for topic, offset in ((t.refunds_routed, 0), (t.refunds_rejected, 1), (t.dlq, 2),
                          (t.refunds_routed, 0)):  # the last one: a replayed output
        producer.produce(topic, key=b"p1", value=b"out", partition=0, headers=[
            (HEADER, f"{t.refunds_requested}/0/{offset}".encode())])
    # an output of another input topic is not this ledger's
    producer.produce(t.dlq, key=b"p1", value=b"out", partition=0,
                     headers=[(HEADER, f"{t.refunds_requested}x/0/4".encode())])
    assert producer.flush(30) == 0

    audit = audit_refunds(stack.kafka, t.refunds_requested, t.refunds_routed,
                          t.refunds_rejected, t.dlq)
    assert (audit.read, audit.routed, audit.rejected, audit.dead_lettered,
            audit.duplicates, audit.replayed_outputs) == (5, 1, 1, 1, 1, 1)
    assert audit.unaccounted == [f"{t.refunds_requested}/0/4"]
    assert not audit.balanced
