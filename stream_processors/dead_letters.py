"""Dead letters for the reconcile and settle stages: original bytes, coordinates and the error."""

from __future__ import annotations

from typing import Any

from schemas.codec import AvroSerializer
from stream_processors.outputs import SOURCE_HEADER, Output, source_ref


class DeadLetters:
    """Builds payments.dlq records in the shape the validate stage writes."""

    def __init__(self, registry: Any, topic: str, stage: str) -> None:
        self.serializer = AvroSerializer(registry, topic, "DeadLetter")
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
        reason = str(getattr(exc, "reason", "") or "")
        record = {
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "original_key": key,
            "original_value": value,
            "stage": self.stage,
            "error_type": type(exc).__name__,
            "error_message": str(exc)[:2000],
            "failed_at": failed_at_ms,
            "reason": reason,
        }
        ref = source_ref(topic, partition, offset).encode()
        return Output(self.topic, key, self.serializer.encode(record), ((SOURCE_HEADER, ref),))


def error_label(exc: BaseException) -> str:
    """A bounded metrics label for an error: its stable reason code, else its class name."""
    return str(getattr(exc, "reason", "") or type(exc).__name__)
