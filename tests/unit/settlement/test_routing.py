"""Unit tests for settlement.routing: rule order, kill-switch failover and the spec parser."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.currencies import CURRENCY_EXPONENTS
from settlement.errors import DomainError, SettleError
from settlement.model import CHANNELS, PAYMENT_METHODS, PaymentRequest
from settlement.routing import (
    DEFAULT_RULES,
    DEFAULT_TABLE,
    RouteDecision,
    RoutingConfigError,
    RoutingRule,
    RoutingTable,
    disabled_channels_from_env_value,
    routing_table_from_spec,
    rules_to_spec,
)
from settlement.validation import CHANNEL_DISABLED, METHOD_NOT_ROUTABLE, Rejection

NONE: frozenset[str] = frozenset()


def request(
    method: Any = "CARD", region: Any = "US", currency: Any = "USD", **extra: Any
) -> PaymentRequest:
    fields: dict[str, Any] = {
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "payer_id": "u-1",
        "amount_minor": 100,
        "currency": currency,
        "method": method,
        "interface": "APP",
        "region": region,
        "created_at_ms": 0,
    }
    fields.update(extra)
    return PaymentRequest(**fields)


def routed(decision: RouteDecision) -> tuple[str | None, str | None]:
    return decision.channel, decision.rule_id


@pytest.mark.parametrize(
    ("method", "region", "currency", "channel", "rule_id"),
    [
        ("ALIPAY", "CN", "CNY", "alipay", "alipay-default"),
        ("ALIPAY", "US", "USD", "alipay", "alipay-default"),
        ("WECHAT_PAY", "HK", "HKD", "wechat_pay", "wechat-pay-default"),
        ("UNIONPAY", "FR", "EUR", "unionpay", "unionpay-default"),
        ("CARD", "CN", "USD", "unionpay", "card-cn-unionpay"),
        ("CARD", "US", "CNY", "unionpay", "card-cny-unionpay"),
        ("CARD", "US", "USD", "card", "card-default"),
        ("CARD", "BR", "BRL", "card", "card-default"),
        ("CARD", "KW", "KWD", "card", "card-default"),
    ],
)
def test_default_table_routes(
    method: str, region: str, currency: str, channel: str, rule_id: str
) -> None:
    decision = DEFAULT_TABLE.route(request(method, region, currency))
    assert routed(decision) == (channel, rule_id)
    assert decision.routed and decision.rejection is None


def test_wallet_outside_its_currencies_is_not_routable() -> None:
    decision = DEFAULT_TABLE.route(request("ALIPAY", "BR", "BRL"))
    assert routed(decision) == (None, None)
    assert decision.rejection is not None
    assert decision.rejection.code == METHOD_NOT_ROUTABLE
    assert "'ALIPAY'" in decision.rejection.detail and "'BRL'" in decision.rejection.detail
    assert not DEFAULT_TABLE.has_rule_for(request("ALIPAY", "BR", "BRL"))


def test_unknown_currency_never_routes_even_under_an_any_rule() -> None:
    assert DEFAULT_TABLE.route(request("CARD", "US", "XAU")).channel is None
    assert DEFAULT_TABLE.route(request("CARD", "CN", "usd")).channel is None


def test_disabled_unionpay_fails_cn_cards_over_to_card() -> None:
    decision = DEFAULT_TABLE.route(request("CARD", "CN", "CNY"), frozenset({"unionpay"}))
    assert routed(decision) == ("card", "card-cn-card-failover")
    decision = DEFAULT_TABLE.route(request("CARD", "US", "CNY"), frozenset({"unionpay"}))
    assert routed(decision) == ("card", "card-default")


def test_all_matching_channels_disabled_says_which() -> None:
    decision = DEFAULT_TABLE.route(request("CARD", "CN", "CNY"), frozenset({"unionpay", "card"}))
    assert decision.rejection is not None
    assert decision.rejection.code == CHANNEL_DISABLED
    assert "unionpay, card" in decision.rejection.detail
    assert "card-cn-unionpay" in decision.rejection.detail
    # The kill switch is not a routing gap: validation's `routable` still says yes.
    assert DEFAULT_TABLE.has_rule_for(request("CARD", "CN", "CNY"))


def test_disabled_wallet_without_fallback() -> None:
    decision = DEFAULT_TABLE.route(request("ALIPAY", "CN", "CNY"), frozenset({"alipay"}))
    assert decision.rejection == Rejection(
        CHANNEL_DISABLED, "channels disabled: alipay (matching rules: alipay-default)"
    )


def test_disabling_an_unrelated_channel_changes_nothing() -> None:
    decision = DEFAULT_TABLE.route(request("ALIPAY", "CN", "CNY"), frozenset({"card"}))
    assert routed(decision) == ("alipay", "alipay-default")


def test_route_on_malformed_fields_does_not_raise() -> None:
    weird = request(method=["CARD"], region=None, currency=10**5000)
    decision = DEFAULT_TABLE.route(weird)
    assert decision.rejection is not None
    assert decision.rejection.code == METHOD_NOT_ROUTABLE
    assert "<list>" in decision.rejection.detail


def test_route_decision_shape_is_enforced() -> None:
    with pytest.raises(DomainError):
        RouteDecision("card", None, None)
    with pytest.raises(DomainError):
        RouteDecision("card", "r", Rejection(CHANNEL_DISABLED, "x"))
    with pytest.raises(DomainError):
        RouteDecision(None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule_id": "", "channel": "card"}, "invalid rule id"),
        ({"rule_id": "a b", "channel": "card"}, "invalid rule id"),
        ({"rule_id": "r", "channel": "paypal"}, "unknown channel"),
        ({"rule_id": "r", "channel": "card", "methods": frozenset()}, "empty method set"),
        ({"rule_id": "r", "channel": "card", "methods": frozenset({"CASH"})}, "unknown method"),
        ({"rule_id": "r", "channel": "card", "regions": frozenset({"cn"})}, "unknown region"),
        ({"rule_id": "r", "channel": "card", "currencies": frozenset({"XAU"})}, "unknown curr"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RoutingConfigError, match=message) as info:
        RoutingRule(**kwargs)
    assert isinstance(info.value, SettleError)
    assert info.value.line_no is None


def test_rule_accepts_any_iterable_of_values() -> None:
    rule = RoutingRule("r", "card", methods={"CARD"})  # type: ignore[arg-type]
    assert rule.methods == frozenset({"CARD"})


def test_table_refuses_duplicates_and_emptiness() -> None:
    rule = RoutingRule("r", "card")
    with pytest.raises(RoutingConfigError, match="duplicate rule id"):
        RoutingTable((rule, rule))
    with pytest.raises(RoutingConfigError, match="no rules"):
        RoutingTable(())


SPEC = """
# wallets
alipay-cn: method=ALIPAY currency=CNY,HKD -> alipay
card-cn-unionpay: method=CARD region=CN -> unionpay   # domestic cards
card-any: methods=CARD regions=* currencies=* -> card
"""


def test_spec_parses_in_order() -> None:
    table = routing_table_from_spec(SPEC)
    assert [rule.rule_id for rule in table.rules] == ["alipay-cn", "card-cn-unionpay", "card-any"]
    assert table.rules[0] == RoutingRule(
        "alipay-cn", "alipay", frozenset({"ALIPAY"}), None, frozenset({"CNY", "HKD"})
    )
    assert table.rules[2] == RoutingRule("card-any", "card", frozenset({"CARD"}))
    assert routed(table.route(request("CARD", "CN", "USD"))) == ("unionpay", "card-cn-unionpay")


def test_spec_in_one_env_value_with_semicolons() -> None:
    table = routing_table_from_spec("a: method=CARD -> card; b: -> alipay")
    assert [rule.rule_id for rule in table.rules] == ["a", "b"]
    assert table.rules[1].methods is None


def test_default_rules_round_trip_through_the_spec_format() -> None:
    text = rules_to_spec(DEFAULT_RULES)
    assert "card-cn-unionpay: method=CARD region=CN -> unionpay\n" in text
    assert routing_table_from_spec(text).rules == DEFAULT_RULES


@pytest.mark.parametrize(
    ("text", "line_no", "message"),
    [
        ("a: method=CARD card", 1, "expected '<rule-id>: <conditions> -> <channel>'"),
        ("\n\nmethod=CARD -> card", 3, "missing '<rule-id>:'"),
        (": method=CARD -> card", 1, "missing '<rule-id>:'"),
        ("ok: -> card\nb: method=CARD ->", 2, "expected one channel"),
        ("b: -> card alipay", 1, "expected one channel"),
        ("b: method=CARD -> paypal", 1, "unknown channel 'paypal'"),
        ("b: colour=red -> card", 1, "expected method=, region= or currency="),
        ("b: CARD -> card", 1, "expected method=, region= or currency="),
        ("b: method=CARD method=ALIPAY -> card", 1, "given twice"),
        ("b: method=CARD currency= -> card", 1, "empty value"),
        ("b: currency=CNY,,USD -> card", 1, "empty value"),
        ("b: currency=CNY,XAU -> card", 1, "unknown currency 'XAU'"),
        ("b: method=CASH -> card", 1, "unknown method 'CASH'"),
        ("b: region=CHN -> card", 1, "unknown region 'CHN'"),
        ("b: currency=CNY,* -> card", 1, "unknown currency"),
        ("bad id: -> card", 1, "invalid rule id"),
        ("a: -> card\n# c\na: -> alipay", 3, "duplicate rule id 'a' \\(first on line 1\\)"),
    ],
)
def test_spec_errors_name_the_line(text: str, line_no: int, message: str) -> None:
    with pytest.raises(RoutingConfigError, match=message) as info:
        routing_table_from_spec(text)
    assert info.value.line_no == line_no
    assert str(info.value).startswith(f"line {line_no}: ")


@pytest.mark.parametrize("text", ["", "   \n# only a comment\n ; ;"])
def test_empty_spec_is_an_error(text: str) -> None:
    with pytest.raises(RoutingConfigError, match="no rules"):
        routing_table_from_spec(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alipay,card", {"alipay", "card"}),
        (" alipay , ", {"alipay"}),
        ("", set()),
        (" , ", set()),
        (None, set()),
    ],
)
def test_disabled_channels_from_env_value(value: str | None, expected: set[str]) -> None:
    assert disabled_channels_from_env_value(value) == frozenset(expected)


@pytest.mark.parametrize("value", ["alipy", "ALIPAY", "card,paypal"])
def test_unknown_disabled_channel_is_an_error(value: str) -> None:
    with pytest.raises(RoutingConfigError, match="unknown channel"):
        disabled_channels_from_env_value(value)


def reference_route(
    rules: tuple[RoutingRule, ...], req: PaymentRequest, disabled: frozenset[str]
) -> tuple[str | None, str | None]:
    """The table's meaning written out plainly: first matching, enabled rule."""
    for rule in rules:
        ok = (
            (rule.methods is None or req.method in rule.methods)
            and (rule.regions is None or req.region in rule.regions)
            and (rule.currencies is None or req.currency in rule.currencies)
            and req.currency in CURRENCY_EXPONENTS
        )
        if ok and rule.channel not in disabled:
            return rule.channel, rule.rule_id
    return None, None


routable_requests = st.builds(
    request,
    method=st.sampled_from(sorted(PAYMENT_METHODS)),
    region=st.sampled_from(["CN", "HK", "US", "JP", "GB", "BR"]),
    currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
disabled_sets = st.frozensets(st.sampled_from(sorted(CHANNELS)))


@given(req=routable_requests, disabled=disabled_sets)
def test_every_request_gets_a_channel_or_a_clear_rejection(
    req: PaymentRequest, disabled: frozenset[str]
) -> None:
    decision = DEFAULT_TABLE.route(req, disabled)
    assert routed(decision) == reference_route(DEFAULT_RULES, req, disabled)
    if decision.channel is not None:
        assert decision.channel not in disabled
        assert decision.rejection is None
    else:
        assert decision.rejection is not None
        expected = CHANNEL_DISABLED if DEFAULT_TABLE.has_rule_for(req) else METHOD_NOT_ROUTABLE
        assert decision.rejection.code == expected


@given(req=routable_requests)
def test_card_always_routes_while_card_is_enabled(req: PaymentRequest) -> None:
    if req.method == "CARD":
        for disabled in (NONE, frozenset({"unionpay"})):
            assert DEFAULT_TABLE.route(req, disabled).routed


@given(
    req=routable_requests,
    rules=st.lists(
        st.builds(
            RoutingRule,
            rule_id=st.just("x"),
            channel=st.sampled_from(sorted(CHANNELS)),
            methods=st.one_of(
                st.none(), st.frozensets(st.sampled_from(["CARD", "ALIPAY"]), min_size=1)
            ),
            regions=st.one_of(st.none(), st.frozensets(st.sampled_from(["CN", "US"]), min_size=1)),
            currencies=st.one_of(st.none(), st.frozensets(st.sampled_from(["CNY"]), min_size=1)),
        ),
        min_size=1,
        max_size=6,
    ),
    disabled=disabled_sets,
)
def test_any_table_matches_the_reference_and_spec_round_trips(
    req: PaymentRequest, rules: list[RoutingRule], disabled: frozenset[str]
) -> None:
    numbered = tuple(
        RoutingRule(f"r{i}", r.channel, r.methods, r.regions, r.currencies)
        for i, r in enumerate(rules)
    )
    table = RoutingTable(numbered)
    assert routed(table.route(req, disabled)) == reference_route(numbered, req, disabled)
    assert routing_table_from_spec(rules_to_spec(numbered)) == table


@given(
    method=st.one_of(st.text(max_size=5), st.none(), st.integers(), st.lists(st.none())),
    region=st.one_of(st.text(max_size=3), st.none(), st.integers()),
    currency=st.one_of(st.text(max_size=4), st.none(), st.integers()),
    disabled=disabled_sets,
)
def test_route_never_raises(
    method: Any, region: Any, currency: Any, disabled: frozenset[str]
) -> None:
    decision = DEFAULT_TABLE.route(request(method, region, currency), disabled)
    assert decision.routed or decision.rejection is not None


def _walk(table: RoutingTable, req: PaymentRequest,
          disabled: frozenset[str]) -> tuple[str | None, str | None, str | None, bool]:
    """(channel, rule_id, rejection code, has a rule) by walking the rules, no memo."""
    found = any(rule.matches(req) for rule in table.rules)
    skipped = False
    for rule in table.rules:
        if rule.matches(req):
            if rule.channel in disabled:
                skipped = True
                continue
            return rule.channel, rule.rule_id, None, found
    return None, None, CHANNEL_DISABLED if skipped else METHOD_NOT_ROUTABLE, found


_METHODS = st.sampled_from([*sorted(PAYMENT_METHODS), "PAYPAL", "card"])
_REGIONS = st.sampled_from(["CN", "US", "HK", "FR", "cn", ""])
_CURRENCIES = st.sampled_from(["CNY", "USD", "EUR", "MOP", "SEK", "XXX", "cny"])


@given(calls=st.lists(st.tuples(_METHODS, _REGIONS, _CURRENCIES,
                                st.sets(st.sampled_from(sorted(CHANNELS)), max_size=2)),
                      min_size=1, max_size=40))
def test_remembered_decisions_equal_a_fresh_walk_of_the_rules(
    calls: list[tuple[str, str, str, set[str]]]
) -> None:
    # One table across the calls, so later calls hit decisions remembered by earlier ones,
    # also after a kill switch changed.
    table = RoutingTable(DEFAULT_RULES)
    for method, region, currency, disabled in calls:
        req = request(method, region, currency)
        off = frozenset(disabled)
        channel, rule_id, code, found = _walk(table, req, off)
        decision = table.route(req, off)
        assert (decision.channel, decision.rule_id) == (channel, rule_id)
        assert (decision.rejection.code if decision.rejection else None) == code
        assert table.has_rule_for(req) is found


def test_the_decision_memo_is_bounded_and_skips_odd_types() -> None:
    from settlement import routing

    table = RoutingTable(DEFAULT_RULES)
    for n in range(routing._MEMO_MAX + 10):
        table.route(request("CARD", "US", "USD"), frozenset({f"x{n}"}))
    assert len(table._memo) <= routing._MEMO_MAX
    odd = request(["CARD"], "US", "USD")  # unhashable: walked every time, never remembered
    size = len(table._memo)
    assert not table.route(odd).routed and not table.has_rule_for(odd)
    assert len(table._memo) == size
