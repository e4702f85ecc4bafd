"""The merchant statement page in a real headless Chromium (Debian's, through chromedriver).

Seeded books in a throwaway database, a real uvicorn server, keys for two merchants and an
analyst. The browser signs in through the login form as a person would; the numbers the page
shows (balances, batches and their items, the chart's days, open exceptions) are read from
the rendered DOM and compared with the API's JSON for the same key, fetched with httpx.
Another merchant's key sees none of them; a bad, unknown or revoked key gets the login page
with an error. Chromium missing is a failure, not a skip: `make up` installs it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from api.statement import FEES_H, VOLUME_H, grouped
from infra.config import PostgresSettings, Settings
from settle.api_seed import SeedSummary, seed_books
from settle.browser import chromium, log_in, page_error, page_kind, submit
from settle.processes import free_port
from sinks.db import connect
from tests.support.api import ApiServer, make_key, revoke, settings_for

pytestmark = pytest.mark.integration

# The rendered page as data: every amount cell carries its field, currency and minor units.
READ_PAGE = """
const cells = (row) => Object.fromEntries(Array.from(row.querySelectorAll('td[data-field]'))
  .map(td => [td.dataset.field, {minor: td.dataset.minor === undefined ? null
                                        : Number(td.dataset.minor),
                                 text: td.textContent.trim()}]));
const main = document.querySelector('main[data-page]');
return {
  page: main.dataset.page,
  merchant: main.dataset.merchant || null,
  balances: Array.from(document.querySelectorAll('#balances tbody tr'))
    .map(tr => ({currency: tr.dataset.currency, cells: cells(tr)})),
  batches: Array.from(document.querySelectorAll('#batches tr.batch'))
    .map(tr => ({batch_id: tr.dataset.batchId, cells: cells(tr)})),
  items: Object.fromEntries(Array.from(document.querySelectorAll('#batches tr.items'))
    .map(tr => [tr.dataset.batchId, Array.from(tr.querySelectorAll('tr.item'))
      .map(i => ({item_id: i.dataset.itemId, cells: cells(i)}))])),
  charts: Array.from(document.querySelectorAll('#volume figure.chart')).map(f => ({
    currency: f.dataset.currency,
    days: Array.from(f.querySelectorAll('table.days tbody tr'))
      .map(tr => ({day: tr.dataset.day, cells: cells(tr),
                   payments: Number(tr.children[1].textContent)})),
    volume: Array.from(f.querySelectorAll('rect.volume'))
      .map(r => [Number(r.dataset.minor), Number(r.getAttribute('height'))]),
    fees: Array.from(f.querySelectorAll('rect.fees'))
      .map(r => [Number(r.dataset.minor), Number(r.getAttribute('height'))]),
  })),
  exceptions: Array.from(document.querySelectorAll('#exceptions tr.exception'))
    .map(tr => tr.dataset.exceptionId),
  pickable: Array.from(document.querySelectorAll('#pick option')).map(o => o.value),
  text: document.body.innerText,
};
"""


class Site:
    """The seeded books behind a real server, with the keys the tests sign in with."""

    def __init__(self, server: ApiServer, owner: PostgresSettings, seeded: SeedSummary) -> None:
        self.server = server
        self.base_url = server.base_url
        self.owner = owner
        self.seeded = seeded
        self.merchant_a, self.merchant_b = seeded.merchants[0], seeded.merchants[1]
        self.key_a = make_key(owner, merchant=self.merchant_a)
        self.key_b = make_key(owner, merchant=self.merchant_b)
        self.analyst = make_key(owner)
        self.tz = server.settings.api.report_tz

    def api(self, key: str, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params,
                             headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


@pytest.fixture(scope="module")
def site(stack: Settings, api_db: PostgresSettings) -> Iterator[Site]:
    with connect(api_db) as conn:
        seeded = seed_books(conn, payments=1500, merchants=3, days=6, open_days=1, seed=11)
    # Every request looks its key up: a revocation shows at the next page load.
    settings = settings_for(stack, api_db)
    settings = replace(settings, api=replace(settings.api, key_cache_s=0))
    with ApiServer(settings) as server:
        yield Site(server, api_db, seeded)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as session:
        yield session


@pytest.fixture()
def fresh(browser: Any, site: Site) -> Any:
    """The browser with no cookie of the site (signed out)."""
    browser.get(f"{site.base_url}/statement")
    browser.delete_all_cookies()
    return browser


def read(session: Any) -> dict[str, Any]:
    return dict(session.execute_script(READ_PAGE))


def signed_in(session: Any, site: Site, key: str, merchant: str | None = None) -> dict[str, Any]:
    log_in(session, site.base_url, key)
    if merchant is not None:
        session.get(f"{site.base_url}/statement?merchant={merchant}")
    page = read(session)
    assert page["page"] == "statement", page_error(session)
    return page


def money_of(cell: dict[str, Any], expected: dict[str, Any] | None) -> None:
    """A page cell shows the API's money object: same minor units, same text."""
    if expected is None:
        assert cell["minor"] is None and cell["text"] == ""
        return
    assert cell["minor"] == expected["amount_minor"]
    assert cell["text"] == grouped(expected["amount_minor"], expected["currency"])


# ----------------------------------------------------------------------------- the numbers


def test_the_merchant_s_balances_are_the_api_s(fresh: Any, site: Site) -> None:
    page = signed_in(fresh, site, site.key_a)
    assert page["merchant"] == site.merchant_a
    api = site.api(site.key_a, "/v1/balances")["data"]
    assert api, "the seeded merchant has balances"
    assert [row["currency"] for row in page["balances"]] == [b["currency"] for b in api]
    for row, balance in zip(page["balances"], api, strict=True):
        for field in ("payable", "payout_due", "held"):
            money_of(row["cells"][field], balance[field])


def test_the_recent_batches_and_their_items_are_the_api_s(fresh: Any, site: Site) -> None:
    page = signed_in(fresh, site, site.key_a)
    api = site.api(site.key_a, "/v1/settlement_batches", limit=5)["data"]
    assert len(api) == 5
    assert [b["batch_id"] for b in page["batches"]] == [b["batch_id"] for b in api]
    for row, batch in zip(page["batches"], api, strict=True):
        for field in ("gross", "fee", "net", "carried_in", "payout", "carried_out"):
            money_of(row["cells"][field], batch[field])
        assert row["cells"]["payment_count"]["text"] == str(batch["payment_count"])
        assert row["cells"]["refund_count"]["text"] == str(batch["refund_count"])
        detail = site.api(site.key_a, f"/v1/settlement_batches/{batch['batch_id']}",
                          items_limit=25)
        items = page["items"][batch["batch_id"]]
        assert [i["item_id"] for i in items] == [i["item_id"] for i in detail["items"]["data"]]
        for item, expected in zip(items, detail["items"]["data"], strict=True):
            for field in ("gross", "fee", "net"):
                money_of(item["cells"][field], expected[field])


def test_the_chart_s_days_are_the_summary_report_s(fresh: Any, site: Site) -> None:
    page = signed_in(fresh, site, site.key_a)
    assert page["charts"], "the merchant has payments, so a chart"
    first_day = page["charts"][0]["days"][0]["day"]
    summary = site.api(site.key_a, "/v1/reports/summary", group_by="day,currency",
                       tz=site.tz, created_gte=first_day)["data"]
    expected = {(r["currency"], r["day"]): r for r in summary}
    assert {c["currency"] for c in page["charts"]} == {r["currency"] for r in summary}
    shown_days = set()
    for chart in page["charts"]:
        assert len(chart["days"]) == 14
        for day in chart["days"]:
            row = expected.get((chart["currency"], day["day"]))
            gross = row["gross"]["amount_minor"] if row else 0
            fee = row["fee"]["amount_minor"] if row else 0
            assert day["cells"]["gross"]["minor"] == gross
            assert day["cells"]["fee"]["minor"] == fee
            assert day["payments"] == (row["payment_count"] if row else 0)
            if row:
                shown_days.add((chart["currency"], day["day"]))
        # Bars: integer heights in proportion to the day's amount, the largest full height.
        for bars, full in ((chart["volume"], VOLUME_H), (chart["fees"], FEES_H)):
            largest = max(minor for minor, _ in bars)
            for minor, height in bars:
                assert height == (max(1, minor * full // largest) if minor > 0 else 0)
            assert max(height for _, height in bars) == (full if largest > 0 else 0)
    assert shown_days == set(expected), "every day of the report is on the chart"


def test_the_open_exceptions_are_the_api_s(fresh: Any, site: Site) -> None:
    page = signed_in(fresh, site, site.key_a)
    api = site.api(site.key_a, "/v1/exceptions", case_status="UNRESOLVED", limit=20)["data"]
    assert api, "the seed leaves cases open"
    assert page["exceptions"] == [e["id"] for e in api]


# ----------------------------------------------------------------------------- who sees what


def test_another_merchant_s_key_sees_none_of_it(fresh: Any, site: Site) -> None:
    a = signed_in(fresh, site, site.key_a)
    fresh.delete_all_cookies()
    b = signed_in(fresh, site, site.key_b)
    assert b["merchant"] == site.merchant_b
    assert site.merchant_a not in b["text"] and site.merchant_a not in fresh.page_source
    assert not {x["batch_id"] for x in a["batches"]} & {x["batch_id"] for x in b["batches"]}
    assert not set(a["exceptions"]) & set(b["exceptions"])
    assert b["pickable"] == []  # no merchant picker for a merchant key
    api_b = site.api(site.key_b, "/v1/balances")["data"]
    assert [r["currency"] for r in b["balances"]] == [r["currency"] for r in api_b]
    # Asking for the other merchant by name: an error page, not its statement.
    fresh.get(f"{site.base_url}/statement?merchant={site.merchant_a}")
    assert page_kind(fresh) == "error"
    assert "merchant" in page_error(fresh)
    assert "payable" not in fresh.page_source.lower()
    response = httpx.get(f"{site.base_url}/statement", params={"merchant": site.merchant_a},
                         cookies={"settle_statement": site.key_b})
    assert response.status_code == 400


def test_an_analyst_picks_a_merchant(fresh: Any, site: Site) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    page = signed_in(fresh, site, site.analyst)
    assert page["pickable"] == list(site.seeded.merchants)
    assert page["merchant"] == site.seeded.merchants[0]
    Select(fresh.find_element(By.CSS_SELECTOR, "#pick select")).select_by_value(site.merchant_b)
    submit(fresh, "#pick button[type=submit]")
    page = read(fresh)
    assert page["merchant"] == site.merchant_b
    api = site.api(site.analyst, "/v1/balances", merchant=site.merchant_b)["data"]
    assert [r["currency"] for r in page["balances"]] == [r["currency"] for r in api]
    for row, balance in zip(page["balances"], api, strict=True):
        money_of(row["cells"]["payable"], balance["payable"])


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("key, says", [
    ("not-a-key", "not an API key"),
    ("sk_0123456789ab_" + "A" * 43, "not valid"),
])
def test_a_bad_key_gets_the_login_page_with_an_error(fresh: Any, site: Site, key: str,
                                                     says: str) -> None:
    log_in(fresh, site.base_url, key)
    assert page_kind(fresh) == "login"
    assert says in page_error(fresh)
    assert fresh.get_cookie("settle_statement") is None
    response = httpx.post(f"{site.base_url}/statement/login", data={"key": key})
    assert response.status_code == 401
    assert says in response.text


def test_a_revoked_key_is_signed_out_at_the_next_page(fresh: Any, site: Site) -> None:
    key = make_key(site.owner, merchant=site.merchant_a, label="revoked in a test")
    signed_in(fresh, site, key)
    revoke(site.owner, key)
    fresh.get(f"{site.base_url}/statement")
    assert page_kind(fresh) == "login"
    assert "not valid any more" in page_error(fresh)
    assert fresh.get_cookie("settle_statement") is None


def test_sign_out_forgets_the_key(fresh: Any, site: Site) -> None:
    signed_in(fresh, site, site.key_a)
    submit(fresh, "form[action='/statement/logout'] button")
    assert page_kind(fresh) == "login"
    assert page_error(fresh) == ""
    assert fresh.get_cookie("settle_statement") is None
    fresh.get(f"{site.base_url}/statement")
    assert page_kind(fresh) == "login"


def test_the_key_cookie_is_http_only_strict_and_scoped_to_the_page(fresh: Any,
                                                                   site: Site) -> None:
    signed_in(fresh, site, site.key_a)
    cookie = fresh.get_cookie("settle_statement")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/statement"
    assert fresh.execute_script("return document.cookie") == ""  # scripts cannot read it
    # The API itself never takes the cookie: only a Bearer key.
    response = httpx.get(f"{site.base_url}/v1/balances", cookies={"settle_statement": site.key_a})
    assert response.status_code == 401


def test_the_page_allows_no_script_and_no_framing(site: Site) -> None:
    response = httpx.get(f"{site.base_url}/statement", cookies={"settle_statement": site.key_a})
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["cache-control"] == "no-store"
    assert "<script" not in response.text


def test_a_login_posted_from_another_site_is_refused(site: Site) -> None:
    response = httpx.post(f"{site.base_url}/statement/login", data={"key": site.key_a},
                          headers={"Origin": "http://elsewhere.example"})
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_a_login_without_a_form_body_is_a_400(site: Site) -> None:
    response = httpx.post(f"{site.base_url}/statement/login", json={"key": site.key_a})
    assert response.status_code == 400
    response = httpx.post(f"{site.base_url}/statement/login", data={"key": ""})
    assert response.status_code == 400
    assert "Enter an API key" in response.text


def test_the_statement_is_not_in_the_api_document(site: Site) -> None:
    paths = httpx.get(f"{site.base_url}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/statement")]


def test_days_are_calendar_days_of_the_cut_off_zone(fresh: Any, site: Site) -> None:
    page = signed_in(fresh, site, site.key_a)
    newest = site.api(site.key_a, "/v1/payments", limit=1)["data"][0]["created_at"]
    local = datetime.fromisoformat(newest.replace("Z", "+00:00")).astimezone(ZoneInfo(site.tz))
    for chart in page["charts"]:
        assert chart["days"][-1]["day"] == local.date().isoformat()


# ----------------------------------------------------------------------------- the command


def _settle(*args: str) -> Any:
    """`settle ...` in this process (click's runner): exit code, stdout and stderr apart."""
    from click.testing import CliRunner

    from settle.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_settle_api_screenshot_saves_the_whole_page(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "statement.png"
    proc = _settle("api", "screenshot", site.base_url, "--key", site.analyst,
                   "--merchant", site.merchant_b, "--out", str(out))
    assert proc.exit_code == 0, proc.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width == 1280
    assert height > 1200, "the full page, not only the first screen"


def test_settle_api_screenshot_says_why_not(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "statement.png"
    proc = _settle("api", "screenshot", site.base_url, "--key", "sk_0123456789ab_" + "B" * 43,
                   "--out", str(out))
    assert proc.exit_code == 1
    assert "refused the key" in proc.stderr and "not valid" in proc.stderr
    assert not out.exists()
    nobody = f"http://127.0.0.1:{free_port()}"
    proc = _settle("api", "screenshot", nobody, "--key", site.key_a, "--out", str(out))
    assert proc.exit_code == 1
    assert f"{nobody}/statement does not answer" in proc.stderr
    assert not out.exists()
