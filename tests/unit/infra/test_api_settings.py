"""The API's settings: defaults for the local stack, overrides, errors naming the variable."""

from __future__ import annotations

import pytest

from infra.config import CUTOFF_ZONE, ConfigError, load


def test_defaults() -> None:
    api = load({}).api
    assert (api.host, api.port) == ("127.0.0.1", 18000)
    assert api.statement_timeout_ms == 5000
    assert api.pool_max == 10
    assert api.key_cache_s == 5
    assert api.pg_user == "settle_api"
    assert api.pg_password.reveal() == "settle-api-local"
    assert api.report_tz == CUTOFF_ZONE == "Asia/Shanghai"


def test_overrides() -> None:
    api = load({"SETTLE_API_HOST": "0.0.0.0", "SETTLE_API_PORT": "8080",
                "SETTLE_API_STATEMENT_TIMEOUT_MS": "250", "SETTLE_API_POOL_MAX": "3",
                "SETTLE_API_KEY_CACHE_S": "0", "SETTLE_API_PG_USER": "reader_api",
                "SETTLE_API_PG_PASSWORD": "pw", "SETTLE_API_REPORT_TZ": "Europe/Paris",
                "SETTLE_API_EXPORT_TIMEOUT_MS": "1000"}).api
    assert (api.host, api.port, api.statement_timeout_ms, api.pool_max) == (
        "0.0.0.0", 8080, 250, 3)
    assert (api.key_cache_s, api.pg_user, api.report_tz, api.export_timeout_ms) == (
        0, "reader_api", "Europe/Paris", 1000)


def test_the_api_login_replaces_the_owner_on_the_same_database() -> None:
    settings = load({"SETTLE_PG_DB": "books", "SETTLE_API_PG_USER": "api_login"})
    pg = settings.api.postgres(settings.postgres)
    assert (pg.user, pg.dbname, pg.host, pg.port) == (
        "api_login", "books", settings.postgres.host, settings.postgres.port)
    assert pg.password == settings.api.pg_password


@pytest.mark.parametrize(("name", "value"), [
    ("SETTLE_API_PORT", "http"), ("SETTLE_API_PORT", "0"), ("SETTLE_API_POOL_MAX", "0"),
    ("SETTLE_API_STATEMENT_TIMEOUT_MS", "-5"), ("SETTLE_API_KEY_CACHE_S", "-1"),
    ("SETTLE_API_REPORT_TZ", "Mars/Olympus"), ("SETTLE_API_REPORT_TZ", "../etc/passwd")])
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: value})
