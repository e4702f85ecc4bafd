"""One frozen, typed settings object read from the environment, with secrets masked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from settlement.errors import SettleError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "SETTLE_"


class ConfigError(SettleError):
    """A setting from the environment is malformed."""


class Secret(str):
    """A string whose repr and str never show its value, so it can't leak into logs."""

    def reveal(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return "Secret('***')" if self.reveal() else "Secret('')"

    def __str__(self) -> str:
        return "***" if self.reveal() else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


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

    def conninfo(self) -> str:
        """A libpq connection string; reveals the password, so never log it."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password.reveal()} dbname={self.dbname}"
        )

    def describe(self) -> str:
        return f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process of the pipeline needs to know about its surroundings."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    prometheus_url: str = "http://127.0.0.1:19090"
    run_dir: Path = REPO_ROOT / ".run"
    metrics_port: int = 0  # 0: do not serve /metrics

    def masked(self) -> dict[str, Any]:
        """A printable view of the settings; secrets appear as ***."""
        out: dict[str, Any] = {}
        for group in (self.kafka, self.registry, self.postgres):
            name = type(group).__name__.removesuffix("Settings").lower()
            for f in fields(group):
                out[f"{name}.{f.name}"] = str(getattr(group, f.name))
        out["prometheus_url"] = self.prometheus_url
        out["run_dir"] = str(self.run_dir)
        out["metrics_port"] = self.metrics_port
        return out


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
    )
    prom_port = _int(env, "PROMETHEUS_PORT", 19090, 1)
    return Settings(
        kafka=kafka,
        registry=registry,
        postgres=postgres,
        prometheus_url=_env(env, "PROMETHEUS_URL", f"http://127.0.0.1:{prom_port}"),
        run_dir=Path(_env(env, "RUN_DIR", str(REPO_ROOT / ".run"))),
        metrics_port=_int(env, "METRICS_PORT", 0),
    )
