"""The Avro contract: every .avsc loaded once, built into self-contained schemas to register."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final, cast

import fastavro

from schemas.errors import SchemaError

NAMESPACE: Final = "settle.payments"
_NAMED_KINDS: Final = frozenset({"record", "enum", "fixed"})
_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)


@dataclass(frozen=True)
class _Contract:
    """Every named type of the contract, by full name, as written in its .avsc file."""

    types: dict[str, dict[str, Any]]
    files: dict[str, str]


def _snake(name: str) -> str:
    """Return the .avsc file stem for a type name: PaymentRequested -> payment_requested."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _full_name(name: str, namespace: str | None) -> str:
    """Resolve a type name against the enclosing namespace, as the Avro spec does."""
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


@cache
def _contract() -> _Contract:
    """Load and check every .avsc file of the package, once per process."""
    types: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    for entry in sorted(resources.files("schemas").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".avsc"):
            continue
        try:
            doc = json.loads(entry.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SchemaError(f"{entry.name} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("type") not in _NAMED_KINDS:
            raise SchemaError(f"{entry.name} must hold exactly one named type (record or enum)")
        name = doc.get("name", "")
        if doc.get("namespace") != NAMESPACE:
            raise SchemaError(f"{entry.name}: namespace must be {NAMESPACE!r}")
        if entry.name != f"{_snake(name)}.avsc":
            raise SchemaError(f"{entry.name} defines {name!r}; expected {_snake(name)}.avsc")
        full = _full_name(name, NAMESPACE)
        if full in types:
            raise SchemaError(f"{full} is defined twice ({files[full]}, {entry.name})")
        types[full] = doc
        files[full] = entry.name
    if not types:
        raise SchemaError("no .avsc files found in the schemas package")
    return _Contract(types=types, files=files)


def _inline(node: Any, types: dict[str, dict[str, Any]], defined: set[str], ns: str | None) -> Any:
    """Return `node` with each named type defined in full at its first use, by name after that."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _full_name(node, ns)
        if full in defined:
            return full
        if full not in types:
            raise SchemaError(f"unknown type {node!r}")
        return _inline(types[full], types, defined, ns)
    if isinstance(node, list):
        return [_inline(branch, types, defined, ns) for branch in node]
    if not isinstance(node, dict):
        raise SchemaError(f"not an Avro schema: {node!r}")
    kind = node.get("type")
    if kind in _NAMED_KINDS:
        full = _full_name(node["name"], node.get("namespace", ns))
        if full in defined:
            return full
        defined.add(full)
        out = dict(node)
        if kind == "record":
            inner_ns = full.rpartition(".")[0] or None
            out["fields"] = [
                {**f, "type": _inline(f["type"], types, defined, inner_ns)} for f in node["fields"]
            ]
        return out
    if kind == "array":
        return {**node, "items": _inline(node["items"], types, defined, ns)}
    if kind == "map":
        return {**node, "values": _inline(node["values"], types, defined, ns)}
    return {**node, "type": _inline(kind, types, defined, ns)}


def _resolve(name: str) -> str:
    """Return the full name of a contract type given its short or full name."""
    full = _full_name(name, NAMESPACE)
    if full not in _contract().types:
        raise SchemaError(f"no such type in the contract: {name!r}")
    return full


@cache
def schema_str_for(name: str) -> str:
    """Return the self-contained schema JSON to register for a record (named types inlined)."""
    full = _resolve(name)
    contract = _contract()
    inlined = _inline(contract.types[full], contract.types, set(), NAMESPACE)
    # Compact and deterministic: registries deduplicate by content, so the same text every time
    # means the same schema id every time.
    return json.dumps(inlined, separators=(",", ":"), ensure_ascii=True)


@cache
def schema_for(name: str) -> dict[str, Any]:
    """Return the parsed fastavro schema of a record (shared: do not mutate it)."""
    try:
        parsed = cast(dict[str, Any], fastavro.parse_schema(json.loads(schema_str_for(name))))
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"{name}: fastavro cannot parse the schema: {exc}") from exc
    return parsed


def record_names() -> tuple[str, ...]:
    """Return the short names of every record in the contract, sorted."""
    return tuple(sorted(t["name"] for t in _contract().types.values() if t["type"] == "record"))


def type_names() -> tuple[str, ...]:
    """Return the short names of every named type (records and enums) in the contract, sorted."""
    return tuple(sorted(t["name"] for t in _contract().types.values()))


def file_for(name: str) -> str:
    """Return the .avsc file name that defines a contract type."""
    return _contract().files[_resolve(name)]


def definition_for(name: str) -> dict[str, Any]:
    """Return a copy of a type's definition exactly as written in its .avsc file."""
    result: dict[str, Any] = json.loads(json.dumps(_contract().types[_resolve(name)]))
    return result
