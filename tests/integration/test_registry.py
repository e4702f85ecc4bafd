"""Registry client, registration and codec against the real schema registry of the local stack."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import fastavro
import httpx
import pytest

from schemas import contract
from schemas.codec import AvroDeserializer, AvroSerializer, header, to_epoch_ms
from schemas.errors import IncompatibleSchema, RegistryUnavailable, SchemaNotFound, UnknownSchemaId
from schemas.registry import RegistryClient, delete_subjects_with_prefix, register_all
from schemas.topics import TOPIC_RECORDS, value_subject

pytestmark = pytest.mark.integration

REGISTRY_URL = os.environ.get("SETTLE_REGISTRY_URL", "http://127.0.0.1:18081/apis/ccompat/v7")
RUN = uuid.uuid4().hex[:12]


def new_client() -> RegistryClient:
    """Return a client with empty caches, so every answer comes from the registry itself."""
    return RegistryClient(
        REGISTRY_URL,
        username=os.environ.get("SETTLE_REGISTRY_USERNAME") or None,
        password=os.environ.get("SETTLE_REGISTRY_PASSWORD") or None,
        attempts_max=2,
        backoff_seconds=0.1,
    )


@pytest.fixture(scope="module")
def client(stack: object) -> Iterator[RegistryClient]:
    registry = new_client()
    try:
        registry.subjects()
    except RegistryUnavailable as exc:
        # An integration test never skips: a missing registry is a failure.
        pytest.fail(f"schema registry not reachable (run `make up`): {exc}")
    yield registry
    registry.close()


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Iterator[str]:
    """A subject no earlier run has used, deleted afterwards (if the test created it)."""
    name = f"it-{RUN}-{request.node.name}-value"
    yield name
    with new_client() as registry:
        registry.delete_subject(name)


def versions(subject: str) -> list[int]:
    """Return the version numbers of a subject, straight from the registry."""
    user = os.environ.get("SETTLE_REGISTRY_USERNAME")
    auth = (user, os.environ.get("SETTLE_REGISTRY_PASSWORD", "")) if user else None
    response = httpx.get(f"{REGISTRY_URL}/subjects/{subject}/versions", auth=auth)
    response.raise_for_status()
    result: list[int] = response.json()
    return result


def evolved(name: str, *fields: dict[str, Any]) -> str:
    """Return a contract record's registered schema with extra fields appended."""
    schema = json.loads(contract.schema_str_for(name))
    schema["fields"].extend(fields)
    return json.dumps(schema, separators=(",", ":"))


def merchant() -> dict[str, Any]:
    return {
        "merchant_id": "m-1",
        "name": "Café 北京",
        "status": "ACTIVE",
        "settlement_currency": "CNY",
        "updated_at": 1_764_040_000_123,
    }


def test_registration_is_idempotent(client: RegistryClient, subject: str) -> None:
    schema = contract.schema_str_for("PaymentRequested")
    first = client.register(subject, schema)
    assert new_client().register(subject, schema) == first
    assert len(versions(subject)) == 1
    assert new_client().lookup(subject, schema) == first
    assert subject in client.subjects()


def test_get_schema_by_id_round_trips(client: RegistryClient, subject: str) -> None:
    schema = contract.schema_str_for("PaymentRejected")
    schema_id = client.register(subject, schema)
    fetched = new_client().get_schema(schema_id)
    # Same schema, not the same text: Apicurio re-serializes it (drops redundant namespaces).
    assert fastavro.parse_schema(json.loads(fetched)) == contract.schema_for("PaymentRejected")


def test_unknown_schema_id(client: RegistryClient) -> None:
    with pytest.raises(SchemaNotFound):
        new_client().get_schema(2**31 - 7)
    with pytest.raises(UnknownSchemaId):
        AvroDeserializer(new_client()).decode(header(2**31 - 7) + b"\x00")


def test_backward_compatibility_refuses_incompatible_changes(
    client: RegistryClient, subject: str
) -> None:
    first = client.register(subject, contract.schema_str_for("PaymentRequested"))
    client.set_compatibility(subject, "BACKWARD")
    assert new_client().get_compatibility(subject) == "BACKWARD"

    no_default = evolved("PaymentRequested", {"name": "fee_minor", "type": "long", "doc": "x"})
    assert client.check_compatibility(subject, no_default) is False
    with pytest.raises(IncompatibleSchema) as caught:
        client.register(subject, no_default)
    assert caught.value.status_code == 409

    retyped = json.loads(contract.schema_str_for("PaymentRequested"))
    for field in retyped["fields"]:
        if field["name"] == "amount_minor":
            field["type"] = "string"
    with pytest.raises(IncompatibleSchema):
        client.register(subject, json.dumps(retyped))
    assert versions(subject) == [1]
    assert client.register(subject, contract.schema_str_for("PaymentRequested")) == first


def test_backward_compatibility_accepts_a_new_field_with_default(
    client: RegistryClient, subject: str
) -> None:
    first = client.register(subject, contract.schema_str_for("PaymentRequested"))
    client.set_compatibility(subject, "BACKWARD")
    with_default = evolved(
        "PaymentRequested",
        {"name": "fee_minor", "type": ["null", "long"], "default": None, "doc": "x"},
    )
    assert client.check_compatibility(subject, with_default) is True
    second = client.register(subject, with_default)
    assert second != first
    assert len(versions(subject)) == 2


def test_encode_decode_through_the_real_registry(client: RegistryClient) -> None:
    topic = f"it.{RUN}.merchants"
    serializer = AvroSerializer(client, topic, "Merchant")
    data = serializer.encode(merchant())
    schema_id, decoded = AvroDeserializer(new_client()).decode_with_id(data)
    assert schema_id == serializer.schema_id
    assert {**decoded, "updated_at": to_epoch_ms(decoded["updated_at"])} == merchant()


def test_old_writer_decodes_with_the_new_reader_schema(
    client: RegistryClient, subject: str
) -> None:
    client.register(subject, contract.schema_str_for("Merchant"))
    client.set_compatibility(subject, "BACKWARD")
    newer = evolved(
        "Merchant", {"name": "tier", "type": "string", "default": "STANDARD", "doc": "x"}
    )
    client.register(subject, newer)
    old_bytes = AvroSerializer(client, subject.removesuffix("-value"), "Merchant").encode(
        merchant()
    )
    decoded = AvroDeserializer(new_client(), json.loads(newer)).decode(old_bytes)
    assert decoded["tier"] == "STANDARD" and decoded["name"] == "Café 北京"


def test_register_all_sets_backward_and_is_idempotent(client: RegistryClient) -> None:
    topics = {f"it.{RUN}.{topic}": record for topic, record in TOPIC_RECORDS.items()}
    ids = register_all(new_client(), topics)
    assert set(ids) == {value_subject(t) for t in topics}
    assert register_all(new_client(), topics) == ids
    fresh = new_client()
    for subject_name in ids:
        assert fresh.get_compatibility(subject_name) == "BACKWARD"
        assert len(versions(subject_name)) == 1
    routed = {ids[value_subject(t)] for t, r in topics.items() if r == "RoutedPayment"}
    assert len(routed) == 1


def test_listing_pages_past_the_registrys_cap_and_prefix_deletion_cleans_up(
    client: RegistryClient,
) -> None:
    # Apicurio's ccompat API cuts a bare GET /subjects at 1,000 subjects without a word.
    prefix = f"it-{RUN}-many."
    schema = contract.schema_str_for("Merchant")
    registry = new_client()
    already = len(registry.subjects())
    mine = [f"{prefix}{i:04d}-value" for i in range(max(0, 1_001 - already) + 5)]
    try:
        for name in mine:
            registry.register(name, schema)
        listed = new_client().subjects()
        assert len(listed) >= 1_001 and len(listed) == len(set(listed))
        assert set(mine) <= set(listed)
        user = os.environ.get("SETTLE_REGISTRY_USERNAME")
        auth = (user, os.environ.get("SETTLE_REGISTRY_PASSWORD", "")) if user else None
        bare = httpx.get(f"{REGISTRY_URL}/subjects", auth=auth).json()
        assert len(bare) <= len(listed)  # the bare call is the one that may be cut
    finally:
        deleted = delete_subjects_with_prefix(new_client(), prefix)
    assert deleted == len(mine)
    left = new_client().subjects()
    assert not [s for s in left if s.startswith(prefix)]
    assert value_subject("payments.requested") in left  # the contract's subjects stay
    assert new_client().delete_subject(mine[0]) is False
