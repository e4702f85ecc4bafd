"""Injected bad input for the order simulator: invalid-but-decodable requests and wire garbage."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fastavro import schemaless_writer

from schemas.codec import header
from schemas.contract import schema_for
from schemas.errors import (
    BadMagicByte,
    EmptyValue,
    TrailingBytes,
    TruncatedBody,
    UnknownSchemaId,
)
from settlement import validation as v
from settlement.model import PaymentRequest
from settlement.signing import Keyring, SigningKey, sign
from settlement.validation import ValidationPolicy

_DAY_MS: Final = 24 * 3600 * 1000
_HOUR_MS: Final = 3600 * 1000

# Validation-level bad input: valid Avro that validation must reject, with the reason it gives.
BAD_REASONS: Final[Mapping[str, str]] = {
    "bad-amount-not-positive": v.AMOUNT_NOT_POSITIVE,
    "bad-amount-above-limit": v.AMOUNT_ABOVE_LIMIT,
    "bad-currency-unknown": v.CURRENCY_UNKNOWN,
    "bad-merchant-unknown": v.MERCHANT_UNKNOWN,
    "bad-merchant-suspended": v.MERCHANT_SUSPENDED,
    "bad-method-not-routable": v.METHOD_NOT_ROUTABLE,
    "bad-created-at-future": v.CREATED_AT_IN_FUTURE,
    "bad-created-at-too-old": v.CREATED_AT_TOO_OLD,
    "bad-required-field-empty": v.REQUIRED_FIELD_EMPTY,
    "bad-region-invalid": v.REGION_INVALID,
    # Only with a keyring (signatures enforced): each is otherwise a valid, routable request.
    "bad-signature-missing": v.SIGNATURE_MISSING,
    "bad-signature-key-unknown": v.SIGNATURE_KEY_UNKNOWN,
    "bad-signature-key-mismatch": v.SIGNATURE_KEY_MERCHANT_MISMATCH,
    "bad-signature-forged": v.SIGNATURE_INVALID,
    # The extremes of Avro's long: never wrap around, never reach the fee arithmetic.
    "bad-amount-overflow": v.AMOUNT_ABOVE_LIMIT,
    "bad-amount-most-negative": v.AMOUNT_NOT_POSITIVE,
}
SIGNATURE_KINDS: Final = tuple(k for k in BAD_REASONS if k.startswith("bad-signature-"))

# Wire-level garbage: bytes the decoder must dead-letter, with the error type it reports.
GARBAGE_ERRORS: Final[Mapping[str, str]] = {
    "garbage-random-bytes": BadMagicByte.reason,
    "garbage-bad-magic": BadMagicByte.reason,
    "garbage-unknown-schema-id": UnknownSchemaId.reason,
    "garbage-truncated-body": TruncatedBody.reason,
    "garbage-empty-value": EmptyValue.reason,
    "garbage-huge-value": TrailingBytes.reason,
}

# A valid record followed by this many bytes of junk: far above any real request, well
# under Kafka's default 1 MiB message limit (so it reaches the decoder, not a broker error).
HUGE_VALUE_PADDING: Final = 200_000
LONG_MAX: Final = 2**63 - 1
LONG_MIN: Final = -(2**63)

BAD_KINDS: Final = tuple(BAD_REASONS)
GARBAGE_KINDS: Final = tuple(GARBAGE_ERRORS)
INJECTED_KINDS: Final = BAD_KINDS + GARBAGE_KINDS

_UNKNOWN_CURRENCIES: Final = ("XXX", "ABC", "RMB", "cny")
_INVALID_REGIONS: Final = ("cn", "CHN", "C1", "")
_EMPTY_TEXT: Final = ("", "   ")


@dataclass(frozen=True, slots=True)
class FaultContext:
    """What the bad-input builders need to know about the run."""

    policy: ValidationPolicy
    now_ms: int
    known_merchant_ids: frozenset[str]
    suspended_merchant_ids: tuple[str, ...]
    unroutable: tuple[tuple[str, str, str], ...]
    draw_amount_minor: Callable[[random.Random, str], int]
    schema_id: int
    unknown_schema_id: int
    keyring: Keyring | None = None


def applicable_bad_kinds(kinds: Sequence[str], ctx: FaultContext) -> list[str]:
    """The kinds that can be built in this run (no suspended merchant, no unroutable combo...)."""
    out = []
    for kind in kinds:
        if kind == "bad-merchant-suspended" and not ctx.suspended_merchant_ids:
            continue
        if kind == "bad-method-not-routable" and not ctx.unroutable:
            continue
        if kind in SIGNATURE_KINDS and ctx.keyring is None:
            continue
        if kind == "bad-signature-key-mismatch" and ctx.keyring is not None and sum(
                ctx.keyring.signing_key_for(m) is not None for m in ctx.keyring.merchants()) < 2:
            continue
        out.append(kind)
    return out


def make_bad(kind: str, rng: random.Random, base: dict[str, Any], ctx: FaultContext) -> None:
    """Turn a valid request record into one validation rejects for `kind` (in place)."""
    if kind == "bad-amount-not-positive":
        base["amount_minor"] = rng.choice((0, -base["amount_minor"]))
    elif kind == "bad-amount-above-limit":
        limit = ctx.policy.limit_minor(base["currency"])
        base["amount_minor"] = limit + 1 + rng.randrange(limit)
    elif kind == "bad-amount-overflow":
        base["amount_minor"] = LONG_MAX
    elif kind == "bad-amount-most-negative":
        base["amount_minor"] = LONG_MIN
    elif kind == "bad-currency-unknown":
        base["currency"] = rng.choice(_UNKNOWN_CURRENCIES)
    elif kind == "bad-merchant-unknown":
        while True:
            candidate = f"m-unknown-{rng.randrange(10_000):04d}"
            if candidate not in ctx.known_merchant_ids:
                break
        base["merchant_id"] = candidate
        # No key can exist for an invented merchant: sent unsigned, on purpose (with
        # signatures enforced it is also rejected SIGNATURE_MISSING).
        base.update(signature_key_id=None, signature=None)
    elif kind in SIGNATURE_KINDS:
        _make_bad_signature(kind, rng, base, ctx)
    elif kind == "bad-merchant-suspended":
        base["merchant_id"] = rng.choice(ctx.suspended_merchant_ids)
    elif kind == "bad-method-not-routable":
        method, region, currency = rng.choice(ctx.unroutable)
        base.update(method=method, region=region, currency=currency)
        base["amount_minor"] = ctx.draw_amount_minor(rng, currency)
    elif kind == "bad-created-at-future":
        ahead_ms = ctx.policy.max_future_skew_ms + _HOUR_MS + rng.randrange(_DAY_MS)
        base["created_at"] = ctx.now_ms + ahead_ms
    elif kind == "bad-created-at-too-old":
        behind_ms = ctx.policy.max_age_ms + _DAY_MS + rng.randrange(_DAY_MS)
        base["created_at"] = ctx.now_ms - behind_ms
    elif kind == "bad-required-field-empty":
        base[rng.choice(("order_id", "payer_id"))] = rng.choice(_EMPTY_TEXT)
    elif kind == "bad-region-invalid":
        base["region"] = rng.choice(_INVALID_REGIONS)
    else:
        raise ValueError(f"unknown bad kind {kind!r}")


_TAMPERS: Final = ("amount_minor", "payer_id", "order_id", "metadata")


def _signed_by(base: dict[str, Any], key: SigningKey) -> None:
    base.update(signature_key_id=key.key_id, signature=sign(PaymentRequest.from_record(base), key))


def _make_bad_signature(
    kind: str, rng: random.Random, base: dict[str, Any], ctx: FaultContext
) -> None:
    """Signature faults: unsigned, unknown key, another merchant's key, tampered after signing."""
    keyring = ctx.keyring
    assert keyring is not None, "signature faults need the run's keyring"
    if kind == "bad-signature-missing":
        base.update(signature_key_id=None, signature=None)
        return
    if kind == "bad-signature-key-unknown":
        while True:
            key_id = f"{base['merchant_id']}.unknown-{rng.randrange(16**6):06x}"
            if key_id not in keyring:
                break
        base.update(signature_key_id=key_id, signature=rng.randbytes(32).hex())
        return
    own = keyring.signing_key_for(base["merchant_id"])
    if kind == "bad-signature-key-mismatch":
        others = sorted(m for m in keyring.merchants()
                        if m != base["merchant_id"] and keyring.signing_key_for(m) is not None)
        other = keyring.signing_key_for(rng.choice(others))
        assert other is not None
        _signed_by(base, other)
        return
    if kind == "bad-signature-forged":
        assert own is not None, f"no key for simulated merchant {base['merchant_id']}"
        _signed_by(base, own)
        # Changed after signing, within every business rule: only the signature gives it away.
        field = rng.choice(_TAMPERS)
        if field == "amount_minor":
            base["amount_minor"] += 1
        elif field == "metadata":
            base["metadata"] = {**base["metadata"], "tampered": "1"}
        else:
            base[field] = base[field] + "-x"
        return
    raise ValueError(f"unknown signature fault {kind!r}")


def avro_body(record: Mapping[str, Any]) -> bytes:
    """The Avro body (no wire header) of a PaymentRequested record, encoded without a registry."""
    out = io.BytesIO()
    schemaless_writer(out, schema_for("PaymentRequested"), dict(record))
    return out.getvalue()


def make_garbage(
    kind: str, rng: random.Random, base: Mapping[str, Any], ctx: FaultContext
) -> bytes:
    """Bytes the decoder must dead-letter for `kind`, built from a valid request record."""
    if kind == "garbage-empty-value":
        return b""
    if kind == "garbage-random-bytes":
        # A first byte of 0 could pass as a wire header; anything else is plainly not Avro.
        return bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randrange(0, 64))
    body = avro_body(base)
    if kind == "garbage-bad-magic":
        return bytes([rng.randrange(1, 256)]) + header(ctx.schema_id)[1:] + body
    if kind == "garbage-unknown-schema-id":
        return header(ctx.unknown_schema_id) + body
    if kind == "garbage-huge-value":
        return header(ctx.schema_id) + body + rng.randbytes(HUGE_VALUE_PADDING)
    if kind == "garbage-truncated-body":
        # Every field is written (the trailing signature fields as union indexes), so any
        # strict prefix runs out of bytes mid-record.
        return header(ctx.schema_id) + body[: rng.randrange(0, len(body))]
    raise ValueError(f"unknown garbage kind {kind!r}")
