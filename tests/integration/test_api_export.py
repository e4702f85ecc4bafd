"""CSV exports: the same rows as the JSON pages, row-level security on COPY, streamed in chunks
with flat memory however many rows.

Routes of this test only exercise api.export with the real server, PostgreSQL and httpx (the
lists' own CSV = JSON checks are in their modules' tests).
"""

from __future__ import annotations

import csv
import io
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response

from api.app import create_app
from api.auth import Principal, principal
from api.db import reading
from api.export import CHUNK_BYTES, csv_response, wants_csv
from api.paging import decode_cursor, page
from api.params import merchant_filter, parse_limit
from infra.config import PostgresSettings, Settings
from settle.api_seed import SeedSummary, seed_books
from sinks.db import connect
from tests.support.api import ApiServer, make_key, settings_for

pytestmark = pytest.mark.integration

MERCHANT = "mch_001"
LIST_QUERY = (
    "SELECT payment_id, merchant_id, amount_minor, currency, state, created_at"
    "  FROM payments"
    " WHERE (%(merchant)s::text IS NULL OR merchant_id = %(merchant)s)"
    "   AND (%(after)s::text IS NULL OR payment_id > %(after)s)"
    " ORDER BY payment_id")
BIG_ROWS = 300_000


async def payments_list(request: Request, merchant: str | None = None, limit: str | None = None,
                        starting_after: str | None = None,
                        who: Principal = Depends(principal)) -> Any:
    params: dict[str, Any] = {"merchant": merchant_filter(who, merchant), "after": None}
    if wants_csv(request):
        return await csv_response(request, who, LIST_QUERY, params, "payments.csv")
    size = parse_limit(limit)
    if starting_after:
        params["after"] = decode_cursor(starting_after, 1)[0]
    async with reading(request, who) as conn:
        cur = await conn.execute(LIST_QUERY + " LIMIT %(limit)s", {**params, "limit": size + 1})
        rows = await cur.fetchall()
    for row in rows:
        row["created_at"] = row["created_at"].isoformat() if row["created_at"] else None
    return page(rows, size, key=lambda r: (r["payment_id"],))


async def unfiltered_csv(request: Request, who: Principal = Depends(principal)) -> Response:
    """An export whose query forgets the merchant: row-level security applies to COPY."""
    return await csv_response(request, who, "SELECT payment_id, merchant_id FROM payments", {},
                              "all payments.csv")


async def big_csv(request: Request, who: Principal = Depends(principal)) -> Response:
    query = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1, %(n)s) AS g ORDER BY g"
    return await csv_response(request, who, query, {"n": BIG_ROWS}, "big.csv")


def _app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    router = APIRouter()
    router.add_api_route("/v1/test/payments", payments_list)
    router.add_api_route("/v1/test/unfiltered.csv", unfiltered_csv)
    router.add_api_route("/v1/test/big.csv", big_csv)
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def books(api_db: PostgresSettings) -> SeedSummary:
    with connect(api_db) as conn:
        return seed_books(conn, payments=300, merchants=3, days=3)


@pytest.fixture(scope="module")
def server(stack: Settings, api_db: PostgresSettings, books: SeedSummary) -> Iterator[ApiServer]:
    settings = settings_for(stack, api_db)
    with ApiServer(settings, app=_app(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


def _bearer(key: str, csv_wanted: bool = False) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if csv_wanted:
        headers["Accept"] = "text/csv"
    return headers


def _walk(client: httpx.Client, key: str, **query: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {**query, "limit": "7", **({"starting_after": cursor} if cursor else {})}
        body = client.get("/v1/test/payments", params=params, headers=_bearer(key)).json()
        rows.extend(body["data"])
        if not body["has_more"]:
            return rows
        cursor = body["next_cursor"]


def _csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def _as_text(row: dict[str, Any]) -> dict[str, str]:
    """A JSON row as COPY writes it (NULL is empty; timestamps in the session's zone)."""
    out: dict[str, str] = {}
    for name, value in row.items():
        out[name] = "" if value is None else str(value)
    return out


def _normalise_times(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    from datetime import datetime

    for row in rows:
        if row.get("created_at"):
            row["created_at"] = datetime.fromisoformat(row["created_at"]).isoformat()
    return rows


@pytest.mark.parametrize("merchant", [MERCHANT, None])
def test_csv_has_the_rows_of_every_json_page(client: httpx.Client, api_db: PostgresSettings,
                                             merchant: str | None) -> None:
    key = make_key(api_db, merchant)
    pages = _walk(client, key)
    exported = _csv(client.get("/v1/test/payments", headers=_bearer(key, csv_wanted=True)))
    assert len(pages) > 7 * 3  # several pages
    assert list(exported[0]) == ["payment_id", "merchant_id", "amount_minor", "currency",
                                 "state", "created_at"]
    assert _normalise_times(exported) == _normalise_times([_as_text(r) for r in pages])
    merchants = {r["merchant_id"] for r in exported}
    assert merchants == {MERCHANT} if merchant else len(merchants) >= 3


def test_an_export_is_an_attachment(client: httpx.Client, api_db: PostgresSettings) -> None:
    response = client.get("/v1/test/unfiltered.csv",
                          headers=_bearer(make_key(api_db), csv_wanted=True))
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="all_payments.csv"'


def test_row_level_security_applies_to_the_copy(client: httpx.Client,
                                                api_db: PostgresSettings) -> None:
    merchant_rows = _csv(client.get("/v1/test/unfiltered.csv",
                                    headers=_bearer(make_key(api_db, MERCHANT))))
    analyst_rows = _csv(client.get("/v1/test/unfiltered.csv", headers=_bearer(make_key(api_db))))
    with connect(api_db) as conn:
        own = conn.execute("SELECT count(*) FROM payments WHERE merchant_id = %s",
                           (MERCHANT,)).fetchone()
        every = conn.execute("SELECT count(*) FROM payments").fetchone()
    assert own is not None and every is not None
    assert {r["merchant_id"] for r in merchant_rows} == {MERCHANT}
    assert len(merchant_rows) == own[0]
    assert len(analyst_rows) == every[0] > own[0]


def test_parameters_are_quoted_into_the_copy(client: httpx.Client,
                                             api_db: PostgresSettings) -> None:
    key = make_key(api_db)
    hostile = "x' OR '1'='1"
    rows = _csv(client.get("/v1/test/payments", params={"merchant": hostile},
                           headers=_bearer(key, csv_wanted=True)))
    assert rows == []


def test_a_big_export_streams_in_chunks_with_flat_memory(client: httpx.Client,
                                                         api_db: PostgresSettings) -> None:
    """300,000 rows (about 11 MB) arrive in many chunks while this process (client and server
    threads alike) never holds more than a small fraction of them."""
    key = make_key(api_db)
    tracemalloc.start()
    try:
        chunks = 0
        size = 0
        lines = 0
        with client.stream("GET", "/v1/test/big.csv", headers=_bearer(key, csv_wanted=True)) as r:
            assert r.status_code == 200
            assert "content-length" not in r.headers
            for chunk in r.iter_raw():
                chunks += 1
                size += len(chunk)
                lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == BIG_ROWS + 1  # the header line too
    assert size > 10_000_000
    assert chunks >= size // (CHUNK_BYTES * 4)
    assert peak < size // 5, f"peak {peak} bytes while {size} bytes went through"
