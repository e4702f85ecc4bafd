"""A sink's batch decoded (its rows built), now or ahead of its write in a helper thread.

Read-ahead: with a backlog (a full batch already fetched), the next batch is decoded and its
rows built in a helper thread while PostgreSQL works on the current one; only Python work
overlaps (fastavro and the row builders hold the GIL, psycopg releases it while it waits).
Batches are still written, and their offsets committed, one transaction at a time and in
order; a read-ahead is used only for exactly the batch it was made for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from schemas.codec import AvroDeserializer
from schemas.errors import DecodeError
from sinks.base import DeadRecord, SourceRecord, Writer

log = logging.getLogger(__name__)


def coords(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record (never None once consumed)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


@dataclass(slots=True)
class Prepared:
    """A batch decoded (and its rows built, if the writer can) ahead of its write."""

    dead: list[DeadRecord]
    decoded: list[SourceRecord]
    built: Any = None


Decoders = AvroDeserializer | Mapping[str, AvroDeserializer]


def decode_batch(
    decoder: Decoders, batch: Sequence[Message]
) -> tuple[list[SourceRecord], list[DeadRecord]]:
    """Every record with its coordinates and decoded value; the undecodable ones also dead.

    `decoder`: one for every record, or one per topic (a sink reading several topics decodes
    each into its own contract record).
    """
    sources: list[SourceRecord] = []
    dead: list[DeadRecord] = []
    for msg in batch:
        topic, partition, offset = coords(msg)
        value = msg.value()
        one = decoder if isinstance(decoder, AvroDeserializer) else decoder[topic]
        try:
            src = SourceRecord(topic, partition, offset, msg.key(), value, one.decode(value))
        except DecodeError as exc:
            src = SourceRecord(topic, partition, offset, msg.key(), value)
            dead.append(DeadRecord.of(src, exc))
        sources.append(src)
    return sources, dead


def prepare(
    decoder: Decoders, writer: Writer, batch: Sequence[Message], build: bool = False
) -> Prepared:
    """Decode a batch, and build its rows ahead if asked (pure: no database, no Kafka)."""
    sources, dead = decode_batch(decoder, batch)
    decoded = [s for s in sources if s.record is not None]
    builder = getattr(writer, "build", None) if build else None
    built = builder(decoded) if builder is not None and decoded else None
    return Prepared(dead, decoded, built)


class ReadAhead:
    """At most one batch in preparation in one helper thread (started on first use)."""

    def __init__(self, name: str, stage: str) -> None:
        self._name = name
        self._stage = stage
        self._ahead: tuple[list[Message], Future[Prepared]] | None = None
        self._helper: ThreadPoolExecutor | None = None

    @property
    def busy(self) -> bool:
        return self._ahead is not None

    def start(self, messages: list[Message],
              work: Callable[[list[Message]], Prepared]) -> None:
        """Prepare `messages` with `work` in the helper thread."""
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-ahead")
        self._ahead = (messages, self._helper.submit(work, messages))

    def take(self, batch: list[Message]) -> Prepared | None:
        """The read-ahead of exactly this batch, if there is one; waits for the helper."""
        if self._ahead is None:
            return None
        messages, future = self._ahead
        try:
            ready = future.result()
        except Exception as exc:  # e.g. the registry went away: decode again here
            log.debug("%s: read-ahead failed (%s); decoding inline", self._stage, exc)
            self._ahead = None
            return None
        same = len(messages) == len(batch) and all(
            a is b for a, b in zip(messages, batch, strict=True)
        )  # by identity: Message's own == compares contents
        if not same:
            return None  # made for a later batch (this one is retried) or made stale
        self._ahead = None
        return ready

    def close(self) -> None:
        if self._helper is not None:
            self._helper.shutdown(wait=True, cancel_futures=True)
            self._helper = None
        self._ahead = None
