"""The API on the real stack: a throwaway migrated database, a real uvicorn server, keys.

- `api_db` (module-scoped fixture): a fresh database of a unique name, migrated (with the
  API's login ensured), as the owner's `PostgresSettings`; dropped after the module.
- `ApiServer(settings, app=None)`: uvicorn running `create_app` (or `app`) in a background
  thread on a free loopback port (a socket bound before the server starts: no port race);
  `base_url`.
- `api_server` (module-scoped fixture): an ApiServer on `api_db`.
- `make_key(owner, merchant=None | "M")`: a new key's plaintext (analyst when no merchant).

Test modules get the fixtures through tests/integration/conftest.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from types import TracebackType

import psycopg
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from infra.config import PostgresSettings, Settings
from settle.api_keys import create_key, ensure_api_login, revoke_key
from sinks.db import connect, drop_database
from sinks.migrate import migrate

SERVER_START_TIMEOUT_S = 30.0


def create_api_database(stack: Settings, prefix: str = "settle_api") -> PostgresSettings:
    """A fresh migrated database (unique name) and the API login; the owner's settings."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connect(stack.postgres, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    owner = replace(stack.postgres, dbname=name)
    try:
        with connect(owner) as conn:
            migrate(conn)
            conn.autocommit = False
            ensure_api_login(conn, stack.api)
    except BaseException:
        drop_api_database(stack, owner)
        raise
    return owner


def drop_api_database(stack: Settings, owner: PostgresSettings) -> None:
    with connect(stack.postgres, autocommit=True) as conn:
        drop_database(conn, owner.dbname)


def settings_for(stack: Settings, owner: PostgresSettings) -> Settings:
    """The stack's settings pointed at a throwaway database."""
    return replace(stack, postgres=owner)


def api_login(stack: Settings, owner: PostgresSettings) -> PostgresSettings:
    """The API's own login on the throwaway database (row-level security applies to it)."""
    return stack.api.postgres(owner)


def make_key(owner: PostgresSettings, merchant: str | None = None, label: str = "test") -> str:
    """A new API key's plaintext: a merchant key for `merchant`, else an analyst key."""
    with connect(owner) as conn:
        return create_key(conn, merchant=merchant, label=label, created_by="tests").key


def bearer(key: str, **headers: str) -> dict[str, str]:
    """Request headers that present `key` (plus any others given)."""
    return {"Authorization": f"Bearer {key}", **headers}


def revoke(owner: PostgresSettings, key: str) -> None:
    from api.auth import parse_key_id

    key_id = parse_key_id(key)
    assert key_id is not None
    with connect(owner) as conn:
        revoke_key(conn, key_id)


class ApiServer:
    """uvicorn serving `create_app(settings)` on 127.0.0.1 in a thread of this process."""

    def __init__(self, settings: Settings, app: FastAPI | None = None) -> None:
        self.settings = settings
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app or create_app(settings), log_level="warning", lifespan="on",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)
        self._error: BaseException | None = None

    @property
    def app(self) -> object:
        return self._server.config.app

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while (not self._server.started and self._thread.is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the API server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture(scope="module")
def api_db(stack: Settings) -> Iterator[PostgresSettings]:
    owner = create_api_database(stack)
    try:
        yield owner
    finally:
        drop_api_database(stack, owner)


@pytest.fixture(scope="module")
def api_server(stack: Settings, api_db: PostgresSettings) -> Iterator[ApiServer]:
    with ApiServer(settings_for(stack, api_db)) as server:
        yield server
