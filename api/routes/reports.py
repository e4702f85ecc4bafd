"""/v1/reports/summary: payment counts and amounts grouped by day, merchant, channel, outcome
and currency.

A payment counts on the day it was created (its request's `created_at`; its decision's time
when the request's is unknown) in the time zone the caller names (`tz`, an IANA name; by
default the settlement cut-off zone, `SETTLE_API_REPORT_TZ`), the day boundaries computed by
PostgreSQL (`AT TIME ZONE`). Its outcome is the payment's state (MATCHED, MATCHED_MANUAL,
DECLINED, AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION, REVERSED).

Per group: `payment_count` and `amount` (the requested amounts), and for the payments that
posted a PAYMENT journal (MATCHED, MATCHED_MANUAL, and REVERSED ones, which posted before
their reversal) `settled_count` with the journal's `gross` (what was captured), `fee` and
`net`. Amounts are never summed across currencies: currency is always a group key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from fastapi import APIRouter, Depends, Query, Request

from api.auth import Principal, principal
from api.db import reading
from api.errors import bad_param
from api.export import csv_response, wants_csv
from api.money import money
from api.params import merchant_filter, parse_time
from api.routes.shared import check_range, parse_id, reject_unknown, rfc3339

router = APIRouter(tags=["reports"])

# The day a payment counts on.
_PAYMENT_TIME: Final = "COALESCE(p.created_at, p.decided_at)"
# Group keys in their output order: the key, its column and its SQL.
GROUP_KEYS: Final = {
    "day": ("day", f"({_PAYMENT_TIME} AT TIME ZONE %(tz)s)::date"),
    "merchant": ("merchant_id", "p.merchant_id"),
    "channel": ("channel", "p.channel"),
    "outcome": ("outcome", "p.state"),
    "currency": ("currency", "p.currency::text"),
}
GROUP_BY_DEFAULT: Final = ("day",)
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_group_by(value: str | None) -> tuple[str, ...]:
    """The group keys asked for, in output order, currency always among them."""
    if value is None or value == "":
        asked: Sequence[str] = GROUP_BY_DEFAULT
    else:
        asked = [part.strip() for part in value.split(",")]
        for part in asked:
            if part not in GROUP_KEYS:
                raise bad_param("group_by", f"{part!r} is not one of "
                                            f"{', '.join(GROUP_KEYS)} (a comma list)")
    wanted = {*asked, "currency"}
    return tuple(key for key in GROUP_KEYS if key in wanted)


def parse_tz(value: str | None, default: str) -> str:
    """An IANA time zone name (the default when absent)."""
    name = default if value is None or value == "" else value
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise bad_param("tz", f"{name!r} is not an IANA time zone (e.g. Asia/Shanghai, "
                              "UTC)") from exc
    return name


def parse_bound(param: str, value: str | None, tz: str) -> datetime | None:
    """A range bound: a date is that day's midnight in `tz` (the report's days), a date-time
    is itself (naive means UTC)."""
    if value is not None and _DATE.match(value.strip()):
        try:
            day = date.fromisoformat(value.strip())
        except ValueError as exc:
            raise bad_param(param, f"{value!r} is not a valid date ({exc})") from exc
        return datetime.combine(day, time(0), tzinfo=ZoneInfo(tz))
    return parse_time(param, value)


def summary_query(*, group_by: Sequence[str], tz: str, merchant: str | None,
                  since: datetime | None = None,
                  until: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """Flat rows: the group key columns (day, merchant_id, channel, outcome, currency, those
    asked for, in that order), payment_count, amount_minor, settled_count, gross_minor,
    fee_minor, net_minor; ordered by the keys. Payments created in [since, until)."""
    keys = [key for key in GROUP_KEYS if key in group_by]
    if "currency" not in keys:
        raise ValueError("currency is always a group key")
    params: dict[str, Any] = {"tz": tz}
    where = ["TRUE"]
    if merchant is not None:
        where.append("p.merchant_id = %(merchant)s")
        params["merchant"] = merchant
    if since is not None:
        where.append(f"{_PAYMENT_TIME} >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append(f"{_PAYMENT_TIME} < %(until)s")
        params["until"] = until
    selected = ", ".join(f"{GROUP_KEYS[k][1]} AS {GROUP_KEYS[k][0]}" for k in keys)
    # The day is grouped as a date (cheap to hash and sort) and shown as YYYY-MM-DD text.
    shown = ", ".join("to_char(g.day, 'YYYY-MM-DD') AS day" if k == "day"
                      else f"g.{GROUP_KEYS[k][0]}" for k in keys)
    positions = ", ".join(str(i + 1) for i in range(len(keys)))
    journals = "ledger_journals"
    if merchant is None:
        # Every merchant's payments: one hash join with the PAYMENT journals beats a lookup
        # per payment, which the planner picks when it underestimates the rows row-level
        # security lets through. OFFSET 0 keeps the subquery whole, so the join hashes.
        journals = ("(SELECT journal_id, kind, source_id, currency, gross_minor, fee_minor,"
                    " net_minor FROM ledger_journals WHERE kind = 'PAYMENT' OFFSET 0)")
    # A journal in another currency than its payment is a broken book (`settle audit books`
    # names it); the join leaves it out rather than add it to another currency's sums.
    sql = f"""
    SELECT {shown}, g.payment_count, g.amount_minor, g.settled_count, g.gross_minor,
           g.fee_minor, g.net_minor
      FROM (
        SELECT {selected},
               count(*) AS payment_count,
               COALESCE(SUM(p.amount_minor), 0)::bigint AS amount_minor,
               count(j.journal_id) AS settled_count,
               COALESCE(SUM(j.gross_minor), 0)::bigint AS gross_minor,
               COALESCE(SUM(j.fee_minor), 0)::bigint AS fee_minor,
               COALESCE(SUM(j.net_minor), 0)::bigint AS net_minor
          FROM payments p
          LEFT JOIN {journals} j
                 ON j.kind = 'PAYMENT' AND j.source_id = p.payment_id
                    AND j.currency = p.currency
         WHERE {' AND '.join(where)}
         GROUP BY {positions}) g
     ORDER BY {positions}"""
    return sql, params


def summary_object(row: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    currency = row["currency"]
    out: dict[str, Any] = {"object": "summary_row"}
    for key in keys:
        column = GROUP_KEYS[key][0]
        out[column] = row[column]
    out.update({
        "payment_count": row["payment_count"],
        "amount": money(row["amount_minor"], currency),
        "settled_count": row["settled_count"],
        "gross": money(row["gross_minor"], currency),
        "fee": money(row["fee_minor"], currency),
        "net": money(row["net_minor"], currency),
    })
    return out


async def summary_rows(conn: psycopg.AsyncConnection[Any], *, group_by: Sequence[str], tz: str,
                       merchant: str | None, since: datetime | None = None,
                       until: datetime | None = None) -> list[dict[str, Any]]:
    """The summary's groups as the API shows them (`group_by` from parse_group_by)."""
    keys = [key for key in GROUP_KEYS if key in {*group_by, "currency"}]
    sql, params = summary_query(group_by=keys, tz=tz, merchant=merchant, since=since,
                                until=until)
    cur = await conn.execute(sql, params)
    return [summary_object(row, keys) for row in await cur.fetchall()]


async def check_tz(conn: psycopg.AsyncConnection[Any], tz: str) -> None:
    """400 on `tz` for a zone Python knows and PostgreSQL does not (their tz databases differ)."""
    try:
        async with conn.transaction():  # a savepoint: the request's transaction goes on
            await conn.execute("SELECT now() AT TIME ZONE %s", (tz,))
    except psycopg.errors.InvalidParameterValue as exc:
        raise bad_param("tz", f"{tz!r} is not a time zone the database knows") from exc


_PARAMS: Final = ("group_by", "tz", "merchant", "created_gte", "created_lt")


@router.get("/v1/reports/summary", summary="Payment counts and amounts by group")
async def get_summary(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    group_by: Annotated[str | None, Query(
        description="Comma list of day, merchant, channel, outcome, currency (default day; "
                    "currency is always added).")] = None,
    tz: Annotated[str | None, Query(
        description="IANA time zone of the days (default: the settlement cut-off zone).")
    ] = None,
    merchant: Annotated[str | None, Query(description="Merchant id (analyst keys).")] = None,
    created_gte: Annotated[str | None, Query(
        description="Payments created at or after (a date: its midnight in tz).")] = None,
    created_lt: Annotated[str | None, Query(
        description="Payments created before (a date: its midnight in tz).")] = None,
) -> Any:
    """Counts and amounts of payments per group, ordered by the group keys. Every group in
    one response; `Accept: text/csv` gives the same rows flat."""
    reject_unknown(request, _PARAMS)
    keys = parse_group_by(group_by)
    zone = parse_tz(tz, request.app.state.settings.api.report_tz)
    who_merchant = merchant_filter(who, parse_id("merchant", merchant))
    since = parse_bound("created_gte", created_gte, zone)
    until = parse_bound("created_lt", created_lt, zone)
    check_range("created_gte", since, "created_lt", until)
    async with reading(request, who) as conn:
        await check_tz(conn, zone)
        if wants_csv(request):
            rows = None
        else:
            rows = await summary_rows(conn, group_by=keys, tz=zone, merchant=who_merchant,
                                      since=since, until=until)
    if rows is None:
        sql, params = summary_query(group_by=keys, tz=zone, merchant=who_merchant,
                                    since=since, until=until)
        return await csv_response(request, who, sql, params, "summary.csv")
    return {
        "object": "summary",
        "group_by": list(keys),
        "tz": zone,
        "created_gte": rfc3339(since),
        "created_lt": rfc3339(until),
        "data": rows,
        "has_more": False,
    }
