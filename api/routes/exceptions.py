"""/v1/exceptions: every non-matched outcome, with its exception case's id and status.

Three insert-only tables, one list: a payment's reconciliation exceptions (subject PAYMENT),
a refund's (REFUND) and rejected dispute records (DISPUTE, outcome DISPUTE_REJECTED). An
exception that opened a case is joined to it by the case's `opened_by` (the result that
opened it); an outcome that opens none (a decline, a duplicate or orphan confirmation) has
no case.

Order: newest decision first, `decided_at DESC, subject DESC, result_id DESC`. None of the
three changes after insert, so a page walk never skips or repeats an exception that existed
when it began. Each table is read in that order up to the page size and the three are merged.

Age is the time since the decision (`decided_at`), measured against the database's clock at
the query: `older_than` / `newer_than` take a duration (`90s`, `30m`, `2h`, `3d`, `1w`,
`1d12h`), `age` one of the buckets below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.auth import Principal, principal
from api.db import reading
from api.errors import bad_param
from api.export import csv_response, wants_csv
from api.paging import KeyValue, decode_cursor, page
from api.params import merchant_filter, parse_enum, parse_limit, parse_time
from api.queries_payments import shown_money
from api.routes.shared import check_range, from_text, parse_id, reject_unknown, ts_text

router = APIRouter(tags=["exceptions"])

SUBJECTS: Final = ("PAYMENT", "REFUND", "DISPUTE")
# reconciliation_exceptions.outcome and refund_exceptions.outcome (migration 0005).
RESULT_OUTCOMES: Final = ("DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH",
                          "MISSING_CONFIRMATION", "DUPLICATE_CONFIRMATION",
                          "ORPHAN_CONFIRMATION", "LATE_CONFIRMATION", "REVERSAL_EXCEPTION")
DISPUTE_REJECTED: Final = "DISPUTE_REJECTED"
OUTCOMES: Final = (*RESULT_OUTCOMES, DISPUTE_REJECTED)
# A case's status, UNRESOLVED (OPEN or AWAITING_APPROVAL), or NONE (the exception has no case).
CASE_STATUSES: Final = ("OPEN", "AWAITING_APPROVAL", "RESOLVED", "UNRESOLVED", "NONE")
# Age buckets: [low, high) seconds since the decision (None: unbounded).
AGE_BUCKETS: Final[dict[str, tuple[int | None, int | None]]] = {
    "lt_1h": (None, 3600), "1h_1d": (3600, 86_400), "1d_7d": (86_400, 7 * 86_400),
    "7d_30d": (7 * 86_400, 30 * 86_400), "gt_30d": (30 * 86_400, None)}
FILTERS: Final = ("merchant", "subject", "outcome", "channel", "case_status", "older_than",
                  "newer_than", "age", "decided_gte", "decided_lt")
_PARAMS: Final = (*FILTERS, "limit", "starting_after")

_AGE_UNITS_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_AGE: Final = re.compile(r"(\d{1,9})([smhdw])")


def parse_age_s(param: str, value: str | None) -> int | None:
    """"90s", "30m", "2h", "3d", "1w" or a sum like "1d12h" -> seconds; None when absent."""
    if value is None or value == "":
        return None
    compact = value.strip().lower()
    parts = _AGE.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise bad_param(param, f"{value!r} is not a duration: a number and a unit (s, m, h, d, "
                               "w), e.g. 2h, 3d or 1d12h")
    return sum(int(n) * _AGE_UNITS_S[u] for n, u in parts)


# One branch per table: (subject, table alias, FROM, column expressions for the flat row).
_BRANCHES: Final = {
    "PAYMENT": ("e", "reconciliation_exceptions e", {
        "outcome": "e.outcome", "subject_id": "e.payment_id",
        "amount_minor": "e.expected_amount_minor", "currency": "e.expected_currency::text",
        "confirmed_amount_minor": "e.confirmed_amount_minor",
        "confirmed_currency": "e.confirmed_currency::text", "reasons": "NULL::text"}),
    "REFUND": ("x", "refund_exceptions x", {
        "outcome": "x.outcome", "subject_id": "x.refund_id",
        "amount_minor": "x.amount_minor", "currency": "x.currency::text",
        "confirmed_amount_minor": "x.confirmed_amount_minor",
        "confirmed_currency": "x.confirmed_currency::text", "reasons": "NULL::text"}),
    "DISPUTE": ("r", "dispute_rejections r", {
        "outcome": f"'{DISPUTE_REJECTED}'::text", "subject_id": "r.dispute_id",
        "amount_minor": "r.amount_minor", "currency": "r.currency",
        "confirmed_amount_minor": "NULL::bigint", "confirmed_currency": "NULL::text",
        # the codes of [{"code": ..., "detail": ...}, ...], in order, comma-separated
        "reasons": "(SELECT string_agg(t.reason->>'code', ',' ORDER BY t.n)"
                   " FROM jsonb_array_elements(r.reasons) WITH ORDINALITY AS t(reason, n))"}),
}
# The flat columns, in order: the CSV export's header.
COLUMNS: Final = ("result_id", "subject", "outcome", "payment_id", "subject_id", "merchant_id",
                  "channel", "amount_minor", "currency", "confirmed_amount_minor",
                  "confirmed_currency", "reasons", "detail", "decided_at", "case_id",
                  "case_status")


def _branch(subject: str, filters: Mapping[str, Any], after: tuple[KeyValue, ...] | None,
            limit: int | None, params: dict[str, Any]) -> str:
    """One table's part of the list."""
    a, table, cols = _BRANCHES[subject]
    outcome = filters.get("outcome")
    conds: list[str] = []
    if outcome is not None and (outcome == DISPUTE_REJECTED) != (subject == "DISPUTE"):
        conds.append("FALSE")  # e.g. subject=PAYMENT&outcome=DISPUTE_REJECTED
    elif outcome is not None and subject != "DISPUTE":
        conds.append(f"{a}.outcome = %(outcome)s")
    for column, name in (("merchant_id", "merchant"), ("channel", "channel")):
        if filters.get(name) is not None:
            conds.append(f"{a}.{column} = %({name})s")
    if filters.get("decided_gte") is not None:
        conds.append(f"{a}.decided_at >= %(decided_gte)s")
    if filters.get("decided_lt") is not None:
        conds.append(f"{a}.decided_at < %(decided_lt)s")
    # Age: the decision is older than `older` seconds <=> decided_at <= now() - older.
    low, high = AGE_BUCKETS[filters["age"]] if filters.get("age") else (None, None)
    for bound, name, op in ((filters.get("older_than_s"), "older_than_s", "<="),
                            (filters.get("newer_than_s"), "newer_than_s", ">"),
                            (low, "age_low_s", "<="), (high, "age_high_s", ">")):
        if bound is not None:
            conds.append(f"{a}.decided_at {op} now() - make_interval(secs => %({name})s)")
            params[name] = bound
    status = filters.get("case_status")
    if status == "NONE":
        conds.append("c.case_id IS NULL")
    elif status == "UNRESOLVED":
        conds.append("c.status IN ('OPEN', 'AWAITING_APPROVAL')")
    elif status is not None:
        conds.append("c.status = %(case_status)s")
    if after is not None:
        # (decided_at, subject, result_id) < the cursor's, with this branch's subject fixed:
        # each form is a plain range on the table's (decided_at, result_id) order.
        after_subject = after[1]
        assert isinstance(after_subject, str)
        if subject < after_subject:
            conds.append(f"{a}.decided_at <= %(after_at)s")
        elif subject == after_subject:
            conds.append(f"({a}.decided_at, {a}.result_id) < (%(after_at)s, %(after_id)s)")
        else:
            conds.append(f"{a}.decided_at < %(after_at)s")
    where = f"\n     WHERE {' AND '.join(conds)}" if conds else ""
    order = f"\n     ORDER BY {a}.decided_at DESC, {a}.result_id DESC"
    bounded = f"{order}\n     LIMIT %(limit)s" if limit is not None else ""
    return f"""(SELECT {a}.result_id, '{subject}'::text AS subject, {cols['outcome']} AS outcome,
           {a}.payment_id, {cols['subject_id']} AS subject_id, {a}.merchant_id, {a}.channel,
           {cols['amount_minor']} AS amount_minor, {cols['currency']} AS currency,
           {cols['confirmed_amount_minor']} AS confirmed_amount_minor,
           {cols['confirmed_currency']} AS confirmed_currency, {cols['reasons']} AS reasons,
           {a}.detail, {ts_text(f'{a}.decided_at')} AS decided_at, c.case_id,
           c.status AS case_status, {a}.decided_at AS sort_at
      FROM {table}
      LEFT JOIN exception_cases c ON c.opened_by = {a}.result_id{where}{bounded})"""


def _select(filters: Mapping[str, Any], after: tuple[KeyValue, ...] | None,
            limit: int | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {k: v for k, v in filters.items()
                              if k in ("merchant", "channel", "outcome", "case_status",
                                       "decided_gte", "decided_lt") and v is not None}
    if after is not None:
        params.update(after_at=after[0], after_id=after[2])
    if limit is not None:
        params["limit"] = limit
    subjects = [filters["subject"]] if filters.get("subject") else list(SUBJECTS)
    branches = [_branch(s, filters, after, limit, params) for s in subjects]
    union = "\n    UNION ALL\n    ".join(branches)
    sql = (f"SELECT {', '.join('u.' + c for c in COLUMNS)}\n  FROM (\n    {union}\n  ) u\n"
           " ORDER BY u.sort_at DESC, u.subject DESC, u.result_id DESC")
    if limit is not None:
        sql += "\n LIMIT %(limit)s"
    return sql, params


def exceptions_query(**filters: Any) -> tuple[str, dict[str, Any]]:
    """The whole filtered list as flat columns (COLUMNS), in the list's order (CSV export).

    Filters (parsed values, None = any): merchant, subject, outcome, channel, case_status,
    older_than_s, newer_than_s (seconds), age (an AGE_BUCKETS key), decided_gte, decided_lt.
    """
    return _select(_checked(filters), None, None)


def _checked(filters: Mapping[str, Any]) -> dict[str, Any]:
    known = {"merchant", "subject", "outcome", "channel", "case_status", "older_than_s",
             "newer_than_s", "age", "decided_gte", "decided_lt"}
    unknown = set(filters) - known
    if unknown:
        raise TypeError(f"unknown exception filters: {', '.join(sorted(unknown))}")
    return dict(filters)


def exception_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """A flat row (COLUMNS) as the API's exception object."""
    return {
        "object": "exception",
        "id": row["result_id"],
        "subject": row["subject"],
        "outcome": row["outcome"],
        "payment_id": row["payment_id"],
        "subject_id": row["subject_id"],
        "merchant_id": row["merchant_id"],
        "channel": row["channel"],
        "amount": shown_money(row["amount_minor"], row["currency"]),
        "confirmed": shown_money(row["confirmed_amount_minor"], row["confirmed_currency"]),
        "reasons": row["reasons"].split(",") if row["reasons"] is not None else None,
        "detail": row["detail"],
        "decided_at": row["decided_at"],
        "case_id": row["case_id"],
        "case_status": row["case_status"],
    }


def exception_key(obj: Mapping[str, Any]) -> tuple[KeyValue, ...]:
    """An exception object's sort key, as a cursor holds it."""
    return (from_text(obj["decided_at"]), obj["subject"], obj["id"])


async def exceptions_rows(conn: psycopg.AsyncConnection[Any], *, merchant: str | None,
                          limit: int, after: tuple[KeyValue, ...] | None = None,
                          **filters: Any) -> list[dict[str, Any]]:
    """Up to `limit` exception objects after the key `after`, newest decision first."""
    sql, params = _select(_checked({"merchant": merchant, **filters}), after, limit)
    cur = await conn.execute(sql, params)
    return [exception_object(row) for row in await cur.fetchall()]


def _cursor(token: str | None) -> tuple[KeyValue, ...] | None:
    if token is None or token == "":
        return None
    at, subject, result_id = decode_cursor(token, 3)
    if not isinstance(at, datetime) or subject not in SUBJECTS or not isinstance(result_id, str):
        raise bad_param("starting_after", "not a cursor of this list")
    return (at, subject, result_id)


def _filters(request: Request, who: Principal) -> dict[str, Any]:
    """The list's filters from the query string, each checked (400 naming the parameter)."""
    q = request.query_params
    reject_unknown(request, _PARAMS)
    filters: dict[str, Any] = {
        "merchant": merchant_filter(who, parse_id("merchant", q.get("merchant"))),
        "subject": parse_enum("subject", q.get("subject"), SUBJECTS),
        "outcome": parse_enum("outcome", q.get("outcome"), OUTCOMES),
        "channel": parse_id("channel", q.get("channel")),
        "case_status": parse_enum("case_status", q.get("case_status"), CASE_STATUSES),
        "older_than_s": parse_age_s("older_than", q.get("older_than")),
        "newer_than_s": parse_age_s("newer_than", q.get("newer_than")),
        "age": parse_enum("age", q.get("age"), AGE_BUCKETS),
        "decided_gte": parse_time("decided_gte", q.get("decided_gte")),
        "decided_lt": parse_time("decided_lt", q.get("decided_lt")),
    }
    check_range("decided_gte", filters["decided_gte"], "decided_lt", filters["decided_lt"])
    older, newer = filters["older_than_s"], filters["newer_than_s"]
    if older is not None and newer is not None and older >= newer:
        raise bad_param("newer_than", "must be longer than older_than (the range is empty)")
    return filters


@router.get("/v1/exceptions", summary="List exceptions (non-matched outcomes)",
            response_model=None)
async def list_exceptions(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    merchant: Annotated[str | None, Query(description="merchant id (a merchant key: its own)")]
    = None,
    subject: Annotated[str | None, Query(description=f"one of {', '.join(SUBJECTS)}")] = None,
    outcome: Annotated[str | None, Query(description=f"one of {', '.join(OUTCOMES)}")] = None,
    channel: Annotated[str | None, Query(description="channel, e.g. alipay")] = None,
    case_status: Annotated[str | None, Query(
        description="the exception case's status: OPEN, AWAITING_APPROVAL, RESOLVED, "
                    "UNRESOLVED (open or awaiting approval) or NONE (no case)")] = None,
    older_than: Annotated[str | None, Query(
        description="decided longer ago than this duration (90s, 30m, 2h, 3d, 1w, 1d12h)")]
    = None,
    newer_than: Annotated[str | None, Query(
        description="decided less long ago than this duration")] = None,
    age: Annotated[str | None, Query(
        description=f"age bucket since the decision: one of {', '.join(AGE_BUCKETS)}")] = None,
    decided_gte: Annotated[str | None, Query(description="decided at or after (ISO 8601)")]
    = None,
    decided_lt: Annotated[str | None, Query(description="decided before (ISO 8601)")] = None,
    limit: Annotated[str | None, Query(description="page size, 1-100 (default 20)")] = None,
    starting_after: Annotated[str | None, Query(description="the previous page's next_cursor")]
    = None,
) -> Response | dict[str, Any]:
    """Reconciliation exceptions of payments and refunds and rejected dispute records, newest
    first, each with its exception case's id and status. `Accept: text/csv` streams the whole
    filtered list (no paging) with money as `amount_minor` + `currency` columns."""
    filters = _filters(request, who)
    if wants_csv(request):
        sql, params = exceptions_query(**filters)
        return await csv_response(request, who, sql, params, "exceptions.csv")
    size = parse_limit(limit)
    after = _cursor(starting_after)
    async with reading(request, who) as conn:
        rows = await exceptions_rows(conn, limit=size + 1, after=after, **filters)
    return page(rows, size, exception_key)
