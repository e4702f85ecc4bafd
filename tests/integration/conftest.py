"""Fixtures the integration tests share (the stack itself is in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra.admin import create_topics, delete_topics
from infra.config import Settings
from schemas.topics import TopicNames


@pytest.fixture()
def prefix(stack: Settings) -> Iterator[str]:
    """Every topic of the pipeline under a fresh prefix, deleted afterwards."""
    p = f"t{uuid.uuid4().hex[:8]}."
    create_topics(stack.kafka, name_prefix=p)
    yield p
    delete_topics(stack.kafka, TopicNames(p).all)


# The API's throwaway database and real server (tests/support/api.py).
from tests.support.api import api_db, api_server  # noqa: E402, F401
