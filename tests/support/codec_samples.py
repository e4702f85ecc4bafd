"""Samples of every contract record, and helpers, for the codec tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from schemas import contract
from schemas.codec import AvroSerializer, to_epoch_ms
from schemas.registry import InMemoryRegistry
from schemas.topics import TOPIC_RECORDS

LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
T0 = 1_764_040_000_123  # 2025-11-25, epoch ms
ALL_BYTES = bytes(range(256))


def requested(**overrides: Any) -> dict[str, Any]:
    record = {
        "payment_id": "pay-000123",
        "merchant_id": "m-42",
        "order_id": "o-9",
        "payer_id": "u-7",
        "amount_minor": 12345,
        "currency": "CNY",
        "method": "ALIPAY",
        "interface": "APP",
        "region": "CN",
        "created_at": T0,
        "metadata": {"campaign": "双十一", "emoji": "💳"},
    }
    record.update(overrides)
    return record


def routed(**overrides: Any) -> dict[str, Any]:
    record = requested(channel="ALIPAY", rule_id="rule-cn-alipay", routed_at=T0 + 5)
    record.update(overrides)
    return record


def reconciliation(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "result_id": "r-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "channel": "CARD",
        "outcome": "MATCHED",
        "terminal": True,
        "late": False,
        "expected_amount_minor": 100,
        "expected_currency": "KWD",
        "confirmed_amount_minor": 100,
        "confirmed_currency": "KWD",
        "confirmation_id": "c-1",
        "channel_txn_id": "t-1",
        "created_at": T0,
        "decided_at": T0 + 1000,
        "detail": "",
    }
    record.update(overrides)
    return record


def item(payment_id: str, gross: int, fee: int) -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "gross_minor": gross,
        "fee_minor": fee,
        "net_minor": gross - fee,
        "matched_at": T0,
    }


def merchant(**overrides: Any) -> dict[str, Any]:
    record = {
        "merchant_id": "m-1",
        "name": "Café Zürich 北京",
        "status": "SUSPENDED",
        "settlement_currency": "CHF",
        "updated_at": 0,
    }
    return record | overrides


def rejected(**overrides: Any) -> dict[str, Any]:
    record = {
        "payment_id": "",
        "merchant_id": None,
        "reasons": [{"code": "MISSING_PAYMENT_ID", "detail": "payment_id is empty"}],
        "request": None,
        "stage": "validate",
        "rejected_at": T0,
    }
    return record | overrides


def confirmation(**overrides: Any) -> dict[str, Any]:
    record = {
        "confirmation_id": "c",
        "channel": "UNIONPAY",
        "channel_txn_id": "t",
        "payment_id": "p",
        "status": "FAILED",
        "amount_minor": 1,
        "currency": "CNY",
        "confirmed_at": T0,
        "decline_code": "51",
    }
    return record | overrides


def batch(**overrides: Any) -> dict[str, Any]:
    record = {
        "batch_id": "b",
        "merchant_id": "m",
        "currency": "JPY",
        "window_start": T0,
        "window_end": T0 + 3_600_000,
        "payment_count": 2,
        "gross_minor": 300,
        "fee_minor": 3,
        "net_minor": 297,
        "closed_at": T0 + 3_600_001,
        "items": [item("p1", 100, 1), item("p2", 200, 2)],
    }
    return record | overrides


def refund_item(payment_id: str, refund_id: str, amount: int, fee_back: int) -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "gross_minor": -amount,
        "fee_minor": -fee_back,
        "net_minor": fee_back - amount,
        "matched_at": T0,
        "kind": "REFUND",
        "item_id": f"{payment_id}/{refund_id}",
    }


def refund_requested(**overrides: Any) -> dict[str, Any]:
    record = {
        "refund_id": "rf-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "amount_minor": 500,
        "currency": "CNY",
        "reason": "退货 return",
        "requested_at": T0,
        "metadata": {"ticket": "T-9"},
        "signature_key_id": "k-1",
        "signature": "ab" * 32,
    }
    return record | overrides


def refund_rejected(**overrides: Any) -> dict[str, Any]:
    record = {
        "refund_id": "rf-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "reasons": [{"code": "REFUND_EXCEEDS_REFUNDABLE", "detail": "500 > 0"}],
        "request": refund_requested(),
        "rejected_at": T0,
    }
    return record | overrides


def routed_refund(**overrides: Any) -> dict[str, Any]:
    record = {
        "refund_id": "rf-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "channel": "WECHAT_PAY",
        "channel_txn_id": "t-1",
        "amount_minor": 500,
        "currency": "CNY",
        "reason": None,
        "requested_at": T0,
        "routed_at": T0 + 7,
    }
    return record | overrides


def refund_confirmation(**overrides: Any) -> dict[str, Any]:
    record = {
        "confirmation_id": "rc-1",
        "channel": "CARD",
        "refund_id": "rf-1",
        "payment_id": "pay-1",
        "channel_refund_id": "cr-1",
        "status": "SUCCEEDED",
        "amount_minor": 500,
        "currency": "KWD",
        "confirmed_at": T0,
        "decline_code": None,
    }
    return record | overrides


def refund_result(**overrides: Any) -> dict[str, Any]:
    record = {
        "result_id": "pay-1/rf-1:MATCHED:rc-1",
        "refund_id": "rf-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "channel": "CARD",
        "outcome": "MATCHED",
        "terminal": True,
        "late": False,
        "amount_minor": 500,
        "currency": "KWD",
        "confirmed_amount_minor": 500,
        "confirmed_currency": "KWD",
        "confirmation_id": "rc-1",
        "channel_refund_id": "cr-1",
        "fee_returned_minor": 3,
        "net_minor": 497,
        "captured_minor": 1000,
        "refunded_minor": 500,
        "refundable_minor": 500,
        "requested_at": T0,
        "decided_at": T0 + 9,
        "detail": "",
    }
    return record | overrides


def channel_dispute(**overrides: Any) -> dict[str, Any]:
    record = {
        "event_id": "ev-1",
        "dispute_id": "dp-1",
        "channel": "CARD",
        "channel_dispute_id": "cb-1",
        "payment_id": "pay-1",
        "stage": "PRE_ARBITRATION",
        "status": "LOST",
        "amount_minor": 500,
        "currency": "KWD",
        "funds_withdrawn": True,
        "fee_minor": 1500,
        "reason_code": "10.4",
        "respond_by": T0 + 7 * 86_400_000,
        "occurred_at": T0,
    }
    return record | overrides


def dispute_result(**overrides: Any) -> dict[str, Any]:
    record = {
        "result_id": "pay-1/dp-1:LOST:ev-1",
        "dispute_id": "dp-1",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "channel": "CARD",
        "channel_dispute_id": "cb-1",
        "event": "LOST",
        "stage": "DISPUTE",
        "status": "ACCEPTED",
        "amount_minor": 500,
        "currency": "KWD",
        "funds_withdrawn": True,
        "fee_minor": 1500,
        "reasons": [],
        "reason_code": "13.1",
        "respond_by": T0,
        "captured_minor": 1000,
        "held_minor": 0,
        "disputed_lost_minor": 500,
        "refundable_minor": 500,
        "occurred_at": T0,
        "decided_at": T0 + 9,
        "detail": "dispute ACCEPTED: 500 lost, fee 1500",
    }
    return record | overrides


def case_action(**overrides: Any) -> dict[str, Any]:
    record = {
        "action_id": "ca-0123456789abcdef",
        "case_id": "CS-0123456789abcdef01234567",
        "payment_id": "pay-1",
        "kind": "RESOLVE",
        "resolution": "FORCE_MATCH",
        "operator": "alice",
        "remark": "the channel's bill shows 99.50 received ✓",
        "requested_at": T0,
    }
    return record | overrides


def case_event(**overrides: Any) -> dict[str, Any]:
    record = {
        "event_id": "CS-0123456789abcdef01234567:RESOLVED:ca-0123456789abcdef",
        "case_id": "CS-0123456789abcdef01234567",
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "channel": "UNIONPAY",
        "subject": "PAYMENT",
        "subject_id": "pay-1",
        "outcome": "AMOUNT_MISMATCH",
        "opened_by": "pay-1:AMOUNT_MISMATCH:c-1",
        "kind": "RESOLVED",
        "status": "RESOLVED",
        "resolution": "FORCE_MATCH",
        "amount_minor": 9950,
        "currency": "CNY",
        "action_id": "ca-0123456789abcdef",
        "operator": "alice",
        "approver": "bob",
        "remark": "checked the bill",
        "reason": None,
        "evidence": {"expected_amount_minor": "10000", "confirmed_amount_minor": "9950"},
        "occurred_at": T0 + 5,
    }
    return record | overrides


def dead_letter(**overrides: Any) -> dict[str, Any]:
    record = {
        "source_topic": "payments.requested",
        "source_partition": 2_147_483_647,
        "source_offset": LONG_MAX,
        "original_key": ALL_BYTES,
        "original_value": b"\x00\x00\x00\x00\x07garbage",
        "stage": "validate",
        "error_type": "TruncatedBody",
        "error_message": "body ends early",
        "failed_at": T0,
        "reason": "TRUNCATED_BODY",
    }
    return record | overrides


def without(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in fields}


RECONCILIATION_NULLS = dict.fromkeys(
    (
        "merchant_id",
        "channel",
        "expected_amount_minor",
        "expected_currency",
        "confirmed_amount_minor",
        "confirmed_currency",
        "confirmation_id",
        "channel_txn_id",
        "created_at",
    )
)
UTC_PLUS_8 = timezone(timedelta(hours=8))

# (record name, sample, expected after decode with defaults filled; None = same as sample)
SAMPLES: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
    ("PaymentRequested", requested(), None),
    ("PaymentRequested", requested(metadata={}, amount_minor=0, currency="JPY"), None),
    ("PaymentRequested", requested(amount_minor=LONG_MAX, method="CARD", interface="H5"), None),
    ("PaymentRequested", requested(amount_minor=LONG_MIN, payer_id="", order_id="注文-①"), None),
    ("PaymentRequested", without(requested(), "metadata"), requested(metadata={})),
    (
        "PaymentRequested",
        requested(created_at=datetime(2025, 1, 1, 8, tzinfo=UTC_PLUS_8)),
        requested(created_at=datetime(2025, 1, 1, tzinfo=UTC)),
    ),
    ("Merchant", merchant(), None),
    ("PaymentRejected", rejected(), None),
    (
        "PaymentRejected",
        without(rejected(payment_id="p", reasons=[], stage="route"), "merchant_id", "request"),
        rejected(payment_id="p", reasons=[], stage="route"),
    ),
    (
        "PaymentRejected",
        rejected(
            payment_id="p",
            merchant_id="m",
            reasons=[{"code": "A", "detail": "a"}, {"code": "B", "detail": "b"}],
            request=requested(),
        ),
        None,
    ),
    ("RoutedPayment", routed(), None),
    (
        "RoutedPayment",
        routed(channel="WECHAT_PAY", method="WECHAT_PAY", interface="MOBILE_WEB", metadata={}),
        None,
    ),
    ("ChannelConfirmation", confirmation(), None),
    (
        "ChannelConfirmation",
        without(confirmation(status="SUCCEEDED", amount_minor=LONG_MAX), "decline_code"),
        confirmation(status="SUCCEEDED", amount_minor=LONG_MAX, decline_code=None),
    ),
    ("ReconciliationResult", reconciliation(), None),
    (
        "ReconciliationResult",
        without(
            reconciliation(outcome="ORPHAN_CONFIRMATION", terminal=False),
            "late",
            "detail",
            *RECONCILIATION_NULLS,
        ),
        reconciliation(outcome="ORPHAN_CONFIRMATION", terminal=False) | RECONCILIATION_NULLS,
    ),
    (
        "ReconciliationResult",
        reconciliation(
            outcome="LATE_CONFIRMATION",
            late=True,
            expected_amount_minor=LONG_MIN,
            detail="ümlaut ✓",
        ),
        None,
    ),
    ("SettlementBatch", batch(), None),
    (
        "SettlementBatch",
        batch(payment_count=1, refund_count=1, gross_minor=-400, fee_minor=-3, net_minor=-397,
              items=[item("p1", 100, 1) | {"kind": "PAYMENT", "item_id": "p1"},
                     refund_item("p0", "r1", 500, 4)],
              carried_in_minor=-10, payout_minor=0, carried_out_minor=-407),
        None,
    ),
    (
        "SettlementBatch",
        batch(currency="CNY", payment_count=0, gross_minor=0, fee_minor=0, net_minor=0, items=[]),
        None,
    ),
    ("RefundRequested", refund_requested(), None),
    (
        "RefundRequested",
        without(refund_requested(), "reason", "metadata", "signature_key_id", "signature"),
        refund_requested(reason=None, metadata={}, signature_key_id=None, signature=None),
    ),
    ("RefundRejected", refund_rejected(), None),
    ("RoutedRefund", routed_refund(), None),
    ("ChannelRefundConfirmation", refund_confirmation(status="FAILED", decline_code="05"), None),
    ("RefundResult", refund_result(), None),
    (
        "RefundResult",
        refund_result(outcome="DECLINED", fee_returned_minor=None, net_minor=None,
                      amount_minor=LONG_MAX),
        None,
    ),
    ("ChannelDispute", channel_dispute(), None),
    (
        "ChannelDispute",
        without(channel_dispute(status="OPENED", stage="PRE_DISPUTE"), "funds_withdrawn",
                "fee_minor", "reason_code", "respond_by"),
        channel_dispute(status="OPENED", stage="PRE_DISPUTE", funds_withdrawn=False,
                        fee_minor=0, reason_code=None, respond_by=None),
    ),
    ("DisputeResult", dispute_result(), None),
    (
        "DisputeResult",
        without(dispute_result(event="REJECTED", merchant_id=None, order_id=None,
                               captured_minor=None, disputed_lost_minor=0, refundable_minor=0,
                               amount_minor=-1, fee_minor=0, reason_code=None, respond_by=None,
                               reasons=[{"code": "PAYMENT_UNKNOWN", "detail": "unknown"},
                                        {"code": "AMOUNT_NOT_POSITIVE", "detail": "-1"}]),
                "funds_withdrawn", "held_minor", "detail"),
        dispute_result(event="REJECTED", merchant_id=None, order_id=None, captured_minor=None,
                       disputed_lost_minor=0, refundable_minor=0, amount_minor=-1, fee_minor=0,
                       reason_code=None, respond_by=None, funds_withdrawn=False, held_minor=0,
                       detail="",
                       reasons=[{"code": "PAYMENT_UNKNOWN", "detail": "unknown"},
                                {"code": "AMOUNT_NOT_POSITIVE", "detail": "-1"}]),
    ),
    ("ReconciliationResult",
     reconciliation(outcome="MATCHED_MANUAL", confirmed_amount_minor=95, fee_minor=1,
                    net_minor=94, settled_amount_minor=95, case_id="CS-0123456789abcdef01234567",
                    operator="alice", approver="bob"),
     None),
    ("CaseAction", case_action(), None),
    (
        "CaseAction",
        without(case_action(kind="APPROVE", operator="", remark=""), "resolution"),
        case_action(kind="APPROVE", operator="", remark="", resolution=None),
    ),
    ("CaseEvent", case_event(), None),
    (
        "CaseEvent",
        without(case_event(kind="REFUSED", status="OPEN", subject="DISPUTE", subject_id="dp-1",
                           outcome="DISPUTE_REJECTED", reason="CASE_UNKNOWN"),
                "merchant_id", "channel", "resolution", "amount_minor", "currency",
                "action_id", "operator", "approver", "remark", "evidence"),
        case_event(kind="REFUSED", status="OPEN", subject="DISPUTE", subject_id="dp-1",
                   outcome="DISPUTE_REJECTED", reason="CASE_UNKNOWN", merchant_id=None,
                   channel=None, resolution=None, amount_minor=None, currency=None,
                   action_id=None, operator=None, approver=None, remark=None, evidence={}),
    ),
    ("DeadLetter", dead_letter(), None),
    (
        "DeadLetter",
        without(dead_letter(original_key=None, original_value=b"", error_message=""), "reason"),
        dead_letter(original_key=None, original_value=b"", error_message="", reason=""),
    ),
]


def as_ms(value: Any) -> Any:
    """Replace datetimes by epoch ms, recursively, so written ints and read datetimes compare."""
    if isinstance(value, datetime):
        return to_epoch_ms(value)
    if isinstance(value, dict):
        return {k: as_ms(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_ms(v) for v in value]
    return value


def with_defaults(record_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Return a record as a reader sees it: absent fields filled with their defaults."""
    named: dict[str, Any] = {}

    def fill(schema: Any, value: Any) -> Any:
        if isinstance(schema, str):
            return fill(named[schema], value) if schema in named else value
        if isinstance(schema, list):  # the contract's unions are all ["null", X]
            return None if value is None else fill(schema[-1], value)
        kind = schema.get("type")
        if kind in ("record", "enum"):
            named[schema["name"]] = named[f"{schema['namespace']}.{schema['name']}"] = schema
        if kind == "record":
            return {
                f["name"]: fill(f["type"], value[f["name"]]) if f["name"] in value else f["default"]
                for f in schema["fields"]
            }
        if kind == "array":
            return [fill(schema["items"], v) for v in value]
        if kind == "map":
            return {k: fill(schema["values"], v) for k, v in value.items()}
        return value

    return dict(fill(json.loads(contract.schema_str_for(record_name)), record))


def topic_of(record_name: str) -> str:
    return next(t for t, r in TOPIC_RECORDS.items() if r == record_name)


def encoder(registry: InMemoryRegistry) -> Callable[[str, dict[str, Any]], bytes]:
    """encode(record name, record): with one serializer per record, on its topic's subject."""
    serializers: dict[str, AvroSerializer] = {}

    def encode(record_name: str, record: dict[str, Any]) -> bytes:
        if record_name not in serializers:
            serializers[record_name] = AvroSerializer(registry, topic_of(record_name), record_name)
        return serializers[record_name].encode(record)

    return encode
