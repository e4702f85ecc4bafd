"""faust/aiokafka security settings from the same SETTLE_KAFKA_* settings the other clients use."""

from __future__ import annotations

import ssl

import faust
from faust.types.auth import CredentialsT

from infra.config import ConfigError, KafkaSettings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """Verify the broker against SETTLE_KAFKA_SSL_CA_LOCATION, else the system CA bundle."""
    return ssl.create_default_context(cafile=kafka.ssl_ca_location or None)


def broker_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """faust's broker_credentials for the configured security protocol (None: PLAINTEXT).

    librdkafka (producers, sinks) and aiokafka (faust) must agree on the protocol, so it is
    decided by SETTLE_KAFKA_SECURITY_PROTOCOL alone, exactly as for the librdkafka clients.
    """
    protocol = kafka.security_protocol.upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"SETTLE_KAFKA_SECURITY_PROTOCOL={kafka.security_protocol!r}: one of {PROTOCOLS}"
        )
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(kafka))
    if not kafka.sasl_mechanism:
        raise ConfigError(f"SETTLE_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                          "SETTLE_KAFKA_SASL_MECHANISM (e.g. SCRAM-SHA-512)")
    try:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.reveal(),
            mechanism=kafka.sasl_mechanism.upper(),
            ssl_context=ssl_context(kafka) if protocol == "SASL_SSL" else None,
        )
    except ValueError as exc:  # an unknown mechanism
        raise ConfigError(
            f"SETTLE_KAFKA_SASL_MECHANISM={kafka.sasl_mechanism!r} is not supported by aiokafka"
        ) from exc
