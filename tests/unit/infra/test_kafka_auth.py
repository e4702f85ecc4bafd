"""The faust app's broker credentials follow SETTLE_KAFKA_SECURITY_PROTOCOL like librdkafka's."""

from __future__ import annotations

import ssl

import faust
import pytest

from infra.config import ConfigError, load
from infra.kafka_auth import broker_credentials

SASL = {"SETTLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "SETTLE_KAFKA_SASL_USERNAME": "u",
        "SETTLE_KAFKA_SASL_PASSWORD": "pw-7f3a"}


def test_plaintext_has_no_credentials_even_with_a_mechanism_set() -> None:
    kafka = load({"SETTLE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", **SASL}).kafka
    assert broker_credentials(kafka) is None


def test_sasl_plaintext_scram() -> None:
    kafka = load({"SETTLE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", **SASL}).kafka
    creds = broker_credentials(kafka)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert (creds.username, creds.password, creds.ssl_context) == ("u", "pw-7f3a", None)
    assert "pw-7f3a" not in repr(creds)


def test_sasl_ssl_verifies_the_broker() -> None:
    kafka = load({"SETTLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", **SASL}).kafka
    creds = broker_credentials(kafka)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL"
    assert creds.ssl_context is not None
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert creds.ssl_context.check_hostname


def test_ssl_without_sasl() -> None:
    creds = broker_credentials(load({"SETTLE_KAFKA_SECURITY_PROTOCOL": "SSL"}).kafka)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.context.verify_mode == ssl.CERT_REQUIRED


def test_a_missing_ca_file_is_an_error() -> None:
    kafka = load({"SETTLE_KAFKA_SECURITY_PROTOCOL": "SSL",
                  "SETTLE_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}).kafka
    with pytest.raises(OSError):
        broker_credentials(kafka)


@pytest.mark.parametrize(("env", "message"), [
    ({"SETTLE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs SETTLE_KAFKA_SASL_MECHANISM"),
    ({"SETTLE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "one of"),
    ({**SASL, "SETTLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SETTLE_KAFKA_SASL_MECHANISM": "MD5"},
     "not supported"),
])
def test_bad_security_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failure:
        broker_credentials(load(env).kafka)
    assert "pw-7f3a" not in str(failure.value)
