"""The Avro contract: every .avsc parses, is documented, and has the published names and fields."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import fastavro
import pytest

from schemas import contract
from schemas.topics import TOPIC_RECORDS, routed_topic, value_subject

TS = {"type": "long", "logicalType": "timestamp-millis"}
OPT_STR = ["null", "string"]
SIGNATURE_FIELDS = ("signature_key_id", "signature")

# The public contract: record -> [(field, type as written in the .avsc)], in order.
CONTRACT: dict[str, list[tuple[str, Any]]] = {
    "PaymentRequested": [
        ("payment_id", "string"),
        ("merchant_id", "string"),
        ("order_id", "string"),
        ("payer_id", "string"),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("method", "settle.payments.PaymentMethod"),
        ("interface", "settle.payments.PaymentInterface"),
        ("region", "string"),
        ("created_at", TS),
        ("metadata", {"type": "map", "values": "string"}),
    ],
    "Merchant": [
        ("merchant_id", "string"),
        ("name", "string"),
        ("status", "settle.payments.MerchantStatus"),
        ("settlement_currency", "string"),
        ("updated_at", TS),
    ],
    "PaymentRejected": [
        ("payment_id", "string"),
        ("merchant_id", OPT_STR),
        ("reasons", {"type": "array", "items": "settle.payments.RejectionReason"}),
        ("request", ["null", "settle.payments.PaymentRequested"]),
        ("stage", "string"),
        ("rejected_at", TS),
    ],
    "RejectionReason": [("code", "string"), ("detail", "string")],
    "ChannelConfirmation": [
        ("confirmation_id", "string"),
        ("channel", "settle.payments.Channel"),
        ("channel_txn_id", "string"),
        ("payment_id", "string"),
        ("status", "settle.payments.ConfirmationStatus"),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("confirmed_at", TS),
        ("decline_code", OPT_STR),
    ],
    "ReconciliationResult": [
        ("result_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", OPT_STR),
        ("channel", ["null", "settle.payments.Channel"]),
        ("outcome", "settle.payments.ReconciliationOutcome"),
        ("terminal", "boolean"),
        ("late", "boolean"),
        ("expected_amount_minor", ["null", "long"]),
        ("expected_currency", OPT_STR),
        ("confirmed_amount_minor", ["null", "long"]),
        ("confirmed_currency", OPT_STR),
        ("confirmation_id", OPT_STR),
        ("channel_txn_id", OPT_STR),
        ("created_at", ["null", TS]),
        ("decided_at", TS),
        ("detail", "string"),
        ("fee_minor", ["null", "long"]),
        ("net_minor", ["null", "long"]),
        ("order_id", OPT_STR),
        ("settled_amount_minor", ["null", "long"]),
        ("case_id", OPT_STR),
        ("operator", OPT_STR),
        ("approver", OPT_STR),
    ],
    "SettlementBatch": [
        ("batch_id", "string"),
        ("merchant_id", "string"),
        ("currency", "string"),
        ("window_start", TS),
        ("window_end", TS),
        ("payment_count", "int"),
        ("gross_minor", "long"),
        ("fee_minor", "long"),
        ("net_minor", "long"),
        ("closed_at", TS),
        ("items", {"type": "array", "items": "settle.payments.SettlementItem"}),
        ("refund_count", "int"),
        ("carried_in_minor", "long"),
        ("payout_minor", ["null", "long"]),
        ("carried_out_minor", "long"),
    ],
    "SettlementItem": [
        ("payment_id", "string"),
        ("gross_minor", "long"),
        ("fee_minor", "long"),
        ("net_minor", "long"),
        ("matched_at", TS),
    ],
    "RefundRequested": [
        ("refund_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", "string"),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("reason", OPT_STR),
        ("requested_at", TS),
        ("metadata", {"type": "map", "values": "string"}),
        ("signature_key_id", OPT_STR),
        ("signature", OPT_STR),
    ],
    "RefundRejected": [
        ("refund_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", OPT_STR),
        ("reasons", {"type": "array", "items": "settle.payments.RejectionReason"}),
        ("request", ["null", "settle.payments.RefundRequested"]),
        ("rejected_at", TS),
    ],
    "RoutedRefund": [
        ("refund_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", "string"),
        ("order_id", OPT_STR),
        ("channel", "settle.payments.Channel"),
        ("channel_txn_id", OPT_STR),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("reason", OPT_STR),
        ("requested_at", TS),
        ("routed_at", TS),
    ],
    "ChannelRefundConfirmation": [
        ("confirmation_id", "string"),
        ("channel", "settle.payments.Channel"),
        ("refund_id", "string"),
        ("payment_id", "string"),
        ("channel_refund_id", "string"),
        ("status", "settle.payments.ConfirmationStatus"),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("confirmed_at", TS),
        ("decline_code", OPT_STR),
    ],
    "RefundResult": [
        ("result_id", "string"),
        ("refund_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", OPT_STR),
        ("order_id", OPT_STR),
        ("channel", ["null", "settle.payments.Channel"]),
        ("outcome", "settle.payments.ReconciliationOutcome"),
        ("terminal", "boolean"),
        ("late", "boolean"),
        ("amount_minor", ["null", "long"]),
        ("currency", OPT_STR),
        ("confirmed_amount_minor", ["null", "long"]),
        ("confirmed_currency", OPT_STR),
        ("confirmation_id", OPT_STR),
        ("channel_refund_id", OPT_STR),
        ("fee_returned_minor", ["null", "long"]),
        ("net_minor", ["null", "long"]),
        ("captured_minor", ["null", "long"]),
        ("refunded_minor", "long"),
        ("refundable_minor", "long"),
        ("requested_at", ["null", TS]),
        ("decided_at", TS),
        ("detail", "string"),
    ],
    "ChannelDispute": [
        ("event_id", "string"),
        ("dispute_id", "string"),
        ("channel", "settle.payments.Channel"),
        ("channel_dispute_id", "string"),
        ("payment_id", "string"),
        ("stage", "settle.payments.DisputeStage"),
        ("status", "settle.payments.DisputeStatus"),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("funds_withdrawn", "boolean"),
        ("fee_minor", "long"),
        ("reason_code", OPT_STR),
        ("respond_by", ["null", TS]),
        ("occurred_at", TS),
    ],
    "DisputeResult": [
        ("result_id", "string"),
        ("dispute_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", OPT_STR),
        ("order_id", OPT_STR),
        ("channel", "settle.payments.Channel"),
        ("channel_dispute_id", "string"),
        ("event", "settle.payments.DisputeEvent"),
        ("stage", "settle.payments.DisputeStage"),
        ("status", "settle.payments.DisputeStatus"),
        ("amount_minor", "long"),
        ("currency", "string"),
        ("funds_withdrawn", "boolean"),
        ("fee_minor", "long"),
        ("reasons", {"type": "array", "items": "settle.payments.RejectionReason"}),
        ("reason_code", OPT_STR),
        ("respond_by", ["null", TS]),
        ("captured_minor", ["null", "long"]),
        ("held_minor", "long"),
        ("disputed_lost_minor", "long"),
        ("refundable_minor", "long"),
        ("occurred_at", TS),
        ("decided_at", TS),
        ("detail", "string"),
    ],
    "CaseAction": [
        ("action_id", "string"),
        ("case_id", "string"),
        ("payment_id", "string"),
        ("kind", "settle.payments.CaseActionKind"),
        ("resolution", ["null", "settle.payments.CaseResolution"]),
        ("operator", "string"),
        ("remark", "string"),
        ("requested_at", TS),
    ],
    "CaseEvent": [
        ("event_id", "string"),
        ("case_id", "string"),
        ("payment_id", "string"),
        ("merchant_id", OPT_STR),
        ("channel", ["null", "settle.payments.Channel"]),
        ("subject", "settle.payments.CaseSubject"),
        ("subject_id", "string"),
        ("outcome", "string"),
        ("opened_by", "string"),
        ("kind", "settle.payments.CaseEventKind"),
        ("status", "settle.payments.CaseStatus"),
        ("resolution", ["null", "settle.payments.CaseResolution"]),
        ("amount_minor", ["null", "long"]),
        ("currency", OPT_STR),
        ("action_id", OPT_STR),
        ("operator", OPT_STR),
        ("approver", OPT_STR),
        ("remark", OPT_STR),
        ("reason", OPT_STR),
        ("evidence", {"type": "map", "values": "string"}),
        ("occurred_at", TS),
    ],
    "DeadLetter": [
        ("source_topic", "string"),
        ("source_partition", "int"),
        ("source_offset", "long"),
        ("original_key", ["null", "bytes"]),
        ("original_value", ["null", "bytes"]),
        ("stage", "string"),
        ("error_type", "string"),
        ("error_message", "string"),
        ("failed_at", TS),
    ],
}
CONTRACT["RoutedPayment"] = [
    *CONTRACT["PaymentRequested"],
    ("channel", "settle.payments.Channel"),
    ("rule_id", "string"),
    ("routed_at", TS),
]

ENUMS = {
    "PaymentMethod": ["ALIPAY", "WECHAT_PAY", "UNIONPAY", "CARD"],
    "PaymentInterface": ["APP", "PC_WEB", "MOBILE_WEB", "H5"],
    "MerchantStatus": ["ACTIVE", "SUSPENDED"],
    "Channel": ["ALIPAY", "WECHAT_PAY", "UNIONPAY", "CARD"],
    "ConfirmationStatus": ["SUCCEEDED", "FAILED", "REVERSED"],
    "ReconciliationOutcome": [
        "MATCHED",
        "DECLINED",
        "AMOUNT_MISMATCH",
        "CURRENCY_MISMATCH",
        "MISSING_CONFIRMATION",
        "DUPLICATE_CONFIRMATION",
        "ORPHAN_CONFIRMATION",
        "LATE_CONFIRMATION",
        "PAYMENT_REVERSED",
        "REFUND_REVERSED",
        "REVERSAL_EXCEPTION",
        "MATCHED_MANUAL",
    ],
    "SettlementItemKind": ["PAYMENT", "REFUND", "PAYMENT_REVERSAL", "REFUND_REVERSAL",
                           "DISPUTE_HOLD", "DISPUTE_RELEASE", "DISPUTE_FEE"],
    "DisputeStage": ["PRE_DISPUTE", "DISPUTE", "PRE_ARBITRATION"],
    "DisputeStatus": ["OPENED", "WON", "LOST", "ACCEPTED", "EXPIRED", "CANCELLED"],
    "DisputeEvent": ["OPENED", "WON", "LOST", "STAGE_CHANGED", "REJECTED"],
    "CaseResolution": ["FORCE_MATCH", "MARK_RECEIVED", "CLOSE_NO_FUNDS", "IGNORE",
                       "AUTO_MATCHED"],
    "CaseActionKind": ["RESOLVE", "APPROVE", "REJECT"],
    "CaseEventKind": ["OPENED", "PROPOSED", "REJECTED", "RESOLVED", "REFUSED"],
    "CaseStatus": ["OPEN", "AWAITING_APPROVAL", "RESOLVED"],
    "CaseSubject": ["PAYMENT", "REFUND", "DISPUTE"],
}

# Fields whose default is part of the contract.
DEFAULTS: dict[tuple[str, str], Any] = {
    ("PaymentRequested", "metadata"): {},
    ("RoutedPayment", "metadata"): {},
    ("PaymentRejected", "merchant_id"): None,
    ("PaymentRejected", "request"): None,
    ("ChannelConfirmation", "decline_code"): None,
    ("ReconciliationResult", "late"): False,
    ("ReconciliationResult", "detail"): "",
    ("ReconciliationResult", "order_id"): None,
    ("SettlementItem", "kind"): "PAYMENT",
    ("SettlementItem", "item_id"): None,
    ("SettlementBatch", "refund_count"): 0,
    ("SettlementBatch", "carried_in_minor"): 0,
    ("SettlementBatch", "payout_minor"): None,
    ("SettlementBatch", "carried_out_minor"): 0,
    ("RefundRequested", "metadata"): {},
    ("RefundRequested", "reason"): None,
    ("ChannelDispute", "funds_withdrawn"): False,
    ("ChannelDispute", "fee_minor"): 0,
    ("CaseEvent", "evidence"): {},
    ("DisputeResult", "reasons"): [],
}


def avsc_files() -> list[str]:
    return sorted(e.name for e in resources.files("schemas").iterdir() if e.name.endswith(".avsc"))


def test_every_avsc_file_is_one_named_type_in_the_namespace() -> None:
    names = set()
    for file_name in avsc_files():
        doc = json.loads(resources.files("schemas").joinpath(file_name).read_text("utf-8"))
        assert doc["namespace"] == "settle.payments", file_name
        assert doc["type"] in ("record", "enum"), file_name
        assert contract.file_for(doc["name"]) == file_name
        names.add(doc["name"])
    assert names == set(contract.type_names())


def test_record_and_enum_names_are_the_contract() -> None:
    assert set(contract.record_names()) == set(CONTRACT)
    assert set(contract.type_names()) == set(CONTRACT) | set(ENUMS)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_every_record_parses_with_fastavro(name: str) -> None:
    parsed = contract.schema_for(name)
    assert parsed["name"] == f"settle.payments.{name}"
    # The registered text must stand alone: parse it with no other schema known.
    assert fastavro.parse_schema(json.loads(contract.schema_str_for(name)), named_schemas={})


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_record_fields_are_the_contract(name: str) -> None:
    fields = contract.definition_for(name)["fields"]
    assert [(f["name"], f["type"]) for f in fields[: len(CONTRACT[name])]] == CONTRACT[name]
    for extra in fields[len(CONTRACT[name]) :]:
        assert "default" in extra, f"{name}.{extra['name']} was added without a default"


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enum_symbols_are_the_contract(name: str) -> None:
    assert contract.definition_for(name)["symbols"] == ENUMS[name]


def test_contract_defaults() -> None:
    for (record, field), default in DEFAULTS.items():
        by_name = {f["name"]: f for f in contract.definition_for(record)["fields"]}
        assert by_name[field]["default"] == default, f"{record}.{field}"


def test_every_nullable_field_defaults_to_null() -> None:
    for name in contract.record_names():
        for field in contract.definition_for(name)["fields"]:
            if isinstance(field["type"], list) and field["type"][0] == "null":
                assert "default" in field and field["default"] is None, f"{name}.{field['name']}"


@pytest.mark.parametrize("name", contract.type_names())
def test_every_type_and_field_has_a_doc(name: str) -> None:
    definition = contract.definition_for(name)
    assert definition.get("doc", "").strip(), f"{name} has no doc"
    for field in definition.get("fields", []):
        assert field.get("doc", "").strip(), f"{name}.{field['name']} has no doc"


def test_no_floats_anywhere_in_the_contract() -> None:
    for name in contract.record_names():
        text = contract.schema_str_for(name)
        assert '"float"' not in text and '"double"' not in text, name


def test_routed_payment_flattens_payment_requested_exactly() -> None:
    # The merchant's signature is checked at validate and not forwarded to the channels.
    requested = [f for f in contract.definition_for("PaymentRequested")["fields"]
                 if f["name"] not in SIGNATURE_FIELDS]
    routed = contract.definition_for("RoutedPayment")["fields"][: len(requested)]
    strip = [{k: v for k, v in f.items() if k != "doc"} for f in requested]
    assert [{k: v for k, v in f.items() if k != "doc"} for f in routed] == strip


def test_payment_requested_signature_fields_are_nullable_and_last() -> None:
    fields = contract.definition_for("PaymentRequested")["fields"]
    assert [f["name"] for f in fields[-2:]] == list(SIGNATURE_FIELDS)
    for f in fields[-2:]:
        assert f["type"] == ["null", "string"] and f["default"] is None


def test_registered_schema_is_self_contained_and_defines_each_type_once() -> None:
    text = contract.schema_str_for("PaymentRejected")
    assert text.count('"name":"PaymentRequested"') == 1
    assert text.count('"name":"PaymentMethod"') == 1
    routed = contract.schema_str_for("RoutedPayment")
    for enum in ("PaymentMethod", "PaymentInterface", "Channel"):
        assert routed.count(f'"name":"{enum}"') == 1
    assert contract.schema_str_for("RoutedPayment") is routed  # built once, cached


def test_every_topic_maps_to_a_record() -> None:
    assert set(TOPIC_RECORDS.values()) <= set(contract.record_names())
    assert TOPIC_RECORDS == {
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
        "refunds.requested": "RefundRequested",
        "refunds.rejected": "RefundRejected",
        "refunds.routed": "RoutedRefund",
        "channel.refund_confirmations": "ChannelRefundConfirmation",
        "refunds.results": "RefundResult",
        "channel.disputes": "ChannelDispute",
        "disputes.results": "DisputeResult",
        "cases.actions": "CaseAction",
        "cases.events": "CaseEvent",
    }


def test_every_channel_has_a_routed_topic() -> None:
    for channel in ENUMS["Channel"]:
        assert TOPIC_RECORDS[routed_topic(channel)] == "RoutedPayment"


def test_subjects_follow_the_topic_name_strategy() -> None:
    assert value_subject("payments.requested") == "payments.requested-value"


def test_unknown_type_is_a_schema_error() -> None:
    from schemas.errors import SchemaError

    with pytest.raises(SchemaError):
        contract.schema_for("NoSuchRecord")


def test_reason_code_doc_examples_are_real_codes() -> None:
    from settlement.validation import REASON_CODES

    doc = next(f["doc"] for f in contract.definition_for("RejectionReason")["fields"]
               if f["name"] == "code")
    examples = re.findall(r"\b[A-Z]+(?:_[A-Z]+)+\b", doc)
    assert examples and set(examples) <= REASON_CODES
