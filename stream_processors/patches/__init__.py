"""Every change this project makes to faust-streaming, mode-streaming and aiokafka internals.

Each module here is one patch: its docstring names the upstream behaviour or bug it answers
and the test that proves it; its ``UPSTREAM`` lists the upstream functions and methods it
copies, wraps or relies on, each fingerprinted in
tests/unit/stream_processors/test_patch_fingerprints.py (an
upgrade that changes any of them fails that test until someone re-verifies the patch);
its ``install()`` applies it, idempotently.

The patches copy private code of exactly the versions in ``VERIFIED``. ``install_all``
refuses any other installed version before it patches anything (``UnverifiedUpstream``, a
SettleError: the worker command prints it and exits 1). pyproject.toml pins these versions
and constraints.txt pins everything else, so ``make venv`` installs what the tests ran.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Final

from settlement.errors import SettleError

# The upstream versions every patch below was read against and tested with.
VERIFIED: Final[Mapping[str, str]] = {
    "faust-streaming": "0.15.3",
    "mode-streaming": "0.7.1",
    "aiokafka": "0.14.0",
}

# One module per patch, in the order they are installed (the order does not matter: no
# patch touches what another one patches).
PATCHES: Final = (
    "seek_to_committed",
    "perform_seek",
    "consumer_seek",
    "drain_messages",
    "new_offset",
    "ack",
    "flow_resume",
    "producer_drain",
    "consumer_fetch",
    "json_codec",
    "changelog_delivery",
    "producer_buffer_flush",
)


class UnverifiedUpstream(SettleError):
    """An installed faust-streaming, mode-streaming or aiokafka the patches were not verified
    against."""


def installed_version(package: str) -> str | None:
    """The installed version of a distribution (None when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_versions(version_of: Callable[[str], str | None] | None = None) -> None:
    """Raise UnverifiedUpstream unless every package in VERIFIED is installed at its version."""
    version_of = version_of or installed_version
    wrong = {name: version_of(name) for name in VERIFIED}
    wrong = {name: found for name, found in wrong.items() if found != VERIFIED[name]}
    if not wrong:
        return
    found = ", ".join(f"{name} {version or '(not installed)'} (verified: {VERIFIED[name]})"
                      for name, version in sorted(wrong.items()))
    pins = " ".join(f"{name}=={version}" for name, version in VERIFIED.items())
    raise UnverifiedUpstream(
        f"the framework patches in stream_processors/patches were verified against {pins}, "
        f"but found {found}. Install the pinned versions (`make venv`, or "
        f"`pip install -c constraints.txt -e .`), or re-verify every patch against the new "
        "version (tests/unit/stream_processors/test_patch_fingerprints.py lists what each "
        f"copies) and update "
        f"stream_processors.patches.VERIFIED")


def install_all(version_of: Callable[[str], str | None] | None = None) -> None:
    """Check the upstream versions, then install every patch (idempotent)."""
    check_versions(version_of)
    for name in PATCHES:
        importlib.import_module(f"{__name__}.{name}").install()


# What each patched attribute held before the first patch replaced it: the upstream function
# (the fingerprint test reads its source even after a patch is installed).
ORIGINALS: dict[str, Any] = {}


def qualified_name(owner: Any, attr: str) -> str:
    """"module:Class.attr" (or "module:attr" for a module's own attribute)."""
    if isinstance(owner, type):
        return f"{owner.__module__}:{owner.__qualname__}.{attr}"
    return f"{owner.__name__}:{attr}"


def replace(owner: Any, attr: str, new: Any) -> bool:
    """Set ``owner.attr`` to ``new``, remembering the upstream value; False when already set."""
    current = vars(owner).get(attr)
    if current is new:
        return False
    ORIGINALS.setdefault(qualified_name(owner, attr), current)
    setattr(owner, attr, new)
    return True


def upstream(name: str) -> Any:
    """The upstream object named "module:qualname", as it was before any patch."""
    if name in ORIGINALS:
        return ORIGINALS[name]
    module_name, _, path = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in path.split("."):
        obj = vars(obj)[part] if isinstance(obj, type) else getattr(obj, part)
    return obj


def source_object(obj: Any) -> Any:
    """What `inspect.getsource` can read for a class attribute: the function under a
    property, staticmethod, classmethod or mode ServiceTask."""
    if isinstance(obj, property):
        return obj.fget
    if isinstance(obj, staticmethod | classmethod):
        return obj.__func__
    return getattr(obj, "fun", obj)  # mode.services.ServiceTask keeps the function as .fun
