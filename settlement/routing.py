"""Channel routing: an ordered rule table with per-channel kill switches and a text config form."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from settlement.currencies import is_known
from settlement.errors import DomainError, SettleError
from settlement.model import (
    CHANNEL_ALIPAY,
    CHANNEL_CARD,
    CHANNEL_UNIONPAY,
    CHANNEL_WECHAT_PAY,
    CHANNELS,
    METHOD_ALIPAY,
    METHOD_CARD,
    METHOD_UNIONPAY,
    METHOD_WECHAT_PAY,
    PAYMENT_METHODS,
    PaymentRequest,
)
from settlement.validation import CHANNEL_DISABLED, METHOD_NOT_ROUTABLE, Rejection

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_TABLE",
    "RouteDecision",
    "RoutingConfigError",
    "RoutingRule",
    "RoutingTable",
    "disabled_channels_from_env_value",
    "routing_table_from_spec",
    "rules_to_spec",
]

_RULE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REGION: Final = re.compile(r"[A-Z]{2}")


class RoutingConfigError(SettleError):
    """A routing rule, rule table or kill-switch setting is malformed; names the line if any."""

    def __init__(self, message: str, line_no: int | None = None) -> None:
        super().__init__(message if line_no is None else f"line {line_no}: {message}")
        self.line_no = line_no


def _check_values(
    rule_id: str, label: str, values: frozenset[str] | None, valid: Callable[[str], bool]
) -> None:
    if values is None:
        return
    if not values:
        # An empty set would silently match nothing; "any" is spelled None (or * in a spec).
        raise RoutingConfigError(f"rule {rule_id!r}: empty {label} set (use None for any)")
    for value in sorted(values, key=repr):
        if not isinstance(value, str) or not valid(value):
            raise RoutingConfigError(f"rule {rule_id!r}: unknown {label} {value!r}")


def _describe(value: object) -> str:
    # Only for detail messages about possibly malformed requests: short, and never raising.
    return f"{value!r:.24}" if isinstance(value, str) else f"<{type(value).__name__}>"


def _is_region(value: str) -> bool:
    return _REGION.fullmatch(value) is not None


def _matches(value: object, allowed: frozenset[str] | None) -> bool:
    # Requests may carry anything (the router must not crash on undecodable-ish data), and
    # `in` on a frozenset raises for unhashable values, so test the type first.
    return isinstance(value, str) and (allowed is None or value in allowed)


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Send requests matching every non-None condition to `channel`; None means any.

    `currencies=None` means any currency known to ISO 4217, so no rule routes a currency the
    books could not hold.
    """

    rule_id: str
    channel: str
    methods: frozenset[str] | None = None
    regions: frozenset[str] | None = None
    currencies: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rule_id, str) or _RULE_ID.fullmatch(self.rule_id) is None:
            raise RoutingConfigError(f"invalid rule id {self.rule_id!r}")
        if self.channel not in CHANNELS:
            raise RoutingConfigError(f"rule {self.rule_id!r}: unknown channel {self.channel!r}")
        for name in ("methods", "regions", "currencies"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))
        _check_values(self.rule_id, "method", self.methods, PAYMENT_METHODS.__contains__)
        _check_values(self.rule_id, "region", self.regions, _is_region)
        _check_values(self.rule_id, "currency", self.currencies, is_known)

    def matches(self, request: PaymentRequest) -> bool:
        """True when method, region and currency all satisfy this rule's conditions."""
        return (
            _matches(request.method, self.methods)
            and _matches(request.region, self.regions)
            and _matches(request.currency, self.currencies)
            and is_known(request.currency)
        )


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Either a channel and the rule that chose it, or a rejection saying why there is none."""

    channel: str | None
    rule_id: str | None
    rejection: Rejection | None

    def __post_init__(self) -> None:
        shape = (self.channel is not None, self.rule_id is not None, self.rejection is not None)
        if shape not in ((True, True, False), (False, False, True)):
            raise DomainError("RouteDecision needs channel and rule_id, or a rejection alone")

    @property
    def routed(self) -> bool:
        """True when a channel was chosen."""
        return self.channel is not None


# Distinct (method, region, currency[, disabled channels]) keys remembered per table; past it
# the memo starts over, so odd traffic cannot grow it without bound.
_MEMO_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Rules evaluated in order: the first matching rule whose channel is enabled wins.

    A decision depends only on the request's method, region and currency (and the disabled
    channels), so it is computed once per combination and remembered (for text values; any
    other type takes the full walk every time).
    """

    rules: tuple[RoutingRule, ...]
    _memo: dict[tuple[object, ...], object] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if not self.rules:
            raise RoutingConfigError("routing table has no rules")
        seen: set[str] = set()
        for rule in self.rules:
            # Rule ids label metrics and routed records, so two rules may not share one.
            if rule.rule_id in seen:
                raise RoutingConfigError(f"duplicate rule id {rule.rule_id!r}")
            seen.add(rule.rule_id)

    def has_rule_for(self, request: PaymentRequest) -> bool:
        """True when some rule matches, ignoring kill switches (the validation `routable`)."""
        key = _memo_key(request, None)
        if key is None:
            return any(rule.matches(request) for rule in self.rules)
        found = self._memo.get(key)
        if found is None:
            found = any(rule.matches(request) for rule in self.rules)
            self._remember(key, found)
        return bool(found)

    def route(
        self, request: PaymentRequest, disabled_channels: frozenset[str] = frozenset()
    ) -> RouteDecision:
        """Pick a channel; a disabled channel's rules are skipped so the next match takes over."""
        key = _memo_key(request, disabled_channels)
        if key is None:
            return self._route(request, disabled_channels)
        decision = self._memo.get(key)
        if decision is None:
            decision = self._route(request, disabled_channels)
            self._remember(key, decision)
        assert isinstance(decision, RouteDecision)
        return decision

    def _remember(self, key: tuple[object, ...], value: object) -> None:
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = value

    def _route(
        self, request: PaymentRequest, disabled_channels: frozenset[str]
    ) -> RouteDecision:
        skipped: list[RoutingRule] = []
        for rule in self.rules:
            if not rule.matches(request):
                continue
            if rule.channel in disabled_channels:
                skipped.append(rule)
                continue
            return RouteDecision(channel=rule.channel, rule_id=rule.rule_id, rejection=None)
        if skipped:
            channels = ", ".join(dict.fromkeys(rule.channel for rule in skipped))
            rule_ids = ", ".join(rule.rule_id for rule in skipped)
            detail = f"channels disabled: {channels} (matching rules: {rule_ids})"
            return RouteDecision(None, None, Rejection(CHANNEL_DISABLED, detail))
        detail = (
            f"no routing rule for method {_describe(request.method)}"
            f" in region {_describe(request.region)} with currency {_describe(request.currency)}"
        )
        return RouteDecision(None, None, Rejection(METHOD_NOT_ROUTABLE, detail))


def _memo_key(
    request: PaymentRequest, disabled: frozenset[str] | None
) -> tuple[object, ...] | None:
    """What a routing decision depends on, or None when it cannot be a dict key safely."""
    method, region, currency = request.method, request.region, request.currency
    if type(method) is not str or type(region) is not str or type(currency) is not str:
        return None
    if disabled is None:
        return (method, region, currency)
    if type(disabled) is not frozenset:
        return None
    return (method, region, currency, disabled)


def _rule(
    rule_id: str,
    channel: str,
    methods: str | None = None,
    regions: str | None = None,
    currencies: str | None = None,
) -> RoutingRule:
    def split(text: str | None) -> frozenset[str] | None:
        return None if text is None else frozenset(text.split())

    return RoutingRule(rule_id, channel, split(methods), split(regions), split(currencies))


# Currencies each wallet settles cross-border (their published lists, trimmed to majors);
# anything else is refused up front rather than failing at the channel.
_ALIPAY_CURRENCIES: Final = "CNY HKD USD EUR GBP JPY SGD KRW AUD CAD CHF NZD THB SEK DKK NOK MYR"
_WECHAT_CURRENCIES: Final = "CNY HKD USD EUR GBP JPY SGD KRW AUD CAD CHF NZD THB"
_UNIONPAY_CURRENCIES: Final = "CNY HKD MOP USD EUR GBP JPY SGD KRW AUD CAD NZD THB"

DEFAULT_RULES: Final[tuple[RoutingRule, ...]] = (
    _rule("alipay-default", CHANNEL_ALIPAY, METHOD_ALIPAY, currencies=_ALIPAY_CURRENCIES),
    _rule(
        "wechat-pay-default", CHANNEL_WECHAT_PAY, METHOD_WECHAT_PAY, currencies=_WECHAT_CURRENCIES
    ),
    _rule("unionpay-default", CHANNEL_UNIONPAY, METHOD_UNIONPAY, currencies=_UNIONPAY_CURRENCIES),
    # Domestic cards and CNY cards clear cheapest through UnionPay.
    _rule("card-cn-unionpay", CHANNEL_UNIONPAY, METHOD_CARD, regions="CN"),
    _rule("card-cny-unionpay", CHANNEL_UNIONPAY, METHOD_CARD, currencies="CNY"),
    # Reached only when unionpay is switched off: CN cards fail over to the card acquirer. It
    # repeats what card-default would do, under its own id so failovers show in metrics.
    _rule("card-cn-card-failover", CHANNEL_CARD, METHOD_CARD, regions="CN"),
    _rule("card-default", CHANNEL_CARD, METHOD_CARD),
)
"""The built-in rule table, used when no routing spec is configured."""

DEFAULT_TABLE: Final = RoutingTable(DEFAULT_RULES)

_KEYS: Final = {
    "method": "methods",
    "methods": "methods",
    "region": "regions",
    "regions": "regions",
    "currency": "currencies",
    "currencies": "currencies",
}


def _parse_rule(text: str, line_no: int) -> RoutingRule:
    head, arrow, channel = text.partition("->")
    if not arrow:
        raise RoutingConfigError(
            f"expected '<rule-id>: <conditions> -> <channel>': {text!r}", line_no
        )
    rule_id, colon, conditions = head.partition(":")
    rule_id, channel = rule_id.strip(), channel.strip()
    if not colon or not rule_id:
        raise RoutingConfigError(f"missing '<rule-id>:' before the conditions: {text!r}", line_no)
    if not channel or len(channel.split()) != 1:
        raise RoutingConfigError(f"expected one channel after '->', got {channel!r}", line_no)
    fields: dict[str, frozenset[str] | None] = {}
    for token in conditions.split():
        key, equals, value = token.partition("=")
        attr = _KEYS.get(key)
        if not equals or attr is None:
            raise RoutingConfigError(
                f"expected method=, region= or currency=, got {token!r}", line_no
            )
        if attr in fields:
            raise RoutingConfigError(f"condition {key!r} given twice", line_no)
        values = [part.strip() for part in value.split(",")]
        if value.strip() == "*":
            fields[attr] = None
        elif not all(values):
            raise RoutingConfigError(f"empty value in {token!r}", line_no)
        else:
            fields[attr] = frozenset(values)
    try:
        return RoutingRule(rule_id=rule_id, channel=channel, **fields)
    except RoutingConfigError as exc:
        raise RoutingConfigError(str(exc), line_no) from exc


def routing_table_from_spec(text: str) -> RoutingTable:
    """Parse a rule table from text: one rule per line (or separated by ';' in one env value).

    Grammar: `<rule-id>: [method=A,B] [region=CN] [currency=CNY,HKD] -> <channel>`; a missing
    condition or `*` means any; `#` starts a comment. Example:

        card-cn-unionpay: method=CARD region=CN -> unionpay
        card-default: method=CARD -> card

    Raises RoutingConfigError naming the line on any mistake, so a bad setting stops the
    worker at start-up instead of misrouting money.
    """
    rules: list[RoutingRule] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        for part in line.split("#", 1)[0].split(";"):
            if not part.strip():
                continue
            rule = _parse_rule(part.strip(), line_no)
            if rule.rule_id in first_line:
                first = first_line[rule.rule_id]
                message = f"duplicate rule id {rule.rule_id!r} (first on line {first})"
                raise RoutingConfigError(message, line_no)
            first_line[rule.rule_id] = line_no
            rules.append(rule)
    if not rules:
        raise RoutingConfigError("routing spec has no rules")
    return RoutingTable(tuple(rules))


def rules_to_spec(rules: Iterable[RoutingRule]) -> str:
    """Render rules in the spec format (sorted values), e.g. to log the effective table."""

    def show(key: str, values: frozenset[str] | None) -> str:
        return "" if values is None else f" {key}={','.join(sorted(values))}"

    return "".join(
        f"{rule.rule_id}:{show('method', rule.methods)}{show('region', rule.regions)}"
        f"{show('currency', rule.currencies)} -> {rule.channel}\n"
        for rule in rules
    )


def disabled_channels_from_env_value(value: str | None) -> frozenset[str]:
    """Parse a kill-switch setting such as "alipay,card"; blank or None disables nothing.

    An unknown name raises RoutingConfigError: a typo must not leave a channel switched on.
    """
    if value is None:
        return frozenset()
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - CHANNELS)
    if unknown:
        raise RoutingConfigError(
            f"unknown channel(s) {', '.join(unknown)}; known: {', '.join(sorted(CHANNELS))}"
        )
    return frozenset(names)
