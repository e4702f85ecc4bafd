"""Payment model: plain frozen records mirroring the Avro contract, and their dict conversion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from settlement.errors import SettleError

__all__ = [
    "CHANNELS",
    "CHANNEL_ALIPAY",
    "CHANNEL_CARD",
    "CHANNEL_UNIONPAY",
    "CHANNEL_WECHAT_PAY",
    "INTERFACES",
    "INTERFACE_APP",
    "INTERFACE_H5",
    "INTERFACE_MOBILE_WEB",
    "INTERFACE_PC_WEB",
    "MERCHANT_ACTIVE",
    "MERCHANT_STATUSES",
    "MERCHANT_SUSPENDED",
    "METHOD_ALIPAY",
    "METHOD_CARD",
    "METHOD_UNIONPAY",
    "METHOD_WECHAT_PAY",
    "PAYMENT_METHODS",
    "Merchant",
    "PaymentRequest",
    "RecordError",
    "epoch_ms",
]

METHOD_ALIPAY: Final = "ALIPAY"
METHOD_WECHAT_PAY: Final = "WECHAT_PAY"
METHOD_UNIONPAY: Final = "UNIONPAY"
METHOD_CARD: Final = "CARD"
PAYMENT_METHODS: Final[frozenset[str]] = frozenset(
    {METHOD_ALIPAY, METHOD_WECHAT_PAY, METHOD_UNIONPAY, METHOD_CARD}
)

INTERFACE_APP: Final = "APP"
INTERFACE_PC_WEB: Final = "PC_WEB"
INTERFACE_MOBILE_WEB: Final = "MOBILE_WEB"
INTERFACE_H5: Final = "H5"
INTERFACES: Final[frozenset[str]] = frozenset(
    {INTERFACE_APP, INTERFACE_PC_WEB, INTERFACE_MOBILE_WEB, INTERFACE_H5}
)

# Channel names are lower-case because they appear in topic names (payments.routed.<channel>).
CHANNEL_ALIPAY: Final = "alipay"
CHANNEL_WECHAT_PAY: Final = "wechat_pay"
CHANNEL_UNIONPAY: Final = "unionpay"
CHANNEL_CARD: Final = "card"
CHANNELS: Final[frozenset[str]] = frozenset(
    {CHANNEL_ALIPAY, CHANNEL_WECHAT_PAY, CHANNEL_UNIONPAY, CHANNEL_CARD}
)

MERCHANT_ACTIVE: Final = "ACTIVE"
MERCHANT_SUSPENDED: Final = "SUSPENDED"
MERCHANT_STATUSES: Final[frozenset[str]] = frozenset({MERCHANT_ACTIVE, MERCHANT_SUSPENDED})

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


class RecordError(SettleError):
    """A decoded record cannot be shaped into a model object (missing field, naive time...)."""

    def __init__(self, record_type: str, message: str) -> None:
        super().__init__(f"{record_type}: {message}")
        self.record_type = record_type


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of a timezone-aware datetime, exact (no float)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A naive time could be local or UTC; guessing would shift payments by hours.
        raise ValueError("datetime must be timezone-aware")
    # timedelta // timedelta is integer division, so no float rounding creeps in.
    return (moment - _EPOCH) // _ONE_MS


def _time_ms(record_type: str, record: Mapping[str, Any], names: tuple[str, str]) -> Any:
    """Read a timestamp stored under its Avro name or the model's `_ms` name.

    The Avro schema says `created_at` / `updated_at` (timestamp-millis, which fastavro decodes
    to an aware datetime); dicts built from the model say `created_at_ms` / `updated_at_ms`.
    Either is accepted as int epoch ms or an aware datetime; both present must agree.
    """
    values: list[Any] = []
    for name in names:
        if name not in record:
            continue
        value = record[name]
        if isinstance(value, datetime):
            try:
                value = epoch_ms(value)
            except ValueError as exc:
                raise RecordError(record_type, f"{name} is a naive datetime") from exc
        values.append(value)
    if len(values) == 2 and values[0] != values[1]:
        raise RecordError(record_type, f"{names[0]} and {names[1]} disagree")
    # Anything but a datetime passes through as is: typing it is validation's job.
    return values[0]


def _frozen_map(record_type: str, name: str, value: object) -> Mapping[Any, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise RecordError(record_type, f"{name} must be a map, got {type(value).__name__}")
    # Copy, so a caller mutating its dict later cannot change a frozen request.
    return MappingProxyType(dict(value))


_NAME_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _require(
    record_type: str, record: Mapping[str, Any], names: tuple[str, ...], time: tuple[str, str]
) -> None:
    required = _NAME_SETS.get(names)
    if required is None:
        required = _NAME_SETS[names] = frozenset(names)
    if record.keys() >= required and (time[0] in record or time[1] in record):
        return  # the usual case, without building the list below
    missing = [name for name in names if name not in record]
    if not any(name in record for name in time):
        missing.append(time[0])
    if missing:
        raise RecordError(record_type, f"missing field(s): {', '.join(missing)}")


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """One payment request as published on payments.requested; field names are the contract.

    The type holds whatever was decoded, valid or not: `settlement.validation.validate` is the
    one place that judges it and names every problem with a reason code.
    """

    payment_id: str
    merchant_id: str
    order_id: str
    payer_id: str
    amount_minor: int
    currency: str
    method: str
    interface: str
    region: str
    created_at_ms: int
    # Excluded from the hash (a mapping is not hashable) but part of equality.
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    # The merchant's signature (settlement.signing): transport authentication, not part of the
    # body, so idempotency fingerprints leave both out (a re-send signed after a key rotation
    # is still a duplicate, not a conflict).
    signature_key_id: str | None = None
    signature: str | None = None

    def __post_init__(self) -> None:
        frozen = _frozen_map("PaymentRequest", "metadata", self.metadata)
        object.__setattr__(self, "metadata", frozen)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PaymentRequest:
        """Build from a decoded Avro dict, or from a to_record() dict.

        The time is read from `created_at` (the Avro name) or `created_at_ms`, as int epoch ms
        or an aware datetime. Unknown keys are ignored so a newer writer schema with extra
        fields still reads. Raises RecordError when a field is missing or cannot be reshaped.
        """
        name = "PaymentRequest"
        _require(name, record, _PAYMENT_FIELDS, _CREATED_AT)
        return cls(
            payment_id=record["payment_id"],
            merchant_id=record["merchant_id"],
            order_id=record["order_id"],
            payer_id=record["payer_id"],
            amount_minor=record["amount_minor"],
            currency=record["currency"],
            method=record["method"],
            interface=record["interface"],
            region=record["region"],
            created_at_ms=_time_ms(name, record, _CREATED_AT),
            # __post_init__ checks and copies the map once (None -> empty; else RecordError).
            metadata=record.get("metadata"),  # type: ignore[arg-type]
            signature_key_id=record.get("signature_key_id"),
            signature=record.get("signature"),
        )

    def to_record(self) -> dict[str, Any]:
        """A plain dict under the model's field names (created_at_ms as int epoch ms).

        The Avro schema names the time `created_at`: the encoding adapter renames that one key.
        """
        return {
            "payment_id": self.payment_id,
            "merchant_id": self.merchant_id,
            "order_id": self.order_id,
            "payer_id": self.payer_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "method": self.method,
            "interface": self.interface,
            "region": self.region,
            "created_at_ms": self.created_at_ms,
            "metadata": dict(self.metadata),
            "signature_key_id": self.signature_key_id,
            "signature": self.signature,
        }


_PAYMENT_FIELDS: Final = (
    "payment_id",
    "merchant_id",
    "order_id",
    "payer_id",
    "amount_minor",
    "currency",
    "method",
    "interface",
    "region",
)
_CREATED_AT: Final = ("created_at", "created_at_ms")


@dataclass(frozen=True, slots=True)
class Merchant:
    """A merchant as published by the merchant registry; status is ACTIVE or SUSPENDED."""

    merchant_id: str
    name: str
    status: str
    settlement_currency: str
    updated_at_ms: int

    @property
    def is_active(self) -> bool:
        """Only an ACTIVE merchant may take payments; any other status fails closed."""
        return self.status == MERCHANT_ACTIVE

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Merchant:
        """Build from a decoded Avro dict (`updated_at`) or a to_record() dict (`updated_at_ms`)."""
        name = "Merchant"
        _require(name, record, _MERCHANT_FIELDS, _UPDATED_AT)
        return cls(
            merchant_id=record["merchant_id"],
            name=record["name"],
            status=record["status"],
            settlement_currency=record["settlement_currency"],
            updated_at_ms=_time_ms(name, record, _UPDATED_AT),
        )

    def to_record(self) -> dict[str, Any]:
        """A plain dict under the model's field names (Avro calls updated_at_ms `updated_at`)."""
        return {
            "merchant_id": self.merchant_id,
            "name": self.name,
            "status": self.status,
            "settlement_currency": self.settlement_currency,
            "updated_at_ms": self.updated_at_ms,
        }


_MERCHANT_FIELDS: Final = (
    "merchant_id",
    "name",
    "status",
    "settlement_currency",
)
_UPDATED_AT: Final = ("updated_at", "updated_at_ms")
