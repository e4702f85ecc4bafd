"""Errors that pass by themselves: the event is retried, never dead-lettered.

faust checks, on a table's first write, that its changelog topic has as many partitions as
the source topic. Right after a worker creates the changelog topic, the consumer's metadata
may still show it with 0 partitions, and the write raises PartitionsMismatch; a moment
later the same write succeeds. Dead-lettering the event would turn a valid payment into a
dead letter (seen in the fault-injection runs: a whole run's payments dead-lettered).

Matched by name so this module (and the processors) stay importable without faust (the
Quix Streams peer runs the validate processor in its own environment).
"""

from __future__ import annotations

from typing import Final

# (module prefix, class name) of errors that clear up when retried.
_TRANSIENT: Final = frozenset({("faust", "PartitionsMismatch")})


def is_transient(exc: BaseException) -> bool:
    """True for a table-store error that clears up on its own (retry the event)."""
    cls = type(exc)
    return any(cls.__module__.startswith(module) and cls.__name__ == name
               for module, name in _TRANSIENT)
