"""The producer side of request signatures: every PaymentRequested and RefundRequested record
is signed on send.

AvroProducer calls `RequestSigner.sign_record` for each record bound for a PaymentRequested
topic (`sign_refund_record` for a RefundRequested one), so the simulator, the demo, e2e, bench
and any order system sign without knowing how.
A record that already has a `signature` key (even None) is sent as it is: the caller signed it
itself, or leaves it unsigned on purpose (fault injection, SETTLE_SIGNATURES=off traffic).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.config import Settings
from infra.config import load as load_settings
from infra.keyring import configured_keyring
from producers.errors import ProducerError
from settlement.model import PaymentRequest, RecordError
from settlement.refund_model import RefundRequest
from settlement.signing import Keyring, NotSignable, SigningKey, sign, sign_refund

SIGNATURE_FIELDS = ("signature_key_id", "signature")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class NoSigningKey(ProducerError):
    """The keyring has no active key for the request's merchant."""


def refund_request_from_record(record: Mapping[str, Any]) -> RefundRequest:
    """A RefundRequest from a RefundRequested record (Avro names: `requested_at` as int epoch
    ms or an aware datetime). Raises KeyError for a missing field, TypeError for a bad time or
    metadata."""
    at = record["requested_at"]
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise TypeError("requested_at must be an aware datetime")
        at = (at - _EPOCH) // _MS
    metadata = record.get("metadata")
    return RefundRequest(
        refund_id=record["refund_id"],
        payment_id=record["payment_id"],
        merchant_id=record["merchant_id"],
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        requested_at_ms=at,
        reason=record.get("reason"),
        metadata={} if metadata is None else dict(metadata),
        signature_key_id=record.get("signature_key_id"),
        signature=record.get("signature"),
    )


class RequestSigner:
    """Signs PaymentRequested and RefundRequested records with each merchant's newest active
    key."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RequestSigner | None:
        """The signer for SETTLE_SIGNING_KEYRING; None when signatures are off and none is set.

        Raises (KeyringError) when signatures are required and no keyring is configured, so a
        producer fails on its first payment request instead of publishing unsigned traffic.
        """
        keyring = configured_keyring(settings or load_settings())
        return None if keyring is None else cls(keyring)

    def sign_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `record` with signature_key_id and signature set (record is not changed).

        A record that cannot be shaped into a request (missing field, wrong type) is returned
        unsigned: the Avro serializer then refuses it with the precise encoding error.
        """
        out = dict(record)
        if "signature" in out:
            return out
        try:
            request = PaymentRequest.from_record(out)
        except RecordError:
            return out
        if not isinstance(request.merchant_id, str):
            return out
        key = self.key_for(request.merchant_id)
        try:
            signature = sign(request, key)
        except NotSignable:
            return out
        out["signature_key_id"] = key.key_id
        out["signature"] = signature
        return out

    def sign_refund_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """sign_record for a RefundRequested record (canonical form refund-v1): a copy with
        signature_key_id and signature set; a record that already has a `signature` key, or
        that cannot be shaped into a request, is returned as it is."""
        out = dict(record)
        if "signature" in out:
            return out
        try:
            request = refund_request_from_record(out)
        except (KeyError, TypeError, ValueError):
            return out
        if not isinstance(request.merchant_id, str):
            return out
        key = self.key_for(request.merchant_id)
        try:
            signature = sign_refund(request, key)
        except NotSignable:
            return out
        out["signature_key_id"] = key.key_id
        out["signature"] = signature
        return out

    def key_for(self, merchant_id: str) -> SigningKey:
        """The merchant's newest active key; NoSigningKey when it has none."""
        key = self.keyring.signing_key_for(merchant_id)
        if key is None:
            raise NoSigningKey(
                f"no active signing key for merchant {merchant_id!r} in the keyring: "
                f"`settle keys rotate {merchant_id}` creates one"
            )
        return key
