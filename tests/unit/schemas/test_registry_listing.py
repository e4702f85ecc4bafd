"""The registry client's subject listing (paged past a server's cap) and subject deletion.

The HTTP side is an httpx transport that answers like the registries do: Apicurio's ccompat
API cuts a bare GET /subjects at 1,000 and honours `offset`/`limit`; an older registry ignores
both and answers everything. The real Apicurio is exercised in
tests/integration/test_registry.py.
"""

from __future__ import annotations

import httpx
import pytest

from schemas.errors import RegistryError
from schemas.registry import RegistryClient, delete_subjects_with_prefix


class SubjectsHttp:
    """GET /subjects and DELETE /subjects/{s} of a registry with `cap` and paging choices."""

    def __init__(self, names: list[str], *, cap: int = 1000, offset: bool = True,
                 limit: bool = True) -> None:
        self.names = list(names)
        self.soft_deleted: set[str] = set()
        self.cap, self.offset, self.limit = cap, offset, limit
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        parts = request.url.path.split("/")[4:]  # after /apis/ccompat/v7
        params = request.url.params
        if request.method == "GET" and parts == ["subjects"]:
            live = [n for n in self.names if n not in self.soft_deleted]
            start = int(params.get("offset", 0)) if self.offset else 0
            count = int(params.get("limit", self.cap)) if self.limit else self.cap
            return httpx.Response(200, json=live[start:start + min(count, self.cap)])
        if request.method == "DELETE" and len(parts) == 2 and parts[0] == "subjects":
            name = parts[1]
            if name not in self.names:
                return httpx.Response(404, json={"error_code": 40401, "message": "no subject"})
            if params.get("permanent") == "true":
                if name not in self.soft_deleted:
                    return httpx.Response(409, json={"error_code": 40405,
                                                     "message": "soft delete first"})
                self.names.remove(name)
                self.soft_deleted.discard(name)
                return httpx.Response(200, json=[1])
            if name in self.soft_deleted:
                return httpx.Response(404, json={"error_code": 40404, "message": "soft deleted"})
            self.soft_deleted.add(name)
            return httpx.Response(200, json=[1])
        return httpx.Response(500, json={"error_code": 500, "message": "unexpected"})


def client_for(http: SubjectsHttp) -> RegistryClient:
    return RegistryClient("http://127.0.0.1:9/apis/ccompat/v7", attempts_max=1,
                          backoff_seconds=0, transport=httpx.MockTransport(http))


NAMES = [f"s-{i:05d}-value" for i in range(2_345)]


def test_listing_pages_past_the_servers_cap() -> None:
    http = SubjectsHttp(NAMES, cap=1000)
    assert client_for(http).subjects() == NAMES
    pages = [dict(r.url.params) for r in http.requests]
    assert pages == [{"offset": str(o), "limit": "500"} for o in range(0, 2_500, 500)]


@pytest.mark.parametrize("count", [0, 1, 499, 500, 501, 1_000])
def test_listing_ends_on_the_short_page(count: int) -> None:
    http = SubjectsHttp(NAMES[:count])
    assert client_for(http).subjects(page_size=500) == NAMES[:count]
    assert len(http.requests) == count // 500 + 1


def test_a_registry_that_ignores_paging_answers_everything_at_once() -> None:
    http = SubjectsHttp(NAMES, cap=10_000, offset=False, limit=False)
    assert client_for(http).subjects() == NAMES
    assert len(http.requests) == 1


def test_a_registry_that_ignores_offset_is_an_error_not_a_short_list() -> None:
    http = SubjectsHttp(NAMES, offset=False)
    with pytest.raises(RegistryError, match=r"ignores `offset`.*500 subjects"):
        client_for(http).subjects()


def test_page_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="page_size"):
        client_for(SubjectsHttp(NAMES)).subjects(page_size=0)


def test_delete_subject_soft_then_permanent_and_false_when_absent() -> None:
    http = SubjectsHttp(["a-value", "b-value"])
    client = client_for(http)
    assert client.delete_subject("a-value") is True
    assert http.names == ["b-value"] and not http.soft_deleted
    assert client.delete_subject("a-value") is False
    assert [(r.method, dict(r.url.params)) for r in http.requests[:2]] == [
        ("DELETE", {}), ("DELETE", {"permanent": "true"})]


def test_delete_subject_finishes_a_soft_delete_left_by_someone_else() -> None:
    http = SubjectsHttp(["a-value"])
    http.soft_deleted.add("a-value")
    assert client_for(http).delete_subject("a-value") is True
    assert http.names == []


def test_delete_subject_raises_on_a_refusal() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error_code": 40301, "message": "no"})

    client = RegistryClient("http://127.0.0.1:9/apis/ccompat/v7", attempts_max=1,
                            transport=httpx.MockTransport(refuse))
    with pytest.raises(RegistryError, match=r"deleting subject 'a-value'.*credentials"):
        client.delete_subject("a-value")


def test_delete_by_prefix_deletes_only_that_prefix_past_the_cap() -> None:
    mine = [f"benchx1.{n}" for n in NAMES[:1_200]]
    others = ["payments.requested-value", "benchx10.payments.requested-value"]
    http = SubjectsHttp(others + mine)
    client = client_for(http)
    assert delete_subjects_with_prefix(client, "benchx1.") == 1_200
    assert http.names == others


def test_delete_by_prefix_refuses_an_empty_prefix() -> None:
    http = SubjectsHttp(NAMES[:3])
    with pytest.raises(ValueError, match="every subject"):
        delete_subjects_with_prefix(client_for(http), "")
    assert http.requests == [] and http.names == NAMES[:3]
