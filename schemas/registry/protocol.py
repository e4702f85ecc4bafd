"""What the codec and registration need of a schema registry, and its compatibility levels."""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

COMPATIBILITY_LEVELS: Final = frozenset(
    {
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    }
)


@runtime_checkable
class SchemaLookup(Protocol):
    """Anything that returns a registered schema's text by its id (all a decoder needs)."""

    def get_schema(self, schema_id: int) -> str:
        """Return the schema text registered under `schema_id`."""
        ...


class SchemaRegistry(SchemaLookup, Protocol):
    """The registry operations the codec and registration need; RegistryClient implements them."""

    def register(self, subject: str, schema_str: str) -> int:
        """Register a schema under a subject (idempotent) and return its id."""
        ...

    def lookup(self, subject: str, schema_str: str) -> int:
        """Return the id of a schema already registered under a subject."""
        ...

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set a subject's compatibility level."""
        ...

    def get_compatibility(self, subject: str) -> str | None:
        """Return a subject's compatibility level, None when it has none of its own."""
        ...

    def check_compatibility(self, subject: str, schema_str: str) -> bool:
        """Return whether a schema may be registered as the subject's next version."""
        ...

    def subjects(self) -> list[str]:
        """Return every subject the registry knows."""
        ...


def check_level(level: str) -> str:
    if level not in COMPATIBILITY_LEVELS:
        raise ValueError(
            f"unknown compatibility level {level!r}; one of {sorted(COMPATIBILITY_LEVELS)}"
        )
    return level
