"""Kafka with SCRAM-SHA-512 on the local broker: SASL_PLAINTEXT, and SASL_SSL with its local CA.

The stack's listeners (deploy/stack.sh: SETTLE_KAFKA_SASL_PORT, default 19094, and
SETTLE_KAFKA_TLS_PORT, default 19095), its user (SETTLE_KAFKA_SASL_LOCAL_USER / _PASSWORD,
defaults settle-client / settle-local-sasl) and its CA (<run dir>/kafka/tls/ca.pem, or
SETTLE_KAFKA_TLS_CA) are read from the same settings as the stack script. Every client is
built by the project's own helpers from SETTLE_KAFKA_* settings: infra.kafka for
librdkafka, the faust app's broker_credentials (mapped to aiokafka by faust's own driver code)
for the stream processors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import KafkaError, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from infra import config
from infra.admin import create_topics, delete_topics
from infra.kafka import make_consumer, make_producer
from infra.processor_settings import ProcessorSettings
from schemas.topics import DAY_MS, TopicSpec
from stream_processors.app import base_app

pytestmark = pytest.mark.integration

SASL_PORT = int(os.environ.get("SETTLE_KAFKA_SASL_PORT", "19094"))
TLS_PORT = int(os.environ.get("SETTLE_KAFKA_TLS_PORT", "19095"))
SASL_USER = os.environ.get("SETTLE_KAFKA_SASL_LOCAL_USER", "settle-client")
SASL_PASSWORD = os.environ.get("SETTLE_KAFKA_SASL_LOCAL_PASSWORD", "settle-local-sasl")
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"  # distinctive: any trace of it is a leak
WAIT_S = 30.0  # a bound for failing, not a speed assertion


def sasl_settings(password: str, **env: str) -> config.Settings:
    """Settings as a client process would read them from its environment."""
    return config.load({
        **os.environ,
        "SETTLE_KAFKA_BOOTSTRAP": f"127.0.0.1:{SASL_PORT}",
        "SETTLE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SETTLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SETTLE_KAFKA_SASL_USERNAME": SASL_USER,
        "SETTLE_KAFKA_SASL_PASSWORD": password,
        **env,
    })


def require_listener(port: int) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(f"no Kafka listener on 127.0.0.1:{port}: restart the stack with this "
                    "deploy/ configuration (stack.sh down, then up)")


@pytest.fixture(scope="module")
def sasl(stack: config.Settings) -> config.Settings:
    require_listener(SASL_PORT)
    return sasl_settings(SASL_PASSWORD)


@pytest.fixture(scope="module")
def tls_ca(stack: config.Settings) -> str:
    require_listener(TLS_PORT)
    ca = os.environ.get("SETTLE_KAFKA_TLS_CA") or str(stack.run_dir / "kafka" / "tls" / "ca.pem")
    if not Path(ca).is_file():
        pytest.fail(f"no CA file {ca}: set SETTLE_KAFKA_TLS_CA to the stack's kafka/tls/ca.pem")
    return ca


def tls_settings(ca: str) -> config.Settings:
    return sasl_settings(SASL_PASSWORD, SETTLE_KAFKA_BOOTSTRAP=f"127.0.0.1:{TLS_PORT}",
                         SETTLE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                         SETTLE_KAFKA_SSL_CA_LOCATION=ca)


@pytest.fixture()
def topic(sasl: config.Settings) -> Iterator[str]:
    """A one-partition topic, created and deleted over the SASL listener."""
    name = f"t-sasl-{uuid.uuid4().hex[:10]}"
    create_topics(sasl.kafka, [TopicSpec(name, DAY_MS, partitions_override=1)])
    yield name
    delete_topics(sasl.kafka, [name])


class Captured(logging.Handler):
    """Every librdkafka / aiokafka log line, to search for the password."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def librdkafka_logger(name: str) -> tuple[logging.Logger, Captured]:
    logger = logging.getLogger(f"t-sasl.{name}.{uuid.uuid4().hex[:6]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Captured()
    logger.addHandler(handler)
    return logger, handler


def test_produce_and_consume_with_the_librdkafka_helpers(
    sasl: config.Settings, topic: str
) -> None:
    logger, logs = librdkafka_logger("ok")
    # Debug logging of config and the SASL handshake: the password must not show even there.
    producer = make_producer(sasl.kafka, "t-sasl", logger=logger, debug="conf,security")
    delivered: list[Any] = []
    value = f"hello over SCRAM {uuid.uuid4()}".encode()
    producer.produce(topic, key=b"k1", value=value, on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(WAIT_S) == 0
    assert delivered == [None]

    consumer = make_consumer(sasl.kafka, f"t-sasl-{uuid.uuid4()}", logger=logger,
                             debug="security")
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        msg = consumer.poll(WAIT_S)
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"k1", value)
    finally:
        consumer.close()
    assert any("SCRAM" in line for line in logs.lines)  # the handshake was logged...
    assert not [line for line in logs.lines if SASL_PASSWORD in line]  # ...not the password


def test_a_wrong_password_is_an_authentication_error_that_does_not_show_it(
    sasl: config.Settings, topic: str
) -> None:
    wrong = sasl_settings(WRONG_PASSWORD)
    logger, logs = librdkafka_logger("wrong")
    errors: list[KafkaError] = []
    delivered: list[Any] = []
    producer = make_producer(wrong.kafka, "t-sasl-wrong", logger=logger, debug="conf,security",
                             error_cb=errors.append)
    producer.produce(topic, value=b"never delivered",
                     on_delivery=lambda e, m: delivered.append(e))
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not any(
        e.code() == KafkaError._AUTHENTICATION for e in errors
    ):
        producer.poll(0.2)
    assert [e for e in errors if e.code() == KafkaError._AUTHENTICATION], errors
    producer.purge()
    producer.flush(WAIT_S)
    assert all(e is not None for e in delivered)  # the record was never accepted
    texts = [*logs.lines, *(str(e) for e in errors), *(e.str() for e in errors)]
    assert any("Authentication failed" in t for t in texts)
    assert not [t for t in texts if WRONG_PASSWORD in t]


def _aiokafka_auth(settings: config.Settings, tmp_path: Path) -> dict[str, Any]:
    """What faust hands aiokafka for this app's settings (faust's own mapping)."""
    app = base_app(f"t-sasl-{uuid.uuid4().hex[:8]}", settings,
                   ProcessorSettings(data_dir=tmp_path))
    bootstrap = settings.kafka.bootstrap_servers
    assert [str(url) for url in app.conf.broker] == [f"kafka://{bootstrap}"]
    auth = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == (
        settings.kafka.security_protocol, "SCRAM-SHA-512")
    assert SASL_PASSWORD not in repr(app.conf.broker_credentials)
    return {"bootstrap_servers": bootstrap, **auth}


def test_produce_and_consume_through_the_faust_apps_credentials(
    sasl: config.Settings, topic: str, tmp_path: Path
) -> None:
    kwargs = _aiokafka_auth(sasl, tmp_path)
    value = f"hello from aiokafka {uuid.uuid4()}".encode()
    assert asyncio.run(aiokafka_round_trip(kwargs, topic, value)) == (b"k2", value)


async def aiokafka_round_trip(
    kwargs: dict[str, Any], topic: str, value: bytes
) -> tuple[bytes | None, bytes | None]:
    producer = AIOKafkaProducer(**kwargs, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k2", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **kwargs, group_id=f"t-sasl-{uuid.uuid4()}",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:  # the topic may hold other clients' records first
            msg = await asyncio.wait_for(consumer.getone(), WAIT_S)
            if msg.value == value:
                return msg.key, msg.value
    finally:
        await consumer.stop()


def test_faust_path_with_a_wrong_password_fails_without_showing_it(
    sasl: config.Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kwargs = _aiokafka_auth(sasl_settings(WRONG_PASSWORD), tmp_path)

    async def start() -> None:
        producer = AIOKafkaProducer(**kwargs, request_timeout_ms=10000)
        try:
            await asyncio.wait_for(producer.start(), WAIT_S)
        finally:
            await producer.stop()

    caplog.set_level(logging.DEBUG, logger="aiokafka")
    with pytest.raises(KafkaConnectionError) as failure:
        asyncio.run(start())
    assert "SaslAuthenticationFailed" in caplog.text
    assert WRONG_PASSWORD not in caplog.text
    assert WRONG_PASSWORD not in f"{failure.value!s} {failure.value!r}"


def test_sasl_ssl_with_the_local_ca_through_both_clients(
    tls_ca: str, topic: str, tmp_path: Path
) -> None:
    """SASL_SSL: the broker's certificate is verified against SETTLE_KAFKA_SSL_CA_LOCATION."""
    tls = tls_settings(tls_ca)
    producer = make_producer(tls.kafka, "t-tls")
    delivered: list[Any] = []
    value = f"hello over TLS {uuid.uuid4()}".encode()
    producer.produce(topic, key=b"k1", value=value, on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(WAIT_S) == 0
    assert delivered == [None]
    consumer = make_consumer(tls.kafka, f"t-tls-{uuid.uuid4()}")
    try:
        consumer.subscribe([topic])  # the group coordinator over TLS too, as the sinks use it
        msg = consumer.poll(WAIT_S)
        assert msg is not None and msg.error() is None
        assert msg.value() == value
        consumer.commit(msg, asynchronous=False)
    finally:
        consumer.close()

    kwargs = _aiokafka_auth(tls, tmp_path)
    assert kwargs["ssl_context"] is not None
    aio_value = f"hello from aiokafka over TLS {uuid.uuid4()}".encode()
    assert asyncio.run(aiokafka_round_trip(kwargs, topic, aio_value)) == (b"k2", aio_value)


def test_tls_without_the_ca_does_not_trust_the_broker(tls_ca: str) -> None:
    """Without the local CA (system CAs only) the handshake fails: the client verifies."""
    untrusting = tls_settings("")
    errors: list[KafkaError] = []
    producer = make_producer(untrusting.kafka, "t-tls-untrusting", error_cb=errors.append)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not errors:
        producer.poll(0.2)
    assert any("certificate verify failed" in e.str() for e in errors), errors
