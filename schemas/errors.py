"""Errors of the schemas package (decode, encode, registry), to be caught by name."""

from __future__ import annotations

from settlement.errors import SettleError


class SchemaError(SettleError):
    """Root of every error raised by the schemas package."""


class DecodeError(SchemaError):
    """A value could not be decoded; `reason` is a stable code for dead letters and metrics."""

    reason = "DECODE_ERROR"

    def __init__(self, message: str, *, schema_id: int | None = None) -> None:
        super().__init__(message)
        self.schema_id = schema_id


class EmptyValue(DecodeError):
    """The value is None or empty (a tombstone or a producer bug), so there is nothing to decode."""

    reason = "EMPTY_VALUE"


class BadMagicByte(DecodeError):
    """The first byte is not the Confluent wire-format magic byte 0."""

    reason = "BAD_MAGIC_BYTE"


class TruncatedHeader(DecodeError):
    """The value starts with the magic byte but is shorter than the 5-byte header."""

    reason = "TRUNCATED_HEADER"


class UnknownSchemaId(DecodeError):
    """The schema id in the header is not known to the registry."""

    reason = "UNKNOWN_SCHEMA_ID"


class SchemaMismatch(DecodeError):
    """The writer schema is unreadable Avro or cannot be resolved to the reader schema."""

    reason = "SCHEMA_MISMATCH"


class TruncatedBody(DecodeError):
    """The Avro body ended before the writer schema was fully read."""

    reason = "TRUNCATED_BODY"


class TrailingBytes(DecodeError):
    """Bytes are left after a complete body: the payload is garbled even though it decoded."""

    reason = "TRAILING_BYTES"


class BodyDecodeError(DecodeError):
    """The Avro body is malformed (bad UTF-8, enum or union index out of range, and the like)."""

    reason = "BODY_DECODE_ERROR"


class EncodeError(SchemaError):
    """A record does not match its schema; `field` names the offending field path when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RegistryError(SchemaError):
    """The schema registry refused a request or answered something unexpected."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or answered 5xx, after retries."""


class IncompatibleSchema(RegistryError):
    """The registry refused a schema as incompatible with the subject's earlier versions (409)."""


class SchemaNotFound(RegistryError):
    """The registry knows no schema with the requested id (404)."""


class SubjectNotFound(RegistryError):
    """The registry knows no such subject (404)."""
