"""Channel fees in basis points, with one integer rounding rule: round half up to the minor unit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from settlement.errors import DomainError, SettleError

BPS_PER_UNIT = 10_000
FEE_BPS_MIN = 0
FEE_BPS_MAX = 10_000
# Half of BPS_PER_UNIT: adding it before floor division rounds a half minor unit up.
_HALF_UNIT = BPS_PER_UNIT // 2

DEFAULT_FEE_SPEC = "alipay=60,wechat_pay=60,unionpay=45,card=180"
# A spec entry with this key sets the fee for channels the spec does not name.
DEFAULT_CHANNEL_KEY = "*"


class FeeError(DomainError, ValueError):
    """A fee was asked for with an amount or rate outside the rules (a caller bug)."""


class FeeSpecError(SettleError, ValueError):
    """A fee schedule spec (configuration text) could not be parsed."""


def _require_int(name: str, value: object) -> int:
    # bool is an int subclass; True as an amount is always a bug, so refuse it by name.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    return value


def _require_bps(fee_bps: object) -> int:
    bps = _require_int("fee_bps", fee_bps)
    if not FEE_BPS_MIN <= bps <= FEE_BPS_MAX:
        raise FeeError(f"fee_bps must be in {FEE_BPS_MIN}..{FEE_BPS_MAX}, got {bps}")
    return bps


def fee_minor(gross_minor: int, fee_bps: int) -> int:
    """Fee in minor units: gross * bps / 10_000 rounded half up, in integer arithmetic only.

    The one rounding rule of the project. Because 0 <= bps <= 10_000, the result satisfies
    0 <= fee <= gross, so the merchant's net is never negative.
    """
    gross = _require_int("gross_minor", gross_minor)
    bps = _require_bps(fee_bps)
    if gross < 0:
        raise FeeError(f"gross_minor must be >= 0, got {gross}")
    return (gross * bps + _HALF_UNIT) // BPS_PER_UNIT


def net_minor(gross_minor: int, fee_bps: int) -> int:
    """What the merchant is owed: gross minus the fee, so fee + net == gross exactly."""
    return gross_minor - fee_minor(gross_minor, fee_bps)


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Fee rate per channel, with a default for channels not listed."""

    bps_by_channel: Mapping[str, int]
    default_bps: int

    def __post_init__(self) -> None:
        _require_bps(self.default_bps)
        for channel, bps in self.bps_by_channel.items():
            if not isinstance(channel, str) or not channel:
                raise FeeError(f"channel names must be non-empty strings, got {channel!r}")
            _require_bps(bps)
        # Copy then freeze so a caller mutating its dict cannot change fees behind our back.
        frozen = MappingProxyType(dict(self.bps_by_channel))
        object.__setattr__(self, "bps_by_channel", frozen)

    def bps_for(self, channel: str) -> int:
        return self.bps_by_channel.get(channel, self.default_bps)

    def fee_for(self, channel: str, gross_minor: int) -> int:
        return fee_minor(gross_minor, self.bps_for(channel))

    def net_for(self, channel: str, gross_minor: int) -> int:
        return net_minor(gross_minor, self.bps_for(channel))

    @classmethod
    def from_spec(cls, spec: str, default_bps: int = 0) -> FeeSchedule:
        """Parse "alipay=60,wechat_pay=60,unionpay=45,card=180" (an entry "*=N" sets the default).

        Whitespace around entries is ignored; a channel named twice is an error rather than
        "last one wins", because a typo in fee configuration silently costs money.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise FeeSpecError("fee spec is empty; expected e.g. 'alipay=60,card=180'")
        rates: dict[str, int] = {}
        default = default_bps
        default_seen = False
        for raw_entry in spec.split(","):
            entry = raw_entry.strip()
            channel, sep, raw_bps = (part.strip() for part in entry.partition("="))
            if not sep or not channel or not raw_bps:
                raise FeeSpecError(f"fee spec entry {entry!r} is not 'channel=bps'")
            # int() would accept "+5", "1_0" and non-ASCII digits; fees must be plain digits.
            if not (raw_bps.isascii() and raw_bps.isdigit()):
                raise FeeSpecError(f"fee spec entry {entry!r}: bps must be a whole number")
            bps = int(raw_bps)
            if not FEE_BPS_MIN <= bps <= FEE_BPS_MAX:
                raise FeeSpecError(
                    f"fee spec entry {entry!r}: bps must be in {FEE_BPS_MIN}..{FEE_BPS_MAX}"
                )
            if channel == DEFAULT_CHANNEL_KEY:
                if default_seen:
                    raise FeeSpecError("fee spec sets the default '*' twice")
                default, default_seen = bps, True
            elif channel in rates:
                raise FeeSpecError(f"fee spec names channel {channel!r} twice")
            else:
                rates[channel] = bps
        try:
            return cls(rates, default)
        except FeeError as exc:
            raise FeeSpecError(str(exc)) from exc

    def to_spec(self) -> str:
        """The inverse of from_spec (default included), for logs and round-trip tests."""
        entries = [f"{channel}={bps}" for channel, bps in sorted(self.bps_by_channel.items())]
        entries.append(f"{DEFAULT_CHANNEL_KEY}={self.default_bps}")
        return ",".join(entries)
