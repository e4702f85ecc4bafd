"""`settle bench api`: the HTTP API's latency on a large book, and its CSV export's rows/s.

A bench database (fresh, migrated, seeded by settle.api_seed with `payments` payments over
`days` days, the last one still open) is served by a real `settle api serve` process (its
own settings: pool, statement timeout, the API's login under row-level security). Clients
in this process (httpx, `clients` concurrent requests on keep-alive connections) time each
endpoint in turn: `requests` requests after a warm-up of one request per client, each
request a merchant key's (of the merchant it asks about) unless the endpoint says analyst.
Then the CSV export (`Accept: text/csv`) of two lists is timed to its last byte, beside a
raw `COPY (the same query) TO STDOUT` as the API's login with the same scope, read by psycopg
in this process: rows/s both ways.

Latency is the client's, from sending the request to the whole body read (connection reuse
included). The figures are the machine's: clients and server share its cores.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg
from psycopg import sql

from infra.config import PostgresSettings, Settings
from settle.api_keys import create_key, ensure_api_login
from settle.api_seed import seed_books
from sinks.db import connect, drop_database
from sinks.migrate import migrate

Say = Callable[[str], None]
SERVER_START_TIMEOUT_S: Final = 60.0
ENDPOINTS: Final = ("payments list", "payment detail", "balances", "balance_transactions",
                    "batches list", "batch detail", "summary")


@dataclass(frozen=True, slots=True)
class ApiBenchOptions:
    payments: int = 1_000_000
    merchants: int = 20
    days: int = 14
    clients: int = 32
    requests: int = 2_000  # per endpoint
    seed: int = 7
    database: str | None = None  # an already seeded bench database: no seeding
    keep: bool = False  # keep the database this run seeded
    out_dir: Path = Path(".bench")


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    params: dict[str, str]
    key: str


@dataclass(slots=True)
class Samples:
    """What the data offers to ask about: payments and batches with their merchants, days."""

    payments: list[tuple[str, str]]
    batches: list[tuple[str, str]]
    days: list[datetime]
    merchants: list[str]


# -- the database -----------------------------------------------------------------------------

def _create_database(settings: Settings, opts: ApiBenchOptions, say: Say
                     ) -> tuple[PostgresSettings, dict[str, Any]]:
    name = f"settle_bench_api_{uuid.uuid4().hex[:10]}"
    with connect(settings.postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner = replace(settings.postgres, dbname=name)
    say(f"bench database {name}: migrating, then seeding {opts.payments:,} payments")
    started = time.monotonic()
    step = max(opts.payments // 10, 1)
    marks = [step]

    def progress(done: int) -> None:
        if done >= marks[0]:
            say(f"seeded {done:,} payments ({time.monotonic() - started:,.0f} s)")
            marks[0] = (done // step + 1) * step

    try:
        with connect(owner) as conn:
            migrate(conn)
            conn.autocommit = False
            ensure_api_login(conn, settings.api)
            conn.commit()
            start = _days_before_today(opts.days)
            summary = seed_books(conn, payments=opts.payments, merchants=opts.merchants,
                                 seed=opts.seed, start=start, days=opts.days, open_days=1,
                                 progress=progress)
        seed_s = time.monotonic() - started
        say(f"seeded in {seed_s:,.0f} s; VACUUM ANALYZE")
        with connect(owner, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    except BaseException:
        _drop(settings, name)
        raise
    return owner, {"database": name, "seed_s": round(seed_s, 1), "rows": summary.rows,
                   "vacuum_analyze_s": round(time.monotonic() - started - seed_s, 1)}


def _days_before_today(days: int) -> datetime:
    """The settlement window start `days` windows before today's: the seeded days end at
    today's cut-off, all in the past."""
    from settlement.windows import WindowPolicy, window_for

    policy = WindowPolicy.daily_shanghai()
    today = window_for(int(time.time() * 1000), policy).start_ms
    return datetime.fromtimestamp((today - days * policy.size_ms) / 1000, UTC)


def _drop(settings: Settings, name: str) -> None:
    with connect(settings.postgres, autocommit=True) as conn:
        drop_database(conn, name)


def _samples(conn: psycopg.Connection, rng: random.Random) -> Samples:
    merchants = [r[0] for r in conn.execute(
        "SELECT merchant_id FROM payments WHERE merchant_id IS NOT NULL"
        " GROUP BY 1 ORDER BY 1")]
    payments = [(r[0], r[1]) for r in conn.execute(
        "SELECT payment_id, merchant_id FROM payments TABLESAMPLE BERNOULLI (1)"
        " REPEATABLE (%s) WHERE merchant_id IS NOT NULL LIMIT 5000", (rng.randrange(1 << 30),))]
    if not payments:
        payments = [(r[0], r[1]) for r in conn.execute(
            "SELECT payment_id, merchant_id FROM payments WHERE merchant_id IS NOT NULL"
            " LIMIT 5000")]
    batches = [(r[0], r[1]) for r in conn.execute(
        "SELECT batch_id, merchant_id FROM settlement_batches")]
    days = [r[0] for r in conn.execute(
        "SELECT DISTINCT date_trunc('day', window_start) FROM settlement_batches ORDER BY 1")]
    if not (merchants and payments and batches and days):
        raise RuntimeError("the bench database holds no books: seed it first")
    return Samples(payments, batches, days, merchants)


def _keys(owner: PostgresSettings, merchants: Sequence[str]) -> tuple[str, dict[str, str]]:
    with connect(owner) as conn:
        analyst = create_key(conn, merchant=None, label="bench", created_by="settle bench").key
        per = {m: create_key(conn, merchant=m, label="bench", created_by="settle bench").key
               for m in merchants}
    return analyst, per


# -- requests ---------------------------------------------------------------------------------

def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def plan_requests(endpoint: str, samples: Samples, keys: dict[str, str], count: int,
                  rng: random.Random) -> list[Request]:
    """`count` requests to one endpoint, drawn before the clock starts."""
    out = []
    for _ in range(count):
        merchant = rng.choice(samples.merchants)
        key = keys[merchant]
        day = rng.choice(samples.days)
        day_range = {"created_gte": _iso(day), "created_lt": _iso(day + timedelta(days=1))}
        match endpoint:
            case "payments list":
                req = Request("/v1/payments", {"limit": "100", **day_range}, key)
            case "payment detail":
                payment_id, owner = rng.choice(samples.payments)
                req = Request(f"/v1/payments/{payment_id}", {}, keys[owner])
            case "balances":
                req = Request("/v1/balances", {}, key)
            case "balance_transactions":
                req = Request("/v1/balance_transactions", {"limit": "100", **day_range}, key)
            case "batches list":
                req = Request("/v1/settlement_batches", {"limit": "20"}, key)
            case "batch detail":
                batch_id, owner = rng.choice(samples.batches)
                req = Request(f"/v1/settlement_batches/{batch_id}", {}, keys[owner])
            case "summary":
                # A merchant's week by day and channel (a whole history is an export).
                week = {"created_gte": _iso(day - timedelta(days=6)),
                        "created_lt": _iso(day + timedelta(days=1))}
                req = Request("/v1/reports/summary", {"group_by": "day,channel", **week}, key)
            case _:
                raise ValueError(f"unknown endpoint {endpoint!r}")
        out.append(req)
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


async def _load(base_url: str, requests: list[Request], clients: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:
        async def one(req: Request, record: bool) -> None:
            started = time.perf_counter()
            r = await client.get(req.path, params=req.params,
                                 headers={"Authorization": f"Bearer {req.key}"})
            elapsed = time.perf_counter() - started
            if record:
                latencies.append(elapsed)
                statuses[r.status_code] += 1

        # Warm-up: one request per client opens its connection (and the server's pool).
        await asyncio.gather(*(one(r, False) for r in requests[:clients]))
        queue = iter(requests[clients:])

        async def worker() -> None:
            for req in queue:  # a shared iterator: each request goes to one worker
                await one(req, True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered), "clients": clients, "wall_s": round(wall, 3),
        "requests_per_s": round(len(ordered) / wall, 1) if wall else None,
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": sum(v for k, v in statuses.items() if k != 200),
    }


# -- exports ----------------------------------------------------------------------------------

def _http_export(base_url: str, path: str, params: dict[str, str], key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/csv"}
    lines = 0
    size = 0
    started = time.perf_counter()
    with httpx.stream("GET", base_url + path, params=params, headers=headers,
                      timeout=None) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            lines += chunk.count(b"\n")
            size += len(chunk)
    seconds = time.perf_counter() - started
    rows = max(lines - 1, 0)
    return {"rows": rows, "seconds": round(seconds, 3), "mib": round(size / 2**20, 1),
            "rows_per_s": round(rows / seconds) if seconds else None}


def _raw_copy(login: PostgresSettings, query: str, params: dict[str, Any], scope: str,
              merchant: str | None) -> dict[str, Any]:
    """The export's query as a plain COPY, as the API's login with the key's scope."""
    lines = 0
    size = 0
    with connect(login) as conn:
        conn.read_only = True
        with conn.transaction():
            conn.execute("SELECT set_config('settle.api_scope', %s, true),"
                         " set_config('settle.api_merchant', %s, true)", (scope, merchant or ""))
            rendered = psycopg.ClientCursor(conn).mogrify(query, params)
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy(
                    f"COPY ({rendered}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                for chunk in copy:
                    lines += bytes(chunk).count(b"\n")
                    size += len(chunk)
            seconds = time.perf_counter() - started
    rows = max(lines - 1, 0)
    return {"rows": rows, "seconds": round(seconds, 3), "mib": round(size / 2**20, 1),
            "rows_per_s": round(rows / seconds) if seconds else None}


def _exports(base_url: str, login: PostgresSettings, analyst: str, merchant: str,
             merchant_key: str) -> list[dict[str, Any]]:
    from api.routes.balances import balance_transactions_query
    from api.routes.payments import payments_query

    cases = [
        ("payments (analyst: every merchant)", "/v1/payments", "analyst", None, analyst,
         payments_query()),
        (f"balance_transactions ({merchant})", "/v1/balance_transactions", "merchant",
         merchant, merchant_key, balance_transactions_query(merchant=merchant)),
    ]
    out = []
    for name, path, scope, who, key, (query, params) in cases:
        http = _http_export(base_url, path, {}, key)
        raw = _raw_copy(login, query, params, scope, who)
        out.append({"export": name, "path": path, "http": http, "raw_copy": raw,
                    "http_vs_copy": round(http["rows_per_s"] / raw["rows_per_s"], 3)
                    if http["rows_per_s"] and raw["rows_per_s"] else None})
    return out


# -- the server -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(owner: PostgresSettings, port: int, log: Path) -> subprocess.Popen[bytes]:
    import os

    env = dict(os.environ, SETTLE_PG_DB=owner.dbname)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "settle", "api", "serve", "--port", str(port),
             "--log-level", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"settle api serve exited with {proc.returncode}: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"settle api serve did not answer /healthz: see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the run ----------------------------------------------------------------------------------

def run_api_bench(settings: Settings, opts: ApiBenchOptions, say: Say,
                  endpoints: Sequence[str] = ENDPOINTS) -> tuple[dict[str, Any], Path]:
    """Seed (or reuse) the bench database, serve it, time the endpoints and the exports;
    the report as a dict and the path of its JSON."""
    from settle.benchmarks.suite import machine

    opts.out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    rng = random.Random(opts.seed)
    created = opts.database is None
    if opts.database is not None:
        owner = replace(settings.postgres, dbname=opts.database)
        database: dict[str, Any] = {"database": opts.database, "reused": True}
    else:
        owner, database = _create_database(settings, opts, say)
    try:
        with connect(owner) as conn:
            samples = _samples(conn, rng)
            counted = conn.execute("SELECT count(*) FROM payments").fetchone()
            database["payments"] = counted[0] if counted else 0
        analyst, keys = _keys(owner, samples.merchants)
        port = _free_port()
        proc = _start_server(owner, port, opts.out_dir / "api-server.log")
        base_url = f"http://127.0.0.1:{port}"
        try:
            results = []
            for endpoint in endpoints:
                requests = plan_requests(endpoint, samples, keys, opts.requests + opts.clients,
                                         rng)
                say(f"{endpoint}: {opts.requests:,} requests, {opts.clients} clients")
                stats = asyncio.run(_load(base_url, requests, opts.clients))
                results.append({"endpoint": endpoint, **stats})
            biggest = samples.merchants[0]
            say("CSV exports beside a raw COPY of the same query")
            exports = _exports(base_url, settings.api.postgres(owner), analyst, biggest,
                               keys[biggest])
        finally:
            _stop(proc)
    finally:
        if created and not opts.keep:
            _drop(settings, owner.dbname)
    report = {
        "bench": "api", "options": {k: str(v) if isinstance(v, Path) else v
                                    for k, v in asdict(opts).items()},
        "server": {"pool_max": settings.api.pool_max,
                   "statement_timeout_ms": settings.api.statement_timeout_ms,
                   "process": "settle api serve (one uvicorn process)"},
        "database": {**database, "kept": created and opts.keep},
        "machine": info, "endpoints": results, "exports": exports,
    }
    path = opts.out_dir / "api.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return report, path
