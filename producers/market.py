"""The order simulator's market: regions, their currencies, method and interface mixes, amounts."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeVar

from settlement.currencies import exponent
from settlement.model import PaymentRequest
from settlement.routing import RoutingTable

Weighted = tuple[tuple[str, int], ...]

_WALLET_INTERFACES: Final[Weighted] = (("APP", 55), ("H5", 25), ("MOBILE_WEB", 12), ("PC_WEB", 8))
_ABROAD_METHODS: Final[Weighted] = (
    ("CARD", 82), ("ALIPAY", 10), ("WECHAT_PAY", 5), ("UNIONPAY", 3)
)


V = TypeVar("V")


def _frozen(mapping: Mapping[str, V]) -> Mapping[str, V]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Market:
    """Integer weights (relative frequencies) of what payers do; amounts in major-unit medians.

    Regions pay in their own currency. Wallets dominate in CN, cards abroad. Amounts are
    log-normal around a per-currency median, clamped to [1 major unit, amount_max_major].
    """

    regions: Weighted = (
        ("CN", 72), ("HK", 8), ("US", 7), ("JP", 6), ("DE", 3), ("FR", 2), ("KW", 2)
    )
    region_currency: Mapping[str, str] = field(
        default_factory=lambda: _frozen(
            {"CN": "CNY", "HK": "HKD", "US": "USD", "JP": "JPY", "DE": "EUR", "FR": "EUR",
             "KW": "KWD"}
        )
    )
    methods_by_region: Mapping[str, Weighted] = field(
        default_factory=lambda: _frozen(
            {
                "CN": (("ALIPAY", 48), ("WECHAT_PAY", 40), ("UNIONPAY", 7), ("CARD", 5)),
                "HK": (("CARD", 45), ("ALIPAY", 30), ("WECHAT_PAY", 15), ("UNIONPAY", 10)),
                "JP": (("CARD", 75), ("ALIPAY", 15), ("WECHAT_PAY", 5), ("UNIONPAY", 5)),
            }
        )
    )
    default_methods: Weighted = _ABROAD_METHODS
    interfaces_by_method: Mapping[str, Weighted] = field(
        default_factory=lambda: _frozen(
            {
                "ALIPAY": _WALLET_INTERFACES,
                "WECHAT_PAY": _WALLET_INTERFACES,
                "UNIONPAY": (("APP", 40), ("MOBILE_WEB", 30), ("PC_WEB", 20), ("H5", 10)),
                "CARD": (("PC_WEB", 45), ("MOBILE_WEB", 35), ("APP", 20)),
            }
        )
    )
    median_major: Mapping[str, int] = field(
        default_factory=lambda: _frozen(
            {"CNY": 120, "HKD": 250, "USD": 35, "JPY": 4000, "EUR": 30, "KWD": 12}
        )
    )
    default_median_major: int = 50
    # Spread of the log-normal: about 1 payment in 100 is 13x the median or more.
    amount_sigma: float = 1.1
    # Well under validation's default limit (1,000,000 major units), so valid stays valid.
    amount_max_major: int = 50_000
    payer_pool: int = 50_000

    def currency_of(self, region: str) -> str:
        return self.region_currency[region]

    def methods_in(self, region: str) -> Weighted:
        return self.methods_by_region.get(region, self.default_methods)

    def draw_amount_minor(self, rng: random.Random, currency: str) -> int:
        """A long-tailed amount in integer minor units of `currency` (exponent respected)."""
        unit = 10 ** exponent(currency)
        median_minor = self.median_major.get(currency, self.default_median_major) * unit
        # The draw is a float; the amount is an int from the moment it exists.
        amount_minor = int(rng.lognormvariate(math.log(median_minor), self.amount_sigma))
        return min(max(amount_minor, unit), self.amount_max_major * unit)


DEFAULT_MARKET: Final = Market()


def probe_request(method: str, region: str, currency: str) -> PaymentRequest:
    """A request carrying only what routing looks at (method, region, currency)."""
    return PaymentRequest(
        payment_id="probe", merchant_id="probe", order_id="probe", payer_id="probe",
        amount_minor=1, currency=currency, method=method, interface="APP", region=region,
        created_at_ms=0,
    )


def routable_methods(market: Market, routing: RoutingTable) -> dict[str, Weighted]:
    """Per region, the method weights restricted to combinations `routing` has a rule for."""
    out: dict[str, Weighted] = {}
    for region, _weight in market.regions:
        currency = market.currency_of(region)
        out[region] = tuple(
            (method, weight)
            for method, weight in market.methods_in(region)
            if routing.has_rule_for(probe_request(method, region, currency))
        )
    return out


def unroutable_combos(market: Market, routing: RoutingTable) -> list[tuple[str, str, str]]:
    """(method, region, currency) combinations of the market that no rule of `routing` takes."""
    combos: list[tuple[str, str, str]] = []
    methods = sorted({m for region, _ in market.regions for m, _ in market.methods_in(region)}
                     | {m for m, _ in market.default_methods})
    for region, _weight in market.regions:
        currency = market.currency_of(region)
        for method in methods:
            if not routing.has_rule_for(probe_request(method, region, currency)):
                combos.append((method, region, currency))
    return combos


def zipf_weights(count: int, exponent_s: float = 1.1) -> list[float]:
    """Relative weights 1/rank^s: the first few merchants take most of the traffic."""
    return [1.0 / (rank**exponent_s) for rank in range(1, count + 1)]


def pick(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    """One value of a weighted table."""
    values = [value for value, _ in weighted]
    weights = [weight for _, weight in weighted]
    return rng.choices(values, weights=weights)[0]
