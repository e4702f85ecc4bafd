"""CSV exports of lists, streamed from PostgreSQL's COPY (constant memory for any row count).

A list route passes the same filtered query as its JSON path, without cursor or limit, and
selecting flat columns (money as `<name>_minor` beside a `currency` column). COPY takes no
bind parameters, so the query is rendered client-side with psycopg's own quoting
(`ClientCursor.mogrify`); the values are the route's parsed parameters, never raw text. The
COPY runs on a connection prepared like `reading(...)` (read only, the key's scope), so
row-level security applies to it as to any query; rows go to the client in chunks of about
64 KiB as PostgreSQL sends them, so memory stays flat whatever the row count. An export may
run longer than a page: its statement timeout is `SETTLE_API_EXPORT_TIMEOUT_MS`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg
from fastapi import Request
from fastapi.responses import StreamingResponse

from api.auth import Principal
from api.db import prepare

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
# PostgreSQL hands COPY data over a row at a time; rows are gathered into chunks of about
# this size before they are sent (one write per row would cost more than the query).
CHUNK_BYTES = 64 * 1024
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def wants_csv(request: Request) -> bool:
    """True when the client asks for CSV (`Accept: text/csv`) rather than JSON."""
    accept = request.headers.get("accept", "")
    return any(part.split(";", 1)[0].strip().lower() == "text/csv" for part in accept.split(","))


async def render_copy(conn: psycopg.AsyncConnection[Any], query: str,
                      params: Mapping[str, Any]) -> str:
    """`COPY (<query with params inlined>) TO STDOUT WITH (FORMAT csv, HEADER)`."""
    rendered = psycopg.AsyncClientCursor(conn).mogrify(query, params)
    return f"COPY ({rendered}) TO STDOUT WITH (FORMAT csv, HEADER)"


async def stream_csv(request: Request, who: Principal, query: str,
                     params: Mapping[str, Any]) -> AsyncIterator[bytes]:
    """The CSV bytes of `query`, chunk by chunk, read as `who`."""
    pool = request.app.state.pool
    timeout_ms = request.app.state.settings.api.export_timeout_ms
    async with pool.connection() as conn, conn.transaction():
        await prepare(conn, who)
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        copy_sql = await render_copy(conn, query, params)
        buffer = bytearray()
        async with conn.cursor().copy(copy_sql) as copy:
            async for data in copy:
                buffer += data
                if len(buffer) >= CHUNK_BYTES:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)


async def csv_response(request: Request, who: Principal, query: str, params: Mapping[str, Any],
                       filename: str) -> StreamingResponse:
    """A streamed CSV download of `query` (an attachment named `filename`)."""
    safe = _FILENAME_UNSAFE.sub("_", filename) or "export.csv"
    return StreamingResponse(
        stream_csv(request, who, query, params),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )
