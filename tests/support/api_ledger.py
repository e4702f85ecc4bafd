"""The ledger-side API tests' common ground: seeded books behind a real server, keys, and a
client that walks pages and reads CSV exports.

`seeded_books(stack, api_db)` (the body of a test module's `books` fixture): api_db seeded
with settle.api_seed (4 merchants, 5 days, every state, refund, reversal, dispute and batch
kind), an ApiServer on it, and keys: an analyst's and merchant keys for the first two
merchants. Expected values in the tests come from SQL written in the tests themselves, run
as the database owner.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from infra.config import PostgresSettings, Settings
from settle.api_seed import SeedSummary, seed_books
from sinks.db import connect
from tests.support.api import ApiServer, make_key, settings_for

SEED_START = datetime(2025, 3, 2, 16, 0, tzinfo=UTC)
SEED_ARGS: dict[str, Any] = {"payments": 2500, "merchants": 4, "seed": 27, "start": SEED_START,
                             "days": 5}


@dataclass
class Books:
    owner: PostgresSettings
    summary: SeedSummary
    client: httpx.Client
    analyst: str
    merchant_keys: dict[str, str]  # merchant id -> key

    @property
    def merchants(self) -> tuple[str, ...]:
        return self.summary.merchants

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Rows of the test's own SQL, as the owner (no row-level security applies)."""
        with psycopg.connect(self.owner.conninfo(), row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, *statements: str, params: Any = None) -> None:
        """Statements in one transaction, as the owner."""
        with psycopg.connect(self.owner.conninfo()) as conn:
            for sql in statements:
                conn.execute(sql, params)

    def get(self, path: str, key: str, params: dict[str, Any] | None = None,
            csv_export: bool = False) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        if csv_export:
            headers["Accept"] = "text/csv"
        return self.client.get(path, params=params, headers=headers)

    def ok(self, path: str, key: str, params: dict[str, Any] | None = None) -> Any:
        response = self.get(path, key, params)
        assert response.status_code == 200, response.text
        return response.json()

    def walk(self, path: str, key: str, params: dict[str, Any] | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """Every row of a list, page by page."""
        out: list[dict[str, Any]] = []
        query = {**(params or {}), "limit": limit}
        while True:
            body = self.ok(path, key, query)
            assert body["object"] == "list"
            assert len(body["data"]) <= limit
            out.extend(body["data"])
            if not body["has_more"]:
                assert body["next_cursor"] is None
                return out
            query["starting_after"] = body["next_cursor"]

    def csv(self, path: str, key: str, params: dict[str, Any] | None = None
            ) -> list[dict[str, str]]:
        response = self.get(path, key, params, csv_export=True)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        return list(csv.DictReader(io.StringIO(response.text)))

    def bad(self, path: str, params: dict[str, Any], param: str,
            key: str | None = None) -> None:
        """The request is a 400 naming `param`."""
        response = self.get(path, key or self.analyst, params)
        assert response.status_code == 400, (params, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_parameter"
        assert error["param"] == param, (params, error)


def seeded_books(stack: Settings, api_db: PostgresSettings) -> Iterator[Books]:
    """The body of each test module's `books` fixture (module-scoped)."""
    with connect(api_db) as conn:
        summary = seed_books(conn, **SEED_ARGS)
    keys = {m: make_key(api_db, m) for m in summary.merchants[:2]}
    analyst = make_key(api_db)
    with ApiServer(settings_for(stack, api_db)) as server, \
            httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield Books(api_db, summary, client, analyst, keys)


def text_time(value: datetime | None) -> str | None:
    """The API's time text, computed here independently of the routes."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def csv_value(value: Any) -> str:
    """A JSON scalar as the CSV export writes it (NULL: empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)
