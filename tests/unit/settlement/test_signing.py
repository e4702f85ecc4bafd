"""Request signatures: canonical form v1 is stable, every signed field is covered, keys rotate."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement import idempotency, signing
from settlement.model import PaymentRequest
from settlement.signing import (
    SIGNATURE_INVALID,
    SIGNATURE_KEY_MERCHANT_MISMATCH,
    SIGNATURE_KEY_UNKNOWN,
    SIGNATURE_MISSING,
    InvalidKeyring,
    Keyring,
    NotSignable,
    SigningKey,
    canonical_form,
    sign,
    verify,
)

SECRET = bytes(range(32))
KEY = SigningKey("m-0001.k1", "m-0001", SECRET, "active", 0)
OTHER = SigningKey("m-0002.k1", "m-0002", bytes(range(32, 64)), "active", 0)
KEYRING = Keyring([KEY, OTHER])

# Golden vector: the request, its canonical bytes and its signature, written out by hand
# (the HMAC was also checked with `openssl dgst -sha256 -mac HMAC`). Changing the canonical
# form breaks every merchant's integration: bump SIGNATURE_VERSION instead.
GOLDEN_CANONICAL = (
    b"2:v1,9:m-0001.k1,5:pay-1,6:m-0001,5:ord-1,12:payer-000042,5:12345,3:CNY,6:ALIPAY,"
    b"3:APP,2:CN,13:1750000000000,1:2,12:channel_hint,3:\xe8\x8c\xb6,6:source,4:test,"
)
GOLDEN_SIGNATURE = "21ccc50e169815dee53eb7599d611a76aa1db0b838193c0039e642dae87a2bba"


def request(**over: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "payment_id": "pay-1", "merchant_id": "m-0001", "order_id": "ord-1",
        "payer_id": "payer-000042", "amount_minor": 12345, "currency": "CNY",
        "method": "ALIPAY", "interface": "APP", "region": "CN",
        "created_at_ms": 1_750_000_000_000,
        "metadata": {"source": "test", "channel_hint": "茶"},
    }
    fields.update(over)
    return PaymentRequest(**fields)


def signed(req: PaymentRequest, key: SigningKey = KEY) -> PaymentRequest:
    return dataclasses.replace(req, signature_key_id=key.key_id, signature=sign(req, key))


def test_golden_vector() -> None:
    assert canonical_form(request(), KEY.key_id) == GOLDEN_CANONICAL
    assert sign(request(), KEY) == GOLDEN_SIGNATURE
    assert hmac.new(SECRET, GOLDEN_CANONICAL, hashlib.sha256).hexdigest() == GOLDEN_SIGNATURE
    assert verify(signed(request()), KEYRING) is None


def test_metadata_order_does_not_matter() -> None:
    shuffled = request(metadata={"channel_hint": "茶", "source": "test"})
    assert sign(shuffled, KEY) == GOLDEN_SIGNATURE


# Each signed field, and a value that differs from the golden request's.
TAMPERS: list[tuple[str, Any]] = [
    ("payment_id", "pay-2"),
    ("merchant_id", "m-0001 "),
    ("order_id", "ord-1x"),
    ("payer_id", "payer-000043"),
    ("amount_minor", 12346),
    ("currency", "HKD"),
    ("method", "CARD"),
    ("interface", "H5"),
    ("region", "HK"),
    ("created_at_ms", 1_750_000_000_001),
    ("metadata", {"source": "test", "channel_hint": "茶", "extra": ""}),
    ("metadata", {"source": "test", "channel_hint": "茶 "}),
    ("metadata", {"source": "test"}),
]


def test_every_field_of_the_request_is_signed() -> None:
    # A new field in the model must be added to the canonical form (or here, with a reason).
    unsigned = {"signature_key_id", "signature"}
    fields = {f.name for f in dataclasses.fields(PaymentRequest)} - unsigned
    assert fields == {name for name, _ in TAMPERS}


@pytest.mark.parametrize(("field", "value"), TAMPERS, ids=[f"{f}-{i}" for i, (f, _) in
                                                             enumerate(TAMPERS)])
def test_tampering_with_any_signed_field_fails_verification(field: str, value: Any) -> None:
    good = signed(request())
    tampered = dataclasses.replace(good, **{field: value})
    failure = verify(tampered, KEYRING)
    assert failure is not None
    # merchant_id changed: the key now belongs to someone else.
    expected = SIGNATURE_KEY_MERCHANT_MISMATCH if field == "merchant_id" else SIGNATURE_INVALID
    assert failure.code == expected


def test_tampering_with_the_key_id_fails() -> None:
    good = signed(request())
    relabelled = Keyring([KEY, SigningKey("m-0001.k2", "m-0001", SECRET, "active", 1)])
    # Same secret under another id: still refused, because the key id is signed too.
    failure = verify(dataclasses.replace(good, signature_key_id="m-0001.k2"), relabelled)
    assert failure is not None and failure.code == SIGNATURE_INVALID


def test_field_boundaries_are_unambiguous() -> None:
    a = request(order_id="a|b", payer_id="c")
    b = request(order_id="a", payer_id="b|c")
    c = request(order_id="a:b,", payer_id="c")
    d = request(order_id="a", payer_id="b,c")
    forms = {canonical_form(r, KEY.key_id) for r in (a, b, c, d)}
    assert len(forms) == 4


def test_signature_of_another_merchants_key_is_a_mismatch() -> None:
    req = signed(request(), OTHER)
    failure = verify(req, KEYRING)
    assert failure is not None and failure.code == SIGNATURE_KEY_MERCHANT_MISMATCH


@pytest.mark.parametrize(("key_id", "signature", "detail"), [
    (None, None, "no signature_key_id and no signature"),
    ("m-0001.k1", None, "no signature"),
    (None, GOLDEN_SIGNATURE, "no signature_key_id"),
    ("", "", "no signature_key_id and no signature"),
])
def test_missing_signature(key_id: str | None, signature: str | None, detail: str) -> None:
    failure = verify(request(signature_key_id=key_id, signature=signature), KEYRING)
    assert failure is not None and failure.code == SIGNATURE_MISSING
    assert failure.detail == detail


def test_unknown_key() -> None:
    req = request(signature_key_id="m-0001.nope", signature=GOLDEN_SIGNATURE)
    failure = verify(req, KEYRING)
    assert failure is not None and failure.code == SIGNATURE_KEY_UNKNOWN
    assert "m-0001.nope" in failure.detail


@pytest.mark.parametrize("bad", [
    GOLDEN_SIGNATURE.upper(), GOLDEN_SIGNATURE[:-1], GOLDEN_SIGNATURE + "0", "é" * 64,
    "\ud800" * 3, "0" * 64,
])
def test_wrong_signatures_are_invalid_never_an_error(bad: str) -> None:
    failure = verify(request(signature_key_id=KEY.key_id, signature=bad), KEYRING)
    assert failure is not None and failure.code == SIGNATURE_INVALID


def test_badly_typed_fields_are_invalid_not_an_exception() -> None:
    good = signed(request())
    for field, value in (("amount_minor", "12345"), ("amount_minor", True),
                         ("currency", None), ("metadata", {"k": 1}),
                         ("metadata", {1: "a", "b": "c"})):
        failure = verify(dataclasses.replace(good, **{field: value}), KEYRING)
        assert failure is not None and failure.code == SIGNATURE_INVALID, field
    with pytest.raises(NotSignable):
        canonical_form(request(amount_minor=1.5), KEY.key_id)


def test_verification_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    assert verify(signed(request()), KEYRING) is None
    assert verify(request(signature_key_id=KEY.key_id, signature="0" * 64), KEYRING) is not None
    assert len(calls) == 2 and all(isinstance(x, bytes) for pair in calls for x in pair)


def test_rotation_signs_with_the_new_key_and_the_retired_one_still_verifies() -> None:
    old_signed = signed(request())
    new = SigningKey("m-0001.k2", "m-0001", bytes(range(64, 96)), "active", 10)
    rotated = KEYRING.rotated(new)
    assert rotated.signing_key_for("m-0001") == new
    assert rotated.get("m-0001.k1") is not None
    assert rotated.get("m-0001.k1").status == "retired"  # type: ignore[union-attr]
    assert rotated.signing_key_for("m-0002") == OTHER
    # Signed just before the rotation, verified after it: accepted.
    assert verify(old_signed, rotated) is None
    assert verify(signed(request(), new), rotated) is None
    # Removing the retired key revokes it.
    revoked = rotated.without("m-0001.k1")
    failure = verify(old_signed, revoked)
    assert failure is not None and failure.code == SIGNATURE_KEY_UNKNOWN


def test_newest_active_key_signs() -> None:
    a = SigningKey("m.a", "m", SECRET, "active", 5)
    b = SigningKey("m.b", "m", SECRET, "active", 7)
    c = SigningKey("m.c", "m", SECRET, "retired", 9)
    assert Keyring([a, b, c]).signing_key_for("m") == b
    assert Keyring([c]).signing_key_for("m") is None


def test_the_signature_is_not_part_of_the_idempotency_fingerprint() -> None:
    # A re-send signed after a rotation is the same payment: a duplicate, never a conflict.
    new = SigningKey("m-0001.k2", "m-0001", bytes(range(64, 96)), "active", 10)
    first, resent = signed(request()), signed(request(), new)
    assert first.signature != resent.signature
    assert idempotency.fingerprint(first) == idempotency.fingerprint(resent)


def test_secrets_never_show_in_repr() -> None:
    text = f"{KEY!r} {KEYRING!r} {list(KEYRING)!r}"
    assert SECRET.hex() not in text and repr(SECRET) not in text


def test_keyring_document_round_trip() -> None:
    back = Keyring.from_document(KEYRING.to_document())
    assert list(back) == list(KEYRING)


@pytest.mark.parametrize(("document", "message"), [
    ({"version": 2, "keys": []}, "version"),
    ({"version": 1, "keys": {}}, "must be a list"),
    ({"version": 1, "keys": [{"key_id": "k", "merchant_id": "m"}]}, "lacks 'secret_hex'"),
    ({"version": 1, "keys": [{"key_id": "k", "merchant_id": "m", "secret_hex": "zz"}]},
     "not hex"),
    ({"version": 1, "keys": [{"key_id": "k", "merchant_id": "m", "secret_hex": "00" * 8}]},
     "at least 32 bytes"),
    ({"version": 1, "keys": [{"key_id": "k", "merchant_id": "m", "secret_hex": "00" * 32,
                              "status": "revoked"}]}, "status"),
    ({"version": 1, "keys": [KEY.to_document(), KEY.to_document()]}, "twice"),
])
def test_malformed_keyrings_are_refused(document: Any, message: str) -> None:
    with pytest.raises(InvalidKeyring, match=message):
        Keyring.from_document(document)


text = st.text(max_size=12)


@given(order_id=text, payer_id=text, other_order=text, other_payer=text,
       meta=st.dictionaries(text, text, max_size=3))
def test_different_requests_have_different_canonical_forms(
    order_id: str, payer_id: str, other_order: str, other_payer: str, meta: dict[str, str]
) -> None:
    try:
        one = canonical_form(request(order_id=order_id, payer_id=payer_id, metadata=meta),
                             "k")
        two = canonical_form(request(order_id=other_order, payer_id=other_payer,
                                     metadata=meta), "k")
    except NotSignable:  # lone surrogates have no UTF-8 form
        return
    assert (one == two) == ((order_id, payer_id) == (other_order, other_payer))


def _reference_canonical_form(r: PaymentRequest, key_id: str) -> bytes:
    """The module docstring's definition, written the plain way (one netstring per field)."""
    def netstring(value: str) -> bytes:
        data = value.encode("utf-8")
        return str(len(data)).encode() + b":" + data + b","

    items = sorted(r.metadata.items())
    fields = [signing.SIGNATURE_VERSION, key_id, r.payment_id, r.merchant_id, r.order_id,
              r.payer_id, str(r.amount_minor), r.currency, r.method, r.interface, r.region,
              str(r.created_at_ms), str(len(items))]
    fields += [part for pair in items for part in pair]
    return b"".join(netstring(f) for f in fields)


@given(key_id=text, texts=st.lists(text, min_size=8, max_size=8),
       amount=st.integers(), created=st.integers(),
       meta=st.dictionaries(text, text, max_size=4))
def test_canonical_form_equals_the_documented_definition(
    key_id: str, texts: list[str], amount: int, created: int, meta: dict[str, str]
) -> None:
    names = ("payment_id", "merchant_id", "order_id", "payer_id", "currency", "method",
             "interface", "region")
    req = request(**dict(zip(names, texts, strict=True)), amount_minor=amount,
                  created_at_ms=created, metadata=meta)
    try:
        expected = _reference_canonical_form(req, key_id)
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        with pytest.raises(NotSignable):
            canonical_form(req, key_id)
        return
    assert canonical_form(req, key_id) == expected
