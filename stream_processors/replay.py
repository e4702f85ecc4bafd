"""What a stateful stage re-sends when it reads an input or a tick again after a crash.

faust writes a table's changelog and the stage's outputs through one producer with no
transaction, so a worker can die (SIGKILL, or the DeliveryGuard's exit on a refused output)
after a state change reached the changelog but before its outputs did. Restarted, it re-reads
the inputs and ticks since its last commit and finds them already applied: without more, what
they produced would never be published. So the stages keep, in the table:

- per state, the encoded outputs of its last few applied inputs under their source
  coordinates (reconcile: `remembered`, `emitted_by`);
- per partition, a tick outbox: what each recent tick of the partition decided, under the
  tick's coordinates (reconcile: the payments it decided; settle: the batches it closed).

An input or tick read again re-sends exactly what it produced; downstream dedupes (result_id,
payment_id, batch_id).
"""

from __future__ import annotations

from typing import Any, Final

from stream_processors.outputs import Output

EMITTED_KEEP: Final = 8
TICK_OUTBOX_KEEP: Final = 16


# -- inputs ---------------------------------------------------------------------------------


def emitted_by(raw: Any, ref: bytes) -> list[str] | None:
    """The encoded outputs the input at `ref` produced, if this state already applied it."""
    if not isinstance(raw, dict):
        return None
    wanted = ref.decode()
    for source, values in raw.get("emitted", ()):
        if source == wanted:
            return list(values)
    return None


def kept(raw: Any) -> list[list[Any]] | None:
    """The state's remembered inputs and their outputs, as stored."""
    return list(raw.get("emitted", [])) if isinstance(raw, dict) else None


def remembered(raw: Any, ref: bytes, outputs: list[Output]) -> list[list[Any]]:
    """The state's recent inputs plus this one, with what each produced (hex values)."""
    entries = (kept(raw) or [])[-(EMITTED_KEEP - 1):]
    return [*entries, [ref.decode(), [out.value.hex() for out in outputs]]]


# -- ticks ----------------------------------------------------------------------------------


def tick_replay(outbox: Any, ref: bytes) -> list[Any] | None:
    """What the tick at `ref` decided, if this partition already processed that tick.

    `outbox` is the partition's outbox value: {"partition": p, "outbox": [[tick ref,
    decided], ...]}, or None.
    """
    if not isinstance(outbox, dict):
        return None
    wanted = ref.decode()
    for source, decided in outbox.get("outbox", ()):
        if source == wanted:
            return list(decided)
    return None


def with_tick(outbox: Any, partition: int, ref: bytes, decided: list[Any]) -> dict[str, Any]:
    """The partition's outbox value with this tick's decisions added (the last few kept)."""
    entries = list((outbox or {}).get("outbox", []))[-(TICK_OUTBOX_KEEP - 1):]
    return {"partition": partition, "outbox": [*entries, [ref.decode(), decided]]}
