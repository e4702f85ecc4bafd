"""Request count and latency by route template and status, on the app's own registry.

The route label is the matched route's path template (`/v1/payments/{payment_id}`), never
the raw path, so a client walking ids cannot grow the series without bound; a request no
route matched is counted under `unmatched`. /metrics and /healthz are counted like any route.

`status` is the numeric HTTP status as text ("200", "404"); a handler that raised before
answering counts as "500". The duration ends when the response starts (its status line and
headers are sent): a JSON answer is computed by then, and a CSV export streaming for a
minute counts its time to first byte, not the client's download.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
# Seconds; list pages answer in milliseconds, exports stream for seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ApiMetrics:
    """The API's metric families on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "settle_api_requests_total", "HTTP requests answered, by route template and status",
            ("method", "route", "status"), registry=self.registry)
        self.duration = Histogram(
            "settle_api_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by route template",
            ("method", "route"), buckets=BUCKETS, registry=self.registry)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def route_template(scope: Scope) -> str:
    """The matched route's path template. FastAPI's routes put themselves in the scope;
    Starlette's plain routes (/metrics, /docs, /openapi.json) do not, so they are matched
    again here; what matches nothing is `unmatched`."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    app: Any = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        matches = getattr(candidate, "matches", None)
        if not isinstance(candidate, BaseRoute) or matches is None:
            continue
        match, _ = matches(scope)
        found = getattr(candidate, "path", None)
        if match == Match.FULL and isinstance(found, str) and found:
            return found
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware (a streamed body is timed to its last chunk, not its headers)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered_after: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered_after
            if message["type"] == "http.response.start":
                status = int(message["status"])
                answered_after = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "GET")
            route = route_template(scope)
            elapsed = time.perf_counter() - started if answered_after is None else answered_after
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.duration.labels(method, route).observe(elapsed)


async def metrics_endpoint(request: Request) -> Response:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics.render()
