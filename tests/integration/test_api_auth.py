"""Who may ask: 401 for a missing, malformed, unknown or revoked key; a merchant key reads its
own merchant only, and another merchant's payment is a 404 like a payment that does not exist.

A real uvicorn server on loopback with httpx, keys created as `settle api keys create` does,
books seeded in a throwaway database. The server caches no key (SETTLE_API_KEY_CACHE_S=0), so
a revocation is seen by the next request.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request

from api.app import create_app
from api.auth import Principal, new_key, principal
from api.db import reading
from api.errors import not_found
from infra.config import PostgresSettings, Settings
from settle.api_seed import SeedSummary, seed_books
from sinks.db import connect
from tests.support.api import ApiServer, make_key, revoke, settings_for

pytestmark = pytest.mark.integration

MERCHANT = "mch_001"
OTHER = "mch_002"

async def whoami(who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"key_id": who.key_id, "scope": who.scope, "merchant_id": who.merchant_id}


async def forgetful(payment_id: str, request: Request,
                    who: Principal = Depends(principal)) -> dict[str, Any]:
    """A route with a bug in the first layer: it forgets the merchant filter."""
    async with reading(request, who) as conn:
        cur = await conn.execute(
            "SELECT payment_id, merchant_id FROM payments WHERE payment_id = %s", (payment_id,))
        row = await cur.fetchone()
    if row is None:
        raise not_found("payment", payment_id)
    return dict(row)


def _probe_app(settings: Settings) -> FastAPI:
    """The API with two routes of this test only: who a key is, and a forgetful route."""
    app = create_app(settings)
    router = APIRouter()
    router.add_api_route("/v1/test/whoami", whoami)
    router.add_api_route("/v1/test/unfiltered/payments/{payment_id}", forgetful)
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def books(api_db: PostgresSettings) -> SeedSummary:
    with connect(api_db) as conn:
        return seed_books(conn, payments=200, merchants=3, days=3)


@pytest.fixture(scope="module")
def server(stack: Settings, api_db: PostgresSettings, books: SeedSummary) -> Iterator[ApiServer]:
    settings = settings_for(stack, api_db)
    settings = replace(settings, api=replace(settings.api, key_cache_s=0))
    with ApiServer(settings, app=_probe_app(settings)) as running:
        yield running


@pytest.fixture()
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


def _payment_of(owner: PostgresSettings, merchant: str) -> str:
    with connect(owner) as conn:
        row = conn.execute("SELECT payment_id FROM payments WHERE merchant_id = %s"
                           " ORDER BY payment_id LIMIT 1", (merchant,)).fetchone()
    assert row is not None
    return str(row[0])


def _unauthorized(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message", "param"}


def test_no_key_is_401_missing(client: httpx.Client) -> None:
    _unauthorized(client.get("/v1/test/whoami"), "missing_api_key")


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer sk_",
    "Bearer not-a-key",
    "Token sk_0123456789ab_" + "A" * 43,
    "Bearer sk_0123456789ab_" + "A" * 42,
    "Bearer sk_0123456789AB_" + "A" * 43,
])
def test_a_malformed_authorization_is_401_invalid(client: httpx.Client, header: str) -> None:
    _unauthorized(client.get("/v1/test/whoami", headers={"Authorization": header}),
                  "invalid_api_key")


def test_a_well_formed_unknown_key_is_401_invalid(client: httpx.Client) -> None:
    _unauthorized(client.get("/v1/test/whoami", headers=_bearer(new_key().key)),
                  "invalid_api_key")


def test_a_known_key_id_with_a_wrong_secret_is_401_invalid(
        client: httpx.Client, api_db: PostgresSettings) -> None:
    key = make_key(api_db, MERCHANT)
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    _unauthorized(client.get("/v1/test/whoami", headers=_bearer(forged)), "invalid_api_key")
    assert client.get("/v1/test/whoami", headers=_bearer(key)).status_code == 200


def test_a_revoked_key_is_401_revoked_from_the_next_request(
        client: httpx.Client, api_db: PostgresSettings) -> None:
    key = make_key(api_db, MERCHANT)
    assert client.get("/v1/test/whoami", headers=_bearer(key)).status_code == 200
    revoke(api_db, key)
    _unauthorized(client.get("/v1/test/whoami", headers=_bearer(key)), "revoked_api_key")


def test_keys_say_who_they_are(client: httpx.Client, api_db: PostgresSettings) -> None:
    merchant = client.get("/v1/test/whoami", headers=_bearer(make_key(api_db, MERCHANT)))
    analyst = client.get("/v1/test/whoami", headers=_bearer(make_key(api_db)))
    assert merchant.json()["scope"] == "merchant"
    assert merchant.json()["merchant_id"] == MERCHANT
    assert analyst.json()["scope"] == "analyst"
    assert analyst.json()["merchant_id"] is None
    assert re.fullmatch(r"[0-9a-f]{12}", merchant.json()["key_id"])


def test_the_key_is_stored_as_its_hash_only(api_db: PostgresSettings) -> None:
    key = make_key(api_db, MERCHANT)
    with connect(api_db) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert rows
    assert not any(key in str(value) for row in rows for value in row)
    secret = key.rsplit("_", 1)[1] if key.count("_") == 2 else key[16:]
    assert not any(secret in str(value) for row in rows for value in row)


def test_every_v1_route_wants_a_key(server: ApiServer, client: httpx.Client) -> None:
    app = server.app
    assert isinstance(app, FastAPI)
    paths = sorted({route["path"] for route in _get_routes(client)})
    assert any(p.startswith("/v1/payments") for p in paths), paths
    for path in paths:
        url = re.sub(r"\{[^}]+\}", "x", path)
        _unauthorized(client.get(url), "missing_api_key")


def _get_routes(client: httpx.Client) -> list[dict[str, str]]:
    """Every GET operation of the app's OpenAPI document under /v1."""
    spec = client.get("/openapi.json").json()
    return [{"path": path} for path, ops in spec["paths"].items()
            if path.startswith("/v1/") and "get" in ops]


def test_another_merchants_payment_is_404_like_a_missing_one(
        client: httpx.Client, api_db: PostgresSettings) -> None:
    key = _bearer(make_key(api_db, MERCHANT))
    own = _payment_of(api_db, MERCHANT)
    theirs = _payment_of(api_db, OTHER)
    assert client.get(f"/v1/payments/{own}", headers=key).status_code == 200
    foreign = client.get(f"/v1/payments/{theirs}", headers=key)
    missing = client.get("/v1/payments/pay_does_not_exist", headers=key)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"]
    assert (foreign.json()["error"]["message"].replace(theirs, "ID")
            == missing.json()["error"]["message"].replace("pay_does_not_exist", "ID"))
    analyst = _bearer(make_key(api_db))
    assert client.get(f"/v1/payments/{theirs}", headers=analyst).status_code == 200


def test_row_level_security_holds_when_a_route_forgets_the_merchant_filter(
        client: httpx.Client, api_db: PostgresSettings) -> None:
    key = _bearer(make_key(api_db, MERCHANT))
    own = _payment_of(api_db, MERCHANT)
    theirs = _payment_of(api_db, OTHER)
    mine = client.get(f"/v1/test/unfiltered/payments/{own}", headers=key)
    assert mine.status_code == 200 and mine.json()["merchant_id"] == MERCHANT
    assert client.get(f"/v1/test/unfiltered/payments/{theirs}", headers=key).status_code == 404
    analyst = _bearer(make_key(api_db))
    seen = client.get(f"/v1/test/unfiltered/payments/{theirs}", headers=analyst)
    assert seen.status_code == 200 and seen.json()["merchant_id"] == OTHER


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
