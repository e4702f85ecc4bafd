"""Refund request signatures: canonical form refund-v1 is stable and covers every signed field."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.model import PaymentRequest
from settlement.refund_model import RefundRequest
from settlement.signing import (
    SIGNATURE_INVALID,
    SIGNATURE_KEY_MERCHANT_MISMATCH,
    SIGNATURE_KEY_UNKNOWN,
    SIGNATURE_MISSING,
    Keyring,
    NotSignable,
    SigningKey,
    canonical_form,
    refund_canonical_form,
    sign,
    sign_refund,
    verify_refund,
)

SECRET = bytes(range(32))
KEY = SigningKey("m-0001.k1", "m-0001", SECRET, "active", 0)
OTHER = SigningKey("m-0002.k1", "m-0002", bytes(range(32, 64)), "active", 0)
KEYRING = Keyring([KEY, OTHER])

# Golden vector, also in docs/producing.md and the README (the HMAC was checked with
# `openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f`). Changing refund-v1 breaks every
# merchant's integration: add a new version instead.
GOLDEN_CANONICAL = (
    b"9:refund-v1,9:m-0001.k1,4:rf-1,5:pay-1,6:m-0001,4:2500,3:CNY,13:1750000360000,1:2,"
    b"4:note,9:\xe5\xb0\xba\xe7\xa0\x81\xe5\xb0\x8f,6:source,4:test,"
)
GOLDEN_SIGNATURE = "5eeab9071088c21a54a90ff77b23790fafd2587d801c331b668fb72ddd2027eb"


def request(**changes: Any) -> RefundRequest:
    fields: dict[str, Any] = {
        "refund_id": "rf-1", "payment_id": "pay-1", "merchant_id": "m-0001",
        "amount_minor": 2500, "currency": "CNY", "requested_at_ms": 1_750_000_360_000,
        "reason": "size too small", "metadata": {"source": "test", "note": "尺码小"},
    }
    fields.update(changes)
    return RefundRequest(**fields)


def signed(req: RefundRequest, key: SigningKey = KEY) -> RefundRequest:
    return dataclasses.replace(req, signature_key_id=key.key_id,
                               signature=sign_refund(req, key))


def test_golden_vector() -> None:
    assert refund_canonical_form(request(), KEY.key_id) == GOLDEN_CANONICAL
    assert sign_refund(request(), KEY) == GOLDEN_SIGNATURE
    assert hmac.new(SECRET, GOLDEN_CANONICAL, hashlib.sha256).hexdigest() == GOLDEN_SIGNATURE


def test_metadata_order_and_reason_are_not_signed() -> None:
    reordered = request(metadata={"note": "尺码小", "source": "test"}, reason=None)
    assert sign_refund(reordered, KEY) == GOLDEN_SIGNATURE


@pytest.mark.parametrize("change", [
    {"refund_id": "rf-2"}, {"payment_id": "pay-2"}, {"merchant_id": "m-0002"},
    {"amount_minor": 2501}, {"currency": "USD"}, {"requested_at_ms": 1_750_000_360_001},
    {"metadata": {"source": "test"}}, {"metadata": {"source": "test", "note": "尺码大"}},
])
def test_every_signed_field_changes_the_signature(change: dict[str, Any]) -> None:
    assert sign_refund(request(**change), KEY) != GOLDEN_SIGNATURE


def test_payment_and_refund_forms_never_collide() -> None:
    payment = PaymentRequest(
        payment_id="pay-1", merchant_id="m-0001", order_id="o", payer_id="p",
        amount_minor=2500, currency="CNY", method="ALIPAY", interface="APP", region="CN",
        created_at_ms=1_750_000_360_000,
    )
    assert canonical_form(payment, KEY.key_id)[:4] == b"2:v1"
    assert refund_canonical_form(request(), KEY.key_id).startswith(b"9:refund-v1,")


def test_verify_accepts_a_valid_signature() -> None:
    assert verify_refund(signed(request()), KEYRING) is None


@pytest.mark.parametrize(("key_id", "signature", "code"), [
    (None, GOLDEN_SIGNATURE, SIGNATURE_MISSING),
    ("m-0001.k1", None, SIGNATURE_MISSING),
    ("", "", SIGNATURE_MISSING),
    ("m-0001.k9", GOLDEN_SIGNATURE, SIGNATURE_KEY_UNKNOWN),
    ("m-0002.k1", GOLDEN_SIGNATURE, SIGNATURE_KEY_MERCHANT_MISMATCH),
    ("m-0001.k1", "0" * 64, SIGNATURE_INVALID),
    ("m-0001.k1", GOLDEN_SIGNATURE.upper(), SIGNATURE_INVALID),
    ("m-0001.k1", "é" * 64, SIGNATURE_INVALID),
    (7, GOLDEN_SIGNATURE, SIGNATURE_INVALID),
])
def test_verify_failures_in_order(key_id: Any, signature: Any, code: str) -> None:
    failure = verify_refund(request(signature_key_id=key_id, signature=signature), KEYRING)
    assert failure is not None and failure.code == code


def test_tampered_after_signing_is_invalid() -> None:
    tampered = dataclasses.replace(signed(request()), amount_minor=2600)
    failure = verify_refund(tampered, KEYRING)
    assert failure is not None and failure.code == SIGNATURE_INVALID


def test_a_payment_signature_does_not_verify_a_refund() -> None:
    payment = PaymentRequest(
        payment_id="pay-1", merchant_id="m-0001", order_id="o", payer_id="p",
        amount_minor=2500, currency="CNY", method="ALIPAY", interface="APP", region="CN",
        created_at_ms=1_750_000_360_000,
    )
    forged = request(signature_key_id=KEY.key_id, signature=sign(payment, KEY))
    failure = verify_refund(forged, KEYRING)
    assert failure is not None and failure.code == SIGNATURE_INVALID


@pytest.mark.parametrize("change", [
    {"amount_minor": "2500"}, {"amount_minor": True}, {"amount_minor": 25.0},
    {"requested_at_ms": None}, {"refund_id": None}, {"currency": b"CNY"},
    {"metadata": {"k": 1}}, {"payment_id": "\ud800"},
])
def test_unsignable_requests(change: dict[str, Any]) -> None:
    with pytest.raises(NotSignable):
        sign_refund(request(**change), KEY)
    bad = request(**change, signature_key_id=KEY.key_id, signature=GOLDEN_SIGNATURE)
    failure = verify_refund(bad, KEYRING)
    assert failure is not None and failure.code == SIGNATURE_INVALID


_TEXT = st.text(max_size=12)


@given(refund_id=_TEXT, payment_id=_TEXT, merchant_id=_TEXT, currency=_TEXT,
       amount=st.integers(-(2**63), 2**63 - 1), at=st.integers(0, 2**50),
       metadata=st.dictionaries(_TEXT, _TEXT, max_size=3))
def test_canonical_form_is_injective_per_field(
    refund_id: str, payment_id: str, merchant_id: str, currency: str, amount: int, at: int,
    metadata: dict[str, str],
) -> None:
    try:
        req = request(refund_id=refund_id, payment_id=payment_id, merchant_id=merchant_id,
                      currency=currency, amount_minor=amount, requested_at_ms=at,
                      metadata=metadata)
        form = refund_canonical_form(req, KEY.key_id)
    except NotSignable:
        return
    # Joining two adjacent text fields differently never gives the same bytes.
    shifted = request(refund_id=refund_id + payment_id[:1], payment_id=payment_id[1:],
                      merchant_id=merchant_id, currency=currency, amount_minor=amount,
                      requested_at_ms=at, metadata=metadata)
    if payment_id:
        assert refund_canonical_form(shifted, KEY.key_id) != form
    if merchant_id == KEY.merchant_id:
        assert verify_refund(signed(req), KEYRING) is None
