"""One frozen, typed settings tree read from the environment, with secrets masked.

Every SETTLE_* variable is parsed here (or by a part's loader this module calls), once per
`load()`; each process takes its part of the tree: `kafka`, `registry`, `postgres`,
`signing`, `runtime` (run folder, /metrics, event loop, GC, stall probe), `processor` (the
faust stages), `sink` (the PostgreSQL writers), `monitor` and `api` (the read-only HTTP
API). An error names the variable.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from infra import gc_tuning
from infra.paths import REPO_ROOT
from infra.processor_settings import ProcessorSettings, load_fees, session_timeout_ms
from infra.processor_settings import load as load_processor
from infra.runtime import MonitorSettings, RuntimeSettings, load_monitor, load_runtime
from settlement.errors import SettleError
from settlement.fees import FeeSchedule

__all__ = ["REPO_ROOT"]  # re-exported: tests and tooling find the repository through it

ENV_PREFIX = "SETTLE_"


class ConfigError(SettleError):
    """A setting from the environment is malformed."""


class Secret:
    """A secret string: repr, str and format never show it; reveal() is the only way out.

    Deliberately not a ``str`` subclass: a str's value escapes through concatenation, join,
    slicing, ``.encode()`` and ``json.dumps``, which never call ``__str__``. Here those are
    TypeErrors instead of leaks.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def safe_url(url: str) -> str:
    """The URL with the password of its user info (https://user:pw@host) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _libpq_quote(value: str) -> str:
    """A conninfo value in single quotes, with backslashes and quotes escaped (libpq rules)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(ENV_PREFIX + name, default)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _env(env, name, str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name}={value} is below its minimum {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(env, name, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{ENV_PREFIX}{name}={value!r}: expected one of {', '.join(choices)}")
    return value


# Compression codecs both clients (librdkafka and aiokafka) can write.
COMPRESSIONS = ("none", "lz4", "zstd", "gzip")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Kafka client settings shared by producers, the faust app and the sinks."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: Secret = Secret("")
    ssl_ca_location: str = ""
    # Every payment-keyed topic has this many partitions, so they stay co-partitioned.
    partitions: int = 4
    replication_factor: int = 1
    client_id_prefix: str = "settle"
    # A record of an AvroProducer still queued this long while every partition of its topic
    # has a leader is stuck (librdkafka can keep a partition leaderless after a broker
    # restart): the producer is replaced and the record sent again (producers.producer).
    producer_stall_s: float = 20.0
    # How long a producer holds a record to fill a batch: fewer, larger produce requests cost
    # the broker and the client less CPU per record, and add up to this much latency per hop.
    # librdkafka producers (ingest, channel simulator, load generators):
    producer_linger_ms: int = 25
    # faust stages (their outputs and their tables' changelogs, through aiokafka):
    stage_linger_ms: int = 50
    # How long the broker may hold a faust stage's fetch to gather this many bytes: at a
    # trickle each fetch then carries several records instead of one (stream_processors.
    # consumer_fetch); adds up to the wait per hop, nothing with a backlog.
    stage_fetch_min_bytes: int = 65536
    stage_fetch_max_wait_ms: int = 25
    # A faust stage commits its consumed offsets every this many records, inside its fetch
    # loop (no record is handed over meanwhile), besides every second on a timer.
    stage_commit_every: int = 1000
    # Compression of every produced batch (COMPRESSIONS).
    compression: str = "lz4"

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings common to every client; secrets revealed only here."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.reveal()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Schema registry (Confluent-compatible API) settings."""

    url: str = "http://127.0.0.1:18081/apis/ccompat/v7"
    username: str = ""
    password: Secret = Secret("")


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """PostgreSQL connection settings; the DSN is assembled so the password stays masked."""

    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "settle"
    password: Secret = Secret("settle-local")
    dbname: str = "settle"
    # The sinks' own login (a member of settle_writer), when it differs from the owner's above,
    # which runs the migrations; empty: the sinks use user/password too.
    sink_user: str = ""
    sink_password: Secret = Secret("")

    def conninfo(self) -> str:
        """A libpq connection string; reveals the password, so never log it.

        Every value is quoted: pasted into the string as it is, a password with a space made
        libpq's parser quote a piece of it back in its error message.
        """
        return " ".join(
            f"{key}={_libpq_quote(str(value))}"
            for key, value in (
                ("host", self.host),
                ("port", self.port),
                ("user", self.user),
                ("password", self.password.reveal()),
                ("dbname", self.dbname),
            )
        )

    def describe(self) -> str:
        return f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.dbname}"

    def for_sinks(self) -> PostgresSettings:
        """The settings a sink connects with: its writer login if one is set."""
        if not self.sink_user:
            return self
        return replace(self, user=self.sink_user, password=self.sink_password,
                       sink_user="", sink_password=Secret(""))


SIGNATURES_REQUIRED = "required"
SIGNATURES_OFF = "off"
SIGNATURE_MODES = (SIGNATURES_REQUIRED, SIGNATURES_OFF)


@dataclass(frozen=True, slots=True)
class SigningSettings:
    """Merchant request signatures: enforcement mode and where the keyring file lives."""

    mode: str = SIGNATURES_REQUIRED
    # None: not configured (`settle keys init` creates one; the demo and e2e make their own).
    keyring_path: Path | None = None

    @property
    def required(self) -> bool:
        return self.mode == SIGNATURES_REQUIRED


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """The PostgreSQL writers' part: the fee schedule for results without a fee split."""

    fees: FeeSchedule = field(default_factory=lambda: load_fees({}))


# The settlement cut-off zone: the daily windows close at midnight Asia/Shanghai
# (settlement.windows.SHANGHAI_MIDNIGHT_ORIGIN_MS); reports group days in it by default.
CUTOFF_ZONE = "Asia/Shanghai"


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The read-only HTTP API (`settle api serve`): address, its PostgreSQL login, limits."""

    host: str = "127.0.0.1"
    port: int = 18000
    # Every statement of a request is cancelled after this long (the pool's `options`).
    statement_timeout_ms: int = 5000
    # A CSV export streams the whole filtered list: its COPY may run this long.
    export_timeout_ms: int = 600_000
    pool_max: int = 10
    # A key found valid is trusted this long without a lookup: a revocation takes effect
    # within it. 0: every request looks its key up.
    key_cache_s: int = 5
    # The API's login: a member of settle_api_reader (row-level security applies to it),
    # created or updated by `settle db migrate` when the owner may create roles.
    pg_user: str = "settle_api"
    pg_password: Secret = Secret("settle-api-local")
    # Day boundaries of reports when the caller names no zone.
    report_tz: str = CUTOFF_ZONE

    def postgres(self, owner: PostgresSettings) -> PostgresSettings:
        """The owner's connection settings with the API's login instead."""
        return replace(owner, user=self.pg_user, password=self.pg_password,
                       sink_user="", sink_password=Secret(""))


def _zone(env: Mapping[str, str], name: str, default: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    value = _env(env, name, default).strip()
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{ENV_PREFIX}{name}={value!r} is not an IANA time zone") from exc
    return value


def load_api(env: Mapping[str, str]) -> ApiSettings:
    return ApiSettings(
        host=_env(env, "API_HOST", "127.0.0.1"),
        port=_int(env, "API_PORT", 18000, 1),
        statement_timeout_ms=_int(env, "API_STATEMENT_TIMEOUT_MS", 5000, 1),
        export_timeout_ms=_int(env, "API_EXPORT_TIMEOUT_MS", 600_000, 1),
        pool_max=_int(env, "API_POOL_MAX", 10, 1),
        key_cache_s=_int(env, "API_KEY_CACHE_S", 5, 0),
        pg_user=_env(env, "API_PG_USER", "settle_api"),
        pg_password=Secret(_env(env, "API_PG_PASSWORD", "settle-api-local")),
        report_tz=_zone(env, "API_REPORT_TZ", CUTOFF_ZONE),
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process of the pipeline needs to know about its surroundings."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    prometheus_url: str = "http://127.0.0.1:19090"
    signing: SigningSettings = field(default_factory=SigningSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    processor: ProcessorSettings = field(default_factory=ProcessorSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    # Who acts in `settle cases` (SETTLE_OPERATOR), recorded on every case action; empty:
    # each command must name one with --operator.
    operator: str = ""

    @property
    def run_dir(self) -> Path:
        return self.runtime.run_dir

    @property
    def metrics_port(self) -> int:
        return self.runtime.metrics_port

    def masked(self) -> dict[str, Any]:
        """The whole tree as `part.name -> printable value`; secrets appear as ***."""
        out: dict[str, Any] = {}
        _flatten(self, "", out)
        # A URL may carry credentials of its own (https://user:pw@host).
        out["registry.url"] = safe_url(self.registry.url)
        out["prometheus_url"] = safe_url(self.prometheus_url)
        return out


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Dataclasses become dotted keys; anything else its printable form (Secret masks)."""
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        for f in fields(value):
            _flatten(getattr(value, f.name), f"{prefix}{f.name}.", out)
        return
    out[prefix.rstrip(".")] = _printable(value)


def _printable(value: Any) -> str:
    if isinstance(value, Secret | Path | str | int | float | bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, frozenset | set):
        return ",".join(sorted(map(str, value)))
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, FeeSchedule):
        return value.to_spec()
    rules = getattr(value, "rules", None)
    if rules is not None:  # a routing table
        return f"{len(rules)} rules"
    return repr(value)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment (``SETTLE_*``), defaulting to the local stack."""
    env = os.environ if env is None else env
    kafka_port = _int(env, "KAFKA_PORT", 19092, 1)
    kafka = KafkaSettings(
        bootstrap_servers=_env(env, "KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}"),
        security_protocol=_env(env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        sasl_mechanism=_env(env, "KAFKA_SASL_MECHANISM", ""),
        sasl_username=_env(env, "KAFKA_SASL_USERNAME", ""),
        sasl_password=Secret(_env(env, "KAFKA_SASL_PASSWORD", "")),
        ssl_ca_location=_env(env, "KAFKA_SSL_CA_LOCATION", ""),
        partitions=_int(env, "TOPIC_PARTITIONS", 4, 1),
        replication_factor=_int(env, "TOPIC_REPLICATION_FACTOR", 1, 1),
        client_id_prefix=_env(env, "CLIENT_ID_PREFIX", "settle"),
        producer_stall_s=float(_int(env, "PRODUCER_STALL_S", 20, 1)),
        producer_linger_ms=_int(env, "PRODUCER_LINGER_MS", 25, 0),
        stage_linger_ms=_int(env, "STAGE_LINGER_MS", 50, 0),
        stage_fetch_min_bytes=_int(env, "STAGE_FETCH_MIN_BYTES", 65536, 1),
        stage_fetch_max_wait_ms=_int(env, "STAGE_FETCH_MAX_WAIT_MS", 25, 0),
        stage_commit_every=_int(env, "STAGE_COMMIT_EVERY", 1000, 1),
        compression=_choice(env, "KAFKA_COMPRESSION", "lz4", COMPRESSIONS),
    )
    registry_port = _int(env, "REGISTRY_PORT", 18081, 1)
    registry = RegistrySettings(
        url=_env(env, "REGISTRY_URL", f"http://127.0.0.1:{registry_port}/apis/ccompat/v7"),
        username=_env(env, "REGISTRY_USERNAME", ""),
        password=Secret(_env(env, "REGISTRY_PASSWORD", "")),
    )
    postgres = PostgresSettings(
        host=_env(env, "PG_HOST", "127.0.0.1"),
        port=_int(env, "PG_PORT", 15432, 1),
        user=_env(env, "PG_USER", "settle"),
        password=Secret(_env(env, "PG_PASSWORD", "settle-local")),
        dbname=_env(env, "PG_DB", "settle"),
        sink_user=_env(env, "SINK_PG_USER", ""),
        sink_password=Secret(_env(env, "SINK_PG_PASSWORD", "")),
    )
    prom_port = _int(env, "PROMETHEUS_PORT", 19090, 1)
    run_dir = Path(_env(env, "RUN_DIR", str(REPO_ROOT / ".run")))
    metrics_port = _int(env, "METRICS_PORT", 0)
    runtime = load_runtime(env, run_dir, metrics_port, gc_tuning.load(env),
                           session_timeout_ms(env))
    fees = load_fees(env)
    mode = _env(env, "SIGNATURES", SIGNATURES_REQUIRED).strip().lower()
    if mode not in SIGNATURE_MODES:
        raise ConfigError(f"{ENV_PREFIX}SIGNATURES={mode!r} is not one of {SIGNATURE_MODES}")
    keyring = _env(env, "SIGNING_KEYRING", "").strip()
    return Settings(
        kafka=kafka,
        registry=registry,
        postgres=postgres,
        prometheus_url=_env(env, "PROMETHEUS_URL", f"http://127.0.0.1:{prom_port}"),
        signing=SigningSettings(mode=mode, keyring_path=Path(keyring) if keyring else None),
        runtime=runtime,
        processor=load_processor(env, run_dir=run_dir, metrics_port=metrics_port,
                                 topic_prefix=runtime.topic_prefix, fees=fees,
                                 session_timeout=runtime.session_timeout_ms),
        sink=SinkSettings(fees=fees),
        monitor=load_monitor(env),
        api=load_api(env),
        operator=_env(env, "OPERATOR", "").strip(),
    )
