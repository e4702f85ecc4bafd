"""Topic names as the stream processors see them (a prefix lets tests use their own copies)."""

from __future__ import annotations

from dataclasses import dataclass

from settle import topics as contract

CHANNELS = contract.CHANNELS


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The contract's topic names (settle.topics), each with an optional prefix."""

    prefix: str = ""

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS

    @property
    def requested(self) -> str:
        return self.prefix + contract.PAYMENTS_REQUESTED

    @property
    def rejected(self) -> str:
        return self.prefix + contract.PAYMENTS_REJECTED

    @property
    def dlq(self) -> str:
        return self.prefix + contract.PAYMENTS_DLQ

    @property
    def confirmations(self) -> str:
        return self.prefix + contract.CHANNEL_CONFIRMATIONS

    @property
    def results(self) -> str:
        return self.prefix + contract.RECONCILIATION_RESULTS

    @property
    def batches(self) -> str:
        return self.prefix + contract.SETTLEMENTS_BATCHES

    @property
    def merchants(self) -> str:
        return self.prefix + contract.MERCHANTS

    def routed(self, channel: str) -> str:
        return self.prefix + contract.routed_topic(channel)

    @property
    def all_routed(self) -> tuple[str, ...]:
        return tuple(self.routed(c) for c in CHANNELS)

    @property
    def external(self) -> tuple[str, ...]:
        """The topics clients outside the pipeline write (any partitioner, any key order)."""
        return tuple(self.prefix + name for name in contract.EXTERNAL_TOPICS)

    @property
    def all(self) -> tuple[str, ...]:
        """Every contract topic under this prefix (tests delete their copies with it)."""
        return tuple(self.prefix + name for name in contract.TOPIC_NAMES)
