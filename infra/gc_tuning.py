"""The garbage collector of a long-running worker or sink: its thresholds and a frozen start-up.

CPython's cyclic collector runs a young (generation 0) collection every 700 container
allocations net of frees, and a full one whenever the survivors have grown by a quarter. A
faust stage allocates several containers per record that die by reference counting a moment
later, so it ran about 1,000-2,000 young collections per 40,000 payments, and about 15 full
ones, each walking every live object: the ~80,000 objects of the imported libraries and, in
reconcile, every state in its table (about 170 ms a full collection there). Measured with
`settle bench stages --count 40000 --runs 1` (README, *Performance*): GC pauses took 5-11 %
of each stage's CPU with Python's defaults, and these settings took 5-20 % off it.

Two settings, both applied once at start-up, before the worker's loop runs:

- `SETTLE_GC_THRESHOLD` (default `50000,20,10`): a young collection every 50,000 net
  allocations. Cyclic garbage (what only this collector frees) is still collected, after at
  most that many objects, a few MB; acyclic garbage never waited for the collector anyway.
- `SETTLE_GC_FREEZE` (default `on`): collect once, then move every object alive at start-up
  (modules, classes, the app) to the permanent generation, so no full collection walks them
  again. They are still freed by reference counting; only a cycle among them that becomes
  garbage later would stay, and start-up objects live as long as the process.

`SETTLE_GC_THRESHOLD=700,10,10 SETTLE_GC_FREEZE=off` gives back Python's defaults.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass

from settlement.errors import SettleError

DEFAULT_THRESHOLD = (50_000, 20, 10)
_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


class GcConfigError(SettleError):
    """A garbage-collector setting is malformed."""


@dataclass(frozen=True, slots=True)
class GcSettings:
    threshold: tuple[int, int, int] = DEFAULT_THRESHOLD
    freeze: bool = True


def parse_threshold(raw: str) -> tuple[int, int, int]:
    """`"50000,20,10"` (or just the first number: the others keep the default)."""
    parts = [p.strip() for p in raw.split(",")]
    if not 1 <= len(parts) <= 3:
        raise GcConfigError(f"SETTLE_GC_THRESHOLD={raw!r}: expected 1 to 3 comma-separated "
                            "integers, e.g. 50000,20,10")
    values = list(DEFAULT_THRESHOLD)
    for i, part in enumerate(parts):
        try:
            values[i] = int(part)
        except ValueError as exc:
            raise GcConfigError(f"SETTLE_GC_THRESHOLD={raw!r}: {part!r} is not an "
                                "integer") from exc
    if values[0] < 1:
        # gc.set_threshold(0) switches the collector off: cyclic garbage would pile up
        # until the process is killed for its memory.
        raise GcConfigError(f"SETTLE_GC_THRESHOLD={raw!r}: the first threshold must be 1 or "
                            "more (0 would switch the cyclic collector off)")
    if values[1] < 1 or values[2] < 1:
        raise GcConfigError(f"SETTLE_GC_THRESHOLD={raw!r}: every threshold must be 1 or more")
    return values[0], values[1], values[2]


def load(env: Mapping[str, str]) -> GcSettings:
    """The runtime's GC part (infra.config.load calls it with the environment)."""
    raw_threshold = env.get("SETTLE_GC_THRESHOLD", "").strip()
    threshold = parse_threshold(raw_threshold) if raw_threshold else DEFAULT_THRESHOLD
    raw_freeze = env.get("SETTLE_GC_FREEZE", "").strip()
    if raw_freeze.lower() in ("", *_ON):
        freeze = True
    elif raw_freeze.lower() in _OFF:
        freeze = False
    else:
        raise GcConfigError(f"SETTLE_GC_FREEZE={raw_freeze!r}: expected on or off")
    return GcSettings(threshold, freeze)


def apply(cfg: GcSettings) -> str:
    """Set the thresholds, freeze what is alive now if asked; a line saying what was done."""
    gc.set_threshold(*cfg.threshold)
    frozen = ""
    if cfg.freeze:
        gc.collect()  # what is garbage already must not be frozen with the rest
        gc.freeze()
        frozen = f", {gc.get_freeze_count():,} start-up objects frozen"
    return f"gc thresholds {','.join(map(str, cfg.threshold))}{frozen}"
