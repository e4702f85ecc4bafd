"""Shared fixtures: settings for the real stack, and a loud failure when it is not running."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from infra import config

# Every test session gets its own database, so test rows never mix with the demo's books
# (or with another session's); worker subprocesses inherit the setting.
_MAIN_DB = os.environ.get("SETTLE_PG_DB", "settle")
TEST_DB = f"settle_test_{os.getpid()}"
os.environ["SETTLE_PG_DB"] = TEST_DB


def _session_keyring() -> str:
    """A throwaway signing keyring for the session: the sample merchants and the tests' own.

    Set in the environment (like the database) so producers and worker subprocesses sign and
    verify with it; signatures are required, as by default.
    """
    from infra.keyring import init_keyring
    from producers.merchants import load_merchants, sample_merchants_path

    folder = tempfile.mkdtemp(prefix="settle-test-keys-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "signing-keyring.json"
    sample = [e.merchant_id for e in load_merchants(sample_merchants_path())]
    init_keyring(path, [*sample, *TEST_SIGNING_MERCHANTS])
    return str(path)


# Merchants the integration tests pay (m-nobody is deliberately absent: an unknown merchant).
TEST_SIGNING_MERCHANTS = ("m-ok", "m-off", "m-1")
os.environ["SETTLE_SIGNATURES"] = "required"
os.environ["SETTLE_SIGNING_KEYRING"] = _session_keyring()


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    return config.load()


def _reachable(host_port: str, timeout_s: float = 2.0) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def stack(_services: config.Settings) -> Iterator[config.Settings]:
    """The real stack with a fresh, migrated database of this test run's own."""
    from sinks.db import connect, drop_database
    from sinks.migrate import migrate

    admin = _services.postgres
    maint = config.PostgresSettings(admin.host, admin.port, admin.user, admin.password, _MAIN_DB)
    with psycopg.connect(maint.conninfo(), autocommit=True) as conn:
        drop_database(conn, TEST_DB)
        conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    with connect(_services.postgres) as conn:
        migrate(conn)
    yield _services
    with psycopg.connect(maint.conninfo(), autocommit=True) as conn:
        drop_database(conn, TEST_DB)


@pytest.fixture(scope="session")
def _services(settings: config.Settings) -> config.Settings:
    """The real stack. Integration tests fail (never skip) when it is down: run `make up`."""
    missing = []
    kafka = settings.kafka.bootstrap_servers.split(",")[0]
    if not _reachable(kafka):
        missing.append(f"Kafka at {kafka}")
    pg = f"{settings.postgres.host}:{settings.postgres.port}"
    if not _reachable(pg):
        missing.append(f"PostgreSQL at {pg}")
    reg = settings.registry.url.split("//", 1)[-1].split("/", 1)[0]
    if not _reachable(reg):
        missing.append(f"schema registry at {reg}")
    if missing:
        pytest.fail("the stack is not running (" + ", ".join(missing) + "): run `make up`")
    _STACK_USED.append(True)
    return settings


_STACK_USED: list[bool] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After a run that used the stack: say so when a service of it is no longer up.

    A service that dies mid-run fails every test after it with "connection refused" and
    explains nothing; its log, and a JVM's crash file, are gone with a CI machine's run folder.
    """
    if not _STACK_USED:
        return
    from settle.stack import stack_status

    # The session's own database is dropped by now: PostgreSQL's check logs in to the main one.
    code, table, tails = stack_status(lines=40, env={"SETTLE_PG_DB": _MAIN_DB})
    if code == 0:
        return
    terminalreporter.section("stack services not up at the end of the run", yellow=True)
    terminalreporter.write_line(table.rstrip())
    for name, tail in tails.items():
        terminalreporter.write_line(f"--- the end of {name} ---")
        terminalreporter.write_line(tail or "(empty)")
