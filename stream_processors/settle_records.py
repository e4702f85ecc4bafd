"""Settle's records: MATCHED (and MATCHED_MANUAL) payment and refund results, their reversals
and dispute results into item messages, item messages read, batches out."""

from __future__ import annotations

import json
from typing import Any, Final

from schemas.codec import to_epoch_ms
from settlement.batches import BatchError, BatchItem, SettlementBatch
from settlement.disputes import EVENT_LOST, EVENT_OPENED, EVENT_WON
from settlement.fees import FeeSchedule
from stream_processors.settle_table import (
    BadDisputeItem,
    BadItem,
    BadRefundItem,
    BadReversalItem,
    batch_key,
    check_text,
)

# The JSON item messages the first agent writes to the items topic for the second.
# Version 2: the item has a kind and an item_id; version 1 (payments only) is still read.
ITEM_FORMAT_VERSION: Final = 2
_READABLE_ITEM_VERSIONS: Final = (1, 2)


def item_message(record: dict[str, Any], fees: FeeSchedule) -> tuple[dict[str, Any], str]:
    """(the item message, its batch key) of a terminal MATCHED ReconciliationResult."""
    merchant_id, currency = record.get("merchant_id"), record.get("expected_currency")
    gross, channel = record.get("expected_amount_minor"), record.get("channel")
    if not merchant_id or not currency or gross is None or not channel:
        raise BadItem(f"MATCHED result {record.get('result_id')!r} lacks merchant, "
                      "currency, amount or channel")
    check_text(merchant_id, currency, record["payment_id"])
    fee, net = record.get("fee_minor"), record.get("net_minor")
    if fee is None or net is None:
        # Results written before the reconciler computed fees: same schedule, same split.
        fee = fees.fee_for(str(channel).lower(), gross)
        net = gross - fee
    item = BatchItem(record["payment_id"], gross, fee, net, to_epoch_ms(record["decided_at"]))
    return _message(merchant_id, currency, record["result_id"], item)


def manual_item_message(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the item message, its batch key) of a MATCHED_MANUAL ReconciliationResult: a PAYMENT
    item at the amount its case's resolution settled, split as published (fee + net must be
    that amount; never recomputed here)."""
    result_id = record.get("result_id")
    merchant_id, currency = record.get("merchant_id"), record.get("expected_currency")
    settled, fee, net = (record.get(name) for name in
                         ("settled_amount_minor", "fee_minor", "net_minor"))
    if not merchant_id or not currency or settled is None or fee is None or net is None:
        raise BadItem(f"MATCHED_MANUAL result {result_id!r} lacks merchant, currency or "
                      f"split: {merchant_id}, {currency}, {settled}, {fee}, {net}")
    check_text(merchant_id, currency, record["payment_id"])
    if fee + net != settled:
        raise BadItem(f"MATCHED_MANUAL result {result_id!r}: fee {fee} + net {net} != "
                      f"settled {settled}")
    item = BatchItem(record["payment_id"], settled, fee, net, to_epoch_ms(record["decided_at"]))
    return _message(merchant_id, currency, record["result_id"], item)


def dispute_item_message(record: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """(the item message, its batch key) of a DisputeResult that moves the merchant's money:
    OPENED a DISPUTE_HOLD of -amount, WON a DISPUTE_RELEASE of +amount, LOST with a fee a
    DISPUTE_FEE of -fee (its amount was held already); None for any other result (a LOST
    without fee, STAGE_CHANGED, REJECTED). BadDisputeItem if what it needs is missing."""
    event = record.get("event")
    if event not in (EVENT_OPENED, EVENT_WON, EVENT_LOST):
        return None
    fee = record.get("fee_minor", 0)
    if event == EVENT_LOST and fee == 0:
        return None
    result_id = record.get("result_id")
    merchant_id, currency = record.get("merchant_id"), record.get("currency")
    payment_id, dispute_id = record.get("payment_id"), record.get("dispute_id")
    if not merchant_id or not currency or not payment_id or not dispute_id:
        raise BadDisputeItem(f"{event} dispute result {result_id!r} lacks merchant, currency, "
                             f"payment or dispute: {merchant_id}, {currency}, {payment_id}, "
                             f"{dispute_id}")
    check_text(merchant_id, currency, payment_id, dispute_id)
    at_ms = to_epoch_ms(record["decided_at"])
    try:
        if event == EVENT_OPENED:
            item = BatchItem.for_dispute_hold(payment_id, dispute_id, record["amount_minor"],
                                              at_ms)
        elif event == EVENT_WON:
            item = BatchItem.for_dispute_release(payment_id, dispute_id,
                                                 record["amount_minor"], at_ms)
        else:
            item = BatchItem.for_dispute_fee(payment_id, dispute_id, fee, at_ms)
    except BatchError as exc:
        raise BadDisputeItem(str(exc)) from exc
    return _message(merchant_id, currency, record["result_id"], item)


def refund_item_message(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the item message, its batch key) of a terminal MATCHED RefundResult: a REFUND item of
    gross -amount, fee -fee_returned, net -net, as the reconcile stage split it (never
    recomputed here); BadRefundItem if the amounts are missing or not a refund's."""
    merchant_id, currency = record.get("merchant_id"), record.get("currency")
    if not merchant_id or not currency:
        raise BadRefundItem(f"MATCHED refund result {record.get('result_id')!r} lacks "
                            "merchant or currency")
    check_text(merchant_id, currency, record["payment_id"], record["refund_id"])
    amount, fee_returned, net = (record.get(name) for name in
                                 ("amount_minor", "fee_returned_minor", "net_minor"))
    if amount is None or fee_returned is None or net is None:
        raise BadRefundItem(f"MATCHED refund result {record.get('result_id')!r} lacks "
                            f"amount, fee_returned or net: {amount}, {fee_returned}, {net}")
    try:
        item = BatchItem.for_refund(record["payment_id"], record["refund_id"], amount,
                                    fee_returned, net, to_epoch_ms(record["decided_at"]))
    except BatchError as exc:
        raise BadRefundItem(str(exc)) from exc
    return _message(merchant_id, currency, record["result_id"], item)


def payment_reversal_item_message(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the item message, its batch key) of a PAYMENT_REVERSED ReconciliationResult: a
    PAYMENT_REVERSAL item of gross -expected_amount, fee -fee, net -net, the split published
    with it (the payment's own, never recomputed here: no fee schedule fallback either);
    BadReversalItem if anything it needs is missing or the split is not a payment's."""
    result_id = record.get("result_id")
    merchant_id, currency = record.get("merchant_id"), record.get("expected_currency")
    gross, fee, net = (record.get(name) for name in
                       ("expected_amount_minor", "fee_minor", "net_minor"))
    if not merchant_id or not currency or gross is None or fee is None or net is None:
        raise BadReversalItem(f"PAYMENT_REVERSED result {result_id!r} lacks merchant, currency "
                              f"or split: {merchant_id}, {currency}, {gross}, {fee}, {net}")
    check_text(merchant_id, currency, record["payment_id"])
    try:
        item = BatchItem.for_payment_reversal(record["payment_id"], gross, fee, net,
                                              to_epoch_ms(record["decided_at"]))
    except BatchError as exc:
        raise BadReversalItem(str(exc)) from exc
    return _message(merchant_id, currency, record["result_id"], item)


def refund_reversal_item_message(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the item message, its batch key) of a REFUND_REVERSED RefundResult: a REFUND_REVERSAL
    item of gross +amount, fee +fee_returned, net +net, the mirror of the refund's item as
    published (never recomputed); BadReversalItem if it is missing or not a refund's split."""
    result_id = record.get("result_id")
    merchant_id, currency = record.get("merchant_id"), record.get("currency")
    amount, fee_returned, net = (record.get(name) for name in
                                 ("amount_minor", "fee_returned_minor", "net_minor"))
    if not merchant_id or not currency or amount is None or fee_returned is None or net is None:
        raise BadReversalItem(f"REFUND_REVERSED result {result_id!r} lacks merchant, currency "
                              f"or split: {merchant_id}, {currency}, {amount}, {fee_returned}, "
                              f"{net}")
    check_text(merchant_id, currency, record["payment_id"], record["refund_id"])
    try:
        item = BatchItem.for_refund_reversal(record["payment_id"], record["refund_id"], amount,
                                             fee_returned, net, to_epoch_ms(record["decided_at"]))
    except BatchError as exc:
        raise BadReversalItem(str(exc)) from exc
    return _message(merchant_id, currency, record["result_id"], item)


def _message(merchant_id: str, currency: str, result_id: str,
             item: BatchItem) -> tuple[dict[str, Any], str]:
    body = {"v": ITEM_FORMAT_VERSION, "merchant_id": merchant_id, "currency": currency,
            "result_id": result_id, "item": item.to_dict()}
    return body, batch_key(merchant_id, currency)


def read_item(key: bytes | None, value: bytes | None) -> tuple[BatchItem, str, str, str]:
    """(item, merchant_id, currency, batch key) of an item message; BadItem if it is none."""
    body = json.loads(value or b"")
    if not isinstance(body, dict) or body.get("v") not in _READABLE_ITEM_VERSIONS:
        raise BadItem(f"not a settlement item: {str(value)[:200]}")
    if body["v"] == 1 and ({"kind", "item_id"} & set(body["item"])):
        raise BadItem("a version-1 item message has no kind or item_id")
    item = BatchItem.from_dict(body["item"])
    merchant_id, currency = body["merchant_id"], body["currency"]
    check_text(merchant_id, currency, item.payment_id, item.item_id)
    bkey = batch_key(merchant_id, currency)
    if key is not None and key != bkey.encode():
        raise BadItem(f"key {key!r} is not {bkey!r}")
    return item, merchant_id, currency, bkey


def batch_record(batch: SettlementBatch) -> dict[str, Any]:
    """The SettlementBatch record of a closed batch."""
    return {
        "batch_id": batch.batch_id,
        "merchant_id": batch.merchant_id,
        "currency": batch.currency,
        "window_start": batch.window_start_ms,
        "window_end": batch.window_end_ms,
        "payment_count": batch.payment_count,
        "gross_minor": batch.gross_minor,
        "fee_minor": batch.fee_minor,
        "net_minor": batch.net_minor,
        "closed_at": batch.closed_at_ms,
        "items": [
            {"payment_id": i.payment_id, "gross_minor": i.gross_minor, "fee_minor": i.fee_minor,
             "net_minor": i.net_minor, "matched_at": i.matched_at_ms, "kind": i.kind,
             "item_id": i.item_id}
            for i in batch.items
        ],
        "refund_count": batch.refund_count,
        "carried_in_minor": batch.carried_in_minor,
        "payout_minor": batch.payout,
        "carried_out_minor": batch.carried_out,
    }
