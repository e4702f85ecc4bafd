"""The FastAPI application: pool, auth, errors, metrics and every router.

`create_app(settings)` builds the app; its lifespan opens an async pool of connections as
the API's login (`SETTLE_API_PG_USER`, a member of settle_api_reader) with a statement
timeout, so one slow query cannot hold a connection for long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from api import errors
from api.auth import KeyCache
from api.metrics import ApiMetrics, MetricsMiddleware, metrics_endpoint
from infra.config import Settings

APPLICATION_NAME = "settle-api"
POOL_OPEN_TIMEOUT_S = 10.0


def pool_for(settings: Settings) -> AsyncConnectionPool[Any]:
    """An unopened pool of the API's login with its statement timeout."""
    api = settings.api
    pg = api.postgres(settings.postgres)
    return AsyncConnectionPool(
        pg.conninfo(),
        min_size=1,
        max_size=api.pool_max,
        open=False,
        name="settle-api",
        kwargs={
            # JIT compiling took most of a summary report's time (2.2 s of 3.3 s, measured);
            # the API's queries are short or index-driven.
            "options": f"-c statement_timeout={api.statement_timeout_ms}"
                       " -c default_transaction_read_only=on -c jit=off",
            "application_name": APPLICATION_NAME,
        },
    )


def create_app(settings: Settings) -> FastAPI:
    """The API over `settings.postgres`'s database, logging in as `settings.api`'s login."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = pool_for(settings)
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="Settlement data centre API",
        version="1",
        summary="Read-only payments, balances, settlement batches, exceptions and reports.",
        description=(
            "Every request carries `Authorization: Bearer <API key>` (`settle api keys "
            "create`). A merchant key sees only its merchant's rows; an analyst key sees "
            "every merchant's. Amounts are integer minor units beside their currency and "
            "exponent. Lists page by an opaque cursor (`limit` 1-100, `starting_after` = the "
            "previous page's `next_cursor`); `Accept: text/csv` on a list streams the whole "
            "filtered list as CSV."
        ),
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.key_cache = KeyCache(settings.api.key_cache_s)
    app.state.metrics = ApiMetrics()
    errors.install(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        try:
            async with request.app.state.pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "detail": type(exc).__name__},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)

    from api import statement
    from api.routes import balances, batches, exceptions, payments, reports

    for module in (payments, exceptions, balances, batches, reports, statement):
        app.include_router(module.router)
    return app
