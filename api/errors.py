"""API errors: one JSON shape, `{"error": {"code", "message", "param"}}`, for every failure."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the API answers with an error status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


def bad_param(param: str, message: str) -> ApiError:
    """400 naming the query parameter (or path segment) that was wrong."""
    return ApiError(400, "invalid_parameter", f"{param}: {message}", param)


def not_found(kind: str, ident: str) -> ApiError:
    """404: no such object, or one the key may not see (the two are not told apart)."""
    return ApiError(404, "not_found", f"no {kind} {ident!r}")


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _param_name(loc: tuple[Any, ...] | list[Any]) -> str:
    # FastAPI locations look like ("query", "limit") or ("path", "payment_id").
    parts = [str(p) for p in loc if p not in ("query", "path", "header", "cookie", "body")]
    return ".".join(parts) or "request"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param_name(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    return JSONResponse(bad_param(param, message).body(), status_code=400)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "param": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _database_busy(_request: Request, exc: Exception) -> JSONResponse:
    """503: the statement timeout cancelled the query, or no connection came in time."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        code, message = "query_timeout", "the query ran longer than the API's statement timeout"
    else:
        code, message = "database_unavailable", "no database connection is available now"
    log.warning("%s: %s", code, exc)
    return JSONResponse({"error": {"code": code, "message": message, "param": None}},
                        status_code=503, headers={"Retry-After": "1"})


async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware calls this, then re-raises (uvicorn logs the traceback).
    body = {"error": {"code": "internal_error", "message": "internal error", "param": None}}
    return JSONResponse(body, status_code=500)


def install(app: FastAPI) -> None:
    """Answer every failure in the API's error shape: ApiError, validation errors (400 naming
    the parameter), routing errors, a cancelled query or no connection (503), and any other
    exception (500, without its details)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(psycopg.errors.QueryCanceled, _database_busy)
    app.add_exception_handler(psycopg.OperationalError, _database_busy)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_exception_handler(Exception, _internal_error)
