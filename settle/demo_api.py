"""The demo's look at the HTTP API: keys, every endpoint answered, isolation, the page.

`settle demo` starts `settle api serve` beside the pipeline; once the books balance it
creates a merchant key (for the merchant with the most batches) and an analyst key (the
previous demo's keys are revoked), asks every endpoint with a real HTTP client and shows
the status and rows of each, checks that the merchant key cannot read another merchant's
payment, and renders the merchant's statement page in headless Chromium to a PNG.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.config import Settings

DEMO_LABEL = "make demo"
HEALTH_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class DemoKeys:
    merchant: str
    merchant_key: str
    analyst_key: str
    revoked: int  # earlier demo keys revoked now


@dataclass(frozen=True, slots=True)
class Probe:
    """One request of the demo and what came back."""

    what: str
    key: str  # "merchant", "analyst" or "none"
    status: int
    expected: int
    rows: str = ""

    @property
    def ok(self) -> bool:
        return self.status == self.expected


@dataclass(slots=True)
class ApiReport:
    probes: list[Probe] = field(default_factory=list)
    screenshot: Path | None = None
    screenshot_error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.probes) and all(p.ok for p in self.probes) \
            and self.screenshot is not None


def api_url(settings: Settings) -> str:
    """Where a client on this machine reaches the API (a wildcard listen address: loopback)."""
    host = settings.api.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


def wait_healthy(base_url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Poll /healthz until it answers 200 (the pool reached PostgreSQL) or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def busiest_merchant(conn: Any) -> str | None:
    """The merchant with the most settlement batches (else payments): the demo's key."""
    for sql in ("SELECT merchant_id FROM settlement_batches GROUP BY 1 ORDER BY count(*) DESC,"
                " 1 LIMIT 1",
                "SELECT merchant_id FROM payments GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"):
        row = conn.execute(sql).fetchone()
        if row is not None:
            return str(row[0])
    return None


def create_demo_keys(settings: Settings) -> DemoKeys | None:
    """A merchant key and an analyst key labelled for the demo; the previous demo's keys are
    revoked. None when the books have no merchant yet."""
    from settle.api_keys import create_key, list_keys, revoke_key
    from sinks.db import connect

    with connect(settings.postgres) as conn:
        merchant = busiest_merchant(conn)
        conn.rollback()
        if merchant is None:
            return None
        earlier = [k for k in list_keys(conn)
                   if k.label.startswith(DEMO_LABEL) and k.revoked_at is None]
        for key in earlier:
            revoke_key(conn, key.key_id)
        by = "settle demo"
        merchant_key = create_key(conn, merchant=merchant, label=f"{DEMO_LABEL}: merchant",
                                  created_by=by)
        analyst_key = create_key(conn, merchant=None, label=f"{DEMO_LABEL}: analyst",
                                 created_by=by)
    return DemoKeys(merchant, merchant_key.key, analyst_key.key, len(earlier))


def _rows(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return f"{len(body['data'])}{'+' if body.get('has_more') else ''} rows"
    return ""


def probe_api(base_url: str, keys: DemoKeys) -> list[Probe]:
    """Every endpoint with the merchant key (and the analyst key where it differs), and the
    requests a merchant key must not get an answer to."""
    probes: list[Probe] = []
    auth = {"merchant": {"Authorization": f"Bearer {keys.merchant_key}"},
            "analyst": {"Authorization": f"Bearer {keys.analyst_key}"}, "none": {}}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        def get(what: str, path: str, key: str = "merchant", expected: int = 200,
                describe: Callable[[Any], str] = _rows, **params: Any) -> Any:
            response = client.get(path, params=params, headers=auth[key])
            body: Any = None
            if response.headers.get("content-type", "").startswith("application/json"):
                body = response.json()
            rows = describe(body) if response.status_code == 200 and body is not None else ""
            if response.status_code != 200 and isinstance(body, dict) and "error" in body:
                rows = f"{body['error'].get('code')}: {body['error'].get('message')}"
            probes.append(Probe(what, key, response.status_code, expected, rows))
            return body if response.status_code == 200 else None

        get("GET /healthz", "/healthz", "none", describe=lambda b: str(b.get("status")))
        get("GET /openapi.json", "/openapi.json", "none",
            describe=lambda b: f"{len(b.get('paths', {}))} paths")
        docs = client.get("/docs")
        probes.append(Probe("GET /docs", "none", docs.status_code, 200, "interactive docs"))
        payments = get("GET /v1/payments", "/v1/payments", limit=20) or {"data": []}
        if payments["data"]:
            payment_id = payments["data"][0]["id"]
            get("GET /v1/payments/{payment_id}", f"/v1/payments/{payment_id}",
                describe=lambda b: f"{len(b.get('timeline', []))} timeline events")
        get("GET /v1/balances", "/v1/balances")
        get("GET /v1/balance_transactions", "/v1/balance_transactions", limit=20)
        batches = get("GET /v1/settlement_batches", "/v1/settlement_batches",
                      limit=20) or {"data": []}
        if batches["data"]:
            batch_id = batches["data"][0]["batch_id"]
            get("GET /v1/settlement_batches/{batch_id}", f"/v1/settlement_batches/{batch_id}",
                describe=lambda b: f"{len(b['items']['data'])}"
                                   f"{'+' if b['items'].get('has_more') else ''} items")
        get("GET /v1/exceptions", "/v1/exceptions", limit=20)
        get("GET /v1/reports/summary", "/v1/reports/summary", group_by="day,channel,currency")
        csv = client.get("/v1/payments", headers={**auth["merchant"], "Accept": "text/csv"})
        lines = csv.text.count("\n") - 1 if csv.status_code == 200 else 0
        probes.append(Probe("GET /v1/payments (Accept: text/csv)", "merchant", csv.status_code,
                            200, f"{lines:,} rows (the whole list)"))
        get("GET /v1/reports/summary by merchant", "/v1/reports/summary", "analyst",
            group_by="merchant,currency")
        everyone = get("GET /v1/payments?limit=100", "/v1/payments", "analyst",
                       limit=100) or {"data": []}
        other = next((p for p in everyone["data"] if p["merchant_id"] != keys.merchant), None)
        # What a merchant key must not read: another merchant's payment, list, or no key.
        if other is not None:
            get("another merchant's payment", f"/v1/payments/{other['id']}", expected=404)
            get("another merchant's list", "/v1/payments", expected=400,
                merchant=other["merchant_id"])
        get("no key", "/v1/payments", "none", expected=401)
    return probes


def screenshot_statement(base_url: str, keys: DemoKeys, out: Path) -> Path:
    """The merchant key's statement page, full height, as PNG (headless Chromium)."""
    from settle.browser import statement_screenshot

    return statement_screenshot(base_url, keys.merchant_key, out)


def look_at_api(settings: Settings, keys: DemoKeys, out: Path) -> ApiReport:
    report = ApiReport(probes=probe_api(api_url(settings), keys))
    try:
        report.screenshot = screenshot_statement(api_url(settings), keys, out)
    except Exception as exc:  # reported; the demo fails on it
        report.screenshot_error = f"{type(exc).__name__}: {exc}"
    return report
