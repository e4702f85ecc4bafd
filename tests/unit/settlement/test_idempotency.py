"""Unit tests for settlement.idempotency: fingerprints, decisions and safe bounded retention."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.errors import DomainError
from settlement.idempotency import (
    DEFAULT_RETENTION_MS,
    FINGERPRINT_VERSION,
    IdempotencyDecision,
    NotFingerprintable,
    RetentionTooShort,
    SeenEntry,
    canonical_encoding,
    check_retention,
    decide,
    fingerprint,
    is_expired,
    remember,
)
from settlement.model import PaymentRequest
from settlement.validation import (
    CREATED_AT_TOO_OLD,
    ValidationPolicy,
    check_created_at,
)

NOW_MS = 1_700_000_000_000
DAY_MS = 24 * 60 * 60 * 1000
NEW, DUPLICATE, CONFLICT = (
    IdempotencyDecision.NEW,
    IdempotencyDecision.DUPLICATE,
    IdempotencyDecision.CONFLICT,
)


def request(**overrides: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "payer_id": "u-1",
        "amount_minor": 12345,
        "currency": "CNY",
        "method": "ALIPAY",
        "interface": "APP",
        "region": "CN",
        "created_at_ms": NOW_MS,
        "metadata": {"b": "2", "a": "1"},
    }
    fields.update(overrides)
    return PaymentRequest(**fields)


def test_canonical_encoding_is_the_documented_json_array() -> None:
    assert canonical_encoding(request()) == (
        b'["payment-request/v1","pay-1","m-1","o-1","u-1",12345,"CNY","ALIPAY","APP","CN",'
        b'1700000000000,[["a","1"],["b","2"]]]'
    )
    assert FINGERPRINT_VERSION == "payment-request/v1"


def test_fingerprint_is_sha256_hex_of_the_encoding_and_pinned() -> None:
    fp = fingerprint(request())
    assert fp == hashlib.sha256(canonical_encoding(request())).hexdigest()
    assert fp == "d3d48f19e7e7aaccdb556b008ca7f29b24cab6844ad131e0c4ab1225181584d5"


def test_non_ascii_text_is_escaped_deterministically() -> None:
    encoded = canonical_encoding(request(payer_id="张三", metadata={"备注": "é"}))
    assert b'"\\u5f20\\u4e09"' in encoded
    assert encoded.isascii()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("payment_id", "pay-2"),
        ("merchant_id", "m-2"),
        ("order_id", "o-2"),
        ("payer_id", "u-2"),
        ("amount_minor", 12346),
        ("currency", "HKD"),
        ("method", "CARD"),
        ("interface", "H5"),
        ("region", "HK"),
        ("created_at_ms", NOW_MS + 1),
        ("metadata", {"a": "1"}),
        ("metadata", {"a": "1", "b": "3"}),
    ],
)
def test_every_business_field_changes_the_fingerprint(name: str, value: object) -> None:
    assert fingerprint(request(**{name: value})) != fingerprint(request())


def test_fields_cannot_bleed_into_each_other() -> None:
    # A naive concatenation would make these two bodies collide.
    left = request(order_id="o-1", payer_id="u")
    right = request(order_id="o-1u", payer_id="")
    assert fingerprint(left) != fingerprint(right)


@pytest.mark.parametrize(
    "overrides",
    [
        {"amount_minor": True},
        {"amount_minor": 1.0},
        {"created_at_ms": "0"},
        {"currency": None},
        {"payment_id": 1},
        {"metadata": {"a": 1}},
        {"metadata": {1: "a", "b": "c"}},
    ],
)
def test_badly_typed_requests_are_not_fingerprintable(overrides: dict[str, Any]) -> None:
    with pytest.raises(NotFingerprintable) as info:
        fingerprint(request(**overrides))
    assert isinstance(info.value, DomainError)


@given(
    pairs=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=6), seed=st.randoms()
)
def test_fingerprint_ignores_metadata_insertion_order(pairs: dict[str, str], seed: Any) -> None:
    items = list(pairs.items())
    seed.shuffle(items)
    assert fingerprint(request(metadata=dict(items))) == fingerprint(request(metadata=pairs))


def test_decide() -> None:
    fp = fingerprint(request())
    seen = SeenEntry(fp, NOW_MS)
    assert decide(None, fp, NOW_MS) is NEW
    assert decide(seen, fp, NOW_MS + 1) is DUPLICATE
    assert decide(seen, fingerprint(request(amount_minor=1)), NOW_MS + 1) is CONFLICT
    assert decide(seen, fp, NOW_MS + DEFAULT_RETENTION_MS) is DUPLICATE
    assert decide(seen, fp, NOW_MS + DEFAULT_RETENTION_MS + 1) is NEW
    assert decide(seen, "other", NOW_MS + DEFAULT_RETENTION_MS + 1) is NEW
    assert str(CONFLICT) == "CONFLICT"


def test_is_expired_boundary() -> None:
    entry = SeenEntry("fp", 1000)
    assert not is_expired(entry, 1000 + 500, retention_ms=500)
    assert is_expired(entry, 1000 + 501, retention_ms=500)
    assert DEFAULT_RETENTION_MS == 8 * DAY_MS


def test_remember_keeps_the_first_body() -> None:
    first = SeenEntry("fp-1", NOW_MS)
    assert remember(None, "fp-1", NOW_MS) == (NEW, first)
    assert remember(first, "fp-1", NOW_MS + 5) == (DUPLICATE, first)
    assert remember(first, "fp-2", NOW_MS + 5) == (CONFLICT, first)
    later = NOW_MS + DEFAULT_RETENTION_MS + 1
    assert remember(first, "fp-2", later) == (NEW, SeenEntry("fp-2", later))


def test_seen_entry_record_round_trip() -> None:
    entry = SeenEntry("fp", NOW_MS)
    assert SeenEntry.from_record(entry.to_record()) == entry
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.fingerprint = "x"  # type: ignore[misc]


def test_check_retention() -> None:
    policy = ValidationPolicy()
    check_retention(DEFAULT_RETENTION_MS, policy)
    check_retention(policy.max_age_ms + policy.max_future_skew_ms, policy)
    with pytest.raises(RetentionTooShort, match="shorter than the validation window"):
        check_retention(policy.max_age_ms + policy.max_future_skew_ms - 1, policy)
    with pytest.raises(RetentionTooShort):
        check_retention(policy.max_age_ms, policy)
    with pytest.raises(RetentionTooShort, match="must be an int"):
        check_retention(True, policy)
    with pytest.raises(RetentionTooShort):
        check_retention(DEFAULT_RETENTION_MS, ValidationPolicy(max_age_ms=30 * DAY_MS))


@given(
    max_age_ms=st.integers(min_value=1, max_value=30 * DAY_MS),
    skew_ms=st.integers(min_value=0, max_value=DAY_MS),
    extra_ms=st.integers(min_value=0, max_value=DAY_MS),
    first_offset_ms=st.integers(min_value=-2 * DAY_MS, max_value=2 * DAY_MS),
    later_ms=st.integers(min_value=0, max_value=60 * DAY_MS),
)
def test_forgetting_never_lets_a_valid_duplicate_through(
    max_age_ms: int, skew_ms: int, extra_ms: int, first_offset_ms: int, later_ms: int
) -> None:
    """Reference argument of the module docstring, checked against the real validation rule."""
    policy = ValidationPolicy(max_age_ms=max_age_ms, max_future_skew_ms=skew_ms)
    retention_ms = max_age_ms + skew_ms + extra_ms
    check_retention(retention_ms, policy)
    original = request(created_at_ms=NOW_MS)
    first_seen_ms = NOW_MS + first_offset_ms
    if check_created_at(original, first_seen_ms, policy):
        return  # the original was rejected, so nothing was remembered
    entry = SeenEntry(fingerprint(original), first_seen_ms)
    now_ms = first_seen_ms + later_ms
    replay_rejected = [r.code for r in check_created_at(original, now_ms, policy)]
    if is_expired(entry, now_ms, retention_ms):
        assert CREATED_AT_TOO_OLD in replay_rejected
    else:
        assert decide(entry, fingerprint(original), now_ms, retention_ms) is DUPLICATE


@given(texts=st.lists(st.text(max_size=10), min_size=8, max_size=8), amount=st.integers(),
       created=st.integers(), meta=st.dictionaries(st.text(max_size=6), st.text(max_size=6),
                                                   max_size=4))
def test_canonical_encoding_equals_json_dumps_of_the_documented_array(
    texts: list[str], amount: int, created: int, meta: dict[str, str]
) -> None:
    import json

    names = ("payment_id", "merchant_id", "order_id", "payer_id", "currency", "method",
             "interface", "region")
    req = request(**dict(zip(names, texts, strict=True)), amount_minor=amount,
                  created_at_ms=created, metadata=meta)
    document = [FINGERPRINT_VERSION, *texts[:4], amount, *texts[4:], created,
                [[k, v] for k, v in sorted(meta.items())]]
    expected = json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode("utf-8")
    assert canonical_encoding(req) == expected
