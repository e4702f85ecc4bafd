#!/usr/bin/env python3
"""Health checks for the local stack started by deploy/stack.sh.

    python deploy/healthcheck.py [kafka|registry|postgres|prometheus|all ...] [--timeout S] [--wait]

Checks each named service once (or, with --wait, until it passes or the timeout runs out) and
prints one line per service: ``ok   kafka  127.0.0.1:19092  3 topics`` or
``FAIL kafka  127.0.0.1:19092  <reason>``. Exit status 0 only if every check passed.

Standard library plus confluent_kafka (for Kafka) and, when importable, psycopg (for
PostgreSQL); it runs with the repo's venv. Addresses and credentials come from the same
SETTLE_* settings that stack.sh uses, with the same defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

HOST = "127.0.0.1"
SERVICES = ("kafka", "registry", "postgres", "prometheus")


class CheckFailed(Exception):
    """A service answered wrongly or not at all; the message is the reason shown to the user."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _port(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"healthcheck: {name}={raw!r} is not a port number") from None


@dataclass(frozen=True)
class Target:
    name: str
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def targets() -> dict[str, Target]:
    return {
        "kafka": Target("kafka", _port("SETTLE_KAFKA_PORT", 19092)),
        "registry": Target("registry", _port("SETTLE_REGISTRY_PORT", 18081)),
        "postgres": Target("postgres", _port("SETTLE_PG_PORT", 15432)),
        "prometheus": Target("prometheus", _port("SETTLE_PROMETHEUS_PORT", 19090)),
    }


def tcp_open(port: int, timeout: float) -> None:
    try:
        with socket.create_connection((HOST, port), timeout=max(timeout, 0.1)):
            return
    except OSError as exc:
        raise CheckFailed(
            f"nothing accepts TCP connections on {HOST}:{port} ({exc.strerror or exc})"
        ) from None


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=max(timeout, 0.1)) as resp:
            return resp.status, resp.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2048)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckFailed(f"GET {url} failed: {reason}") from None


# --------------------------------------------------------------------------- checks


def check_kafka(t: Target, timeout: float) -> str:
    tcp_open(t.port, timeout)
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        raise CheckFailed(
            f"confluent_kafka is not importable ({exc}); run with the repo's venv"
        ) from None
    quiet = logging.getLogger("settle.healthcheck.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    admin = AdminClient(
        {
            "bootstrap.servers": t.address,
            "socket.connection.setup.timeout.ms": int(max(timeout, 1) * 1000),
        },
        logger=quiet,
    )
    try:
        md = admin.list_topics(timeout=max(timeout, 0.5))
    except KafkaException as exc:
        raise CheckFailed(f"metadata request failed: {exc.args[0] if exc.args else exc}") from None
    if not md.brokers:
        raise CheckFailed("metadata answered without any broker")
    if md.controller_id is None or md.controller_id < 0:
        raise CheckFailed("metadata answered but the cluster has no active controller yet")
    user_topics = [name for name in md.topics if not name.startswith("__")]
    return (
        f"{len(md.brokers)} broker(s), controller {md.controller_id}, {len(user_topics)} topic(s)"
    )


def check_registry(t: Target, timeout: float) -> str:
    url = f"http://{t.address}/apis/ccompat/v7/subjects"
    status, body = http_get(url, timeout)
    if status != 200:
        raise CheckFailed(f"GET {url} answered HTTP {status}: {body[:200]!r}")
    return f"ccompat API answers ({len(body)} bytes of subjects)"


def check_prometheus(t: Target, timeout: float) -> str:
    url = f"http://{t.address}/-/ready"
    status, body = http_get(url, timeout)
    if status != 200:
        raise CheckFailed(
            f"GET {url} answered HTTP {status}: {body[:200].decode(errors='replace').strip()}"
        )
    return "ready"


def check_postgres(t: Target, timeout: float) -> str:
    tcp_open(t.port, timeout)
    user = _env("SETTLE_PG_USER", "settle")
    dbname = _env("SETTLE_PG_DB", "settle")
    password = _env("SETTLE_PG_PASSWORD", "settle-local")
    try:
        import psycopg
    except ImportError:
        return _check_postgres_without_psycopg(t, user, dbname, timeout)
    try:
        with psycopg.connect(
            host=HOST,
            port=t.port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=max(int(timeout), 2),
            application_name="settle-healthcheck",
        ) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        raise CheckFailed(
            f"login as {user} to database {dbname} failed: {str(exc).strip()}"
        ) from None
    return f"{user}@{dbname} logs in with its password (server {row[0] if row else '?'})"


def _check_postgres_without_psycopg(t: Target, user: str, dbname: str, timeout: float) -> str:
    pg_isready = shutil.which("pg_isready")
    if pg_isready is None:
        return "accepts TCP connections (psycopg and pg_isready not available for a deeper check)"
    proc = subprocess.run(
        [
            pg_isready,
            "-h",
            HOST,
            "-p",
            str(t.port),
            "-U",
            user,
            "-d",
            dbname,
            "-t",
            str(max(int(timeout), 1)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CheckFailed(f"pg_isready: {(proc.stdout + proc.stderr).strip()}")
    return "pg_isready: accepting connections"


CHECKS: dict[str, Callable[[Target, float], str]] = {
    "kafka": check_kafka,
    "registry": check_registry,
    "postgres": check_postgres,
    "prometheus": check_prometheus,
}


def run_check(name: str, timeout: float, wait: bool) -> tuple[bool, str]:
    target = targets()[name]
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            return True, CHECKS[name](target, min(remaining, 10.0))
        except CheckFailed as exc:
            reason = str(exc)
        if not wait or time.monotonic() >= deadline:
            return False, reason
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check the local settle stack (deploy/stack.sh).",
        epilog="Ports and credentials: SETTLE_KAFKA_PORT, SETTLE_REGISTRY_PORT, SETTLE_PG_PORT, "
        "SETTLE_PG_USER, SETTLE_PG_PASSWORD, SETTLE_PG_DB, SETTLE_PROMETHEUS_PORT.",
    )
    parser.add_argument(
        "services",
        nargs="*",
        default=["all"],
        metavar="SERVICE",
        help=f"one or more of {', '.join(SERVICES)}, or all (default)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per service (default 5)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="retry until the check passes or the timeout ends"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    parser.add_argument(
        "--brief",
        action="store_true",
        help="print only the reason of each failure (used by stack.sh)",
    )
    args = parser.parse_args(argv)

    names: list[str] = []
    for name in args.services:
        if name == "all":
            names.extend(SERVICES)
        elif name in SERVICES:
            names.append(name)
        else:
            parser.error(f"unknown service {name!r} (choose from {', '.join(SERVICES)}, all)")

    all_ok = True
    for name in dict.fromkeys(names):
        ok, detail = run_check(name, args.timeout, args.wait)
        all_ok &= ok
        if args.brief:
            if not ok:
                print(detail, flush=True)
        elif not ok or not args.quiet:
            print(
                f"{'ok  ' if ok else 'FAIL'} {name:<10} {targets()[name].address:<16} {detail}",
                flush=True,
            )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
