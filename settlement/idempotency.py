"""Idempotency by payment_id: body fingerprints, the NEW/DUPLICATE/CONFLICT decision, retention.

Why retention may be bounded: validation refuses any request whose created_at_ms is more than
max_age_ms behind now (CREATED_AT_TOO_OLD). An entry is first seen at processing time
first_seen_ms, when the request also passed the future-skew check, so its
created_at_ms <= first_seen_ms + max_future_skew_ms. A republished copy can therefore only
pass validation while now <= created_at_ms + max_age_ms <= first_seen_ms + max_future_skew_ms
+ max_age_ms. Keeping every entry at least that long (check_retention) means a forgotten
payment_id can only come back as a request that is rejected as too old anyway: forgetting never
lets a duplicate through. Both checks must read the same clock (now_ms of the processor).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from settlement.errors import DomainError
from settlement.model import PaymentRequest
from settlement.validation import ValidationPolicy

__all__ = [
    "DEFAULT_RETENTION_MS",
    "FINGERPRINT_VERSION",
    "IdempotencyDecision",
    "NotFingerprintable",
    "RetentionTooShort",
    "SeenEntry",
    "canonical_encoding",
    "check_retention",
    "decide",
    "fingerprint",
    "is_expired",
    "remember",
]

_DAY_MS: Final = 24 * 60 * 60 * 1000
# The validation window (7 days) plus a day of margin for clock drift between workers.
DEFAULT_RETENTION_MS: Final = 8 * _DAY_MS
# Part of the hashed bytes: changing the encoding must change this, or old and new fingerprints
# of one body would differ and a replay would be called a CONFLICT.
FINGERPRINT_VERSION: Final = "payment-request/v1"

# The document's opening: `[` and the version, as json.dumps writes them.
_DOCUMENT_HEAD: Final = "[" + encode_basestring_ascii(FINGERPRINT_VERSION) + ","

_TEXT_FIELDS: Final = (
    "payment_id",
    "merchant_id",
    "order_id",
    "payer_id",
    "currency",
    "method",
    "interface",
    "region",
)


class NotFingerprintable(DomainError):
    """A request with wrongly typed fields reached fingerprinting; validate it first."""


class RetentionTooShort(DomainError):
    """Idempotency retention is shorter than the window in which a duplicate could be valid."""


class IdempotencyDecision(StrEnum):
    """What to do with a request, given what was remembered under its payment_id."""

    NEW = "NEW"  # first sighting (or the old entry expired): process it
    DUPLICATE = "DUPLICATE"  # identical body seen before: drop and count
    CONFLICT = "CONFLICT"  # same payment_id, different body: reject with DUPLICATE_CONFLICT


@dataclass(frozen=True, slots=True)
class SeenEntry:
    """What is remembered per payment_id: the body's fingerprint and when it was first seen."""

    fingerprint: str
    first_seen_ms: int

    def to_record(self) -> dict[str, Any]:
        """A plain dict for a table store or changelog."""
        return {"fingerprint": self.fingerprint, "first_seen_ms": self.first_seen_ms}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SeenEntry:
        """Inverse of to_record."""
        return cls(fingerprint=record["fingerprint"], first_seen_ms=record["first_seen_ms"])


def canonical_encoding(request: PaymentRequest) -> bytes:
    """The exact bytes that are hashed: stable across processes, versions and dict orders.

    UTF-8 of a compact JSON array (separators "," and ":", ASCII-only escapes):
    [FINGERPRINT_VERSION, payment_id, merchant_id, order_id, payer_id, amount_minor, currency,
    method, interface, region, created_at_ms, [[key, value], ...]] with metadata pairs sorted by
    key. A fixed-order array, not an object, so no key-ordering rule is needed. Text is hashed
    as given (no Unicode normalisation): a byte-different body is a different body.
    """
    # Runs for every accepted request: the document is written out directly rather than via
    # json.dumps, with json's own string escaper and int.__repr__ (what json.dumps uses), so
    # the bytes are the same (tests compare them with json.dumps over arbitrary text).
    r = request
    texts = (r.payment_id, r.merchant_id, r.order_id, r.payer_id, r.currency, r.method,
             r.interface, r.region)
    for value in texts:
        if type(value) is not str:
            for name in _TEXT_FIELDS:
                if not isinstance(getattr(request, name), str):
                    raise NotFingerprintable(f"{name} must be text")
            break
    amount, created = r.amount_minor, r.created_at_ms
    for name, number in (("amount_minor", amount), ("created_at_ms", created)):
        # json renders True as true, and 1 == True in Python: exclude bool explicitly.
        if not isinstance(number, int) or isinstance(number, bool):
            raise NotFingerprintable(f"{name} must be an int")
    items = list(r.metadata.items())
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in items):
        raise NotFingerprintable("metadata must map text to text")
    esc = encode_basestring_ascii
    pairs = ",".join([f"[{esc(key)},{esc(value)}]" for key, value in sorted(items)])
    pid, mid, oid, payer, currency, method, interface, region = map(esc, texts)
    text = (f"{_DOCUMENT_HEAD}{pid},{mid},{oid},{payer},{int.__repr__(amount)},{currency},"
            f"{method},{interface},{region},{int.__repr__(created)},[{pairs}]]")
    return text.encode("utf-8")


def fingerprint(request: PaymentRequest) -> str:
    """Hex SHA-256 of canonical_encoding(request); Python's hash() is salted per process."""
    return hashlib.sha256(canonical_encoding(request)).hexdigest()


def is_expired(entry: SeenEntry, now_ms: int, retention_ms: int = DEFAULT_RETENTION_MS) -> bool:
    """True once the entry is older than retention_ms (kept at exactly retention_ms)."""
    return now_ms - entry.first_seen_ms > retention_ms


def decide(
    previous: SeenEntry | None,
    request_fp: str,
    now_ms: int,
    retention_ms: int = DEFAULT_RETENTION_MS,
) -> IdempotencyDecision:
    """NEW if nothing unexpired is remembered; DUPLICATE on the same fingerprint; else CONFLICT."""
    if previous is None or is_expired(previous, now_ms, retention_ms):
        return IdempotencyDecision.NEW
    if previous.fingerprint == request_fp:
        return IdempotencyDecision.DUPLICATE
    return IdempotencyDecision.CONFLICT


def remember(
    previous: SeenEntry | None,
    request_fp: str,
    now_ms: int,
    retention_ms: int = DEFAULT_RETENTION_MS,
) -> tuple[IdempotencyDecision, SeenEntry]:
    """The decision plus the entry to store under the payment_id afterwards.

    A duplicate or conflict keeps the original entry: the first body stays the truth, and not
    refreshing first_seen_ms keeps retention bounded even under endless replays.
    """
    decision = decide(previous, request_fp, now_ms, retention_ms)
    if decision is IdempotencyDecision.NEW or previous is None:
        return decision, SeenEntry(fingerprint=request_fp, first_seen_ms=now_ms)
    return decision, previous


def check_retention(retention_ms: int, policy: ValidationPolicy) -> None:
    """Raise RetentionTooShort unless retention covers max_age_ms + max_future_skew_ms.

    See the module docstring for why that sum is the bound that makes forgetting safe.
    """
    required_ms = policy.max_age_ms + policy.max_future_skew_ms
    if not isinstance(retention_ms, int) or isinstance(retention_ms, bool):
        raise RetentionTooShort(f"retention_ms must be an int, got {type(retention_ms).__name__}")
    if retention_ms < required_ms:
        raise RetentionTooShort(
            f"idempotency retention {retention_ms} ms is shorter than the validation window"
            f" max_age_ms + max_future_skew_ms = {required_ms} ms: a duplicate could pass"
        )
