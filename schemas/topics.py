"""Which contract record each topic's values carry, and their registry subject."""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

ROUTED_TOPIC_PREFIX: Final = "payments.routed."

TOPIC_RECORDS: Final = MappingProxyType(
    {
        "payments.requested": "PaymentRequested",
        "payments.rejected": "PaymentRejected",
        "payments.dlq": "DeadLetter",
        "payments.routed.alipay": "RoutedPayment",
        "payments.routed.wechat_pay": "RoutedPayment",
        "payments.routed.unionpay": "RoutedPayment",
        "payments.routed.card": "RoutedPayment",
        "channel.confirmations": "ChannelConfirmation",
        "reconciliation.results": "ReconciliationResult",
        "settlements.batches": "SettlementBatch",
        "merchants": "Merchant",
    }
)


def value_subject(topic: str) -> str:
    """Return the TopicNameStrategy subject of a topic's values: `<topic>-value`."""
    return f"{topic}-value"


def routed_topic(channel: str) -> str:
    """Return the routed topic of a Channel symbol: WECHAT_PAY -> payments.routed.wechat_pay."""
    return ROUTED_TOPIC_PREFIX + channel.lower()
