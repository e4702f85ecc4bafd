"""An isolated run's clean-up (bench, e2e, chaos) on the real broker and registry: its topics
and subjects go, and a registry that refuses is logged without hiding the run's own result."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import pytest

from infra.admin import admin_client, create_topics
from infra.config import Settings
from infra.registry import registry_client
from producers.clients import delete_isolated_run
from schemas import contract
from schemas.topics import TOPIC_RECORDS, value_subject
from settle.processes import free_port

pytestmark = pytest.mark.integration


def _topics_with(stack: Settings, prefix: str, wait_gone_s: float = 0.0) -> list[str]:
    """The broker's topics that start with `prefix`; waits up to wait_gone_s for none."""
    deadline = time.monotonic() + wait_gone_s
    while True:
        names = sorted(t for t in admin_client(stack.kafka).list_topics(timeout=15).topics
                       if t.startswith(prefix))
        if not names or time.monotonic() >= deadline:
            return names
        time.sleep(0.5)


def _a_run(stack: Settings) -> tuple[str, str]:
    """Topics and one registered subject under a fresh prefix, as an isolated run leaves."""
    prefix = f"cleanup{uuid.uuid4().hex[:6]}."
    create_topics(stack.kafka, name_prefix=prefix)
    topic, record = next(iter(TOPIC_RECORDS.items()))
    subject = value_subject(prefix + topic)
    with registry_client(stack) as client:
        client.register(subject, contract.schema_str_for(record))
    assert _topics_with(stack, prefix), "the run's topics were not created"
    return prefix, subject


def test_an_isolated_run_leaves_no_topic_and_no_subject(stack: Settings) -> None:
    prefix, subject = _a_run(stack)
    delete_isolated_run(stack, prefix)
    assert _topics_with(stack, prefix, wait_gone_s=30) == []
    with registry_client(stack) as client:
        assert subject not in client.subjects()


def test_a_refusing_registry_is_logged_and_the_topics_still_go(
        stack: Settings, caplog: pytest.LogCaptureFixture) -> None:
    prefix, subject = _a_run(stack)
    down = dataclasses.replace(stack, registry=dataclasses.replace(
        stack.registry, url=f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"))
    with caplog.at_level(logging.WARNING, logger="producers.clients"):
        delete_isolated_run(down, prefix)   # must not raise
    refusals = [r for r in caplog.records
                if r.name == "producers.clients" and f"subjects of {prefix}*" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert "unavailable" in refusals[0].getMessage()
    assert _topics_with(stack, prefix, wait_gone_s=30) == []
    # The subject is still there (the registry was never reached): the real one cleans it.
    with registry_client(stack) as client:
        assert subject in client.subjects()
    delete_isolated_run(stack, prefix)
    with registry_client(stack) as client:
        assert subject not in client.subjects()
