"""The one shape of a DeadLetter record (payments.dlq): every stage and sink builds it here.

What each error field holds, whoever wrote the letter:

- `error_type`: the class name of the error that made the record unusable, e.g.
  `BadMagicByte`, `NotCopartitioned`, `InvalidRecord`, `UniqueViolation`. Precise, and it may
  change when the code is refactored: for reading and debugging.
- `reason`: a stable reason code in UPPER_SNAKE_CASE, for dashboards, alerts and scripts:
  the error's own `reason` attribute when it has one (every DecodeError has one, e.g.
  `UNKNOWN_SCHEMA_ID`, and so do the stages' errors, e.g. `NOT_COPARTITIONED`), else its class
  name in that form (`TerminalStateConflict` -> `TERMINAL_STATE_CONFLICT`). Never empty.
- `error_message`: the error's message, cut to ERROR_MESSAGE_CHARS_MAX characters.

The source coordinates are where the record was first written (a record a stage moved to
another partition names its original topic, partition and offset), and `original_key` and
`original_value` are its bytes, unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

DEAD_LETTER_RECORD: Final = "DeadLetter"
ERROR_MESSAGE_CHARS_MAX: Final = 2000

_CODE: Final = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
# Where a CamelCase name starts a new word: "TerminalStateConflict", "HTTPError", "Utf8Error".
_WORD_START: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def code_of_name(class_name: str) -> str:
    """A class name as a reason code: `TerminalStateConflict` -> `TERMINAL_STATE_CONFLICT`."""
    return _WORD_START.sub("_", class_name).upper()


def reason_code(error: BaseException | type[BaseException]) -> str:
    """The stable reason code of an error (or error class): its own `reason`, else its name's.

    Only a `reason` that is itself a code counts: some library errors carry free text under
    that name (UnicodeDecodeError's "invalid start byte").
    """
    own = getattr(error, "reason", None)
    if isinstance(own, str) and _CODE.fullmatch(own):
        return own
    kind = error if isinstance(error, type) else type(error)
    return code_of_name(kind.__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    """The error fields of a dead letter, for a writer that holds no exception any more (a
    sink's row builder ran in another thread; a conflict was found by a query)."""

    error_type: str
    message: str
    reason: str = ""  # empty: the code of `error_type` (see code_of_name)

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        return cls(type(error).__name__, str(error), reason_code(error))

    @property
    def reason_code(self) -> str:
        return self.reason or code_of_name(self.error_type)


def dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    stage: str,
    error: BaseException | Failure,
    failed_at_ms: int,
) -> dict[str, Any]:
    """The DeadLetter value for a record a stage or sink gave up on (see the module doc)."""
    failure = error if isinstance(error, Failure) else Failure.of(error)
    return {
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "original_key": key,
        "original_value": value,
        "stage": stage,
        "error_type": failure.error_type,
        "error_message": failure.message[:ERROR_MESSAGE_CHARS_MAX],
        "failed_at": failed_at_ms,
        "reason": failure.reason_code,
    }
