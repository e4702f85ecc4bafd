"""Topics on the real broker: provisioned idempotently, co-partitioned, with their policies."""

from __future__ import annotations

import pytest

from infra.admin import create_topics, describe_configs
from infra.config import Settings
from schemas.topics import CONTRACT, MERCHANTS, PAYMENTS_REQUESTED

pytestmark = pytest.mark.integration


def test_create_topics_is_idempotent_and_copartitioned(stack: Settings) -> None:
    create_topics(stack.kafka)
    again = create_topics(stack.kafka)
    assert {o.action for o in again} == {"exists"}
    by_name = {o.name: o.partitions for o in again}
    payment_keyed = {s.name for s in CONTRACT if s.copartitioned}
    assert {by_name[n] for n in payment_keyed} == {stack.kafka.partitions}


def test_merchants_is_compacted_and_payments_expire(stack: Settings) -> None:
    create_topics(stack.kafka)
    assert describe_configs(stack.kafka, MERCHANTS)["cleanup.policy"] == "compact"
    conf = describe_configs(stack.kafka, PAYMENTS_REQUESTED)
    assert conf["cleanup.policy"] == "delete"
    assert int(conf["retention.ms"]) == 7 * 24 * 3600 * 1000
