"""The `settle` commands never print a secret: not in help, settings, or failing to connect.

Each command runs as a subprocess with distinctive secrets in SETTLE_PG_PASSWORD,
SETTLE_SINK_PG_PASSWORD, SETTLE_KAFKA_SASL_PASSWORD and SETTLE_REGISTRY_PASSWORD; its stdout
and stderr (tracebacks and librdkafka/aiokafka/faust logs included) are searched for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.admin import create_topics, delete_topics
from infra.config import Settings
from schemas.topics import DAY_MS, TopicSpec
from settle.processes import free_port

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
PG = f"pg-{RUN} secret-{RUN} a'1"  # spaces and a quote: conninfo quoting must hold
SECRETS = {
    "SETTLE_PG_PASSWORD": PG,
    "SETTLE_SINK_PG_PASSWORD": f"sink-secret-{RUN}-b2",
    "SETTLE_KAFKA_SASL_PASSWORD": f"kafka-secret-{RUN}-c3",
    "SETTLE_REGISTRY_PASSWORD": f"registry-secret-{RUN}-d4",
}
# Also each piece of a secret around its spaces: a parser echoing "the rest" is a leak too.
NEEDLES = sorted({*SECRETS.values(), *(p for v in SECRETS.values() for p in v.split()
                                       if len(p) > 6)})
SASL_PORT = int(os.environ.get("SETTLE_KAFKA_SASL_PORT", "19094"))
COMMAND_TIMEOUT_S = 120  # a bound for a hung command, not a speed assertion


def env(**overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        **SECRETS,
        "SETTLE_SINK_PG_USER": "sink_login",
        "SETTLE_KAFKA_SASL_USERNAME": "client",
        "SETTLE_REGISTRY_USERNAME": "reg",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "400",  # rich must not wrap a line through the middle of a secret
        **overrides,
    }


def settle(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "settle.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          check=False)


def assert_no_secret(output: str) -> None:
    leaked = [n for n in NEEDLES if n in output]
    assert not leaked, f"secret(s) {leaked} printed:\n{output}"


def test_settle_config_and_help_show_no_secret() -> None:
    environ = env(SETTLE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                  SETTLE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                  SETTLE_REGISTRY_URL=f"https://reg:{SECRETS['SETTLE_REGISTRY_PASSWORD']}"
                                      "@registry.example/apis/ccompat/v7")
    shown = settle("config", environ=environ)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("***") >= 5  # the four passwords and the URL's
    assert "SETTLE_KAFKA_SASL_PASSWORD" in shown.stdout  # listed by name as set
    assert_no_secret(shown.stdout + shown.stderr)
    for args in (["--help"], ["config", "--help"], ["db", "migrate", "--help"],
                 ["sink", "--help"], ["worker", "--help"], ["smoke", "--help"]):
        out = settle(*args, environ=environ)
        assert out.returncode == 0, (args, out.stderr)
        assert_no_secret(out.stdout + out.stderr)


def test_db_migrate_against_a_closed_port() -> None:
    out = settle("db", "migrate", environ=env(SETTLE_PG_PORT=str(free_port())))
    assert out.returncode == 1
    assert "DatabaseUnavailable" in out.stderr and "Connection refused" in out.stderr
    assert "Traceback" not in out.stderr
    assert_no_secret(out.stdout + out.stderr)


def test_db_migrate_with_a_wrong_password(stack: Settings) -> None:
    out = settle("db", "migrate", environ=env())  # the real server, PG as the password
    assert out.returncode == 1
    assert "password authentication failed" in out.stderr
    assert_no_secret(out.stdout + out.stderr)


def test_smoke_against_wrong_hosts() -> None:
    port = free_port()
    out = settle("smoke", "--timeout", "3", environ=env(
        SETTLE_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
        SETTLE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SETTLE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        SETTLE_REGISTRY_URL=f"http://127.0.0.1:{port}/apis/ccompat/v7"))
    assert out.returncode != 0
    assert_no_secret(out.stdout + out.stderr)


def test_a_worker_with_a_wrong_sasl_password(stack: Settings, tmp_path: Path) -> None:
    """faust/aiokafka at debug level, refused by the real SASL listener."""
    environ = env(SETTLE_KAFKA_BOOTSTRAP=f"127.0.0.1:{SASL_PORT}",
                  SETTLE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                  SETTLE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                  SETTLE_KAFKA_SASL_USERNAME="settle-client",
                  SETTLE_TOPIC_PREFIX=f"t-secrets-{RUN}-", SETTLE_RUN_DIR=str(tmp_path))
    log = tmp_path / "worker.log"
    output = run_until(["worker", "validate", "--loglevel", "debug"], environ, log,
                       "SaslAuthenticationFailed")
    assert "SaslAuthenticationFailed" in output
    assert_no_secret(output)


@pytest.fixture()
def topic(stack: Settings) -> Iterator[str]:
    name = f"t-secrets-{RUN}-{uuid.uuid4().hex[:6]}"
    create_topics(stack.kafka, [TopicSpec(name, DAY_MS, partitions_override=1)])
    yield name
    delete_topics(stack.kafka, [name])


def test_a_sink_that_cannot_reach_postgresql(
    stack: Settings, topic: str, tmp_path: Path
) -> None:
    """Kafka answers, PostgreSQL does not: the sink logs its retries, never the password."""
    environ = env(SETTLE_PG_PORT=str(free_port()),
                  # librdkafka is told SASL settings it does not use on PLAINTEXT
                  SETTLE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512")
    output = run_until(["sink", "ledger", "--topic", topic, "--dlq-topic", topic,
                        "--group", f"t-secrets-{uuid.uuid4()}", "--loglevel", "debug"],
                       environ, tmp_path / "sink.log", "cannot read sink_offsets")
    assert "DatabaseUnavailable" in output and "sink_login:***@" in output
    assert_no_secret(output)


def run_until(args: list[str], environ: dict[str, str], log: Path, marker: str) -> str:
    """Run `settle ARGS` until MARKER is logged (or it exits), then SIGINT it; its output."""
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "settle.cli", *args], env=environ,
                                stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + COMMAND_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if marker in log.read_text(errors="replace"):
                    break
                time.sleep(0.5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    return log.read_text(errors="replace")
