"""/v1/payments: the payments list (filters, keyset pages, CSV) and one payment's timeline.

The list is ordered newest request first: `created_at DESC NULLS LAST, payment_id DESC`
(a payment without a request time last). Neither column changes once written (the ledger
sink's upsert never sets them: a late match, a manual match or a reversal changes state,
decided_at and the reversal columns only), so a page walk never skips or repeats a payment
that existed when it began. The next page after a row with a request time is two index
ranges, the rest of the timed payments (one row comparison) then the untimed ones, merged;
plain columns, because under row-level security PostgreSQL uses only leakproof expressions
as index conditions (a COALESCE key would be a filter over every row before it).

One flat query serves the CSV export, `settle report` and the JSON page (whose objects are
built from its rows), so the three cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.auth import Principal, principal
from api.db import reading
from api.errors import bad_param, not_found
from api.export import csv_response, wants_csv
from api.paging import KeyValue, decode_cursor, page
from api.params import merchant_filter, parse_enum, parse_limit, parse_time
from api.queries_payments import PAYMENT_COLUMNS, PAYMENT_FIELDS, payment_detail, payment_object
from api.routes.shared import (
    check_range,
    from_text,
    parse_currency,
    parse_id,
    reject_unknown,
)

router = APIRouter(tags=["payments"])

# payments.state (migrations 0001, 0005, 0006).
STATES: Final = ("MATCHED", "MATCHED_MANUAL", "DECLINED", "AMOUNT_MISMATCH",
                 "CURRENCY_MISMATCH", "MISSING_CONFIRMATION", "REVERSED")
FILTERS: Final = ("merchant", "state", "channel", "currency", "order_id", "created_gte",
                  "created_lt", "decided_gte", "decided_lt")
_PARAMS: Final = (*FILTERS, "limit", "starting_after")

_ORDER: Final = "p.created_at DESC NULLS LAST, p.payment_id DESC"

def _where(merchant: str | None = None, state: str | None = None, channel: str | None = None,
           currency: str | None = None, order_id: str | None = None,
           created_gte: datetime | None = None, created_lt: datetime | None = None,
           decided_gte: datetime | None = None,
           decided_lt: datetime | None = None) -> tuple[list[str], dict[str, Any]]:
    conditions: list[str] = []
    params: dict[str, Any] = {}
    for column, name, value, op in (
            ("merchant_id", "merchant", merchant, "="), ("state", "state", state, "="),
            ("channel", "channel", channel, "="), ("currency", "currency", currency, "="),
            ("order_id", "order_id", order_id, "="),
            ("created_at", "created_gte", created_gte, ">="),
            ("created_at", "created_lt", created_lt, "<"),
            ("decided_at", "decided_gte", decided_gte, ">="),
            ("decided_at", "decided_lt", decided_lt, "<")):
        if value is not None:
            conditions.append(f"p.{column} {op} %({name})s")
            params[name] = value
    return conditions, params


def _select(filters: Mapping[str, Any], after: tuple[KeyValue, ...] | None,
            limit: int | None) -> tuple[str, dict[str, Any]]:
    conditions, params = _where(**filters)

    def part(*extra: str, sort_column: bool = False) -> str:
        where = " AND ".join((*conditions, *extra))
        sql = (f"SELECT {PAYMENT_COLUMNS}{', p.created_at AS sort_created' * sort_column}\n"
               f"  FROM payments p{f' WHERE {where}' if where else ''}\n"
               f" ORDER BY {_ORDER}")
        return sql + "\n LIMIT %(limit)s" if limit is not None else sql

    if limit is not None:
        params["limit"] = limit
    if after is None:
        sql = part()
    elif after[0] is None:  # in the untimed tail already
        sql = part("p.created_at IS NULL", "p.payment_id < %(after_id)s")
        params["after_id"] = after[1]
    else:
        timed = part("p.created_at IS NOT NULL",
                     "(p.created_at, p.payment_id) < (%(after_created)s, %(after_id)s)",
                     sort_column=True)
        untimed = part("p.created_at IS NULL", sort_column=True)
        sql = (f"SELECT {', '.join('u.' + c for c in PAYMENT_FIELDS)}\n"
               f"  FROM (({timed})\n UNION ALL\n ({untimed})) u\n"
               f" ORDER BY u.sort_created DESC NULLS LAST, u.payment_id DESC\n"
               " LIMIT %(limit)s")
        params.update(after_created=after[0], after_id=after[1])
    return sql, params


def payments_query(**filters: Any) -> tuple[str, dict[str, Any]]:
    """The whole filtered list as flat columns, in the list's order (CSV, `settle report`).

    Filters (parsed values, None = any): merchant, state, channel, currency, order_id,
    created_gte, created_lt, decided_gte, decided_lt (aware datetimes; ranges half-open).
    """
    return _select(filters, None, None)


def payment_key(obj: Mapping[str, Any]) -> tuple[KeyValue, ...]:
    """A payment object's sort key, as a cursor holds it."""
    created = obj["created_at"]
    return (from_text(created) if created is not None else None, obj["id"])


async def payments_rows(conn: psycopg.AsyncConnection[Any], *, merchant: str | None, limit: int,
                        after: tuple[KeyValue, ...] | None = None,
                        **filters: Any) -> list[dict[str, Any]]:
    """Up to `limit` payment objects after the key `after`, in the list's order."""
    sql, params = _select({"merchant": merchant, **filters}, after, limit)
    cur = await conn.execute(sql, params)
    return [payment_object(row) for row in await cur.fetchall()]


def _cursor(token: str | None) -> tuple[KeyValue, ...] | None:
    if token is None or token == "":
        return None
    created, payment_id = decode_cursor(token, 2)
    if not (created is None or isinstance(created, datetime)) or not isinstance(payment_id, str):
        raise bad_param("starting_after", "not a cursor of this list")
    return (created, payment_id)


def _filters(request: Request, who: Principal) -> dict[str, Any]:
    """The list's filters from the query string, each checked (400 naming the parameter)."""
    q = request.query_params
    reject_unknown(request, _PARAMS)
    filters: dict[str, Any] = {
        "merchant": merchant_filter(who, parse_id("merchant", q.get("merchant"))),
        "state": parse_enum("state", q.get("state"), STATES),
        "channel": parse_id("channel", q.get("channel")),
        "currency": parse_currency("currency", q.get("currency")),
        "order_id": parse_id("order_id", q.get("order_id")),
    }
    for low, high in (("created_gte", "created_lt"), ("decided_gte", "decided_lt")):
        filters[low] = parse_time(low, q.get(low))
        filters[high] = parse_time(high, q.get(high))
        check_range(low, filters[low], high, filters[high])
    return filters


@router.get("/v1/payments", summary="List payments", response_model=None)
async def list_payments(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    merchant: Annotated[str | None, Query(description="merchant id (a merchant key: its own)")]
    = None,
    state: Annotated[str | None, Query(description=f"one of {', '.join(STATES)}")] = None,
    channel: Annotated[str | None, Query(description="channel, e.g. alipay")] = None,
    currency: Annotated[str | None, Query(description="ISO 4217 code, e.g. CNY")] = None,
    order_id: Annotated[str | None, Query(description="the order system's order id")] = None,
    created_gte: Annotated[str | None, Query(description="requested at or after (ISO 8601)")]
    = None,
    created_lt: Annotated[str | None, Query(description="requested before (ISO 8601)")] = None,
    decided_gte: Annotated[str | None, Query(description="decided at or after (ISO 8601)")]
    = None,
    decided_lt: Annotated[str | None, Query(description="decided before (ISO 8601)")] = None,
    limit: Annotated[str | None, Query(description="page size, 1-100 (default 20)")] = None,
    starting_after: Annotated[str | None, Query(description="the previous page's next_cursor")]
    = None,
) -> Response | dict[str, Any]:
    """Payments, newest request first (those without a request time last), with their
    latest state. Ranges are half-open (`_gte` inclusive, `_lt` exclusive); a date means its
    midnight UTC. `Accept: text/csv` streams the whole filtered list (no paging) with money as
    `amount_minor` + `currency` columns."""
    filters = _filters(request, who)
    if wants_csv(request):
        sql, params = payments_query(**filters)
        return await csv_response(request, who, sql, params, "payments.csv")
    size = parse_limit(limit)
    after = _cursor(starting_after)
    async with reading(request, who) as conn:
        rows = await payments_rows(conn, limit=size + 1, after=after, **filters)
    return page(rows, size, payment_key)


@router.get("/v1/payments/{payment_id}", summary="One payment with its timeline",
            response_model=None)
async def get_payment(request: Request, payment_id: str,
                      who: Annotated[Principal, Depends(principal)]) -> dict[str, Any]:
    """The payment object of the list, with its latest `refunds`, `disputes` and exception
    `cases`, the `batch_ids` of the batches that settled it, and a `timeline`: everything
    that happened to it, in time order, each `{"at", "kind", ...}`:
    `requested` (order id, amount, the channel it was routed to), `exception` (a
    reconciliation result other than a match, with its case), `reconciled` (the terminal
    decision), `reversed`, `journal` (with its postings: a merchant key sees the postings on
    its own accounts only), `settled` (an item in a closed batch), `refund_requested`,
    `refund_decided`, `refund_reversed`, `refund_exception`, `dispute_opened`,
    `dispute_closed`, `dispute_rejected` and `case_event` (each step of an exception case).
    Another merchant's payment is a 404, as a missing one."""
    reject_unknown(request, ())
    ident = parse_id("payment_id", payment_id)
    assert ident is not None  # a path segment is never empty
    merchant = merchant_filter(who, None)
    async with reading(request, who) as conn:
        found = await payment_detail(conn, ident, merchant=merchant)
    if found is None:
        raise not_found("payment", ident)
    return found
