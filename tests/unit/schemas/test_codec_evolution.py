"""Schema evolution: defaults filled, unknown fields dropped, the unresolvable refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from schemas import contract
from schemas.codec import AvroDeserializer, header
from schemas.errors import SchemaMismatch
from schemas.registry import InMemoryRegistry
from tests.support.codec_samples import encoder, merchant, requested


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def encode(registry: InMemoryRegistry) -> Callable[[str, dict[str, Any]], bytes]:
    return encoder(registry)


# --- schema evolution ---------------------------------------------------------------------------


def old_payment_requested() -> str:
    """PaymentRequested as an earlier producer wrote it: no metadata, plus a since-removed field."""
    schema = json.loads(contract.schema_str_for("PaymentRequested"))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "metadata"]
    schema["fields"].append({"name": "legacy_flag", "type": "boolean", "doc": "gone"})
    return json.dumps(schema)


def test_reader_schema_fills_defaults_and_drops_unknown_fields(registry: InMemoryRegistry) -> None:
    old_id = registry.register("payments.requested-value", old_payment_requested())
    old = {k: v for k, v in requested().items() if k != "metadata"} | {"legacy_flag": True}
    from fastavro import parse_schema, schemaless_writer

    body = bytearray(header(old_id))
    from io import BytesIO

    out = BytesIO()
    schemaless_writer(out, parse_schema(json.loads(old_payment_requested())), old)
    data = bytes(body) + out.getvalue()
    assert "legacy_flag" in AvroDeserializer(registry).decode(data)
    decoded = AvroDeserializer(registry, "PaymentRequested").decode(data)
    assert decoded["metadata"] == {} and "legacy_flag" not in decoded


def test_unresolvable_writer_schema_is_a_schema_mismatch(
    registry: InMemoryRegistry, encode: Callable[[str, dict[str, Any]], bytes]
) -> None:
    data = encode("Merchant", merchant())
    with pytest.raises(SchemaMismatch) as caught:
        AvroDeserializer(registry, "PaymentRequested").decode(data)
    assert caught.value.reason == "SCHEMA_MISMATCH"


def test_writer_schema_that_is_not_avro_is_a_schema_mismatch(registry: InMemoryRegistry) -> None:
    schema_id = registry.register("x-value", 'syntax = "proto3"; message M {}')
    with pytest.raises(SchemaMismatch):
        AvroDeserializer(registry).decode(header(schema_id) + b"\x00")
