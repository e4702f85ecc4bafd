"""The validate+route stage without a broker: every input lands in exactly one place."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from settlement.model import Merchant
from settlement.routing import DEFAULT_RULES, RoutingTable
from settlement.validation import ValidationPolicy
from stream_processors.ingest import (
    DEAD_LETTERED,
    DEDUPLICATED,
    REJECTED,
    ROUTED,
    SOURCE_HEADER,
    IngestProcessor,
    SeenIndex,
)
from stream_processors.topics import TopicNames

NOW_MS = 1_764_000_000_000
TOPICS = TopicNames()

MERCHANTS = {
    "m-1": Merchant("m-1", "Shop", "ACTIVE", "CNY", NOW_MS),
    "m-off": Merchant("m-off", "Closed", "SUSPENDED", "CNY", NOW_MS),
}


def request(**over: Any) -> dict[str, Any]:
    rec = {
        "payment_id": "p-1", "merchant_id": "m-1", "order_id": "o-1", "payer_id": "u-1",
        "amount_minor": 1000, "currency": "CNY", "method": "ALIPAY", "interface": "APP",
        "region": "CN", "created_at": NOW_MS - 1000, "metadata": {},
    }
    rec.update(over)
    return rec


class Harness:
    def __init__(self, disabled: frozenset[str] = frozenset()) -> None:
        self.registry = InMemoryRegistry()
        self.store: dict[str, Any] = {}
        self.seen = SeenIndex(self.store, retention_ms=10_000)
        self.proc = IngestProcessor(
            self.registry, MERCHANTS.get, self.seen, RoutingTable(DEFAULT_RULES),
            ValidationPolicy(), TOPICS, clock=lambda: NOW_MS, disabled_channels=disabled,
        )
        self.encoder = AvroSerializer(self.registry, TOPICS.requested, "PaymentRequested")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0

    def feed(self, value: bytes | None, key: bytes | None = b"p-1"):  # type: ignore[no-untyped-def]
        self.offset += 1
        return self.proc.process(key, value, TOPICS.requested, 0, self.offset)

    def send(self, **over: Any):  # type: ignore[no-untyped-def]
        rec = request(**over)
        return self.feed(self.encoder.encode(rec), rec["payment_id"].encode())


def test_valid_request_is_routed_with_the_rule_and_source_header() -> None:
    h = Harness()
    d = h.send()
    assert d.outcome == ROUTED and d.channel == "alipay"
    [out] = d.outputs
    assert out.topic == "payments.routed.alipay" and out.key == b"p-1"
    routed = h.decoder.decode(out.value)
    assert routed["rule_id"] == d.rule_id and routed["channel"] == "ALIPAY"
    assert routed["amount_minor"] == 1000 and routed["currency"] == "CNY"
    assert dict(out.headers)[SOURCE_HEADER] == b"payments.requested/0/1"


def test_identical_resend_is_deduplicated_and_different_body_conflicts() -> None:
    h = Harness()
    assert h.send().outcome == ROUTED
    dup = h.send()
    assert dup.outcome == DEDUPLICATED and dup.outputs == []
    conflict = h.send(amount_minor=999)
    assert conflict.outcome == REJECTED and conflict.reasons == ("DUPLICATE_CONFLICT",)


def test_every_failing_rule_is_reported() -> None:
    h = Harness()
    d = h.send(amount_minor=0, currency="XXX", merchant_id="m-unknown", region="cn")
    assert d.outcome == REJECTED
    assert {"AMOUNT_NOT_POSITIVE", "CURRENCY_UNKNOWN", "MERCHANT_UNKNOWN",
            "REGION_INVALID"} <= set(d.reasons)
    rejected = h.decoder.decode(d.outputs[0].value)
    assert [r["code"] for r in rejected["reasons"]] == list(d.reasons)
    assert rejected["request"]["payment_id"] == "p-1"


def test_suspended_merchant_is_rejected() -> None:
    assert Harness().send(merchant_id="m-off").reasons == ("MERCHANT_SUSPENDED",)


def test_rejected_requests_are_not_remembered_so_a_fixed_resend_routes() -> None:
    h = Harness()
    assert h.send(merchant_id="m-off").outcome == REJECTED
    assert h.send().outcome == ROUTED


def test_killed_channel_fails_over_or_rejects() -> None:
    # CARD in CN prefers unionpay; with unionpay off it fails over to the card channel.
    h = Harness(disabled=frozenset({"unionpay"}))
    d = h.send(method="CARD")
    assert d.outcome == ROUTED and d.channel == "card"
    h2 = Harness(disabled=frozenset({"alipay"}))
    d2 = h2.send(method="ALIPAY")
    assert d2.outcome == REJECTED and d2.reasons == ("CHANNEL_DISABLED",)


@pytest.mark.parametrize(
    "value,error_type",
    [
        (None, "EMPTY_VALUE"),
        (b"", "EMPTY_VALUE"),
        (b"\x01\x00\x00\x00\x01abc", "BAD_MAGIC_BYTE"),
        (b"\x00\x00\x0f\x42\x3f" + b"\x02", "UNKNOWN_SCHEMA_ID"),
        (b"\x00\x00", "TRUNCATED_HEADER"),
    ],
)
def test_undecodable_input_is_dead_lettered_with_original_bytes(
    value: bytes | None, error_type: str
) -> None:
    h = Harness()
    d = h.feed(value, key=b"k")
    assert d.outcome == DEAD_LETTERED
    letter = h.decoder.decode(d.outputs[0].value)
    assert letter["original_value"] == value and letter["original_key"] == b"k"
    assert letter["source_topic"] == "payments.requested" and letter["source_offset"] == 1
    assert letter["error_type"] == d.error_type
    assert d.error_type is not None and error_type in d.error_type.upper()


def test_truncated_body_is_dead_lettered() -> None:
    h = Harness()
    good = h.encoder.encode(request())
    d = h.feed(good[: len(good) - 7])
    assert d.outcome == DEAD_LETTERED


def test_record_of_another_schema_is_dead_lettered() -> None:
    h = Harness()
    merchant = AvroSerializer(h.registry, "merchants", "Merchant").encode(
        {"merchant_id": "m", "name": "n", "status": "ACTIVE", "settlement_currency": "CNY",
         "updated_at": NOW_MS})
    assert h.feed(merchant).outcome == DEAD_LETTERED


def test_seen_index_expires_only_old_entries_of_its_partition() -> None:
    store: dict[str, Any] = {}
    seen = SeenIndex(store, retention_ms=100)
    seen.remember("a", "fa", 1_000, partition=0)
    seen.remember("b", "fb", 1_050, partition=1)
    seen.remember("c", "fc", 1_090, partition=0)
    assert seen.expire(1_150, partition=0) == 1
    assert set(store) == {"b", "c"}
    rebuilt = SeenIndex(store, retention_ms=100)
    assert rebuilt.expire(1_200, partition=1) == 1
    assert set(store) == {"c"}
