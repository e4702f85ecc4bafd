"""Synchronous client of a Confluent-compatible schema registry (REST, with retries)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx

from schemas.errors import (
    IncompatibleSchema,
    RegistryError,
    RegistryUnavailable,
    SchemaNotFound,
    SubjectNotFound,
)
from schemas.registry.protocol import check_level

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"


def _safe_url(url: str) -> str:
    """Return a URL without user info, fit for logs and error messages."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


# GET /subjects page; below Apicurio's ccompat cap (apicurio.ccompat.max-subjects, 1,000).
SUBJECTS_PAGE_SIZE: Final = 500


class RegistryClient:
    """Synchronous client of a Confluent-compatible registry (Confluent, Apicurio, Karapace)."""

    # Ids are cached per client, so an id fetched or registered once keeps working while the
    # registry is down. Credentials go to httpx only: never into logs, reprs or error messages.

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_seconds: float = 5.0,
        attempts_max: int = 4,
        backoff_seconds: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        self.url = _safe_url(url.rstrip("/"))
        self._attempts_max = attempts_max
        self._backoff_seconds = backoff_seconds
        auth = (username, password or "") if username else None
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/",
            auth=auth,
            timeout=timeout_seconds,
            headers={"Accept": f"{CONTENT_TYPE}, application/json"},
            transport=transport,
        )
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"RegistryClient(url={self.url!r})"

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, int | str] | None = None,
    ) -> httpx.Response:
        """Send a request, retrying connection errors and 5xx with exponential backoff."""
        headers = {"Content-Type": CONTENT_TYPE} if body is not None else None
        problem = ""
        for attempt in range(1, self._attempts_max + 1):
            try:
                response = self._http.request(
                    method, path, json=body, headers=headers, params=params
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}: {_message(response)}"
            if attempt < self._attempts_max:
                delay = self._backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "schema registry %s %s failed (%s); retry %d/%d in %.2fs",
                    method,
                    f"{self.url}/{path}",
                    problem,
                    attempt,
                    self._attempts_max - 1,
                    delay,
                )
                time.sleep(delay)
        raise RegistryUnavailable(
            f"schema registry at {self.url} unavailable: {method} /{path} failed "
            f"{self._attempts_max} times, last: {problem}"
        )

    def _fail(self, response: httpx.Response, what: str) -> RegistryError:
        """Build the error for an unexpected 4xx answer."""
        status = response.status_code
        text = f"{what}: registry answered HTTP {status}: {_message(response)}"
        if status in (401, 403):
            text = f"{what}: registry refused the credentials (HTTP {status})"
        return RegistryError(text, status_code=status)

    def register(self, subject: str, schema_str: str) -> int:
        """Register a schema under a subject and return its id (same schema, same id)."""
        cached = self._ids.get((subject, schema_str))
        if cached is not None:
            return cached
        response = self._request(
            "POST", f"subjects/{quote(subject, safe='')}/versions", {"schema": schema_str}
        )
        if response.status_code == 409:
            raise IncompatibleSchema(
                f"schema refused as incompatible with subject {subject!r}: {_message(response)}",
                status_code=409,
            )
        if response.status_code != 200:
            raise self._fail(response, f"registering a schema under {subject!r}")
        schema_id = _int_field(response, "id")
        self._ids[(subject, schema_str)] = schema_id
        self._schemas.setdefault(schema_id, schema_str)
        return schema_id

    def lookup(self, subject: str, schema_str: str) -> int:
        """Return the id of a schema already registered under a subject, without registering it."""
        cached = self._ids.get((subject, schema_str))
        if cached is not None:
            return cached
        response = self._request(
            "POST", f"subjects/{quote(subject, safe='')}", {"schema": schema_str}
        )
        if response.status_code == 404:
            raise SchemaNotFound(
                f"schema is not registered under subject {subject!r}: {_message(response)}",
                status_code=404,
            )
        if response.status_code != 200:
            raise self._fail(response, f"looking up a schema under {subject!r}")
        schema_id = _int_field(response, "id")
        self._ids[(subject, schema_str)] = schema_id
        self._schemas.setdefault(schema_id, schema_str)
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """Return the schema text registered under an id (cached for the client's lifetime)."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        response = self._request("GET", f"schemas/ids/{int(schema_id)}")
        if response.status_code == 404:
            raise SchemaNotFound(f"registry has no schema with id {schema_id}", status_code=404)
        if response.status_code != 200:
            raise self._fail(response, f"fetching schema id {schema_id}")
        schema = _json(response).get("schema")
        if not isinstance(schema, str):
            raise RegistryError(f"registry answer for schema id {schema_id} has no schema text")
        self._schemas[schema_id] = schema
        return schema

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set a subject's compatibility level; SubjectNotFound where the subject must exist."""
        response = self._request(
            "PUT", f"config/{quote(subject, safe='')}", {"compatibility": check_level(level)}
        )
        if response.status_code == 404:
            raise SubjectNotFound(f"no subject {subject!r}: {_message(response)}", status_code=404)
        if response.status_code != 200:
            raise self._fail(response, f"setting compatibility of {subject!r}")

    def get_compatibility(self, subject: str) -> str | None:
        """Return a subject's own compatibility level, None when it has none."""
        response = self._request("GET", f"config/{quote(subject, safe='')}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"reading compatibility of {subject!r}")
        body = _json(response)
        # Confluent answers GET with compatibilityLevel (PUT with compatibility); accept both.
        level = body.get("compatibilityLevel", body.get("compatibility"))
        return str(level) if level is not None else None

    def check_compatibility(self, subject: str, schema_str: str) -> bool:
        """Return whether a schema may be the subject's next version (True for a new subject)."""
        response = self._request(
            "POST",
            f"compatibility/subjects/{quote(subject, safe='')}/versions/latest",
            {"schema": schema_str},
        )
        if response.status_code == 404:
            return True
        if response.status_code != 200:
            raise self._fail(response, f"checking compatibility with {subject!r}")
        return bool(_json(response).get("is_compatible"))

    def delete_subject(self, subject: str) -> bool:
        """Delete a subject for good (soft, then permanent); False if it did not exist.

        For the housekeeping of isolated runs (benchmarks, tests), never for the contract's
        own subjects: a consumer still holding a record written with a deleted subject's
        schema can no longer decode it if its id goes too.
        """
        path = f"subjects/{quote(subject, safe='')}"
        found = False
        for params in (None, {"permanent": "true"}):
            response = self._request("DELETE", path, params=params)
            if response.status_code == 200:
                found = True
            elif response.status_code != 404:
                raise self._fail(response, f"deleting subject {subject!r}")
        self._ids = {key: i for key, i in self._ids.items() if key[0] != subject}
        return found

    def subjects(self, page_size: int = SUBJECTS_PAGE_SIZE) -> list[str]:
        """Return every subject the registry knows, in the registry's order.

        Read in pages of `page_size` (`offset` and `limit`): a bare GET /subjects is cut at
        a server cap (Apicurio's ccompat API answers its first 1,000 and says nothing). A
        registry that ignores the paging answers everything at once, which ends the loop; one
        that honours `limit` but not `offset` would repeat a page, and that is an error, not
        a short list. Subjects created or deleted while the pages are read may be missed.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        seen: dict[str, None] = {}
        offset = 0
        while True:
            response = self._request(
                "GET", "subjects", params={"offset": offset, "limit": page_size}
            )
            if response.status_code != 200:
                raise self._fail(response, "listing subjects")
            body = response.json()
            if not isinstance(body, list):
                raise RegistryError(
                    "registry answered GET /subjects with something other than a list"
                )
            before = len(seen)
            seen.update((str(s), None) for s in body)
            if len(body) != page_size:  # the last page, or paging ignored (all at once)
                return list(seen)
            if len(seen) == before:
                raise RegistryError(
                    f"registry answered GET /subjects?offset={offset} with a page it had "
                    f"already sent: it ignores `offset`, so the listing would stop at "
                    f"{len(seen)} subjects"
                )
            offset += page_size


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise RegistryError(
            f"registry answered non-JSON (HTTP {response.status_code})",
            status_code=response.status_code,
        ) from exc
    if not isinstance(body, dict):
        raise RegistryError("registry answered a JSON value that is not an object")
    return body


def _int_field(response: httpx.Response, name: str) -> int:
    value = _json(response).get(name)
    if type(value) is not int:
        raise RegistryError(f"registry answer has no integer {name!r}: {response.text[:200]}")
    return value


def _message(response: httpx.Response) -> str:
    """Return the registry's error message (Confluent error body) or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "message" in body:
        code = body.get("error_code")
        return (
            f"{body['message']} (error_code {code})" if code is not None else str(body["message"])
        )
    return response.text[:200]
