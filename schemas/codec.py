"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, fastavro schemaless body."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any, Final, cast

import fastavro
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from schemas.checks import compile_check
from schemas.contract import schema_for, schema_str_for
from schemas.errors import (
    BadMagicByte,
    BodyDecodeError,
    DecodeError,
    EmptyValue,
    EncodeError,
    RegistryError,
    SchemaError,
    SchemaMismatch,
    SchemaNotFound,
    TrailingBytes,
    TruncatedBody,
    TruncatedHeader,
    UnknownSchemaId,
)
from schemas.registry import SchemaLookup, SchemaRegistry
from schemas.topics import TOPIC_RECORDS, value_subject

MAGIC_BYTE: Final = 0
HEADER_SIZE: Final = 5
SCHEMA_ID_MAX: Final = 2**32 - 1
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
# prefetch() found an id unknown: the decode that follows (of the same record) says so without
# asking again, if it comes within this long. One decode only: the id may be registered next.
UNKNOWN_ID_TTL_S: Final = 5.0


def to_epoch_ms(value: datetime | int) -> int:
    """Return epoch milliseconds of an aware datetime (truncated, integer maths) or of an int."""
    if type(value) is int:
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise SchemaError("naive datetime: timestamps must be timezone-aware (UTC)")
        return (value - EPOCH) // _ONE_MS
    raise SchemaError(
        f"expected an aware datetime or int epoch milliseconds, got {type(value).__name__}"
    )


def from_epoch_ms(ms: int) -> datetime:
    """Return the timezone-aware UTC datetime of epoch milliseconds (what fastavro decodes to)."""
    if type(ms) is not int:
        raise SchemaError(f"expected int epoch milliseconds, got {type(ms).__name__}")
    return EPOCH + timedelta(milliseconds=ms)


def header(schema_id: int) -> bytes:
    """Return the 5-byte wire-format header of a schema id."""
    if not 0 <= schema_id <= SCHEMA_ID_MAX:
        raise SchemaError(f"schema id {schema_id} does not fit in 4 bytes")
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big")


def split_header(data: bytes | None) -> tuple[int, int]:
    """Check a value's header and return (schema_id, body_offset); raise a typed DecodeError."""
    if not data:
        raise EmptyValue("value is empty (None or zero bytes; a tombstone has no record)")
    if data[0] != MAGIC_BYTE:
        raise BadMagicByte(
            f"first byte is 0x{data[0]:02x}, not the wire-format magic byte 0x00 "
            "(not Confluent Avro: plain JSON or another serializer?)"
        )
    if len(data) < HEADER_SIZE:
        raise TruncatedHeader(f"value is {len(data)} bytes, shorter than the 5-byte header")
    return int.from_bytes(data[1:HEADER_SIZE], "big"), HEADER_SIZE


class AvroSerializer:
    """Encode records of one contract type for one topic; registers `<topic>-value` on first use."""

    def __init__(
        self,
        registry: SchemaRegistry,
        topic: str,
        record_name: str,
        *,
        auto_register: bool = True,
    ) -> None:
        expected = TOPIC_RECORDS.get(topic)
        if expected is not None and expected != record_name:
            raise SchemaError(f"topic {topic!r} carries {expected}, not {record_name}")
        self.topic = topic
        self.subject = value_subject(topic)
        self.record_name = record_name
        self._registry = registry
        self._auto_register = auto_register
        self._schema = schema_for(record_name)
        self._schema_str = schema_str_for(record_name)
        self._check = compile_check(json.loads(self._schema_str))
        self._header: bytes | None = None
        self.schema_id: int | None = None

    def _resolve_id(self) -> bytes:
        """Register (or look up) the schema once and build the header."""
        if self._auto_register:
            schema_id = self._registry.register(self.subject, self._schema_str)
        else:
            schema_id = self._registry.lookup(self.subject, self._schema_str)
        self._header = header(schema_id)
        self.schema_id = schema_id
        return self._header

    @property
    def resolved(self) -> bool:
        """Whether encode() can run without asking the registry."""
        return self._header is not None

    def ensure_schema_id(self) -> int:
        """The schema's registry id, registering (or looking it up) on the first call."""
        if self.schema_id is None:
            self._resolve_id()
        assert self.schema_id is not None
        return self.schema_id

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Return the wire-format bytes of a record; EncodeError if it does not match the schema."""
        self._check(record)
        prefix = self._header or self._resolve_id()
        out = BytesIO()
        out.write(prefix)
        try:
            schemaless_writer(out, self._schema, record)
        except Exception as exc:  # the check above should catch everything; belt and braces
            raise EncodeError(f"{self.record_name}: fastavro refused the record: {exc}") from exc
        return out.getvalue()


class AvroDeserializer:
    """Decode wire-format values of any registered writer schema, optionally into a reader one."""

    # reader_schema: a contract record name ("PaymentRequested") or a schema, in JSON form or
    # parsed by fastavro; without it records come back exactly as the writer wrote them.

    def __init__(
        self, registry: SchemaLookup, reader_schema: str | Mapping[str, Any] | None = None
    ) -> None:
        self._registry = registry
        self._reader: dict[str, Any] | None = None
        if isinstance(reader_schema, str):
            self._reader = schema_for(reader_schema)
        elif reader_schema is not None:
            # parse_schema passes an already parsed schema (e.g. from schema_for) through.
            self._reader = cast(dict[str, Any], fastavro.parse_schema(dict(reader_schema)))
        # Per writer id: (writer schema, reader schema or None when both are the same schema).
        self._plans: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        # Ids prefetch() found unknown, until when the next decode may take that answer.
        self._unknown: dict[int, float] = {}

    def needs_registry(self, data: bytes | None) -> bool:
        """Whether decoding this value would ask the registry (a writer id not seen yet).

        A value with a bad header needs no registry: it fails on its own.
        """
        if data is None or len(data) < HEADER_SIZE or data[0] != MAGIC_BYTE:
            return False
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        return schema_id not in self._plans and not self._known_unknown(schema_id)

    def prefetch(self, data: bytes | None) -> None:
        """Fetch the writer schema this value needs, so decode() then runs without I/O.

        For a caller with an event loop to run this in a thread first. Errors are left for
        decode() to raise; an unknown id is noted so that the decode of this same record
        does not ask again on the loop (see UNKNOWN_ID_TTL_S).
        """
        if not self.needs_registry(data):
            return
        assert data is not None
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        try:
            self._plan(schema_id)
        except UnknownSchemaId:
            if len(self._unknown) >= 10_000:  # bounded, whatever ids a bad producer invents
                self._unknown.clear()
            self._unknown[schema_id] = time.monotonic() + UNKNOWN_ID_TTL_S
        except (DecodeError, RegistryError):
            pass

    def _known_unknown(self, schema_id: int, consume: bool = False) -> bool:
        until = self._unknown.get(schema_id)
        if until is None:
            return False
        if consume or time.monotonic() >= until:
            del self._unknown[schema_id]
        return time.monotonic() < until

    def _plan(self, schema_id: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Fetch and parse a writer schema once per id."""
        if self._known_unknown(schema_id, consume=True):
            raise UnknownSchemaId(
                f"schema id {schema_id} is unknown to the registry (asked just before)",
                schema_id=schema_id)
        try:
            text = self._registry.get_schema(schema_id)
        except SchemaNotFound as exc:
            raise UnknownSchemaId(
                f"schema id {schema_id} is unknown to the registry", schema_id=schema_id
            ) from exc
        try:
            raw = json.loads(text)
            writer = cast(dict[str, Any], fastavro.parse_schema(raw))
        except Exception as exc:
            raise SchemaMismatch(
                f"schema id {schema_id} is not an Avro schema fastavro can read: {exc}",
                schema_id=schema_id,
            ) from exc
        reader = self._reader
        # Compare parsed forms: registries re-serialize the text (Apicurio drops redundant
        # namespaces), so equal schemas rarely have equal text.
        if reader is not None and writer == reader:
            reader = None  # same schema: skip fastavro's slower resolving reader
        plan = (writer, reader)
        self._plans[schema_id] = plan
        return plan

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Return the record in a wire-format value; a typed DecodeError on bad input."""
        return self.decode_with_id(data)[1]

    def decode_with_id(self, data: bytes | None) -> tuple[int, dict[str, Any]]:
        """Return (writer schema id, record); DecodeError for bad bytes, RegistryError if down."""
        # A DecodeError is about the value and permanent: dead-letter it. A RegistryUnavailable
        # is about the registry and transient: retry or stop, never dead-letter for it.
        if data is None or len(data) < HEADER_SIZE or data[0] != MAGIC_BYTE:
            split_header(data)
            raise AssertionError("unreachable: split_header raises on a bad header")
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        writer, reader = self._plans.get(schema_id) or self._plan(schema_id)
        body = BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(body, writer, reader)
        except Exception as exc:
            if not _ran_out(exc, body, len(data)):
                raise _body_error(exc, schema_id) from exc
            raise TruncatedBody(
                f"body of {len(data) - HEADER_SIZE} bytes ends early for schema id {schema_id}",
                schema_id=schema_id,
            ) from exc
        extra = len(data) - body.tell()
        if extra:
            raise TrailingBytes(
                f"{extra} byte(s) left after a complete body for schema id {schema_id}",
                schema_id=schema_id,
            )
        if type(record) is not dict:
            raise SchemaMismatch(
                f"schema id {schema_id} is not a record schema", schema_id=schema_id
            )
        return schema_id, record


def _ran_out(exc: Exception, body: BytesIO, size: int) -> bool:
    """Tell whether fastavro failed because the body ended early."""
    if isinstance(exc, EOFError):
        return True
    # fastavro's compiled reader indexes an empty read when a varint is cut mid-way, which
    # surfaces as IndexError (TypeError in its pure-Python fallback) with the body used up.
    return isinstance(exc, IndexError | TypeError) and body.tell() >= size


def _body_error(exc: Exception, schema_id: int) -> DecodeError:
    """Translate a fastavro read error that is not truncation."""
    if isinstance(exc, SchemaResolutionError):
        return SchemaMismatch(
            f"writer schema id {schema_id} cannot be read as the reader schema: {exc}",
            schema_id=schema_id,
        )
    return BodyDecodeError(
        f"malformed body for schema id {schema_id}: {type(exc).__name__}: {exc}",
        schema_id=schema_id,
    )


class RegistryPrefetch:
    """The registry lookups a stage's codecs still need, to be done off the event loop.

    A faust stage calls its processor on the event loop, so a first encode (the schema
    registered or looked up) or a first writer id (its schema fetched) would hold the whole
    worker for the registry's round trip, measured at 270-400 ms with Apicurio here. The agent
    asks `needed(value)` (no I/O) and, when true, runs `fetch(value)` in a thread first.
    """

    def __init__(self, decoders: list[AvroDeserializer],
                 serializers: list[AvroSerializer]) -> None:
        self._decoders = decoders
        self._unresolved = list(serializers)

    def needed(self, value: bytes | None) -> bool:
        if self._unresolved:
            self._unresolved = [s for s in self._unresolved if not s.resolved]
            if self._unresolved:
                return True
        return any(d.needs_registry(value) for d in self._decoders)

    def fetch(self, value: bytes | None) -> None:
        """Resolve what `needed` found; errors are left for the processor to meet and handle."""
        for ser in self._unresolved:
            with contextlib.suppress(RegistryError):
                ser.ensure_schema_id()
        for dec in self._decoders:
            dec.prefetch(value)
