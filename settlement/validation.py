"""Validation rules for payment requests: pure functions that name every problem by reason code."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from settlement.currencies import exponent, format_minor, is_known
from settlement.errors import DomainError
from settlement.model import (
    INTERFACES,
    PAYMENT_METHODS,
    Merchant,
    PaymentRequest,
)
from settlement.model import MERCHANT_SUSPENDED as STATUS_SUSPENDED
from settlement.signing import (
    SIGNATURE_INVALID,
    SIGNATURE_KEY_MERCHANT_MISMATCH,
    SIGNATURE_KEY_UNKNOWN,
    SIGNATURE_MISSING,
    SIGNATURE_REASON_CODES,
    Keyring,
    verify,
)

__all__ = [
    "AMOUNT_ABOVE_LIMIT",
    "AMOUNT_NOT_INTEGER",
    "AMOUNT_NOT_POSITIVE",
    "CHANNEL_DISABLED",
    "CREATED_AT_IN_FUTURE",
    "CREATED_AT_TOO_OLD",
    "CURRENCY_UNKNOWN",
    "DEFAULT_LIMIT_MAJOR",
    "DEFAULT_MAX_AGE_MS",
    "DEFAULT_MAX_FUTURE_SKEW_MS",
    "DUPLICATE_CONFLICT",
    "FIELD_TYPE_INVALID",
    "INTERFACE_UNKNOWN",
    "MERCHANT_SUSPENDED",
    "MERCHANT_UNKNOWN",
    "METHOD_NOT_ROUTABLE",
    "METHOD_UNKNOWN",
    "REASON_CODES",
    "REGION_INVALID",
    "REQUIRED_FIELD_EMPTY",
    "SIGNATURE_INVALID",
    "SIGNATURE_KEY_MERCHANT_MISMATCH",
    "SIGNATURE_KEY_UNKNOWN",
    "SIGNATURE_MISSING",
    "InvalidPolicy",
    "Rejection",
    "ValidationPolicy",
    "check_amount_integer",
    "check_amount_limit",
    "check_amount_positive",
    "check_created_at",
    "check_currency",
    "check_interface",
    "check_merchant",
    "check_metadata",
    "check_method",
    "check_region",
    "check_required_fields",
    "check_routable",
    "check_signature",
    "validate",
]

# Reason codes are a public contract (payments.rejected, dashboards, alerts): never rename one.
AMOUNT_NOT_INTEGER: Final = "AMOUNT_NOT_INTEGER"
AMOUNT_NOT_POSITIVE: Final = "AMOUNT_NOT_POSITIVE"
AMOUNT_ABOVE_LIMIT: Final = "AMOUNT_ABOVE_LIMIT"
CURRENCY_UNKNOWN: Final = "CURRENCY_UNKNOWN"
MERCHANT_UNKNOWN: Final = "MERCHANT_UNKNOWN"
# Same text as the merchant status settlement.model.MERCHANT_SUSPENDED, different meaning.
MERCHANT_SUSPENDED: Final = "MERCHANT_SUSPENDED"
METHOD_UNKNOWN: Final = "METHOD_UNKNOWN"
METHOD_NOT_ROUTABLE: Final = "METHOD_NOT_ROUTABLE"
INTERFACE_UNKNOWN: Final = "INTERFACE_UNKNOWN"
REGION_INVALID: Final = "REGION_INVALID"
CREATED_AT_IN_FUTURE: Final = "CREATED_AT_IN_FUTURE"
CREATED_AT_TOO_OLD: Final = "CREATED_AT_TOO_OLD"
REQUIRED_FIELD_EMPTY: Final = "REQUIRED_FIELD_EMPTY"
FIELD_TYPE_INVALID: Final = "FIELD_TYPE_INVALID"
# Decided outside validate() (idempotency and routing) but part of the same code list.
DUPLICATE_CONFLICT: Final = "DUPLICATE_CONFLICT"
CHANNEL_DISABLED: Final = "CHANNEL_DISABLED"

REASON_CODES: Final[frozenset[str]] = frozenset(
    {
        AMOUNT_NOT_INTEGER,
        AMOUNT_NOT_POSITIVE,
        AMOUNT_ABOVE_LIMIT,
        CURRENCY_UNKNOWN,
        MERCHANT_UNKNOWN,
        MERCHANT_SUSPENDED,
        METHOD_UNKNOWN,
        METHOD_NOT_ROUTABLE,
        INTERFACE_UNKNOWN,
        REGION_INVALID,
        CREATED_AT_IN_FUTURE,
        CREATED_AT_TOO_OLD,
        REQUIRED_FIELD_EMPTY,
        FIELD_TYPE_INVALID,
        DUPLICATE_CONFLICT,
        CHANNEL_DISABLED,
        *SIGNATURE_REASON_CODES,
    }
)

DEFAULT_LIMIT_MAJOR: Final = 1_000_000
DEFAULT_MAX_FUTURE_SKEW_MS: Final = 5 * 60 * 1000
DEFAULT_MAX_AGE_MS: Final = 7 * 24 * 60 * 60 * 1000

_REQUIRED_TEXT_FIELDS: Final = ("payment_id", "merchant_id", "order_id", "payer_id")
_REGION: Final = re.compile(r"[A-Z]{2}")
_SHOW_CHARS_MAX: Final = 40
_SHOW_INT_DIGITS_MAX: Final = 30


class InvalidPolicy(DomainError):
    """A ValidationPolicy was configured with values no payment could be judged by."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was refused: a stable reason code and a human detail."""

    code: str
    detail: str


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True is never an amount or a timestamp.
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object) -> str:
    """A short, safe rendering of untrusted data for a detail message."""
    if isinstance(value, int) and not isinstance(value, bool):
        # str() of a >4300-digit int raises; bit_length() never does.
        if value.bit_length() > _SHOW_INT_DIGITS_MAX * 10 // 3:
            return f"<int of {value.bit_length()} bits>"
        return str(value)
    if isinstance(value, str):
        shown = repr(value[:_SHOW_CHARS_MAX])
        return shown if len(shown) <= _SHOW_CHARS_MAX else shown[: _SHOW_CHARS_MAX - 3] + "..."
    if value is None or isinstance(value, bool | float):
        return repr(value)
    # Containers are not rendered: repr() of one holding a huge int raises, and their content
    # is not what a reader of a rejection needs.
    return f"<{type(value).__name__}>"


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """Limits a request must respect; one frozen object built from configuration.

    `amount_limits_minor` overrides the per-payment maximum for given currencies. Any other
    currency gets `default_limit_major` major units scaled by its exponent, so the default is
    the same size of number for JPY (1,000,000) and KWD (1,000,000,000 fils).
    """

    amount_limits_minor: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    default_limit_major: int = DEFAULT_LIMIT_MAJOR
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS
    max_age_ms: int = DEFAULT_MAX_AGE_MS

    def __post_init__(self) -> None:
        for currency, limit in self.amount_limits_minor.items():
            if not is_known(currency):
                raise InvalidPolicy(f"amount limit for unknown currency {currency!r}")
            if not _is_int(limit) or limit <= 0:
                raise InvalidPolicy(f"amount limit for {currency} must be an int > 0")
        if not _is_int(self.default_limit_major) or self.default_limit_major <= 0:
            raise InvalidPolicy("default_limit_major must be an int > 0")
        if not _is_int(self.max_future_skew_ms) or self.max_future_skew_ms < 0:
            raise InvalidPolicy("max_future_skew_ms must be an int >= 0")
        if not _is_int(self.max_age_ms) or self.max_age_ms <= 0:
            raise InvalidPolicy("max_age_ms must be an int > 0")
        object.__setattr__(
            self, "amount_limits_minor", MappingProxyType(dict(self.amount_limits_minor))
        )

    def limit_minor(self, currency: str) -> int:
        """Largest allowed amount_minor for one payment in `currency` (a known ISO code)."""
        override = self.amount_limits_minor.get(currency)
        if override is not None:
            return override
        return self.default_limit_major * 10 ** exponent(currency)


# Each rule takes only what it judges and returns its failures (empty when it passes).


def check_required_fields(request: PaymentRequest) -> list[Rejection]:
    """Identifiers must be non-blank text; the detail names the field."""
    found: list[Rejection] = []
    for name in _REQUIRED_TEXT_FIELDS:
        value = getattr(request, name)
        if not isinstance(value, str):
            found.append(
                Rejection(FIELD_TYPE_INVALID, f"{name} must be text, got {type(value).__name__}")
            )
        elif not value.strip():
            found.append(Rejection(REQUIRED_FIELD_EMPTY, name))
    return found


def check_amount_integer(request: PaymentRequest) -> list[Rejection]:
    """amount_minor must be an int (bool, float and text are not amounts)."""
    if _is_int(request.amount_minor):
        return []
    kind = type(request.amount_minor).__name__
    return [Rejection(AMOUNT_NOT_INTEGER, f"amount_minor must be an int, got {kind}")]


def check_amount_positive(request: PaymentRequest) -> list[Rejection]:
    """A payment moves a positive amount; zero and refunds-as-negatives are refused."""
    if not _is_int(request.amount_minor) or request.amount_minor > 0:
        return []
    return [Rejection(AMOUNT_NOT_POSITIVE, f"amount_minor {_show(request.amount_minor)} <= 0")]


def check_amount_limit(request: PaymentRequest, policy: ValidationPolicy) -> list[Rejection]:
    """amount_minor must not exceed the policy's per-payment limit for its currency."""
    # Without a known currency there is no limit to compare with; CURRENCY_UNKNOWN says why.
    if not _is_int(request.amount_minor) or not is_known(request.currency):
        return []
    limit = policy.limit_minor(request.currency)
    if request.amount_minor <= limit:
        return []
    shown_limit = format_minor(limit, request.currency)
    detail = f"amount_minor {_show(request.amount_minor)} above limit {limit} ({shown_limit})"
    return [Rejection(AMOUNT_ABOVE_LIMIT, detail)]


def check_currency(request: PaymentRequest) -> list[Rejection]:
    """currency must be an active ISO 4217 code (exact upper-case)."""
    if is_known(request.currency):
        return []
    return [Rejection(CURRENCY_UNKNOWN, f"currency {_show(request.currency)}")]


def check_method(request: PaymentRequest) -> list[Rejection]:
    """method must be one of ALIPAY, WECHAT_PAY, UNIONPAY, CARD."""
    if isinstance(request.method, str) and request.method in PAYMENT_METHODS:
        return []
    return [Rejection(METHOD_UNKNOWN, f"method {_show(request.method)}")]


def check_interface(request: PaymentRequest) -> list[Rejection]:
    """interface must be one of APP, PC_WEB, MOBILE_WEB, H5."""
    if isinstance(request.interface, str) and request.interface in INTERFACES:
        return []
    return [Rejection(INTERFACE_UNKNOWN, f"interface {_show(request.interface)}")]


def _region_ok(region: object) -> bool:
    # ASCII only: str.isupper() would accept "ÄÖ".
    return isinstance(region, str) and _REGION.fullmatch(region) is not None


def check_region(request: PaymentRequest) -> list[Rejection]:
    """region must look like an ISO 3166-1 alpha-2 code: two ASCII upper-case letters."""
    if _region_ok(request.region):
        return []
    return [Rejection(REGION_INVALID, f"region {_show(request.region)}")]


def check_created_at(
    request: PaymentRequest, now_ms: int, policy: ValidationPolicy
) -> list[Rejection]:
    """created_at_ms must lie within [now - max_age_ms, now + max_future_skew_ms]."""
    created = request.created_at_ms
    if not _is_int(created):
        kind = type(created).__name__
        return [Rejection(FIELD_TYPE_INVALID, f"created_at_ms must be an int, got {kind}")]
    # Producers' clocks drift, so a little future is tolerated; more means a broken clock.
    if created - now_ms > policy.max_future_skew_ms:
        ahead = _show(created - now_ms)
        return [Rejection(CREATED_AT_IN_FUTURE, f"created_at_ms is {ahead} ms ahead of now")]
    # Old requests are refused so the idempotency memory can be bounded (see idempotency.py).
    if now_ms - created > policy.max_age_ms:
        behind = _show(now_ms - created)
        detail = f"created_at_ms is {behind} ms old, max {policy.max_age_ms}"
        return [Rejection(CREATED_AT_TOO_OLD, detail)]
    return []


def check_metadata(request: PaymentRequest) -> list[Rejection]:
    """metadata must map text to text (the Avro type is map<string>)."""
    for key, value in request.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            detail = f"metadata entry {_show(key)} must map text to text"
            return [Rejection(FIELD_TYPE_INVALID, detail)]
    return []


def check_merchant(request: PaymentRequest, merchant: Merchant | None) -> list[Rejection]:
    """The merchant must be known and ACTIVE; any other status fails closed."""
    if merchant is None:
        return [Rejection(MERCHANT_UNKNOWN, f"merchant_id {_show(request.merchant_id)}")]
    if merchant.merchant_id != request.merchant_id:
        # A lookup that returned someone else's record is treated as no record at all.
        detail = f"merchant_id {_show(request.merchant_id)} (lookup returned another merchant)"
        return [Rejection(MERCHANT_UNKNOWN, detail)]
    if merchant.is_active:
        return []
    if merchant.status == STATUS_SUSPENDED:
        return [Rejection(MERCHANT_SUSPENDED, f"merchant_id {_show(request.merchant_id)}")]
    detail = f"merchant_id {_show(request.merchant_id)} has status {_show(merchant.status)}"
    return [Rejection(MERCHANT_SUSPENDED, detail)]


def check_routable(
    request: PaymentRequest, routable: Callable[[PaymentRequest], bool]
) -> list[Rejection]:
    """Some routing rule must accept the method, region and currency (kill switches aside)."""
    # Ask the router only about well-formed requests: the inputs it matches on are already
    # reported otherwise, and an injected router need not defend against garbage.
    well_formed = (
        isinstance(request.method, str)
        and request.method in PAYMENT_METHODS
        and is_known(request.currency)
        and _region_ok(request.region)
    )
    if not well_formed or routable(request):
        return []
    detail = (
        f"no routing rule for method {request.method} in region {request.region}"
        f" with currency {request.currency}"
    )
    return [Rejection(METHOD_NOT_ROUTABLE, detail)]


def check_signature(request: PaymentRequest, keyring: Keyring) -> list[Rejection]:
    """The request must carry a valid HMAC signature by a key of its own merchant.

    One of SIGNATURE_MISSING, SIGNATURE_KEY_UNKNOWN, SIGNATURE_KEY_MERCHANT_MISMATCH or
    SIGNATURE_INVALID (see settlement.signing.verify for the order of the checks).
    """
    failure = verify(request, keyring)
    if failure is None:
        return []
    return [Rejection(failure.code, failure.detail)]


def validate(
    request: PaymentRequest,
    merchant: Merchant | None,
    now_ms: int,
    policy: ValidationPolicy,
    routable: Callable[[PaymentRequest], bool],
    keyring: Keyring | None = None,
) -> list[Rejection]:
    """Run every rule and return all failures, in a stable order; an empty list means valid.

    Never raises on bad request data. `routable` should ignore channel kill switches (use
    `RoutingTable.has_rule_for`) so a disabled channel shows as CHANNEL_DISABLED at routing.
    With a `keyring` the signature is checked first (None: signatures are not enforced). An
    unauthenticated request is still judged by every other rule, so its rejection names all
    that is wrong with it; it is never routed nor remembered for deduplication.
    """
    return [
        *(check_signature(request, keyring) if keyring is not None else ()),
        *check_required_fields(request),
        *check_amount_integer(request),
        *check_amount_positive(request),
        *check_amount_limit(request, policy),
        *check_currency(request),
        *check_method(request),
        *check_interface(request),
        *check_region(request),
        *check_created_at(request, now_ms, policy),
        *check_metadata(request),
        *check_merchant(request, merchant),
        *check_routable(request, routable),
    ]
