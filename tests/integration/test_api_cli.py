"""`settle api` as a process. `serve` refuses a login row-level security would not hold (a
table owner, one outside settle_api_reader) and serves with the API's own login; `keys`
creates a key shown once (alone on stdout), lists keys without them, revokes them.

(A superuser or BYPASSRLS login is refused by the same check; creating one needs a superuser,
which the tests' owner is not.)
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from psycopg import sql

from infra.config import PostgresSettings, Settings
from sinks.db import connect
from tests.support.api import make_key

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 30.0


def _env(stack: Settings, db: PostgresSettings, user: str, password: str,
         port: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SETTLE_PG_DB": db.dbname, "SETTLE_API_PG_USER": user,
                "SETTLE_API_PG_PASSWORD": password, "SETTLE_API_PORT": str(port or 1)})
    return env


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "settle.cli", "api", "serve"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture()
def reader_login(api_db: PostgresSettings) -> Iterator[tuple[str, str]]:
    """A LOGIN in settle_reader but not in settle_api_reader."""
    name = f"t_reader_{uuid.uuid4().hex[:10]}"
    password = secrets.token_urlsafe(18)
    with connect(api_db, autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE settle_reader").format(
            sql.Identifier(name), sql.Literal(password)))
    yield name, password
    with connect(api_db, autocommit=True) as owner:
        owner.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_serve_refuses_the_tables_owner(stack: Settings, api_db: PostgresSettings) -> None:
    done = _serve(_env(stack, api_db, api_db.user, api_db.password.reveal()))
    assert done.returncode == 1
    assert "refusing to serve" in done.stderr
    assert "owns tables" in done.stderr
    assert "not a member of settle_api_reader" in done.stderr  # the owner is not in the group


def test_serve_refuses_a_login_outside_the_api_group(stack: Settings, api_db: PostgresSettings,
                                                     reader_login: tuple[str, str]) -> None:
    done = _serve(_env(stack, api_db, *reader_login))
    assert done.returncode == 1
    assert "not a member of settle_api_reader" in done.stderr
    assert "owns tables" not in done.stderr


def test_serve_says_so_when_it_cannot_log_in(stack: Settings, api_db: PostgresSettings) -> None:
    done = _serve(_env(stack, api_db, stack.api.pg_user, "not-the-password"))
    assert done.returncode == 1
    assert "DatabaseUnavailable" in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_with_the_api_login(stack: Settings, api_db: PostgresSettings) -> None:
    port = _free_port()
    env = _env(stack, api_db, stack.api.pg_user, stack.api.pg_password.reveal(), port)
    proc = subprocess.Popen([sys.executable, "-m", "settle.cli", "api", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None and health.status_code == 200, proc.poll()
        key = make_key(api_db, "m-1")
        listed = httpx.get(f"{base}/v1/payments", headers={"Authorization": f"Bearer {key}"})
        assert listed.status_code == 200
        assert listed.json()["object"] == "list"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert f"API on http://127.0.0.1:{port}" in output


def test_every_api_command_has_help() -> None:
    for args in (["api"], ["api", "serve"], ["api", "screenshot"], ["api", "keys"],
                 ["api", "keys", "create"], ["api", "keys", "revoke"], ["api", "keys", "list"]):
        done = subprocess.run([sys.executable, "-m", "settle.cli", *args, "--help"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, args
        assert "Usage:" in done.stdout


def _cli(db: PostgresSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["SETTLE_PG_DB"] = db.dbname
    env["COLUMNS"] = "200"  # rich wraps tables to the terminal's width
    return subprocess.run([sys.executable, "-m", "settle.cli", "api", "keys", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_keys_are_created_shown_once_listed_without_the_key_and_revoked(
        api_db: PostgresSettings) -> None:
    import re

    from api.auth import key_sha256, parse_key_id

    created = _cli(api_db, "create", "--merchant", "m-cli", "--label", "shop till")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n"  # the key alone on stdout
    key_id = parse_key_id(key)
    assert key_id is not None and key_id in created.stderr and key not in created.stderr
    analyst = _cli(api_db, "create", "--analyst")
    assert analyst.returncode == 0 and parse_key_id(analyst.stdout.strip())

    listed = _cli(api_db, "list")
    assert listed.returncode == 0
    assert key_id in listed.stdout and "m-cli" in listed.stdout and "shop till" in listed.stdout
    assert key not in listed.stdout and key.rsplit("_", 1)[1] not in listed.stdout
    with connect(api_db) as conn:
        row = conn.execute("SELECT key_sha256, scope, merchant_id, revoked_at FROM api_keys"
                           " WHERE key_id = %s", (key_id,)).fetchone()
    assert row == (key_sha256(key), "merchant", "m-cli", None)

    revoked = _cli(api_db, "revoke", key_id)
    assert revoked.returncode == 0 and re.search(rf"{key_id} revoked at", revoked.stdout)
    with connect(api_db) as conn:
        after = conn.execute("SELECT revoked_at FROM api_keys WHERE key_id = %s",
                             (key_id,)).fetchone()
    assert after is not None and after[0] is not None
    again = _cli(api_db, "revoke", key_id)  # idempotent: the first revocation's time stays
    assert again.returncode == 0
    with connect(api_db) as conn:
        assert conn.execute("SELECT revoked_at FROM api_keys WHERE key_id = %s",
                            (key_id,)).fetchone() == after


@pytest.mark.parametrize(("args", "code", "says"), [
    (["create"], 2, "exactly one of"),
    (["create", "--merchant", "m-1", "--analyst"], 2, "exactly one of"),
    (["create", "--merchant", " "], 1, "needs a merchant id"),
    (["revoke", "0123456789ab"], 1, "no API key"),
])
def test_bad_key_commands_say_why(api_db: PostgresSettings, args: list[str], code: int,
                                  says: str) -> None:
    done = _cli(api_db, *args)
    assert done.returncode == code
    assert says in done.stderr
    assert done.stdout == ""
