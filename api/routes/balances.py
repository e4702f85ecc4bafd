"""/v1/balances and /v1/balance_transactions: a merchant's accounts in the ledger.

A merchant has three accounts, all liabilities of the platform to it, read as credit
balances (credits - debits): `payable:<m>` (earned, not yet in a closed batch's payout),
`payout_due:<m>` (closed batches' payouts not yet paid out) and `dispute_hold:<m>` (funds
frozen by open disputes). A balance is the sum of the account's postings, optionally only
those posted at or before `as_of`.

A balance transaction is one posting on one of those accounts: its journal (kind, source,
payment, refund or dispute), the batch that settles the journal (the settlement item of the
journal's kind and source id, or the batch itself for a PAYOUT journal), and its amount signed
from the merchant's point of view (a credit adds, a debit takes away). The list is ordered
newest first by (posted_at, journal_id, account, side): ledger_entries is insert-only and its
key is (journal_id, account, side), so the order is total and never changes under a walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final

import psycopg
from fastapi import APIRouter, Depends, Query, Request

from api.auth import Principal, principal
from api.db import reading
from api.export import csv_response, wants_csv
from api.money import money
from api.paging import page
from api.params import merchant_filter, parse_enum, parse_limit, parse_time
from api.routes.shared import (
    JOURNAL_KIND_CHOICES,
    check_range,
    decode_key,
    dispute_id_sql,
    from_text,
    item_kind_sql,
    journal_kind_sql,
    parse_currency,
    parse_id,
    refund_id_sql,
    reject_unknown,
    rfc3339,
    ts_text,
)

router = APIRouter(tags=["balances"])

# The merchant's accounts by type, and the prefix of each account's name.
ACCOUNT_TYPES: Final = ("payable", "payout_due", "dispute_hold")
_PREFIX: Final = {t: f"{t}:" for t in ACCOUNT_TYPES}
_SIGNED: Final = "CASE WHEN e.side = 'CREDIT' THEN e.amount_minor ELSE -e.amount_minor END"
_MERCHANT_OF: Final = "substr({0}, strpos({0}, ':') + 1)"


def _is_type(account: str, account_type: str) -> str:
    prefix = _PREFIX[account_type]
    return f"left({account}, {len(prefix)}) = '{prefix}'"


def _accounts_where(merchant: str | None, types: Sequence[str],
                    params: dict[str, Any]) -> str:
    """The merchant's accounts of `types` by name, or every merchant's by prefix (an index
    range each: the database's collation is C, where LIKE 'prefix%' is a range)."""
    if merchant is not None:
        names = []
        for t in types:
            params[f"acct_{t}"] = _PREFIX[t] + merchant
            names.append(f"%(acct_{t})s")
        return f"e.account IN ({', '.join(names)})"
    return "(" + " OR ".join(f"e.account LIKE '{_PREFIX[t]}%%'" for t in types) + ")"


# -- balances ---------------------------------------------------------------------------------

def balances_query(*, merchant: str | None, currency: str | None = None,
                   as_of: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """Flat rows (merchant_id, currency, payable_minor, payout_due_minor, held_minor), one per
    merchant and currency with postings, ordered by both."""
    params: dict[str, Any] = {}
    where = [_accounts_where(merchant, ACCOUNT_TYPES, params)]
    if currency is not None:
        where.append("e.currency = %(currency)s")
        params["currency"] = currency
    if as_of is not None:
        where.append("e.posted_at <= %(as_of)s")
        params["as_of"] = as_of
    sums = ",\n           ".join(
        f"COALESCE(SUM({_SIGNED}) FILTER (WHERE {_is_type('e.account', t)}), 0)::bigint"
        f" AS {column}"
        for t, column in zip(ACCOUNT_TYPES, ("payable_minor", "payout_due_minor", "held_minor"),
                             strict=True))
    sql = f"""
    SELECT {_MERCHANT_OF.format('e.account')} AS merchant_id, e.currency::text AS currency,
           {sums}
      FROM ledger_entries e
     WHERE {' AND '.join(where)}
     GROUP BY 1, 2
     ORDER BY 1, 2"""
    return sql, params


def balance_object(row: dict[str, Any], as_of: datetime | None) -> dict[str, Any]:
    currency = row["currency"]
    return {
        "object": "balance",
        "merchant_id": row["merchant_id"],
        "currency": currency,
        "payable": money(row["payable_minor"], currency),
        "payout_due": money(row["payout_due_minor"], currency),
        "held": money(row["held_minor"], currency),
        "as_of": rfc3339(as_of),
    }


async def balances_rows(conn: psycopg.AsyncConnection[Any], *, merchant: str | None,
                        currency: str | None = None,
                        as_of: datetime | None = None) -> list[dict[str, Any]]:
    """The balances of a merchant (every merchant: None) per currency, as the API shows them."""
    sql, params = balances_query(merchant=merchant, currency=currency, as_of=as_of)
    cur = await conn.execute(sql, params)
    return [balance_object(row, as_of) for row in await cur.fetchall()]


_BALANCE_PARAMS: Final = ("merchant", "currency", "as_of")


@router.get("/v1/balances", summary="Balances per merchant and currency")
async def get_balances(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    merchant: Annotated[str | None, Query(
        description="Merchant id (analyst keys; a merchant key reads its own).")] = None,
    currency: Annotated[str | None, Query(description="ISO 4217 code, e.g. CNY.")] = None,
    as_of: Annotated[str | None, Query(
        description="Only postings at or before this time (ISO 8601; a date is midnight "
                    "UTC).")] = None,
) -> Any:
    """Per merchant and currency: `payable` (earned, not yet paid out by a closed batch),
    `payout_due` (closed batches' payouts not yet paid) and `held` (frozen by open disputes),
    each the credit balance of the merchant's account. Every pair in one response (a
    merchant has one row per currency); `Accept: text/csv` gives the same rows flat."""
    reject_unknown(request, _BALANCE_PARAMS)
    who_merchant = merchant_filter(who, parse_id("merchant", merchant))
    cur_code = parse_currency("currency", currency)
    when = parse_time("as_of", as_of)
    if wants_csv(request):
        sql, params = balances_query(merchant=who_merchant, currency=cur_code, as_of=when)
        return await csv_response(request, who, sql, params, "balances.csv")
    async with reading(request, who) as conn:
        rows = await balances_rows(conn, merchant=who_merchant, currency=cur_code, as_of=when)
    return {"object": "list", "data": rows, "has_more": False, "next_cursor": None}


# -- balance transactions ---------------------------------------------------------------------

_TXN_ORDER: Final = ("{t}.posted_at DESC, {t}.journal_id DESC, {t}.account DESC, "
                     "{t}.side DESC")
# The batch that settles a posting's journal.
_BATCH_OF: Final = "CASE WHEN j.kind = 'PAYOUT' THEN j.source_id ELSE i.batch_id END"
TXN_KEY_TYPES: Final = (datetime, str, str, str)


def _txn_filters(params: dict[str, Any], *, currency: str | None, kind: str | None,
                 created_gte: datetime | None, created_lt: datetime | None,
                 payment_id: str | None, batch_id: str | None) -> list[str]:
    where = []
    for column, name, value in (
            ("e.currency", "currency", currency), ("j.kind", "kind", kind),
            ("e.payment_id", "payment_id", payment_id)):
        if value is not None:
            where.append(f"{column} = %({name})s")
            params[name] = value
    if batch_id is not None:
        # The batch's journals: those its items settle, and its payout.
        where.append(f"""e.journal_id IN (
            SELECT bj.journal_id FROM settlement_batch_items bi
              JOIN ledger_journals bj
                ON bj.kind = {journal_kind_sql('bi.kind')} AND bj.source_id = bi.item_id
             WHERE bi.batch_id = %(batch_id)s
            UNION ALL
            SELECT pj.journal_id FROM ledger_journals pj
             WHERE pj.kind = 'PAYOUT' AND pj.source_id = %(batch_id)s)""")
        params["batch_id"] = batch_id
    if created_gte is not None:
        where.append("e.posted_at >= %(created_gte)s")
        params["created_gte"] = created_gte
    if created_lt is not None:
        where.append("e.posted_at < %(created_lt)s")
        params["created_lt"] = created_lt
    return where


def _after_branch(account: str | None, after: tuple[Any, ...] | None,
                  params: dict[str, Any]) -> str | None:
    """The keyset condition of one branch: rows strictly after the cursor in the list order.

    A branch of one named account (a merchant's walk) adds (posted_at, journal_id) <= the
    cursor's: a range of its index (account, posted_at, journal_id, side), so a page deep in
    the walk starts where the last one ended; the exact comparison then drops the few rows of
    the cursor's own journal that came before it.
    """
    if after is None:
        return None
    posted_at, journal_id, cursor_account, side = after
    params.update(k_at=posted_at, k_journal=journal_id, k_account=cursor_account, k_side=side)
    exact = ("(e.posted_at, e.journal_id, e.account, e.side)"
             " < (%(k_at)s, %(k_journal)s, %(k_account)s, %(k_side)s)")
    if account is None:
        return exact
    return f"(e.posted_at, e.journal_id) <= (%(k_at)s, %(k_journal)s) AND {exact}"


def _transactions_sql(*, merchant: str | None, account: str | None = None,
                      currency: str | None = None, kind: str | None = None,
                      created_gte: datetime | None = None, created_lt: datetime | None = None,
                      payment_id: str | None = None, batch_id: str | None = None,
                      after: tuple[Any, ...] | None = None,
                      limit: int | None = None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    common = _txn_filters(params, currency=currency, kind=kind, created_gte=created_gte,
                          created_lt=created_lt, payment_id=payment_id, batch_id=batch_id)
    types = ACCOUNT_TYPES if account is None else (account,)
    # One ordered branch per account of a merchant (an index range each, merged), or one
    # for every merchant's accounts, or one over a batch's journals (a few thousand at most,
    # read once rather than once per account).
    branches: list[tuple[str | None, str]] = []
    if merchant is not None and batch_id is None:
        for t in types:
            params[f"acct_{t}"] = _PREFIX[t] + merchant
            branches.append((_PREFIX[t] + merchant, f"e.account = %(acct_{t})s"))
    else:
        branches.append((None, _accounts_where(merchant, types, params)))
    if limit is not None:
        params["limit"] = limit
    parts = []
    for branch_account, account_where in branches:
        where = [account_where, *common]
        keyset = _after_branch(branch_account, after, params)
        if keyset is not None:
            where.append(keyset)
        tail = f"ORDER BY {_TXN_ORDER.format(t='e')} LIMIT %(limit)s" if limit is not None else ""
        parts.append(f"""(
        SELECT e.journal_id, e.account, e.side, e.amount_minor, e.currency, e.posted_at,
               j.kind, j.source_id, j.payment_id, {_BATCH_OF} AS batch_id
          FROM ledger_entries e
          JOIN ledger_journals j ON j.journal_id = e.journal_id
          LEFT JOIN settlement_batch_items i
                 ON i.kind = {item_kind_sql('j.kind')} AND i.item_id = j.source_id
         WHERE {' AND '.join(where)}
         {tail})""")
    account_type = "CASE " + " ".join(
        f"WHEN {_is_type('t.account', ty)} THEN '{ty}'" for ty in ACCOUNT_TYPES) + " END"
    sql = f"""
    SELECT t.journal_id, t.kind, t.account, {account_type} AS account_type,
           {_MERCHANT_OF.format('t.account')} AS merchant_id, t.side,
           CASE WHEN t.side = 'CREDIT' THEN t.amount_minor ELSE -t.amount_minor END
               AS amount_minor,
           t.currency::text AS currency, {ts_text('t.posted_at')} AS posted_at,
           t.payment_id, {refund_id_sql('t.kind', 't.source_id', 't.payment_id')} AS refund_id,
           {dispute_id_sql('t.kind', 't.source_id', 't.payment_id')} AS dispute_id,
           t.source_id, t.batch_id
      FROM ({' UNION ALL '.join(parts)}) t
     ORDER BY {_TXN_ORDER.format(t='t')}
     {'LIMIT %(limit)s' if limit is not None else ''}"""
    return sql, params


def balance_transactions_query(*, merchant: str | None, account: str | None = None,
                               currency: str | None = None, kind: str | None = None,
                               created_gte: datetime | None = None,
                               created_lt: datetime | None = None,
                               payment_id: str | None = None,
                               batch_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """The whole filtered list as flat rows, newest first (the CSV export and `settle report
    transactions`): journal_id, kind, account, account_type, merchant_id, side, amount_minor
    (signed: credit +, debit -), currency, posted_at, payment_id, refund_id, dispute_id,
    source_id, batch_id."""
    return _transactions_sql(merchant=merchant, account=account, currency=currency, kind=kind,
                             created_gte=created_gte, created_lt=created_lt,
                             payment_id=payment_id, batch_id=batch_id)


def transaction_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "balance_transaction",
        "journal_id": row["journal_id"],
        "kind": row["kind"],
        "account": row["account"],
        "account_type": row["account_type"],
        "merchant_id": row["merchant_id"],
        "side": row["side"],
        "amount": money(row["amount_minor"], row["currency"]),
        "posted_at": row["posted_at"],
        "payment_id": row["payment_id"],
        "refund_id": row["refund_id"],
        "dispute_id": row["dispute_id"],
        "source_id": row["source_id"],
        "batch_id": row["batch_id"],
    }


def transaction_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The list order's key of a row (flat or as shown): what a cursor carries."""
    return (from_text(row["posted_at"]), row["journal_id"], row["account"], row["side"])


async def balance_transactions_rows(conn: psycopg.AsyncConnection[Any], *,
                                    merchant: str | None, limit: int,
                                    after: tuple[Any, ...] | None = None,
                                    **filters: Any) -> list[dict[str, Any]]:
    """Up to `limit` postings after the cursor key `after`, as the API shows them."""
    sql, params = _transactions_sql(merchant=merchant, after=after, limit=limit, **filters)
    cur = await conn.execute(sql, params)
    return [transaction_object(row) for row in await cur.fetchall()]


_TXN_PARAMS: Final = ("merchant", "account", "currency", "kind", "created_gte", "created_lt",
                      "payment_id", "batch_id", "limit", "starting_after")


@router.get("/v1/balance_transactions", summary="Postings on merchants' accounts")
async def list_balance_transactions(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    merchant: Annotated[str | None, Query(description="Merchant id (analyst keys).")] = None,
    account: Annotated[str | None, Query(
        description="payable, payout_due or dispute_hold.")] = None,
    currency: Annotated[str | None, Query(description="ISO 4217 code.")] = None,
    kind: Annotated[str | None, Query(
        description="Journal kind: " + ", ".join(JOURNAL_KIND_CHOICES) + ".")] = None,
    created_gte: Annotated[str | None, Query(
        description="Posted at or after (ISO 8601).")] = None,
    created_lt: Annotated[str | None, Query(description="Posted before (ISO 8601).")] = None,
    payment_id: Annotated[str | None, Query(
        description="Postings of this payment's journals.")] = None,
    batch_id: Annotated[str | None, Query(
        description="Postings settled by this batch (its items' journals and its "
                    "payout).")] = None,
    limit: Annotated[int | None, Query(description="1-100, default 20.")] = None,
    starting_after: Annotated[str | None, Query(
        description="The previous page's next_cursor.")] = None,
) -> Any:
    """Every posting on a merchant's accounts, newest first: its journal's kind and source
    (payment, refund, dispute or batch), the batch that settles it, and its amount signed
    from the merchant's side (credit +, debit -). `Accept: text/csv` streams the whole
    filtered list (cursor and limit do not apply)."""
    reject_unknown(request, _TXN_PARAMS)
    filters: dict[str, Any] = {
        "merchant": merchant_filter(who, parse_id("merchant", merchant)),
        "account": parse_enum("account", account, ACCOUNT_TYPES),
        "currency": parse_currency("currency", currency),
        "kind": parse_enum("kind", kind, JOURNAL_KIND_CHOICES),
        "created_gte": parse_time("created_gte", created_gte),
        "created_lt": parse_time("created_lt", created_lt),
        "payment_id": parse_id("payment_id", payment_id),
        "batch_id": parse_id("batch_id", batch_id),
    }
    check_range("created_gte", filters["created_gte"], "created_lt", filters["created_lt"])
    size = parse_limit(limit)
    after = decode_key(starting_after, TXN_KEY_TYPES)
    if wants_csv(request):
        sql, params = balance_transactions_query(**filters)
        return await csv_response(request, who, sql, params, "balance_transactions.csv")
    async with reading(request, who) as conn:
        rows = await balance_transactions_rows(conn, limit=size + 1, after=after, **filters)
    return page(rows, size, transaction_key)
