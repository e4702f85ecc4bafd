"""What a stage publishes for one input: records with the input's coordinates in a header."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

# Every record written for an input carries the input's coordinates, so `settle audit ingest`
# can prove from the topics alone that each input ended in exactly one place.
SOURCE_HEADER: Final = "settle-source"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def source_ref(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


@dataclass(frozen=True, slots=True)
class Output:
    """One record to publish: topic, key bytes, encoded value, headers, partition (None: the
    producer's partitioner, murmur2 of the key)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
