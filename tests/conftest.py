"""Shared fixtures: settings for the real stack, and a loud failure when it is not running."""

from __future__ import annotations

import socket

import pytest

from settle import config


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    return config.load()


def _reachable(host_port: str, timeout_s: float = 2.0) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def stack(settings: config.Settings) -> config.Settings:
    """The real stack. Integration tests fail (never skip) when it is down: run `make up`."""
    missing = []
    kafka = settings.kafka.bootstrap_servers.split(",")[0]
    if not _reachable(kafka):
        missing.append(f"Kafka at {kafka}")
    pg = f"{settings.postgres.host}:{settings.postgres.port}"
    if not _reachable(pg):
        missing.append(f"PostgreSQL at {pg}")
    reg = settings.registry.url.split("//", 1)[-1].split("/", 1)[0]
    if not _reachable(reg):
        missing.append(f"schema registry at {reg}")
    if missing:
        pytest.fail("the stack is not running (" + ", ".join(missing) + "): run `make up`")
    return settings
