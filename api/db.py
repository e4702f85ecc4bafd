"""Connections for a request: pooled, read-only, with the key's scope set for row-level security.

Every query of every route runs inside `reading(...)`. The transaction sets two settings,
local to it, that the restrictive policies of migration 0007 read: `settle.api_scope`
("merchant" or "analyst") and `settle.api_merchant` (the merchant id, '' for an analyst).
Outside such a transaction the API's login sees no merchant's row at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api.auth import Principal


async def prepare(conn: psycopg.AsyncConnection[Any], who: Principal) -> None:
    """Inside an open transaction: read only, and the key's scope and merchant for RLS."""
    await conn.execute("SET TRANSACTION READ ONLY")
    await conn.execute(
        "SELECT set_config('settle.api_scope', %s, true),"
        " set_config('settle.api_merchant', %s, true)",
        (who.scope, who.merchant_id or ""))


@asynccontextmanager
async def connection_for(pool: AsyncConnectionPool[Any],
                         who: Principal) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """`reading` without a request: for the statement page's helpers and tests."""
    async with pool.connection() as conn:
        conn.row_factory = dict_row
        async with conn.transaction():
            await prepare(conn, who)
            yield conn


@asynccontextmanager
async def reading(request: Request, who: Principal) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection in a READ ONLY transaction scoped to `who`; rows as dicts."""
    async with connection_for(request.app.state.pool, who) as conn:
        yield conn
