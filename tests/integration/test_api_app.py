"""The app around the routes: health, OpenAPI and docs, the error shape, and request metrics
by route template and status on /metrics (real server, real PostgreSQL, httpx)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request

from api.app import create_app
from api.auth import Principal, principal
from api.params import merchant_filter, parse_limit, parse_time
from infra.config import PostgresSettings, Settings
from tests.support.api import ApiServer, make_key, settings_for

pytestmark = pytest.mark.integration


async def typed(count: int, who: Principal = Depends(principal)) -> dict[str, Any]:
    """FastAPI's own validation of a typed parameter (400, not 422)."""
    return {"count": count}


async def parsed(request: Request, merchant: str | None = None, limit: str | None = None,
                 since: str | None = None, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"merchant": merchant_filter(who, merchant), "limit": parse_limit(limit),
            "since": str(parse_time("since", since))}


async def broken(who: Principal = Depends(principal)) -> dict[str, Any]:
    raise RuntimeError("a bug")


async def slow(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Longer than the test server's statement timeout (200 ms)."""
    from api.db import reading

    async with reading(request, who) as conn:
        await conn.execute("SELECT pg_sleep(5)")
    return {}


async def item(item_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"item_id": item_id}


def _app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    router = APIRouter()
    router.add_api_route("/v1/test/typed", typed)
    router.add_api_route("/v1/test/parsed", parsed)
    router.add_api_route("/v1/test/broken", broken)
    router.add_api_route("/v1/test/items/{item_id}", item)
    router.add_api_route("/v1/test/slow", slow)
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def server(stack: Settings, api_db: PostgresSettings) -> Iterator[ApiServer]:
    settings = settings_for(stack, api_db)
    settings = replace(settings, api=replace(settings.api, statement_timeout_ms=200))
    with ApiServer(settings, app=_app(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def merchant_key(api_db: PostgresSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(api_db, 'm-1')}"}


def test_health_answers_without_a_key(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_and_docs_are_served(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/payments", "/v1/payments/{payment_id}", "/v1/balances",
                 "/v1/balance_transactions", "/v1/settlement_batches", "/v1/exceptions",
                 "/v1/reports/summary"):
        assert path in spec["paths"], path
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_typed_parameter_of_the_wrong_type_is_400_naming_it(
        client: httpx.Client, merchant_key: dict[str, str]) -> None:
    response = client.get("/v1/test/typed", params={"count": "many"}, headers=merchant_key)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and error["param"] == "count"
    missing = client.get("/v1/test/typed", headers=merchant_key)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "count"


@pytest.mark.parametrize(("query", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"since": "2024-13-40"}, "since"), ({"merchant": "m-2"}, "merchant")])
def test_parsed_parameters_are_400_naming_them(client: httpx.Client,
                                               merchant_key: dict[str, str],
                                               query: dict[str, str], param: str) -> None:
    response = client.get("/v1/test/parsed", params=query, headers=merchant_key)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"code": "invalid_parameter", "param": param,
                                        "message": response.json()["error"]["message"]}
    assert param in response.json()["error"]["message"]


def test_good_parameters_pass(client: httpx.Client, merchant_key: dict[str, str]) -> None:
    response = client.get("/v1/test/parsed", params={"limit": "5", "since": "2024-05-01"},
                          headers=merchant_key)
    assert response.json() == {"merchant": "m-1", "limit": 5,
                               "since": "2024-05-01 00:00:00+00:00"}


def test_a_bug_is_a_json_500_without_its_details(client: httpx.Client,
                                                  merchant_key: dict[str, str]) -> None:
    response = client.get("/v1/test/broken", headers=merchant_key)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "a bug" not in response.text


def test_the_statement_timeout_cancels_a_slow_query_with_a_503(
        client: httpx.Client, merchant_key: dict[str, str]) -> None:
    response = client.get("/v1/test/slow", headers=merchant_key)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "query_timeout"
    assert client.get("/healthz").status_code == 200  # the connection went back usable


def test_an_unknown_path_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/v1/nothing/here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def _samples(client: httpx.Client) -> dict[tuple[str, str, str], float]:
    text = client.get("/metrics").text
    out: dict[tuple[str, str, str], float] = {}
    for match in re.finditer(r'^settle_api_requests_total\{method="([^"]+)",route="([^"]*)",'
                             r'status="([^"]+)"\} (\S+)$', text, re.M):
        out[(match[1], match[2], match[3])] = float(match[4])
    return out


def test_metrics_count_requests_by_route_template_and_status(
        client: httpx.Client, merchant_key: dict[str, str]) -> None:
    before = _samples(client)
    for ident in ("a-1", "b-2", "c-3"):
        assert client.get(f"/v1/test/items/{ident}", headers=merchant_key).status_code == 200
    assert client.get("/v1/test/items/x").status_code == 401
    assert client.get("/v1/test/broken", headers=merchant_key).status_code == 500
    assert client.get("/v1/no/such/path/42").status_code == 404
    after = _samples(client)

    def grew(route: str, status: str) -> float:
        key = ("GET", route, status)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("/v1/test/items/{item_id}", "200") == 3
    assert grew("/v1/test/items/{item_id}", "401") == 1
    assert grew("/v1/test/broken", "500") == 1
    assert grew("unmatched", "404") == 1
    for path in ("/metrics", "/docs", "/openapi.json", "/healthz"):
        assert client.get(path).status_code == 200
    plain = _samples(client)
    for path in ("/metrics", "/docs", "/openapi.json", "/healthz"):
        assert plain.get(("GET", path, "200"), 0.0) >= 1, path
    assert not any("a-1" in route or "/42" in route for _, route, _ in after)
    text = client.get("/metrics").text
    assert re.search(r'^settle_api_request_duration_seconds_count\{method="GET",'
                     r'route="/v1/test/items/\{item_id\}"\} \d', text, re.M)
