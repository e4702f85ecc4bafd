"""The merchant statement page: balances, recent batches with their items, daily volume and
fees as a chart, open exceptions; server-rendered HTML, no script, no build step.

`GET /statement` shows a login form until a key is given; `POST /statement/login` checks the
key like the API does and keeps it in an HttpOnly, SameSite=Strict cookie limited to
/statement (every page load authenticates it again, so a revoked key is refused within the
key cache's TTL); `POST /statement/logout` forgets it. A merchant key sees its merchant; an
analyst key picks one (`?merchant=`).

Every number comes from the query functions of the API's routes (balances, batches, the
summary report, payments, exceptions), run in one REPEATABLE READ, read-only transaction
scoped to the key like any API request, so the page and the API cannot disagree and the
page's sections are one snapshot of the books. Amounts are shown with `api.money.display`;
the chart's coordinates are integer arithmetic on minor units.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from psycopg.rows import dict_row

from api.auth import Principal, authenticate, parse_key_id
from api.db import prepare
from api.errors import ApiError
from api.money import display
from api.params import merchant_filter
from api.routes.balances import balances_rows
from api.routes.batches import batch_detail, batches_rows
from api.routes.exceptions import exceptions_rows
from api.routes.payments import payments_rows
from api.routes.reports import summary_rows
from api.routes.shared import parse_id

router = APIRouter(include_in_schema=False)

COOKIE: Final = "settle_statement"
COOKIE_PATH: Final = "/statement"
COOKIE_MAX_AGE_S: Final = 8 * 3600
RECENT_BATCHES: Final = 5
ITEMS_SHOWN: Final = 25
EXCEPTIONS_SHOWN: Final = 20
CHART_DAYS: Final = 14
LOGIN_BODY_MAX: Final = 4096
# No script, no external resource, no framing: the page is HTML and inline CSS/SVG only.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' "
                               "data:; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser posts forms with `Origin: null`
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))


def grouped(amount_minor: int, currency: str) -> str:
    """`api.money.display` with thousands separators: 123456789 CNY -> "1,234,567.89 CNY"."""
    text = display(amount_minor, currency)
    number, _, code = text.partition(" ")
    sign = "-" if number.startswith("-") else ""
    whole, dot, fraction = number.lstrip("-").partition(".")
    return f"{sign}{int(whole):,}{dot}{fraction} {code}"


def _money_text(m: dict[str, Any] | None) -> str:
    """A money() dict for people; a currency without a known exponent shows minor units."""
    if m is None:
        return ""
    if m.get("exponent") is None:
        return f"{m['amount_minor']:,} {m['currency']} (minor units)"
    return grouped(m["amount_minor"], m["currency"])


templates.env.filters["money"] = _money_text


# -- the chart ----------------------------------------------------------------------------------

# Pixels: slot per day, bar width, margins, panel heights.
SLOT: Final = 34
BAR: Final = 22
LEFT: Final = 8
TOP: Final = 20
VOLUME_H: Final = 140
GAP: Final = 40
FEES_H: Final = 60
BOTTOM: Final = 24


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    amount_minor: int
    title: str


@dataclass(frozen=True, slots=True)
class DayLabel:
    x: int
    y: int
    text: str


@dataclass(frozen=True, slots=True)
class Chart:
    """One currency's daily volume (gross of the PAYMENT journals) and fees, as SVG shapes."""

    currency: str
    width: int
    height: int
    volume: tuple[Bar, ...]
    fees: tuple[Bar, ...]
    labels: tuple[DayLabel, ...]
    volume_top: int
    fees_top: int
    volume_max: str
    fees_max: str
    first_day: str
    last_day: str
    volume_base: int  # y of each panel's base line
    fees_base: int
    days: tuple[dict[str, Any], ...]  # the table under the chart: day, counts, amounts


def bar_height(amount_minor: int, largest_minor: int, panel_h: int) -> int:
    """Integer pixels: amount / largest of the panel's height, at least 1 for any amount > 0."""
    if amount_minor <= 0 or largest_minor <= 0:
        return 0
    return max(1, amount_minor * panel_h // largest_minor)


def daily_chart(currency: str, days: list[date], by_day: dict[str, dict[str, Any]]) -> Chart:
    """Bars for each of `days` (a missing day is 0) from summary rows keyed by day text."""
    gross = [_minor(by_day.get(d.isoformat()), "gross") for d in days]
    fees = [_minor(by_day.get(d.isoformat()), "fee") for d in days]
    gross_max, fees_max = max(gross, default=0), max(fees, default=0)
    fees_top = TOP + VOLUME_H + GAP
    volume_bars, fee_bars, labels, table = [], [], [], []
    for i, day in enumerate(days):
        x = LEFT + i * SLOT + (SLOT - BAR) // 2
        row = by_day.get(day.isoformat()) or {}
        h = bar_height(gross[i], gross_max, VOLUME_H)
        volume_bars.append(Bar(x, TOP + VOLUME_H - h, BAR, h, gross[i],
                               f"{day}: volume {grouped(gross[i], currency)}"))
        h = bar_height(fees[i], fees_max, FEES_H)
        fee_bars.append(Bar(x, fees_top + FEES_H - h, BAR, h, fees[i],
                            f"{day}: fees {grouped(fees[i], currency)}"))
        labels.append(DayLabel(LEFT + i * SLOT + SLOT // 2, fees_top + FEES_H + 16,
                               str(day.day)))
        table.append({"day": day.isoformat(), "payment_count": row.get("payment_count", 0),
                      "settled_count": row.get("settled_count", 0),
                      "gross": grouped(gross[i], currency), "fee": grouped(fees[i], currency),
                      "gross_minor": gross[i], "fee_minor": fees[i]})
    return Chart(currency=currency, width=LEFT * 2 + SLOT * len(days),
                 height=fees_top + FEES_H + BOTTOM, volume=tuple(volume_bars),
                 fees=tuple(fee_bars), labels=tuple(labels), volume_top=TOP,
                 fees_top=fees_top, volume_max=grouped(gross_max, currency),
                 fees_max=grouped(fees_max, currency), first_day=days[0].isoformat(),
                 last_day=days[-1].isoformat(), volume_base=TOP + VOLUME_H,
                 fees_base=fees_top + FEES_H, days=tuple(table))


def _minor(row: dict[str, Any] | None, field: str) -> int:
    if row is None or row.get(field) is None:
        return 0
    return int(row[field]["amount_minor"])


def _utc(text: str) -> datetime:
    """The API's RFC 3339 UTC text as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def chart_days(newest: date, count: int = CHART_DAYS) -> list[date]:
    """The `count` days ending with `newest`, oldest first."""
    return [newest - timedelta(days=count - 1 - i) for i in range(count)]


# -- data -----------------------------------------------------------------------------------------

@asynccontextmanager
async def snapshot(request: Request, who: Principal) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Like api.db.reading, in REPEATABLE READ: every section of the page reads one snapshot."""
    async with request.app.state.pool.connection() as conn:
        conn.row_factory = dict_row
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await prepare(conn, who)
            yield conn


# Distinct merchants of the payments table by skipping through its (merchant_id, ...) index:
# one index probe per merchant instead of a scan of every payment.
_MERCHANTS_SQL: Final = """
WITH RECURSIVE m AS (
    (SELECT merchant_id FROM payments ORDER BY merchant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT p.merchant_id FROM payments p WHERE p.merchant_id > m.merchant_id
             ORDER BY p.merchant_id LIMIT 1)
      FROM m WHERE m.merchant_id IS NOT NULL
)
SELECT merchant_id FROM m WHERE merchant_id IS NOT NULL"""


async def merchants(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute(_MERCHANTS_SQL)
    return [row["merchant_id"] for row in await cur.fetchall()]


async def statement_data(conn: psycopg.AsyncConnection[Any], merchant: str,
                         tz: str) -> dict[str, Any]:
    """Everything the page shows for one merchant, from the API's query functions."""
    zone = ZoneInfo(tz)
    balances = await balances_rows(conn, merchant=merchant)
    batches = []
    for batch in await batches_rows(conn, merchant=merchant, limit=RECENT_BATCHES):
        detail = await batch_detail(conn, batch["batch_id"], merchant=merchant,
                                    items_limit=ITEMS_SHOWN)
        if detail is not None:
            detail["items_total"] = sum(k["item_count"] for k in detail["item_kinds"])
            # A daily window is a calendar day of the cut-off zone: its start's date there.
            detail["window_day"] = _utc(detail["window_start"]).astimezone(zone).date()
            batches.append(detail)
    charts: list[Chart] = []
    newest = await payments_rows(conn, merchant=merchant, limit=1)
    newest_at = newest[0]["created_at"] if newest else None
    if newest_at is not None:
        last_day = _utc(newest_at).astimezone(zone).date()
        days = chart_days(last_day)
        since = datetime.combine(days[0], time(0), tzinfo=zone).astimezone(UTC)
        rows = await summary_rows(conn, group_by=("day", "currency"), tz=tz, merchant=merchant,
                                  since=since)
        by_currency: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            by_currency.setdefault(row["currency"], {})[row["day"]] = row
        charts = [daily_chart(c, days, by_currency[c]) for c in sorted(by_currency)]
    # UNRESOLVED: a case still waiting for someone (OPEN or AWAITING_APPROVAL).
    exceptions = await exceptions_rows(conn, merchant=merchant, limit=EXCEPTIONS_SHOWN,
                                       case_status="UNRESOLVED")
    return {"balances": balances, "batches": batches, "charts": charts,
            "exceptions": exceptions, "newest_payment_at": newest_at}


# -- pages ------------------------------------------------------------------------------------

def _page(request: Request, template: str, context: dict[str, Any],
          status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def login_page(request: Request, error: str | None = None, status_code: int = 200,
               forget: bool = False) -> HTMLResponse:
    response = _page(request, "statement_login.html", {"error": error}, status_code)
    if forget:
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


async def _who(request: Request) -> Principal | None:
    key = request.cookies.get(COOKIE)
    if not key:
        return None
    return await authenticate(request.app.state.pool, key,
                              getattr(request.app.state, "key_cache", None))


@router.get("/statement", response_class=HTMLResponse)
async def statement(request: Request) -> Response:
    """The statement of the key's merchant (an analyst key: `?merchant=`), or the login form."""
    if not request.cookies.get(COOKIE):
        return login_page(request)
    who = await _who(request)
    if who is None:
        return login_page(request, "That key is not valid any more (revoked, or unknown): "
                                   "sign in with another.", 401, forget=True)
    tz = request.app.state.settings.api.report_tz
    try:
        asked = parse_id("merchant", request.query_params.get("merchant"))
        merchant = merchant_filter(who, asked)
    except ApiError as exc:
        return _page(request, "statement_error.html",
                     {"who": who, "status": exc.status, "message": exc.message}, exc.status)
    async with snapshot(request, who) as conn:
        choices = await merchants(conn) if who.scope == "analyst" else []
        if merchant is None and choices:
            merchant = choices[0]
        data = await statement_data(conn, merchant, tz) if merchant else None
    context = {"who": who, "merchant": merchant, "merchants": choices, "tz": tz,
               "data": data, "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}
    return _page(request, "statement.html", context)


def _same_origin(request: Request) -> bool:
    """A form post from this site (browsers send Origin on POST); absent Origin: allowed."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return hmac.compare_digest(origin.rstrip("/"), f"{request.url.scheme}://{host}")


async def _form(request: Request) -> dict[str, str] | None:
    """The url-encoded form body (at most LOGIN_BODY_MAX bytes), or None."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_MAX:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in fields.items()}


@router.post("/statement/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the posted key; on success keep it in the page's cookie and show the statement."""
    if not _same_origin(request):
        return login_page(request, "The form was posted from another site.", 403)
    form = await _form(request)
    if form is None:
        return login_page(request, "Send the key from the form.", 400)
    key = form.get("key", "").strip()
    if not key:
        return login_page(request, "Enter an API key.", 400)
    who = await authenticate(request.app.state.pool, key,
                             getattr(request.app.state, "key_cache", None))
    if who is None:
        message = ("That is not an API key (they look like sk_<12 hex digits>_<secret>)."
                   if parse_key_id(key) is None else
                   "That key is not valid: unknown or revoked.")
        return login_page(request, message, 401, forget=True)
    response = RedirectResponse("/statement", status_code=303)
    response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE_S, path=COOKIE_PATH,
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    response.headers.update(SECURITY_HEADERS)
    return response


@router.post("/statement/logout")
async def logout(request: Request) -> Response:
    """Forget the key and go back to the login form."""
    response = RedirectResponse("/statement", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    response.headers.update(SECURITY_HEADERS)
    return response
