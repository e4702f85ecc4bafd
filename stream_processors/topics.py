"""Topic names as the stream processors see them (a prefix lets tests use their own copies)."""

from __future__ import annotations

from dataclasses import dataclass

CHANNELS = ("alipay", "wechat_pay", "unionpay", "card")


@dataclass(frozen=True, slots=True)
class TopicNames:
    prefix: str = ""

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS

    @property
    def requested(self) -> str:
        return self.prefix + "payments.requested"

    @property
    def rejected(self) -> str:
        return self.prefix + "payments.rejected"

    @property
    def dlq(self) -> str:
        return self.prefix + "payments.dlq"

    @property
    def confirmations(self) -> str:
        return self.prefix + "channel.confirmations"

    @property
    def results(self) -> str:
        return self.prefix + "reconciliation.results"

    @property
    def batches(self) -> str:
        return self.prefix + "settlements.batches"

    @property
    def merchants(self) -> str:
        return self.prefix + "merchants"

    def routed(self, channel: str) -> str:
        return f"{self.prefix}payments.routed.{channel}"

    @property
    def all_routed(self) -> tuple[str, ...]:
        return tuple(self.routed(c) for c in CHANNELS)
