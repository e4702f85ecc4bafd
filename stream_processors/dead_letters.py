"""Dead letters of the stages: the shared DeadLetter record, encoded, with its source header."""

from __future__ import annotations

from typing import Any

from schemas.codec import AvroSerializer
from schemas.dead_letters import DEAD_LETTER_RECORD, dead_letter
from stream_processors.outputs import SOURCE_HEADER, Output, source_ref


class DeadLetters:
    """payments.dlq records of one stage, built by schemas.dead_letters.dead_letter.

    The coordinates given are the record's original ones (a moved record's, not the
    placement topic's): the letter and its source header name them.
    """

    def __init__(self, registry: Any, topic: str, stage: str) -> None:
        self.serializer = AvroSerializer(registry, topic, DEAD_LETTER_RECORD)
        self.topic = topic
        self.stage = stage

    def letter(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        exc: BaseException,
        failed_at_ms: int,
    ) -> Output:
        record = dead_letter(key=key, value=value, topic=topic, partition=partition,
                             offset=offset, stage=self.stage, error=exc,
                             failed_at_ms=failed_at_ms)
        ref = source_ref(topic, partition, offset).encode()
        return Output(self.topic, key, self.serializer.encode(record), ((SOURCE_HEADER, ref),))


def error_label(exc: BaseException) -> str:
    """The `error_type` label of settle_dead_letters_total (bounded): the error's reason code
    when it has one, else its class name. Not a dead letter's field (see schemas.dead_letters)."""
    return str(getattr(exc, "reason", "") or type(exc).__name__)
