"""Settings come from the environment with sane defaults, and secrets never print."""

import pytest

from infra.config import ConfigError, Secret, load
from infra.kafka import producer_config


def test_defaults_point_at_the_local_stack() -> None:
    s = load({})
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert s.registry.url == "http://127.0.0.1:18081/apis/ccompat/v7"
    assert s.postgres.port == 15432
    assert s.kafka.partitions == 4


def test_environment_overrides_every_address() -> None:
    s = load({
        "SETTLE_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "SETTLE_REGISTRY_URL": "https://reg.example/apis",
        "SETTLE_PG_HOST": "db", "SETTLE_PG_PORT": "5432",
        "SETTLE_TOPIC_PARTITIONS": "12",
    })
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.registry.url == "https://reg.example/apis"
    assert (s.postgres.host, s.postgres.port) == ("db", 5432)
    assert s.kafka.partitions == 12


@pytest.mark.parametrize(
    "name,value", [("SETTLE_PG_PORT", "abc"), ("SETTLE_TOPIC_PARTITIONS", "0"),
                   ("SETTLE_STAGE_LINGER_MS", "fast"), ("SETTLE_PRODUCER_LINGER_MS", "-1"),
                   ("SETTLE_STAGE_FETCH_MIN_BYTES", "0"), ("SETTLE_STAGE_FETCH_MAX_WAIT_MS", "-5")]
)
def test_malformed_settings_are_refused_with_the_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: value})


def test_secrets_are_masked_everywhere_but_reveal() -> None:
    s = load({"SETTLE_PG_PASSWORD": "hunter2", "SETTLE_KAFKA_SASL_PASSWORD": "s3cret",
              "SETTLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    printed = f"{s} {s!r} {s.masked()} {s.postgres.describe()}"
    assert "hunter2" not in printed and "s3cret" not in printed
    assert "hunter2" in s.postgres.conninfo()
    assert s.kafka.client_config()["sasl.password"] == "s3cret"
    assert str(Secret("x")) == "***" and Secret("x").reveal() == "x"


def test_compression_default_override_and_refusal() -> None:
    assert load({}).kafka.compression == "lz4"
    s = load({"SETTLE_KAFKA_COMPRESSION": " None "})
    assert s.kafka.compression == "none"
    assert producer_config(s.kafka, "t")["compression.type"] == "none"
    with pytest.raises(ConfigError, match="SETTLE_KAFKA_COMPRESSION='brotli'"):
        load({"SETTLE_KAFKA_COMPRESSION": "brotli"})


def test_lingers_default_and_override() -> None:
    assert (load({}).kafka.stage_linger_ms, load({}).kafka.producer_linger_ms) == (50, 25)
    s = load({"SETTLE_STAGE_LINGER_MS": "0", "SETTLE_PRODUCER_LINGER_MS": "5"})
    assert (s.kafka.stage_linger_ms, s.kafka.producer_linger_ms) == (0, 5)


def test_stage_commit_every_default_override_and_minimum() -> None:
    assert load({}).kafka.stage_commit_every == 1000
    assert load({"SETTLE_STAGE_COMMIT_EVERY": "50000"}).kafka.stage_commit_every == 50000
    with pytest.raises(ConfigError, match="SETTLE_STAGE_COMMIT_EVERY=0 is below its minimum 1"):
        load({"SETTLE_STAGE_COMMIT_EVERY": "0"})


def test_stage_fetch_default_and_override() -> None:
    d = load({}).kafka
    assert (d.stage_fetch_min_bytes, d.stage_fetch_max_wait_ms) == (65536, 25)
    s = load({"SETTLE_STAGE_FETCH_MIN_BYTES": "1", "SETTLE_STAGE_FETCH_MAX_WAIT_MS": "0"}).kafka
    assert (s.stage_fetch_min_bytes, s.stage_fetch_max_wait_ms) == (1, 0)
