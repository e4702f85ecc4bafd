"""Reconcile's records: routed payments and confirmations into the core's types, results out."""

from __future__ import annotations

from typing import Any

from schemas.codec import to_epoch_ms
from settlement.errors import SettleError
from settlement.reconciliation import MATCHED, Confirmation, ResultRecord, RoutedInfo


class ChannelTopicMismatch(SettleError, ValueError):
    """A routed payment names another channel than the topic it was routed on."""

    reason = "CHANNEL_TOPIC_MISMATCH"


def routed_info(record: dict[str, Any], topic_channel: str) -> RoutedInfo:
    """A RoutedPayment record read from the routed topic of `topic_channel`."""
    channel = str(record["channel"]).lower()
    if channel != topic_channel:
        raise ChannelTopicMismatch(f"channel {channel} on the {topic_channel} topic")
    return RoutedInfo(
        payment_id=record["payment_id"],
        merchant_id=record["merchant_id"],
        channel=channel,
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        created_at_ms=to_epoch_ms(record["created_at"]),
        routed_at_ms=to_epoch_ms(record["routed_at"]),
        order_id=record.get("order_id") or None,
    )


def confirmation_info(record: dict[str, Any]) -> Confirmation:
    """A ChannelConfirmation record."""
    return Confirmation(
        confirmation_id=record["confirmation_id"],
        channel=str(record["channel"]).lower(),
        channel_txn_id=record["channel_txn_id"],
        payment_id=record["payment_id"],
        status=record["status"],
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        confirmed_at_ms=to_epoch_ms(record["confirmed_at"]),
    )


def result_record(result: ResultRecord, fee: int | None, net: int | None) -> dict[str, Any]:
    """The ReconciliationResult record of a decision, with the fee split of a match (the
    gross a MATCHED settles is its expected amount; a MATCHED_MANUAL names its own)."""
    settled = result.settled_amount_minor
    if settled is None and result.outcome == MATCHED:
        settled = result.expected_amount_minor
    return {
        "result_id": result.result_id,
        "payment_id": result.payment_id,
        "merchant_id": result.merchant_id,
        "channel": result.channel.upper() if result.channel else None,
        "outcome": result.outcome,
        "terminal": result.terminal,
        "late": result.late,
        "expected_amount_minor": result.expected_amount_minor,
        "expected_currency": result.expected_currency,
        "confirmed_amount_minor": result.confirmed_amount_minor,
        "confirmed_currency": result.confirmed_currency,
        "confirmation_id": result.confirmation_id,
        "channel_txn_id": result.channel_txn_id,
        "created_at": result.created_at_ms,
        "decided_at": result.decided_at_ms,
        "detail": result.detail,
        "fee_minor": fee,
        "net_minor": net,
        "order_id": result.order_id,
        "settled_amount_minor": settled,
        "case_id": result.case_id,
        "operator": result.operator,
        "approver": result.approver,
    }
