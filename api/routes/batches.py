"""/v1/settlement_batches: closed batches, and one batch with its items.

A batch is a merchant's settlement of one currency over one window: its signed items
(PAYMENT and REFUND_REVERSAL positive; REFUND, PAYMENT_REVERSAL, DISPUTE_HOLD and DISPUTE_FEE
negative; DISPUTE_RELEASE positive) add up to its gross, fee and net; it pays
payout = max(net + carried_in, 0) and carries carried_out = min(net + carried_in, 0) into the
next batch (payout is null on batches from before payouts existed). The list is ordered newest
window first by (window_start, batch_id): batches are insert-only, so the order never changes
under a walk.

A batch's items are paged inside the detail (`items_limit` 1-1000, default 100,
`items_starting_after`), ordered by (matched_at, kind, item_id) (insert-only too), beside a
total per item kind over the whole batch; `Accept: text/csv` on the detail streams every item
(the batch's settlement details report).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request

from api.auth import Principal, principal
from api.db import reading
from api.errors import bad_param, not_found
from api.export import csv_response, wants_csv
from api.money import money
from api.paging import page
from api.params import merchant_filter, parse_limit, parse_time
from api.routes.shared import (
    DISPUTE_ITEM_KINDS_SQL,
    check_range,
    decode_key,
    dispute_id_sql,
    from_text,
    journal_kind_sql,
    parse_currency,
    parse_id,
    refund_id_sql,
    reject_unknown,
    ts_text,
)

router = APIRouter(tags=["settlement batches"])

BATCH_KEY_TYPES: Final = (datetime, str)
ITEM_KEY_TYPES: Final = (datetime, str, str)
ITEMS_LIMIT_DEFAULT: Final = 100
ITEMS_LIMIT_MAX: Final = 1000

_BATCH_COLUMNS: Final = f"""
    b.batch_id, b.merchant_id, b.currency::text AS currency,
    {ts_text('b.window_start')} AS window_start, {ts_text('b.window_end')} AS window_end,
    {ts_text('b.closed_at')} AS closed_at, b.payment_count, b.refund_count,
    b.gross_minor, b.fee_minor, b.net_minor, b.carried_in_minor, b.payout_minor,
    b.carried_out_minor, pj.journal_id AS payout_journal_id"""
_PAYOUT_JOIN: Final = ("LEFT JOIN ledger_journals pj"
                       " ON pj.kind = 'PAYOUT' AND pj.source_id = b.batch_id")


def _batches_sql(*, merchant: str | None, currency: str | None = None,
                 window_start_gte: datetime | None = None,
                 window_start_lt: datetime | None = None, closed_gte: datetime | None = None,
                 closed_lt: datetime | None = None, batch_id: str | None = None,
                 after: tuple[Any, ...] | None = None,
                 limit: int | None = None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    where = ["TRUE"]
    for column, name, value, op in (
            ("b.merchant_id", "merchant", merchant, "="),
            ("b.currency", "currency", currency, "="),
            ("b.batch_id", "batch_id", batch_id, "="),
            ("b.window_start", "window_start_gte", window_start_gte, ">="),
            ("b.window_start", "window_start_lt", window_start_lt, "<"),
            ("b.closed_at", "closed_gte", closed_gte, ">="),
            ("b.closed_at", "closed_lt", closed_lt, "<")):
        if value is not None:
            where.append(f"{column} {op} %({name})s")
            params[name] = value
    if after is not None:
        where.append("(b.window_start, b.batch_id) < (%(k_window)s, %(k_batch)s)")
        params.update(k_window=after[0], k_batch=after[1])
    tail = ""
    if limit is not None:
        tail = "LIMIT %(limit)s"
        params["limit"] = limit
    sql = f"""
    SELECT {_BATCH_COLUMNS}
      FROM settlement_batches b
      {_PAYOUT_JOIN}
     WHERE {' AND '.join(where)}
     ORDER BY b.window_start DESC, b.batch_id DESC
     {tail}"""
    return sql, params


def batches_query(*, merchant: str | None, currency: str | None = None,
                  window_start_gte: datetime | None = None,
                  window_start_lt: datetime | None = None, closed_gte: datetime | None = None,
                  closed_lt: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """The whole filtered list as flat rows, newest window first (the CSV export and `settle
    report batches`): batch_id, merchant_id, currency, window_start, window_end, closed_at,
    payment_count, refund_count, gross_minor, fee_minor, net_minor, carried_in_minor,
    payout_minor, carried_out_minor, payout_journal_id."""
    return _batches_sql(merchant=merchant, currency=currency, window_start_gte=window_start_gte,
                        window_start_lt=window_start_lt, closed_gte=closed_gte,
                        closed_lt=closed_lt)


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    currency = row["currency"]
    return {
        "object": "settlement_batch",
        "batch_id": row["batch_id"],
        "merchant_id": row["merchant_id"],
        "currency": currency,
        "window_start": row["window_start"],
        "window_end": row["window_end"],
        "closed_at": row["closed_at"],
        "payment_count": row["payment_count"],
        "refund_count": row["refund_count"],
        "gross": money(row["gross_minor"], currency),
        "fee": money(row["fee_minor"], currency),
        "net": money(row["net_minor"], currency),
        "carried_in": money(row["carried_in_minor"], currency),
        "payout": money(row["payout_minor"], currency),
        "carried_out": money(row["carried_out_minor"], currency),
        "payout_journal_id": row["payout_journal_id"],
    }


def batch_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (from_text(row["window_start"]), row["batch_id"])


async def batches_rows(conn: psycopg.AsyncConnection[Any], *, merchant: str | None,
                       limit: int, after: tuple[Any, ...] | None = None,
                       **filters: Any) -> list[dict[str, Any]]:
    """Up to `limit` batches after the cursor key `after`, as the API shows them."""
    sql, params = _batches_sql(merchant=merchant, after=after, limit=limit, **filters)
    cur = await conn.execute(sql, params)
    return [batch_object(row) for row in await cur.fetchall()]


# -- items ------------------------------------------------------------------------------------

def _items_sql(batch_id: str, *, merchant: str | None, after: tuple[Any, ...] | None = None,
               limit: int | None = None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"batch_id": batch_id}
    where = ["i.batch_id = %(batch_id)s"]
    if merchant is not None:
        where.append("b.merchant_id = %(merchant)s")
        params["merchant"] = merchant
    if after is not None:
        where.append("(i.matched_at, i.kind, i.item_id) > (%(k_at)s, %(k_kind)s, %(k_item)s)")
        params.update(k_at=after[0], k_kind=after[1], k_item=after[2])
    tail = ""
    if limit is not None:
        tail = "LIMIT %(limit)s"
        params["limit"] = limit
    # The page of items first, then the journal of each (a join per item shown, not per item
    # of the batch).
    sql = f"""
    SELECT i.batch_id, i.kind, i.item_id, i.payment_id,
           {refund_id_sql('i.kind', 'i.item_id', 'i.payment_id')} AS refund_id,
           {dispute_id_sql('i.kind', 'i.item_id', 'i.payment_id', DISPUTE_ITEM_KINDS_SQL)}
               AS dispute_id,
           i.gross_minor, i.fee_minor, i.net_minor, i.currency,
           {ts_text('i.matched_at')} AS matched_at, j.journal_id
      FROM (SELECT i.*, b.currency::text AS currency
              FROM settlement_batch_items i
              JOIN settlement_batches b ON b.batch_id = i.batch_id
             WHERE {' AND '.join(where)}
             ORDER BY i.matched_at, i.kind, i.item_id
             {tail}) i
      LEFT JOIN ledger_journals j
             ON j.kind = {journal_kind_sql('i.kind')} AND j.source_id = i.item_id
     ORDER BY i.matched_at, i.kind, i.item_id"""
    return sql, params


def batch_items_query(batch_id: str, *, merchant: str | None) -> tuple[str, dict[str, Any]]:
    """Every item of a batch as flat rows, in batch order: batch_id, kind, item_id,
    payment_id, refund_id, dispute_id, gross_minor, fee_minor, net_minor (signed), currency,
    matched_at, journal_id (the posted journal the item settles)."""
    return _items_sql(batch_id, merchant=merchant)


def item_object(row: dict[str, Any]) -> dict[str, Any]:
    currency = row["currency"]
    return {
        "object": "settlement_item",
        "kind": row["kind"],
        "item_id": row["item_id"],
        "payment_id": row["payment_id"],
        "refund_id": row["refund_id"],
        "dispute_id": row["dispute_id"],
        "gross": money(row["gross_minor"], currency),
        "fee": money(row["fee_minor"], currency),
        "net": money(row["net_minor"], currency),
        "matched_at": row["matched_at"],
        "journal_id": row["journal_id"],
    }


def item_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (from_text(row["matched_at"]), row["kind"], row["item_id"])


_KIND_TOTALS: Final = """
    SELECT i.kind, count(*) AS item_count, SUM(i.gross_minor)::bigint AS gross_minor,
           SUM(i.fee_minor)::bigint AS fee_minor, SUM(i.net_minor)::bigint AS net_minor
      FROM settlement_batch_items i
     WHERE i.batch_id = %(batch_id)s
     GROUP BY i.kind
     ORDER BY i.kind"""


async def batch_detail(conn: psycopg.AsyncConnection[Any], batch_id: str, *,
                       merchant: str | None, items_limit: int = ITEMS_LIMIT_DEFAULT,
                       items_after: tuple[Any, ...] | None = None) -> dict[str, Any] | None:
    """The batch with a page of its items and its totals per item kind; None when there is no
    such batch for `merchant` (every merchant: None)."""
    sql, params = _batches_sql(merchant=merchant, batch_id=batch_id)
    row = await (await conn.execute(sql, params)).fetchone()
    if row is None:
        return None
    detail = batch_object(row)
    currency = detail["currency"]
    totals = await (await conn.execute(_KIND_TOTALS, {"batch_id": batch_id})).fetchall()
    detail["item_kinds"] = [
        {"kind": t["kind"], "item_count": t["item_count"],
         "gross": money(t["gross_minor"], currency), "fee": money(t["fee_minor"], currency),
         "net": money(t["net_minor"], currency)}
        for t in totals]
    sql, params = _items_sql(batch_id, merchant=merchant, after=items_after,
                             limit=items_limit + 1)
    items = [item_object(r) for r in await (await conn.execute(sql, params)).fetchall()]
    detail["items"] = page(items, items_limit, item_key)
    return detail


# -- routes -----------------------------------------------------------------------------------

_LIST_PARAMS: Final = ("merchant", "currency", "window_start_gte", "window_start_lt",
                       "closed_gte", "closed_lt", "limit", "starting_after")


@router.get("/v1/settlement_batches", summary="Settlement batches")
async def list_batches(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    merchant: Annotated[str | None, Query(description="Merchant id (analyst keys).")] = None,
    currency: Annotated[str | None, Query(description="ISO 4217 code.")] = None,
    window_start_gte: Annotated[str | None, Query(
        description="Windows starting at or after (ISO 8601).")] = None,
    window_start_lt: Annotated[str | None, Query(
        description="Windows starting before (ISO 8601).")] = None,
    closed_gte: Annotated[str | None, Query(
        description="Closed at or after (ISO 8601).")] = None,
    closed_lt: Annotated[str | None, Query(description="Closed before (ISO 8601).")] = None,
    limit: Annotated[int | None, Query(description="1-100, default 20.")] = None,
    starting_after: Annotated[str | None, Query(
        description="The previous page's next_cursor.")] = None,
) -> Any:
    """Closed batches, newest window first, with their totals, carry and payout.
    `Accept: text/csv` streams the whole filtered list (cursor and limit do not apply)."""
    reject_unknown(request, _LIST_PARAMS)
    filters: dict[str, Any] = {
        "merchant": merchant_filter(who, parse_id("merchant", merchant)),
        "currency": parse_currency("currency", currency),
        "window_start_gte": parse_time("window_start_gte", window_start_gte),
        "window_start_lt": parse_time("window_start_lt", window_start_lt),
        "closed_gte": parse_time("closed_gte", closed_gte),
        "closed_lt": parse_time("closed_lt", closed_lt),
    }
    check_range("window_start_gte", filters["window_start_gte"], "window_start_lt",
                filters["window_start_lt"])
    check_range("closed_gte", filters["closed_gte"], "closed_lt", filters["closed_lt"])
    size = parse_limit(limit)
    after = decode_key(starting_after, BATCH_KEY_TYPES)
    if wants_csv(request):
        sql, params = batches_query(**filters)
        return await csv_response(request, who, sql, params, "settlement_batches.csv")
    async with reading(request, who) as conn:
        rows = await batches_rows(conn, limit=size + 1, after=after, **filters)
    return page(rows, size, batch_key)


def parse_items_limit(value: int | None) -> int:
    if value is None:
        return ITEMS_LIMIT_DEFAULT
    if not 1 <= value <= ITEMS_LIMIT_MAX:
        raise bad_param("items_limit", f"{value} is not between 1 and {ITEMS_LIMIT_MAX}")
    return value


@router.get("/v1/settlement_batches/{batch_id:path}", summary="A settlement batch and its items")
async def get_batch(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    batch_id: Annotated[str, Path(description="The batch id, e.g. B:m-0001:CNY:1718812800000.")],
    items_limit: Annotated[int | None, Query(
        description=f"Items per page, 1-{ITEMS_LIMIT_MAX}, default {ITEMS_LIMIT_DEFAULT}.")
    ] = None,
    items_starting_after: Annotated[str | None, Query(
        description="The previous items page's next_cursor.")] = None,
) -> Any:
    """The batch with `item_kinds` (count and totals per item kind, over the whole batch) and
    `items`, a page of its items in batch order (`items.next_cursor` for the next).
    `Accept: text/csv` streams every item of the batch. Another merchant's batch: 404."""
    reject_unknown(request, ("items_limit", "items_starting_after"))
    ident = parse_id("batch_id", batch_id)
    assert ident is not None  # a path segment is never empty
    merchant = merchant_filter(who, None)
    size = parse_items_limit(items_limit)
    after = decode_key(items_starting_after, ITEM_KEY_TYPES, "items_starting_after")
    async with reading(request, who) as conn:
        if wants_csv(request):
            found = await (await conn.execute(*_batches_sql(merchant=merchant,
                                                            batch_id=ident))).fetchone()
        else:
            found = await batch_detail(conn, ident, merchant=merchant, items_limit=size,
                                       items_after=after)
    if found is None:
        raise not_found("settlement_batch", ident)
    if wants_csv(request):
        sql, params = batch_items_query(ident, merchant=merchant)
        filename = f"settlement_batch_{ident}.csv"
        return await csv_response(request, who, sql, params, filename)
    return found

