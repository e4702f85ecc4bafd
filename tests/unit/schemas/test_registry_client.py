"""The registry client over a fake HTTP transport, and registering the contract."""

from __future__ import annotations

import json

import httpx
import pytest

from schemas import contract
from schemas.codec import AvroDeserializer, AvroSerializer, header
from schemas.errors import IncompatibleSchema, RegistryUnavailable, UnknownSchemaId
from schemas.registry import InMemoryRegistry, RegistryClient, register_all
from schemas.topics import TOPIC_RECORDS
from tests.support.codec_samples import merchant


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


# --- registry client over a fake transport ------------------------------------------------------


class FakeRegistryHttp:
    """A scripted Confluent-compatible registry behind httpx.MockTransport."""

    def __init__(self) -> None:
        self.up = True
        self.requests: list[httpx.Request] = []
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.levels: dict[str, str] = {}
        self.fail_5xx = 0
        self.incompatible = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if self.fail_5xx:
            self.fail_5xx -= 1
            return httpx.Response(503, json={"error_code": 50301, "message": "busy"})
        parts = request.url.path.removeprefix("/apis/ccompat/v7/").split("/")
        body = json.loads(request.content) if request.content else {}
        if request.method == "POST" and parts[0] == "subjects" and parts[2:] == ["versions"]:
            if self.incompatible and parts[1] in self.subjects:
                return httpx.Response(409, json={"error_code": 409, "message": "incompatible"})
            schema_id = next((i for i, s in self.schemas.items() if s == body["schema"]), None)
            if schema_id is None:
                schema_id = len(self.schemas) + 1
                self.schemas[schema_id] = body["schema"]
            self.subjects.setdefault(parts[1], []).append(schema_id)
            return httpx.Response(200, json={"id": schema_id})
        if request.method == "GET" and parts[:2] == ["schemas", "ids"]:
            if int(parts[2]) not in self.schemas:
                return httpx.Response(404, json={"error_code": 40403, "message": "not found"})
            return httpx.Response(200, json={"schema": self.schemas[int(parts[2])]})
        if parts[0] == "config":
            if parts[1] not in self.subjects:  # Apicurio before 3.x: 404 for a new subject
                return httpx.Response(404, json={"error_code": 40401, "message": "no subject"})
            if request.method == "PUT":
                self.levels[parts[1]] = body["compatibility"]
                return httpx.Response(200, json=body)
            return httpx.Response(200, json={"compatibilityLevel": self.levels[parts[1]]})
        if request.method == "GET" and parts == ["subjects"]:
            return httpx.Response(200, json=sorted(self.subjects))
        return httpx.Response(404, json={"error_code": 404, "message": "no route"})


@pytest.fixture
def http() -> FakeRegistryHttp:
    return FakeRegistryHttp()


@pytest.fixture
def client(http: FakeRegistryHttp) -> RegistryClient:
    return RegistryClient(
        "http://127.0.0.1:9/apis/ccompat/v7",
        username="svc",
        password="s3cret",
        backoff_seconds=0,
        transport=httpx.MockTransport(http),
    )


def test_client_register_speaks_the_confluent_api(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    schema = contract.schema_str_for("Merchant")
    assert client.register("merchants-value", schema) == 1
    assert client.register("merchants-value", schema) == 1
    assert len(http.requests) == 1  # second call served from the cache
    sent = http.requests[0]
    assert sent.url.path == "/apis/ccompat/v7/subjects/merchants-value/versions"
    assert sent.headers["content-type"] == "application/vnd.schemaregistry.v1+json"
    assert sent.headers["authorization"].startswith("Basic ")
    assert json.loads(sent.content) == {"schema": schema}


def test_client_maps_409_to_incompatible_schema(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    client.register("s", contract.schema_str_for("Merchant"))
    http.incompatible = True
    with pytest.raises(IncompatibleSchema) as caught:
        client.register("s", contract.schema_str_for("DeadLetter"))
    assert caught.value.status_code == 409


def test_client_retries_5xx_then_succeeds(client: RegistryClient, http: FakeRegistryHttp) -> None:
    http.fail_5xx = 2
    assert client.register("s", contract.schema_str_for("Merchant")) == 1
    assert len(http.requests) == 3


def test_client_gives_up_with_registry_unavailable_but_cache_keeps_working(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    serializer = AvroSerializer(client, "merchants", "Merchant")
    data = serializer.encode(merchant())
    deserializer = AvroDeserializer(client)
    deserializer.decode(data)
    http.up = False
    assert serializer.encode(merchant()) == data
    assert AvroDeserializer(client).decode(data)["merchant_id"] == "m-1"
    before = len(http.requests)
    with pytest.raises(RegistryUnavailable) as caught:
        client.get_schema(99)
    assert len(http.requests) == before + 4
    message = str(caught.value)
    assert "127.0.0.1:9" in message and "4 times" in message
    assert "s3cret" not in message and "svc" not in repr(client)


def test_credentials_in_the_url_never_reach_messages() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = RegistryClient(
        "http://svc:s3cret@127.0.0.1:9/apis/ccompat/v7",
        attempts_max=2,
        backoff_seconds=0,
        transport=httpx.MockTransport(refuse),
    )
    with pytest.raises(RegistryUnavailable) as caught:
        down.get_schema(1)
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(down)
    assert "127.0.0.1:9" in str(caught.value)


def test_unknown_id_from_a_real_client_is_unknown_schema_id(client: RegistryClient) -> None:
    with pytest.raises(UnknownSchemaId):
        AvroDeserializer(client).decode(header(42) + b"\x00")


def test_register_all_handles_apicurio_config_on_new_subjects(
    client: RegistryClient, http: FakeRegistryHttp
) -> None:
    ids = register_all(client)
    assert set(ids) == {f"{t}-value" for t in TOPIC_RECORDS}
    assert http.levels == {s: "BACKWARD" for s in ids}
    assert len(set(ids.values())) == len(set(TOPIC_RECORDS.values()))
    assert register_all(client) == ids
    assert client.get_compatibility("merchants-value") == "BACKWARD"
    assert client.get_compatibility("nope") is None
    assert client.subjects() == sorted(ids)


def test_register_all_with_the_in_memory_registry(registry: InMemoryRegistry) -> None:
    ids = register_all(registry)
    assert register_all(registry) == ids
    assert all(registry.get_compatibility(s) == "BACKWARD" for s in ids)
