"""Strict pre-encode checks compiled from a schema: fastavro silently truncates floats and bools."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from schemas.errors import EncodeError

# fastavro writes 1.5 to a long as 1, True as 1, and a naive datetime as *local* time: all three
# would corrupt money or timestamps without an error, so every value is checked before writing.
# This runs for every record written, so a check builds no path text while values are good:
# a mismatch collects its field path on the way out (see _Mismatch.suffix).
Check = Callable[[Any], None]

_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
_TIMESTAMP_TYPES: Final = frozenset({"timestamp-millis", "timestamp-micros"})


class _Mismatch(Exception):
    """Internal: a value does not match its schema; `suffix` is its path below the node that
    is being checked, prefixed by each enclosing record, array or map as the error passes."""

    def __init__(self, problem: str, suffix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.suffix = suffix


def _show(value: Any) -> str:
    """Describe a value briefly for an error message."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _integer(kind: str, low: int, high: int) -> Check:
    def check(value: Any) -> None:
        if type(value) is not int:
            raise _Mismatch(f"expected {kind} (a Python int), got {_show(value)}")
        if not low <= value <= high:
            raise _Mismatch(f"{value} is out of range for {kind}")

    return check


def _timestamp(kind: str) -> Check:
    as_int = _integer("long", _LONG_MIN, _LONG_MAX)

    def check(value: Any) -> None:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise _Mismatch(f"{kind} needs a timezone-aware datetime, got a naive one")
            return
        try:
            as_int(value)
        except _Mismatch:
            raise _Mismatch(
                f"expected {kind} (aware datetime or int epoch), got {_show(value)}"
            ) from None

    return check


def _of_type(kind: str, types: tuple[type, ...]) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _Mismatch(f"expected {kind}, got {_show(value)}")

    return check


def _null(value: Any) -> None:
    if value is not None:
        raise _Mismatch(f"expected null, got {_show(value)}")


def _string(value: Any) -> None:
    if type(value) is not str:
        raise _Mismatch(f"expected string, got {_show(value)}")


_PRIMITIVE_CHECKS: Final[dict[str, Check]] = {
    "null": _null,
    "boolean": _of_type("boolean", (bool,)),
    "int": _integer("int", _INT_MIN, _INT_MAX),
    "long": _integer("long", _LONG_MIN, _LONG_MAX),
    "float": _of_type("float", (int, float)),
    "double": _of_type("double", (int, float)),
    "bytes": _of_type("bytes", (bytes, bytearray)),
    "string": _string,
}


def _enum(name: str, symbols: list[str]) -> Check:
    allowed = frozenset(symbols)

    def check(value: Any) -> None:
        if type(value) is not str or value not in allowed:
            raise _Mismatch(f"expected one of {name} {sorted(allowed)}, got {_show(value)}")

    return check


def _array(items: Check) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"expected array (list), got {_show(value)}")
        for index, item in enumerate(value):
            try:
                items(item)
            except _Mismatch as exc:
                exc.suffix = f"[{index}]{exc.suffix}"
                raise

    return check


def _map(values: Check) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, Mapping):
            raise _Mismatch(f"expected map (dict), got {_show(value)}")
        for key, item in value.items():
            if type(key) is not str:
                raise _Mismatch(f"map keys must be strings, got {_show(key)}")
            try:
                values(item)
            except _Mismatch as exc:
                exc.suffix = f"[{key!r}]{exc.suffix}"
                raise

    return check


def _union(branches: list[Check], described: str) -> Check:
    if len(branches) == 2 and branches[0] is _null:
        other = branches[1]

        def optional(value: Any) -> None:
            if value is not None:
                other(value)

        return optional

    def check(value: Any) -> None:
        for branch in branches:
            try:
                branch(value)
            except _Mismatch:
                continue
            return
        raise _Mismatch(f"{_show(value)} matches no branch of {described}")

    return check


def _record(name: str, fields: list[tuple[str, Check, bool]]) -> Check:
    known = frozenset(f for f, _, _ in fields)

    def check(value: Any) -> None:
        if type(value) is not dict and not isinstance(value, Mapping):
            raise _Mismatch(f"expected record {name} (dict), got {_show(value)}")
        present = 0
        for field, field_check, has_default in fields:
            if field in value:
                present += 1
                try:
                    field_check(value[field])
                except _Mismatch as exc:
                    exc.suffix = f".{field}{exc.suffix}"
                    raise
            elif not has_default:
                raise _Mismatch("required field is missing", f".{field}")
        if present != len(value):
            unknown = sorted(str(k) for k in value if k not in known)
            raise _Mismatch(f"unknown field(s) {unknown} for record {name}")

    return check


def _compile(node: Any, named: dict[str, Check], ns: str | None) -> Check:
    """Build the check of one schema node; `named` holds the checks of types defined so far."""
    if isinstance(node, str):
        if node in _PRIMITIVE_CHECKS:
            return _PRIMITIVE_CHECKS[node]
        full = node if "." in node or not ns else f"{ns}.{node}"
        # Late binding keeps recursive types (a record that contains itself) working.
        return lambda value: named[full](value)
    if isinstance(node, list):
        return _union([_compile(b, named, ns) for b in node], f"union {node!r:.80}")
    kind = node["type"]
    if node.get("logicalType") in _TIMESTAMP_TYPES and kind == "long":
        return _timestamp(node["logicalType"])
    if kind in ("record", "enum", "fixed"):
        name = node["name"]
        full_ns = node.get("namespace", ns)
        full = name if "." in name or not full_ns else f"{full_ns}.{name}"
        if kind == "enum":
            named[full] = _enum(name, node["symbols"])
        elif kind == "fixed":
            named[full] = _of_type(f"fixed {name}", (bytes, bytearray))
        else:
            inner_ns = full.rpartition(".")[0] or None
            named[full] = lambda value: None  # placeholder while fields compile
            fields = [
                (f["name"], _compile(f["type"], named, inner_ns), "default" in f)
                for f in node["fields"]
            ]
            named[full] = _record(name, fields)
        return named[full]
    if kind == "array":
        return _array(_compile(node["items"], named, ns))
    if kind == "map":
        return _map(_compile(node["values"], named, ns))
    return _compile(kind, named, ns)


def compile_check(schema: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], None]:
    """Compile a record schema (JSON form) into a check that raises EncodeError naming the field."""
    record_check = _compile(dict(schema), {}, None)
    root = str(schema.get("name", "record")).rpartition(".")[2]

    def check(record: Mapping[str, Any]) -> None:
        try:
            record_check(record)
        except _Mismatch as exc:
            path = root + exc.suffix
            raise EncodeError(f"{path}: {exc.problem}", field=path) from None

    return check
