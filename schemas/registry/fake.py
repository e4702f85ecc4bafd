"""An in-memory schema registry for unit tests."""

from __future__ import annotations

from schemas.errors import SchemaNotFound
from schemas.registry.protocol import check_level


class InMemoryRegistry:
    """A registry fake for UNIT tests: ids in registration order, compatibility never checked."""

    def __init__(self) -> None:
        self._by_content: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._versions: dict[str, list[int]] = {}
        self._levels: dict[str, str] = {}
        self.requests = 0

    def register(self, subject: str, schema_str: str) -> int:
        """Register a schema (same text, same id, like Confluent) and return its id."""
        self.requests += 1
        schema_id = self._by_content.get(schema_str)
        if schema_id is None:
            schema_id = len(self._schemas) + 1
            self._by_content[schema_str] = schema_id
            self._schemas[schema_id] = schema_str
        versions = self._versions.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def lookup(self, subject: str, schema_str: str) -> int:
        """Return the id of a schema registered under a subject."""
        self.requests += 1
        schema_id = self._by_content.get(schema_str)
        if schema_id is None or schema_id not in self._versions.get(subject, []):
            raise SchemaNotFound(
                f"schema is not registered under subject {subject!r}", status_code=404
            )
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """Return the schema text of an id."""
        self.requests += 1
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise SchemaNotFound(
                f"registry has no schema with id {schema_id}", status_code=404
            ) from None

    def set_compatibility(self, subject: str, level: str) -> None:
        """Record a subject's compatibility level (never enforced)."""
        self._levels[subject] = check_level(level)

    def get_compatibility(self, subject: str) -> str | None:
        """Return a subject's compatibility level, None when unset."""
        return self._levels.get(subject)

    def check_compatibility(self, subject: str, schema_str: str) -> bool:
        """Return True: the fake does not check compatibility."""
        return True

    def subjects(self) -> list[str]:
        """Return every subject with at least one version."""
        return sorted(self._versions)
