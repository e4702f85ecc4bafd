"""The producer side of request signatures: every PaymentRequested record is signed on send.

AvroProducer calls `RequestSigner.sign_record` for each record bound for a PaymentRequested
topic, so the simulator, the demo, e2e, bench and any order system sign without knowing how.
A record that already has a `signature` key (even None) is sent as it is: the caller signed it
itself, or leaves it unsigned on purpose (fault injection, SETTLE_SIGNATURES=off traffic).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.config import Settings
from infra.config import load as load_settings
from infra.keyring import configured_keyring
from producers.errors import ProducerError
from settlement.model import PaymentRequest, RecordError
from settlement.signing import Keyring, NotSignable, sign

SIGNATURE_FIELDS = ("signature_key_id", "signature")


class NoSigningKey(ProducerError):
    """The keyring has no active key for the request's merchant."""


class RequestSigner:
    """Signs PaymentRequested records with each merchant's newest active key."""

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
        key = self.keyring.signing_key_for(request.merchant_id)
        if key is None:
            raise NoSigningKey(
                f"no active signing key for merchant {request.merchant_id!r} in the keyring: "
                f"`settle keys rotate {request.merchant_id}` creates one"
            )
        try:
            signature = sign(request, key)
        except NotSignable:
            return out
        out["signature_key_id"] = key.key_id
        out["signature"] = signature
        return out
