"""Stream-processor settings from the environment: stores, ports, policies, routing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from settlement.errors import SettleError
from settlement.routing import (
    DEFAULT_RULES,
    RoutingTable,
    disabled_channels_from_env_value,
    routing_table_from_spec,
)
from settlement.validation import DEFAULT_MAX_AGE_MS, ValidationPolicy

DAY_MS = 24 * 3600 * 1000


class ProcessorConfigError(SettleError):
    """A stream-processor setting is malformed."""


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    store: str = "memory://"
    data_dir: Path = Path(".run/faust")
    web_port: int = 0  # 0: no faust web server
    metrics_port: int = 0
    topic_prefix: str = ""
    disabled_channels: frozenset[str] = frozenset()
    routing: RoutingTable = RoutingTable(DEFAULT_RULES)
    policy: ValidationPolicy = ValidationPolicy()
    dedup_retention_ms: int = DEFAULT_MAX_AGE_MS + DAY_MS
    merchants_wait_s: float = 60.0


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ProcessorConfigError(f"{name}={raw!r} is not an integer") from exc


def _limits(raw: str) -> dict[str, int]:
    """`CNY=1000000000,JPY=100000000` -> per-currency limits in minor units."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        cur, sep, val = part.partition("=")
        if not sep:
            raise ProcessorConfigError(f"SETTLE_AMOUNT_LIMITS: {part!r} is not CUR=minor_units")
        try:
            out[cur.strip().upper()] = int(val)
        except ValueError as exc:
            raise ProcessorConfigError(f"SETTLE_AMOUNT_LIMITS: {val!r} is not an integer") from exc
    return out


def load(env: Mapping[str, str] | None = None, run_dir: Path | None = None) -> ProcessorSettings:
    env = os.environ if env is None else env
    rules_file = env.get("SETTLE_ROUTING_RULES_FILE", "")
    routing = (
        routing_table_from_spec(Path(rules_file).read_text("utf-8"))
        if rules_file else RoutingTable(DEFAULT_RULES)
    )
    max_age = _int(env, "SETTLE_MAX_AGE_MS", DEFAULT_MAX_AGE_MS)
    policy = ValidationPolicy(
        amount_limits_minor=_limits(env.get("SETTLE_AMOUNT_LIMITS", "")),
        max_age_ms=max_age,
        max_future_skew_ms=_int(env, "SETTLE_MAX_FUTURE_SKEW_MS", 5 * 60 * 1000),
    )
    retention = _int(env, "SETTLE_DEDUP_RETENTION_MS", max_age + DAY_MS)
    if retention < max_age:
        # A request older than max_age is rejected anyway; forgetting a payment_id sooner
        # than that would let an identical re-send through as new.
        raise ProcessorConfigError(
            f"SETTLE_DEDUP_RETENTION_MS={retention} must be >= SETTLE_MAX_AGE_MS={max_age}"
        )
    base = run_dir or Path(env.get("SETTLE_RUN_DIR", ".run"))
    return ProcessorSettings(
        store=env.get("SETTLE_FAUST_STORE", "memory://"),
        data_dir=Path(env.get("SETTLE_FAUST_DATA_DIR", str(base / "faust"))),
        web_port=_int(env, "SETTLE_FAUST_WEB_PORT", 0),
        metrics_port=_int(env, "SETTLE_METRICS_PORT", 0),
        topic_prefix=env.get("SETTLE_TOPIC_PREFIX", ""),
        disabled_channels=disabled_channels_from_env_value(env.get("SETTLE_DISABLED_CHANNELS")),
        routing=routing,
        policy=policy,
        dedup_retention_ms=retention,
        merchants_wait_s=float(_int(env, "SETTLE_MERCHANTS_WAIT_S", 60)),
    )
