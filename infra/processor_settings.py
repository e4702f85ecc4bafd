"""The stream processors' part of the settings tree: stores, policies, routing, windows, fees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.paths import DEFAULT_RUN_DIR
from settlement.cases import DEFAULT_APPROVAL_ABOVE_MINOR, CaseError, CasePolicy
from settlement.currencies import is_known
from settlement.errors import SettleError
from settlement.fees import DEFAULT_FEE_SPEC, FeeSchedule
from settlement.idempotency import check_retention
from settlement.reconciliation import ReconError, ReconPolicy
from settlement.refunds import RefundError, RefundPolicy
from settlement.routing import (
    DEFAULT_RULES,
    RoutingTable,
    disabled_channels_from_env_value,
    routing_table_from_spec,
)
from settlement.validation import DEFAULT_MAX_AGE_MS, ValidationPolicy
from settlement.windows import (
    DEFAULT_GRACE_SECONDS,
    SECONDS_PER_DAY,
    SHANGHAI_MIDNIGHT_ORIGIN_MS,
    WindowError,
    WindowPolicy,
)

DAY_MS = 24 * 3600 * 1000
DEFAULT_RECON_SLA_MS = 30_000
DEFAULT_ORPHAN_GRACE_MS = 30_000
DEFAULT_RECON_RETAIN_MS = 10 * 60 * 1000
DEFAULT_RECON_POLICY = ReconPolicy(
    {}, DEFAULT_RECON_SLA_MS, DEFAULT_ORPHAN_GRACE_MS, DEFAULT_RECON_RETAIN_MS
)
DEFAULT_FEES = FeeSchedule.from_spec(DEFAULT_FEE_SPEC)
DEFAULT_WINDOWS = WindowPolicy.daily_shanghai()
# Currencies whose minor unit is worth far more (KWD: 1/1000 dinar) or far less (JPY has no
# minor unit) than a cent need their own approval limits.
DEFAULT_CASE_APPROVAL_BY_CURRENCY = "JPY=100000,KWD=300000"


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
    # How long the group coordinator waits for a silent member (a SIGKILLed worker, a frozen
    # host) before it hands that member's partitions to the others: they stall that long.
    session_timeout_s: float = 60.0
    # reconcile + settle stages
    recon: ReconPolicy = DEFAULT_RECON_POLICY
    # Refund limits, the SLA of a channel's refund answer and the fee given back, per channel.
    refunds: RefundPolicy = RefundPolicy()
    # Exception cases: which resolutions wait for a second operator, how long resolved ones stay.
    cases: CasePolicy = CasePolicy(
        approval_above_minor_by_currency={"JPY": 100_000, "KWD": 300_000},
        retain_ms=DEFAULT_RECON_RETAIN_MS)
    fees: FeeSchedule = DEFAULT_FEES
    windows: WindowPolicy = DEFAULT_WINDOWS
    tick_interval_s: float = 1.0
    # Payment ids of a key's last N closed batches are remembered (at most ids_max), so an
    # item replayed after its batch closed is not settled again in a later window.
    batched_ids_windows: int = 4
    batched_ids_max: int = 100_000
    # A merchant+currency with no open batch is forgotten this long after its last close.
    settle_idle_evict_ms: int = DAY_MS


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


def session_timeout_ms(env: Mapping[str, str]) -> int | None:
    """SETTLE_SESSION_TIMEOUT_MS, None when unset (faust stages then wait 60 s, sinks
    librdkafka's 45 s)."""
    if env.get("SETTLE_SESSION_TIMEOUT_MS", "") == "":
        return None
    return _int(env, "SETTLE_SESSION_TIMEOUT_MS", 60_000)


def load(env: Mapping[str, str], run_dir: Path | None = None, metrics_port: int = 0,
         topic_prefix: str | None = None, fees: FeeSchedule | None = None,
         session_timeout: int | str | None = "parse") -> ProcessorSettings:
    """The processor part, from `env`; infra.config.load passes what it parsed itself
    (run_dir, metrics port, topic prefix, fees, session timeout: "parse" reads it here) so
    that no variable is parsed twice."""
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
    try:
        # A request older than max_age (+ skew) is rejected anyway; forgetting a payment_id
        # sooner than that would let an identical re-send through as new.
        check_retention(retention, policy)
    except SettleError as exc:
        raise ProcessorConfigError(f"SETTLE_DEDUP_RETENTION_MS={retention}: {exc}") from exc
    timeout_ms = (session_timeout_ms(env) if isinstance(session_timeout, str)
                  else session_timeout)
    base = run_dir or DEFAULT_RUN_DIR  # SETTLE_RUN_DIR is infra.config's
    return ProcessorSettings(
        store=env.get("SETTLE_FAUST_STORE", "memory://"),
        data_dir=Path(env.get("SETTLE_FAUST_DATA_DIR", str(base / "faust"))),
        web_port=_int(env, "SETTLE_FAUST_WEB_PORT", 0),
        metrics_port=metrics_port,
        topic_prefix=env.get("SETTLE_TOPIC_PREFIX", "") if topic_prefix is None else topic_prefix,
        disabled_channels=disabled_channels_from_env_value(env.get("SETTLE_DISABLED_CHANNELS")),
        routing=routing,
        policy=policy,
        dedup_retention_ms=retention,
        merchants_wait_s=float(_int(env, "SETTLE_MERCHANTS_WAIT_S", 60)),
        session_timeout_s=(timeout_ms if timeout_ms is not None else 60_000) / 1000,
        **_stage_settings(env, fees),  # type: ignore[arg-type]
    )


def load_fees(env: Mapping[str, str]) -> FeeSchedule:
    """SETTLE_FEES: reconcile computes each MATCHED payment's fee with it, and the ledger
    sink posts a result that carries no fee split with it."""
    try:
        return FeeSchedule.from_spec(env.get("SETTLE_FEES", "") or DEFAULT_FEE_SPEC)
    except ValueError as exc:
        raise ProcessorConfigError(f"SETTLE_FEES: {exc}") from exc


def _stage_settings(env: Mapping[str, str], fees: FeeSchedule | None) -> dict[str, object]:
    """The reconcile and settle stages' settings (SLAs, fees, windows, bounds)."""
    try:
        recon = ReconPolicy(
            sla_ms_by_channel=_channel_ints(env.get("SETTLE_RECON_SLA_BY_CHANNEL", "")),
            default_sla_ms=_int(env, "SETTLE_RECON_SLA_MS", DEFAULT_RECON_SLA_MS),
            orphan_grace_ms=_int(env, "SETTLE_ORPHAN_GRACE_MS", DEFAULT_ORPHAN_GRACE_MS),
            retain_decided_ms=_int(env, "SETTLE_RECON_RETAIN_MS", DEFAULT_RECON_RETAIN_MS),
        )
        refunds = RefundPolicy(
            max_refunds=_int(env, "SETTLE_REFUND_MAX_COUNT", 50),
            max_age_ms=_int(env, "SETTLE_REFUND_MAX_AGE_DAYS", 365) * DAY_MS,
            sla_ms=_int(env, "SETTLE_REFUND_SLA_MS", recon.default_sla_ms),
            fee_policy=(env.get("SETTLE_REFUND_FEE_POLICY") or "proportional").strip().lower(),
            max_refunds_by_channel=_by_channel(env, "SETTLE_REFUND_MAX_COUNT_BY_CHANNEL", int),
            max_age_ms_by_channel={
                ch: days * DAY_MS for ch, days in
                _by_channel(env, "SETTLE_REFUND_MAX_AGE_DAYS_BY_CHANNEL", int).items()},
            sla_ms_by_channel=_by_channel(env, "SETTLE_REFUND_SLA_BY_CHANNEL", int),
            fee_policy_by_channel={
                ch: v.lower() for ch, v in
                _by_channel(env, "SETTLE_REFUND_FEE_POLICY_BY_CHANNEL", str).items()},
            retain_ms=recon.retain_decided_ms,
        )
        cases = _case_policy(env, recon.retain_decided_ms)
        windows = WindowPolicy(
            _int(env, "SETTLE_WINDOW_SECONDS", SECONDS_PER_DAY),
            _int(env, "SETTLE_WINDOW_GRACE_SECONDS", DEFAULT_GRACE_SECONDS),
            SHANGHAI_MIDNIGHT_ORIGIN_MS,
        )
    except (ReconError, RefundError, WindowError, ValueError) as exc:
        raise ProcessorConfigError(str(exc)) from exc
    if fees is None:
        fees = load_fees(env)
    tick_ms = _int(env, "SETTLE_TICK_INTERVAL_MS", 1000)
    bounds = {
        "SETTLE_TICK_INTERVAL_MS": tick_ms,
        "SETTLE_BATCHED_IDS_WINDOWS": _int(env, "SETTLE_BATCHED_IDS_WINDOWS", 4),
        "SETTLE_BATCHED_IDS_MAX": _int(env, "SETTLE_BATCHED_IDS_MAX", 100_000),
        "SETTLE_SETTLE_IDLE_EVICT_MS": _int(env, "SETTLE_SETTLE_IDLE_EVICT_MS", DAY_MS),
    }
    for name, value in bounds.items():
        if value <= 0:
            raise ProcessorConfigError(f"{name}={value} must be > 0")
    return {
        "recon": recon,
        "refunds": refunds,
        "cases": cases,
        "fees": fees,
        "windows": windows,
        "tick_interval_s": tick_ms / 1000,
        "batched_ids_windows": bounds["SETTLE_BATCHED_IDS_WINDOWS"],
        "batched_ids_max": bounds["SETTLE_BATCHED_IDS_MAX"],
        "settle_idle_evict_ms": bounds["SETTLE_SETTLE_IDLE_EVICT_MS"],
    }


def _channel_ints(raw: str) -> dict[str, int]:
    """`card=60000,alipay=20000` -> {"card": 60000, "alipay": 20000} (channels lower-case)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        channel, sep, val = (x.strip() for x in part.partition("="))
        if not sep or not channel:
            raise ProcessorConfigError(f"SETTLE_RECON_SLA_BY_CHANNEL: {part!r} is not channel=ms")
        try:
            out[channel.lower()] = int(val)
        except ValueError as exc:
            raise ProcessorConfigError(
                f"SETTLE_RECON_SLA_BY_CHANNEL: {val!r} is not an integer"
            ) from exc
    return out


def _by_channel(env: Mapping[str, str], name: str, kind: type) -> dict[str, Any]:
    """`card=keep,alipay=proportional` -> {"card": "keep", ...} (channels lower-case)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in env.get(name, "").split(","))):
        channel, sep, val = (x.strip() for x in part.partition("="))
        if not sep or not channel:
            raise ProcessorConfigError(f"{name}: {part!r} is not channel=value")
        try:
            out[channel.lower()] = kind(val)
        except ValueError as exc:
            raise ProcessorConfigError(f"{name}: {val!r} is not {kind.__name__}") from exc
    return out


def _case_policy(env: Mapping[str, str], retain_ms: int) -> CasePolicy:
    """SETTLE_CASE_APPROVAL_ABOVE_MINOR (default 1,000,000) and, per currency,
    SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY (default JPY=100000,KWD=300000): a case
    resolution whose amount is above its currency's limit waits for a second operator."""
    limit = _int(env, "SETTLE_CASE_APPROVAL_ABOVE_MINOR", DEFAULT_APPROVAL_ABOVE_MINOR)
    if limit < 0:
        raise ProcessorConfigError(f"SETTLE_CASE_APPROVAL_ABOVE_MINOR={limit} must be >= 0 "
                                   "(minor units; 0: every resolution needs approval)")
    by_currency = _currency_ints(env, "SETTLE_CASE_APPROVAL_ABOVE_MINOR_BY_CURRENCY",
                                 DEFAULT_CASE_APPROVAL_BY_CURRENCY)
    try:
        return CasePolicy(limit, by_currency, retain_ms)
    except CaseError as exc:
        raise ProcessorConfigError(f"SETTLE_CASE_APPROVAL_ABOVE_MINOR: {exc}") from exc


def _currency_ints(env: Mapping[str, str], name: str, default: str) -> dict[str, int]:
    """`JPY=100000,KWD=300000` -> {"JPY": 100000, "KWD": 300000} (currencies upper-case);
    unset: `default`, set to "": none."""
    raw = env.get(name)
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (default if raw is None else raw).split(","))):
        currency, sep, val = (x.strip() for x in part.partition("="))
        if not sep or not currency:
            raise ProcessorConfigError(f"{name}: {part!r} is not CURRENCY=minor_units "
                                       "(e.g. JPY=100000,KWD=300000)")
        code = currency.upper()
        if not is_known(code):
            raise ProcessorConfigError(f"{name}: {currency!r} is not an active ISO 4217 code")
        try:
            out[code] = int(val)
        except ValueError as exc:
            raise ProcessorConfigError(f"{name}: {val!r} (for {code}) is not an integer "
                                       "count of minor units") from exc
        if out[code] < 0:
            raise ProcessorConfigError(f"{name}: {code}={out[code]} must be >= 0")
    return out
