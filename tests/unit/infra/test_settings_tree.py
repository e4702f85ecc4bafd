"""One settings tree: every SETTLE_* variable parsed in infra/, printed whole and masked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.config import ConfigError, load
from infra.paths import REPO_ROOT
from settlement.errors import SettleError


def test_every_part_is_in_the_tree_and_shared_values_are_parsed_once() -> None:
    s = load({"SETTLE_RUN_DIR": "/tmp/r", "SETTLE_METRICS_PORT": "19300",
              "SETTLE_TOPIC_PREFIX": "x.", "SETTLE_FEES": "card=99",
              "SETTLE_SESSION_TIMEOUT_MS": "10000", "SETTLE_MONITOR_INTERVAL_S": "2"})
    assert s.run_dir == s.runtime.run_dir == Path("/tmp/r")
    assert s.processor.data_dir == Path("/tmp/r/faust")
    assert s.metrics_port == s.processor.metrics_port == 19300
    assert s.runtime.topic_prefix == s.processor.topic_prefix == "x."
    assert s.sink.fees is s.processor.fees and s.sink.fees.bps_for("card") == 99
    assert s.runtime.session_timeout_ms == 10000 and s.processor.session_timeout_s == 10.0
    assert s.monitor.interval_s == 2.0
    defaults = load({})
    assert defaults.run_dir == REPO_ROOT / ".run" == defaults.processor.data_dir.parent
    assert defaults.runtime.session_timeout_ms is None
    assert defaults.processor.session_timeout_s == 60.0


def test_masked_prints_the_whole_tree_without_secrets() -> None:
    s = load({"SETTLE_PG_PASSWORD": "hunter2", "SETTLE_KAFKA_SASL_PASSWORD": "s3cret",
              "SETTLE_REGISTRY_URL": "https://u:pw123@registry.example/apis/ccompat/v7"})
    view = s.masked()
    for part in ("kafka.", "registry.", "postgres.", "signing.", "runtime.", "processor.",
                 "sink.", "monitor."):
        assert any(k.startswith(part) for k in view), part
    assert view["runtime.gc.threshold"] and view["processor.recon.default_sla_ms"] == "30000"
    text = repr(view)
    assert "hunter2" not in text and "s3cret" not in text and "pw123" not in text
    assert view["postgres.password"] == "***"


@pytest.mark.parametrize(("name", "raw"), [
    ("SETTLE_METRICS_PORT", "lots"), ("SETTLE_EVENT_LOOP", "tokio"),
    ("SETTLE_MONITOR_INTERVAL_S", "0.1"), ("SETTLE_FEES", "card=lots"),
    ("SETTLE_GC_FREEZE", "maybe"), ("SETTLE_LOOP_STALL_WARN_MS", "0"),
    ("SETTLE_SESSION_TIMEOUT_MS", "soon"), ("SETTLE_E2E_LOGLEVEL", "loud"),
])
def test_a_malformed_setting_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(SettleError, match=name):
        load({name: raw})
    assert issubclass(ConfigError, SettleError)


def test_no_module_outside_infra_reads_a_setting_from_the_environment() -> None:
    # Reads, not writes: a run may set a variable for the processes it starts.
    reads = re.compile(r"(environ\.get|getenv|env\.get)\(\s*[\"']SETTLE_"
                       r"|environ\[\s*[\"']SETTLE_\w*[\"']\s*\](?!\s*=)"
                       r"|envvar\s*=\s*[\"']SETTLE_")
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{n}"
        for package in ("settle", "producers", "stream_processors", "sinks", "schemas",
                        "settlement")
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if reads.search(line)
    ]
    assert offenders == []


def test_settle_config_prints_every_part() -> None:
    from settle.cli import cli

    result = CliRunner().invoke(cli, ["config"], env={"SETTLE_PG_PASSWORD": "hunter2"})
    assert result.exit_code == 0, result.output
    for key in ("runtime.run_dir", "processor.recon", "sink.fees", "monitor.interval_s",
                "postgres.password"):
        assert key in result.output, key
    assert "hunter2" not in result.output
