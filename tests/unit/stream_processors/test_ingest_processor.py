"""The validate+route stage without a broker: every input lands in exactly one place."""

from __future__ import annotations

from typing import Any

import pytest

from producers.signing import RequestSigner
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.routing import DEFAULT_RULES, RoutingTable
from settlement.signing import Keyring, SigningKey
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
from tests.support.ingest import KEYRING, MERCHANTS, NOW_MS, request

TOPICS = TopicNames()


class Harness:
    """The stage as the worker runs it by default: signatures required, producers signing."""

    def __init__(self, disabled: frozenset[str] = frozenset(),
                 keyring: Keyring | None = KEYRING) -> None:
        self.registry = InMemoryRegistry()
        self.store: dict[str, Any] = {}
        self.seen = SeenIndex(self.store, retention_ms=10_000)
        self.proc = IngestProcessor(
            self.registry, MERCHANTS.get, self.seen, RoutingTable(DEFAULT_RULES),
            ValidationPolicy(), TOPICS, clock=lambda: NOW_MS, disabled_channels=disabled,
            keyring=keyring,
        )
        self.signer = RequestSigner(KEYRING)
        self.encoder = AvroSerializer(self.registry, TOPICS.requested, "PaymentRequested")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0

    def feed(self, value: bytes | None, key: bytes | None = b"p-1"):  # type: ignore[no-untyped-def]
        self.offset += 1
        return self.proc.process(key, value, TOPICS.requested, 0, self.offset)

    def send(self, **over: Any):  # type: ignore[no-untyped-def]
        rec = request(**over)
        if KEYRING.signing_key_for(rec["merchant_id"]) is not None:
            rec = self.signer.sign_record(rec)  # an unknown merchant has no key: unsigned
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


def test_a_replay_of_the_accepted_input_is_routed_again_not_deduplicated() -> None:
    # After a crash the seen table may hold the entry while the routed output was lost:
    # re-reading the very same input (same partition and offset) must route it again.
    h = Harness()
    value = h.encoder.encode(h.signer.sign_record(request()))
    first = h.feed(value)
    assert first.outcome == ROUTED
    replay = h.proc.process(b"p-1", value, TOPICS.requested, 0, h.offset)
    assert replay.outcome == ROUTED and len(replay.outputs) == 1
    assert replay.outputs[0].headers == first.outputs[0].headers  # same source: one placement
    # Another input with the same body is still a duplicate, also after the replay.
    assert h.feed(value).outcome == DEDUPLICATED
    # The same offset on another partition is another input.
    other = h.proc.process(b"p-1", value, TOPICS.requested, 1, h.offset - 1)
    assert other.outcome == DEDUPLICATED


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
    assert letter["reason"] == d.error_type
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


# -- merchant signatures ----------------------------------------------------------------------


def test_signed_request_routes_and_the_signature_is_not_forwarded() -> None:
    h = Harness()
    d = h.send()
    assert d.outcome == ROUTED
    routed = h.decoder.decode(d.outputs[0].value)
    assert "signature" not in routed and "signature_key_id" not in routed


@pytest.mark.parametrize(("over", "code"), [
    ({"signature_key_id": None, "signature": None}, "SIGNATURE_MISSING"),
    ({"signature_key_id": "m-1.k9", "signature": "00" * 32}, "SIGNATURE_KEY_UNKNOWN"),
    ({"signature_key_id": "m-2.k1", "signature": "00" * 32}, "SIGNATURE_KEY_MERCHANT_MISMATCH"),
    ({"signature_key_id": "m-1.k1", "signature": "00" * 32}, "SIGNATURE_INVALID"),
])
def test_each_signature_failure_is_rejected_with_its_code(over: dict[str, Any],
                                                          code: str) -> None:
    h = Harness()
    d = h.send(**over)
    assert d.outcome == REJECTED and d.reasons == (code,)
    rejected = h.decoder.decode(d.outputs[0].value)
    assert rejected["reasons"][0]["code"] == code
    # The rejection keeps what was presented, for the merchant's support team.
    assert rejected["request"]["signature_key_id"] == over["signature_key_id"]
    assert rejected["request"]["signature"] == over["signature"]


def test_request_tampered_after_signing_is_rejected_and_not_remembered() -> None:
    h = Harness()
    signed = h.signer.sign_record(request())
    forged = {**signed, "amount_minor": signed["amount_minor"] * 100}
    d = h.feed(h.encoder.encode(forged))
    assert d.outcome == REJECTED and d.reasons == ("SIGNATURE_INVALID",)
    # A forgery cannot claim the payment_id: the genuine request still routes.
    assert h.feed(h.encoder.encode(signed)).outcome == ROUTED


def test_signature_failure_is_reported_with_every_other_failing_rule() -> None:
    d = Harness().send(signature_key_id=None, signature=None, currency="XXX")
    assert d.reasons[0] == "SIGNATURE_MISSING" and "CURRENCY_UNKNOWN" in d.reasons


def test_resend_signed_with_a_rotated_key_is_a_duplicate_not_a_conflict() -> None:
    new = SigningKey("m-1.k2", "m-1", b"9" * 32, "active", 5)
    h = Harness()
    assert h.send().outcome == ROUTED
    h.proc.keyring = KEYRING.rotated(new)  # what the worker's reload does
    resent = RequestSigner(h.proc.keyring).sign_record(request())
    assert resent["signature_key_id"] == "m-1.k2"
    assert h.feed(h.encoder.encode(resent)).outcome == DEDUPLICATED


def test_signatures_off_routes_unsigned_requests() -> None:
    h = Harness(keyring=None)
    assert h.send(signature_key_id=None, signature=None).outcome == ROUTED


def test_a_transient_table_error_is_raised_for_a_retry_not_dead_lettered() -> None:
    from faust.exceptions import PartitionsMismatch

    from stream_processors.transient import is_transient

    class FlakyStore(dict):  # type: ignore[type-arg]
        """A faust table right after its changelog topic was created (metadata lagging)."""

        failures = 1

        def __setitem__(self, key: str, value: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise PartitionsMismatch("changelog topic has 0 partitions")
            super().__setitem__(key, value)

    assert is_transient(PartitionsMismatch("x")) and not is_transient(ValueError("x"))
    h = Harness()
    h.seen = SeenIndex(FlakyStore(), retention_ms=10_000)
    h.proc._seen = h.seen
    value = h.encoder.encode(h.signer.sign_record(request()))
    with pytest.raises(PartitionsMismatch):
        h.proc.process(b"p-1", value, TOPICS.requested, 0, 1)
    retried = h.proc.process(b"p-1", value, TOPICS.requested, 0, 1)  # the agent's retry
    assert retried.outcome == ROUTED and len(retried.outputs) == 1


def test_routed_record_is_the_request_without_its_signature_plus_the_route() -> None:
    from schemas.codec import from_epoch_ms

    h = Harness()
    over: dict[str, Any] = {"metadata": {"b": "2", "a": "茶"}, "payment_id": "p-9",
                            "amount_minor": 123_456}
    d = h.send(**over)
    assert d.outcome == ROUTED
    routed = h.decoder.decode(d.outputs[0].value)
    assert routed == {
        **request(**over),
        "created_at": from_epoch_ms(NOW_MS - 1000),
        "channel": "ALIPAY",
        "rule_id": "alipay-default",
        "routed_at": from_epoch_ms(NOW_MS),
    }
