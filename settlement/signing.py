"""Merchant request signatures: canonical form v1, HMAC-SHA256 signing, keyring and verification.

Canonical form v1 (the exact bytes a merchant signs):

    netstring(s) = ASCII decimal length of UTF-8(s) + ":" + UTF-8(s) + ","
    canonical    = netstring("v1") + netstring(signature_key_id)
                   + netstring(payment_id) + netstring(merchant_id) + netstring(order_id)
                   + netstring(payer_id) + netstring(str(amount_minor)) + netstring(currency)
                   + netstring(method) + netstring(interface) + netstring(region)
                   + netstring(str(created_at_ms)) + netstring(str(len(metadata)))
                   + netstring(key_1) + netstring(value_1) + ... (metadata sorted by key)

Integers are written in base 10 without leading zeros or "+" (Python's str(int)); created_at
is epoch milliseconds (UTC). Every field is length-prefixed, so no choice of text can make two
different requests produce the same bytes ("a|b" + "c" never equals "a" + "b|c"). Text is
signed as given (no Unicode normalisation, no trimming). The key id is signed too, so a
signature is bound to the key that made it.

signature = lowercase hex of HMAC-SHA256(secret, canonical) (64 characters).

Canonical form refund-v1 (refund requests, same netstring and signature):

    canonical    = netstring("refund-v1") + netstring(signature_key_id)
                   + netstring(refund_id) + netstring(payment_id) + netstring(merchant_id)
                   + netstring(str(amount_minor)) + netstring(currency)
                   + netstring(str(requested_at_ms)) + netstring(str(len(metadata)))
                   + netstring(key_1) + netstring(value_1) + ... (metadata sorted by key)

The reason is not signed. The version string differs from v1's, so a payment signature can
never pass as a refund signature or the other way round.

Keys: a keyring maps key_id -> (merchant_id, secret, status, created_at_ms). A merchant signs
with its newest ACTIVE key; a RETIRED key still verifies until it is removed from the keyring,
so requests signed just before a rotation are not lost. Removing a key revokes it.
Verification looks the key up by id (a dict lookup, no key derivation) and compares with
hmac.compare_digest, so the time taken does not reveal how much of a forgery was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from settlement.errors import DomainError
from settlement.model import PaymentRequest
from settlement.refund_model import RefundRequest

__all__ = [
    "KEY_ACTIVE",
    "KEY_RETIRED",
    "KEY_STATUSES",
    "REFUND_SIGNATURE_VERSION",
    "SECRET_BYTES_MIN",
    "SIGNATURE_INVALID",
    "SIGNATURE_KEY_MERCHANT_MISMATCH",
    "SIGNATURE_KEY_UNKNOWN",
    "SIGNATURE_MISSING",
    "SIGNATURE_REASON_CODES",
    "SIGNATURE_VERSION",
    "InvalidKeyring",
    "Keyring",
    "NotSignable",
    "SignatureFailure",
    "SigningKey",
    "canonical_form",
    "refund_canonical_form",
    "sign",
    "sign_refund",
    "verify",
    "verify_refund",
]

SIGNATURE_VERSION: Final = "v1"
REFUND_SIGNATURE_VERSION: Final = "refund-v1"
SECRET_BYTES_MIN: Final = 32

KEY_ACTIVE: Final = "active"
KEY_RETIRED: Final = "retired"
KEY_STATUSES: Final[frozenset[str]] = frozenset({KEY_ACTIVE, KEY_RETIRED})

# Reason codes (public contract, listed with the others in settlement.validation).
SIGNATURE_MISSING: Final = "SIGNATURE_MISSING"
SIGNATURE_KEY_UNKNOWN: Final = "SIGNATURE_KEY_UNKNOWN"
SIGNATURE_KEY_MERCHANT_MISMATCH: Final = "SIGNATURE_KEY_MERCHANT_MISMATCH"
SIGNATURE_INVALID: Final = "SIGNATURE_INVALID"
SIGNATURE_REASON_CODES: Final[frozenset[str]] = frozenset(
    {SIGNATURE_MISSING, SIGNATURE_KEY_UNKNOWN, SIGNATURE_KEY_MERCHANT_MISMATCH, SIGNATURE_INVALID}
)

_TEXT_FIELDS: Final = (
    "payment_id", "merchant_id", "order_id", "payer_id", "currency", "method", "interface",
    "region",
)
_INT_FIELDS: Final = ("amount_minor", "created_at_ms")
_REFUND_TEXT_FIELDS: Final = ("refund_id", "payment_id", "merchant_id", "currency")
_REFUND_INT_FIELDS: Final = ("amount_minor", "requested_at_ms")
_KEY_ID_CHARS_MAX: Final = 128


class NotSignable(DomainError):
    """A request whose fields have the wrong types cannot be put in canonical form."""


class InvalidKeyring(DomainError):
    """A keyring document or key is malformed (short secret, unknown status, duplicate id...)."""


@dataclass(frozen=True, slots=True)
class SignatureFailure:
    """Why a request's signature does not authenticate it: a reason code and a detail."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One merchant key. The secret is excluded from repr so it cannot reach a log line."""

    key_id: str
    merchant_id: str
    secret: bytes = field(repr=False)
    status: str = KEY_ACTIVE
    created_at_ms: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not self.key_id.strip():
            raise InvalidKeyring("key_id must be non-blank text")
        if len(self.key_id) > _KEY_ID_CHARS_MAX:
            raise InvalidKeyring(f"key_id longer than {_KEY_ID_CHARS_MAX} characters")
        if not isinstance(self.merchant_id, str) or not self.merchant_id.strip():
            raise InvalidKeyring(f"key {self.key_id}: merchant_id must be non-blank text")
        if not isinstance(self.secret, bytes) or len(self.secret) < SECRET_BYTES_MIN:
            raise InvalidKeyring(
                f"key {self.key_id}: secret must be at least {SECRET_BYTES_MIN} bytes"
            )
        if self.status not in KEY_STATUSES:
            raise InvalidKeyring(f"key {self.key_id}: status {self.status!r} not in "
                                 f"{sorted(KEY_STATUSES)}")
        if not isinstance(self.created_at_ms, int) or isinstance(self.created_at_ms, bool):
            raise InvalidKeyring(f"key {self.key_id}: created_at_ms must be an int")

    @property
    def is_active(self) -> bool:
        return self.status == KEY_ACTIVE

    def to_document(self) -> dict[str, Any]:
        """The JSON-ready form, secret in hex: only for writing the keyring file."""
        return {
            "key_id": self.key_id,
            "merchant_id": self.merchant_id,
            "secret_hex": self.secret.hex(),
            "status": self.status,
            "created_at_ms": self.created_at_ms,
        }


class Keyring:
    """key_id -> SigningKey, with each merchant's signing key precomputed (lookups are O(1))."""

    __slots__ = ("_by_id", "_macs", "_signing")

    def __init__(self, keys: Iterable[SigningKey] = ()) -> None:
        by_id: dict[str, SigningKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise InvalidKeyring(f"key id {key.key_id!r} appears twice")
            by_id[key.key_id] = key
        signing: dict[str, SigningKey] = {}
        for key in by_id.values():
            current = signing.get(key.merchant_id)
            # Newest active key signs; equal times fall back to the id so the choice is stable.
            if key.is_active and (
                current is None
                or (key.created_at_ms, key.key_id) > (current.created_at_ms, current.key_id)
            ):
                signing[key.merchant_id] = key
        self._by_id: Mapping[str, SigningKey] = MappingProxyType(by_id)
        self._signing: Mapping[str, SigningKey] = MappingProxyType(signing)
        # Each key's HMAC with the secret already absorbed: verify copies it per request
        # instead of redoing the key setup (same digest as hmac.digest with the secret).
        self._macs: Mapping[str, hmac.HMAC] = MappingProxyType({
            key_id: hmac.new(key.secret, digestmod=hashlib.sha256)
            for key_id, key in by_id.items()
        })

    def get(self, key_id: str) -> SigningKey | None:
        return self._by_id.get(key_id)

    def signing_key_for(self, merchant_id: str) -> SigningKey | None:
        """The merchant's newest active key, None when it has none."""
        return self._signing.get(merchant_id)

    def merchants(self) -> frozenset[str]:
        return frozenset(key.merchant_id for key in self._by_id.values())

    def __iter__(self) -> Iterator[SigningKey]:
        return iter(sorted(self._by_id.values(), key=lambda k: (k.merchant_id, k.created_at_ms,
                                                                 k.key_id)))

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __repr__(self) -> str:
        return f"Keyring({len(self)} keys, {len(self.merchants())} merchants)"

    def with_key(self, key: SigningKey) -> Keyring:
        return Keyring([*self._by_id.values(), key])

    def rotated(self, new_key: SigningKey) -> Keyring:
        """Add `new_key` (active) and retire every other active key of its merchant."""
        if not new_key.is_active:
            raise InvalidKeyring("a rotation adds an active key")
        kept = [
            SigningKey(k.key_id, k.merchant_id, k.secret, KEY_RETIRED, k.created_at_ms)
            if k.merchant_id == new_key.merchant_id and k.is_active else k
            for k in self._by_id.values()
        ]
        return Keyring([*kept, new_key])

    def without(self, key_id: str) -> Keyring:
        """The keyring minus one key: a removed key no longer verifies (revocation)."""
        if key_id not in self._by_id:
            raise InvalidKeyring(f"no key {key_id!r}")
        return Keyring(k for k in self._by_id.values() if k.key_id != key_id)

    def to_document(self) -> dict[str, Any]:
        return {"version": 1, "keys": [key.to_document() for key in self]}

    @classmethod
    def from_document(cls, document: object) -> Keyring:
        """Parse the keyring file's JSON document; raises InvalidKeyring naming the problem."""
        if not isinstance(document, dict) or document.get("version") != 1:
            raise InvalidKeyring('keyring must be a JSON object with "version": 1')
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise InvalidKeyring('keyring "keys" must be a list')
        keys = []
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise InvalidKeyring(f"keys[{n}] is not an object")
            try:
                secret = bytes.fromhex(entry["secret_hex"])
                keys.append(SigningKey(
                    key_id=entry["key_id"],
                    merchant_id=entry["merchant_id"],
                    secret=secret,
                    status=entry.get("status", KEY_ACTIVE),
                    created_at_ms=entry.get("created_at_ms", 0),
                ))
            except KeyError as exc:
                raise InvalidKeyring(f"keys[{n}] lacks {exc.args[0]!r}") from None
            except (TypeError, ValueError) as exc:
                # Never echo the entry: it holds a secret.
                raise InvalidKeyring(f"keys[{n}] secret_hex is not hex text") from exc
        return cls(keys)


def canonical_form(request: PaymentRequest, key_id: str) -> bytes:
    """The bytes that are signed (see the module docstring); raises NotSignable on bad types."""
    try:
        return _canonical_form(request, key_id)
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise NotSignable(f"text not encodable as UTF-8: {exc.reason}") from exc


def _canonical_form(request: PaymentRequest, key_id: str) -> bytes:
    # This runs for every request the validator reads: plain str and int values take a short
    # path, anything else gets the checks that name the offending field.
    if not isinstance(key_id, str):
        raise NotSignable("signature_key_id must be text")
    r = request
    texts = (r.payment_id, r.merchant_id, r.order_id, r.payer_id, r.currency, r.method,
             r.interface, r.region)
    for value in texts:
        if type(value) is not str:
            _check_texts(texts)
            break
    amount, created = r.amount_minor, r.created_at_ms
    if type(amount) is not int or type(created) is not int:
        _check_ints(amount, created)
    items = list(r.metadata.items())
    if items:
        for key, value in items:
            if not isinstance(key, str) or not isinstance(value, str):
                raise NotSignable("metadata must map text to text")
        # Sorting str by code point equals sorting their UTF-8 bytes, so any language agrees.
        items.sort()
    fields = [SIGNATURE_VERSION, key_id, r.payment_id, r.merchant_id, r.order_id, r.payer_id,
              str(amount), r.currency, r.method, r.interface, r.region, str(created),
              str(len(items))]
    for key, value in items:
        fields.append(key)
        fields.append(value)
    # netstring = UTF-8 byte length, ":", the UTF-8 bytes, ",". ASCII text (nearly all of it)
    # has as many bytes as characters, so the text is built once and encoded once; a lone
    # surrogate raises UnicodeEncodeError from text.encode() either way.
    return "".join([
        f"{len(text) if text.isascii() else len(text.encode('utf-8'))}:{text},"
        for text in fields
    ]).encode("utf-8")


def _check_texts(texts: tuple[object, ...]) -> None:
    for name, value in zip(_TEXT_FIELDS, texts, strict=True):
        if not isinstance(value, str):
            raise NotSignable(f"{name} must be text")


def _check_ints(*values: object) -> None:
    for name, value in zip(_INT_FIELDS, values, strict=True):
        if not isinstance(value, int) or isinstance(value, bool):
            raise NotSignable(f"{name} must be an int")


def sign(request: PaymentRequest, key: SigningKey) -> str:
    """Lowercase hex HMAC-SHA256 of the request's canonical form under `key`."""
    return hmac.digest(key.secret, canonical_form(request, key.key_id), hashlib.sha256).hex()


def verify(request: PaymentRequest, keyring: Keyring) -> SignatureFailure | None:
    """None when the request carries a valid signature by a key of its own merchant.

    Otherwise the first failing check, in order: SIGNATURE_MISSING (no key id or signature),
    SIGNATURE_KEY_UNKNOWN (key id not in the keyring), SIGNATURE_KEY_MERCHANT_MISMATCH (the key
    belongs to another merchant), SIGNATURE_INVALID (wrong signature, or fields that cannot be
    put in canonical form). Never raises on bad request data.
    """
    return _verify(request.signature_key_id, request.signature, request.merchant_id, keyring,
                   lambda key_id: canonical_form(request, key_id))


def refund_canonical_form(request: RefundRequest, key_id: str) -> bytes:
    """The bytes a refund request's signature covers (refund-v1, see the module docstring);
    raises NotSignable on bad types."""
    try:
        return _refund_canonical_form(request, key_id)
    except UnicodeEncodeError as exc:
        raise NotSignable(f"text not encodable as UTF-8: {exc.reason}") from exc


def _refund_canonical_form(request: RefundRequest, key_id: str) -> bytes:
    if not isinstance(key_id, str):
        raise NotSignable("signature_key_id must be text")
    r = request
    texts = (r.refund_id, r.payment_id, r.merchant_id, r.currency)
    for name, value in zip(_REFUND_TEXT_FIELDS, texts, strict=True):
        if not isinstance(value, str):
            raise NotSignable(f"{name} must be text")
    for name, number in zip(_REFUND_INT_FIELDS, (r.amount_minor, r.requested_at_ms),
                            strict=True):
        if not isinstance(number, int) or isinstance(number, bool):
            raise NotSignable(f"{name} must be an int")
    items = list(r.metadata.items())
    for key, value in items:
        if not isinstance(key, str) or not isinstance(value, str):
            raise NotSignable("metadata must map text to text")
    items.sort()
    fields = [REFUND_SIGNATURE_VERSION, key_id, r.refund_id, r.payment_id, r.merchant_id,
              str(r.amount_minor), r.currency, str(r.requested_at_ms), str(len(items))]
    for key, value in items:
        fields.append(key)
        fields.append(value)
    return b"".join(_netstring(text) for text in fields)


def _netstring(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"%d:%s," % (len(data), data)


def sign_refund(request: RefundRequest, key: SigningKey) -> str:
    """Lowercase hex HMAC-SHA256 of the refund request's refund-v1 canonical form under `key`."""
    return hmac.digest(key.secret, refund_canonical_form(request, key.key_id),
                       hashlib.sha256).hex()


def verify_refund(request: RefundRequest, keyring: Keyring) -> SignatureFailure | None:
    """verify() for refund requests: the same failure codes in the same order, over the
    refund-v1 canonical form. Never raises on bad request data."""
    return _verify(request.signature_key_id, request.signature, request.merchant_id, keyring,
                   lambda key_id: refund_canonical_form(request, key_id))


def _verify(
    key_id: object, given: object, merchant_id: object, keyring: Keyring,
    canonical: Callable[[str], bytes],
) -> SignatureFailure | None:
    if not key_id or not given:
        missing = [name for name, value in (("signature_key_id", key_id), ("signature", given))
                   if not value]
        return SignatureFailure(SIGNATURE_MISSING, f"no {' and no '.join(missing)}")
    if not isinstance(key_id, str) or not isinstance(given, str):
        return SignatureFailure(SIGNATURE_INVALID, "signature fields must be text")
    key = keyring.get(key_id)
    if key is None:
        return SignatureFailure(SIGNATURE_KEY_UNKNOWN, f"signature_key_id {_shown(key_id)}")
    if key.merchant_id != merchant_id:
        return SignatureFailure(
            SIGNATURE_KEY_MERCHANT_MISMATCH,
            f"key {_shown(key_id)} does not belong to merchant_id {_shown(merchant_id)}",
        )
    try:
        mac = keyring._macs[key_id].copy()
        mac.update(canonical(key.key_id))
        expected = mac.hexdigest()  # what sign(request, key) returns
    except NotSignable as exc:
        return SignatureFailure(SIGNATURE_INVALID, f"request cannot be canonicalised: {exc}")
    # Bytes on both sides: compare_digest refuses non-ASCII str, and a forger may send any.
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace")):
        return SignatureFailure(SIGNATURE_INVALID, f"signature does not match key {key_id}")
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
