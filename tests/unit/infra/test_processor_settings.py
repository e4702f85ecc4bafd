"""Stream-processor settings from the environment: defaults and refused values."""

from __future__ import annotations

import pytest

from infra.processor_settings import ProcessorConfigError, load


def test_defaults_need_no_environment() -> None:
    ps = load({})
    assert ps.session_timeout_s == 60.0 and ps.topic_prefix == "" and ps.store == "memory://"


def test_a_malformed_integer_names_the_setting() -> None:
    with pytest.raises(ProcessorConfigError, match="SETTLE_SESSION_TIMEOUT_MS='soon'"):
        load({"SETTLE_SESSION_TIMEOUT_MS": "soon"})


def test_a_dedup_retention_shorter_than_the_age_limit_is_refused() -> None:
    with pytest.raises(ProcessorConfigError, match="SETTLE_DEDUP_RETENTION_MS=1000"):
        load({"SETTLE_DEDUP_RETENTION_MS": "1000"})
