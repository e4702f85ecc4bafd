"""Secrets come from the environment only and never show in reprs, logs or our errors."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from infra.config import ConfigError, PostgresSettings, Secret, Settings, load, safe_url
from sinks.errors import DatabaseUnavailable, MigrationError

PG = "pg-pw 4f1d 'q\\x"  # a space, a quote and a backslash: libpq quoting must hold
SASL = "sasl-pw-9c2e7b"
REG = "reg-pw-51aa0d"
SINK = "sink-pw-77e3c1"
API = "api-pw-3b90aa"
SECRETS = (PG, SASL, REG, SINK, API, "4f1d")  # "4f1d": a piece of PG after its space
ENV = {
    "SETTLE_PG_PASSWORD": PG,
    "SETTLE_SINK_PG_USER": "sink_login",
    "SETTLE_SINK_PG_PASSWORD": SINK,
    "SETTLE_API_PG_PASSWORD": API,
    "SETTLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SETTLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SETTLE_KAFKA_SASL_USERNAME": "client",
    "SETTLE_KAFKA_SASL_PASSWORD": SASL,
    "SETTLE_REGISTRY_USERNAME": "reg",
    "SETTLE_REGISTRY_PASSWORD": REG,
}


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secret(s) {leaked} in: {text}"


@pytest.fixture()
def settings() -> Settings:
    return load(ENV)


def test_settings_render_without_secrets(settings: Settings) -> None:
    rendered = [
        repr(settings), str(settings), f"{settings}", f"{settings!r}",
        "%s %r" % (settings, settings),  # noqa: UP031 - the old ways of formatting too
        "{}".format(settings),  # noqa: UP032
        repr(settings.masked()), json.dumps(settings.masked()),
        settings.postgres.describe(), settings.postgres.for_sinks().describe(),
        repr(settings.postgres.for_sinks()), repr(settings.kafka), repr(settings.registry),
        repr(settings.api), settings.api.postgres(settings.postgres).describe(),
    ]
    for text in rendered:
        assert_no_secret(text)
    masked = settings.masked()
    assert masked["postgres.password"] == masked["kafka.sasl_password"] == "***"
    assert masked["registry.password"] == masked["postgres.sink_password"] == "***"
    assert masked["api.pg_password"] == "***"


def test_the_secrets_are_there_for_the_clients(settings: Settings) -> None:
    """The masking tests above could pass by losing the values; they are not lost."""
    assert settings.kafka.client_config()["sasl.password"] == SASL
    assert settings.registry.password.reveal() == REG
    assert conninfo_to_dict(settings.postgres.conninfo())["password"] == PG
    sink = conninfo_to_dict(settings.postgres.for_sinks().conninfo())
    assert (sink["user"], sink["password"], sink["dbname"]) == ("sink_login", SINK, "settle")


def test_a_secret_is_not_a_string_that_can_slip_out() -> None:
    secret = Secret(SASL)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret:>20}",
                 "%s" % secret,  # noqa: UP031 - the old ways of formatting too
                 "{!r}".format(secret)):  # noqa: UP032
        assert SASL not in text
    value: Any = secret  # as untyped code would hold it
    for leak in (lambda: "x" + value, lambda: "".join([value]), lambda: json.dumps(value),
                 lambda: value.encode()):
        with pytest.raises((TypeError, AttributeError)):
            leak()
    assert Secret("") == Secret("") and not Secret("") and bool(secret)
    assert pickle.loads(pickle.dumps(secret)) == secret == copy.deepcopy(secret)
    assert secret != Secret("other")


def test_logging_settings_and_secrets(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("t-secrets")
    with caplog.at_level(logging.DEBUG, logger="t-secrets"):
        log.info("settings %s / %r", settings, settings)
        log.info(settings.kafka.sasl_password)
        log.warning("pg %s sink %s", settings.postgres.password, settings.postgres.sink_password)
        log.info("masked %s", settings.masked())
        try:
            raise ConfigError(f"bad settings: {settings.postgres}")
        except ConfigError:
            log.exception("config failed")
    assert len(caplog.records) == 5
    assert_no_secret(caplog.text)


def test_config_errors_do_not_quote_secrets() -> None:
    with pytest.raises(ConfigError) as failure:
        load({**ENV, "SETTLE_PG_PORT": "not-a-port"})
    assert "SETTLE_PG_PORT" in str(failure.value)
    assert_no_secret(str(failure.value))


def test_the_conninfo_quotes_every_value() -> None:
    """Unquoted, a password with a space made libpq's parser echo a piece of it back."""
    for password in (PG, "a b", "'", "\\", "x' host=evil", ""):
        pg = PostgresSettings(password=Secret(password), dbname="d b")
        parsed = conninfo_to_dict(pg.conninfo())
        assert (parsed["password"], parsed["dbname"], parsed["host"]) == (password, "d b",
                                                                          "127.0.0.1")


def test_a_connection_failure_names_the_server_not_the_password() -> None:
    """psycopg's own message for a refused connection, wrapped the way sinks/db.py does."""
    pg = load(ENV).postgres
    try:
        raise psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 15432 failed')
    except psycopg.OperationalError as exc:
        wrapped = DatabaseUnavailable(f"cannot connect to {pg.describe()}: {exc}")
    assert "127.0.0.1:15432" in str(wrapped)
    assert_no_secret(f"{wrapped} {wrapped!r} {MigrationError(str(wrapped))!r}")


def test_urls_with_user_info_are_masked() -> None:
    s = load({"SETTLE_REGISTRY_URL": f"https://reg:{REG}@registry.example/apis/ccompat/v7",
              "SETTLE_PROMETHEUS_URL": f"http://ops:{SASL}@prom.example:9090"})
    assert s.masked()["registry.url"] == "https://reg:***@registry.example/apis/ccompat/v7"
    assert s.masked()["prometheus_url"] == "http://ops:***@prom.example:9090"
    assert safe_url("http://127.0.0.1:18081/x") == "http://127.0.0.1:18081/x"
    assert_no_secret(repr(s.masked()))
