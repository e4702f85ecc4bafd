"""Unit tests for settlement.validation: every rule passes and fails, all failures together."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement import validation as v
from settlement.currencies import CURRENCY_EXPONENTS
from settlement.model import INTERFACES, PAYMENT_METHODS, Merchant, PaymentRequest
from settlement.routing import DEFAULT_TABLE
from settlement.signing import Keyring, SigningKey, sign
from settlement.validation import (
    REASON_CODES,
    InvalidPolicy,
    Rejection,
    ValidationPolicy,
    validate,
)

NOW_MS = 1_700_000_000_000
POLICY = ValidationPolicy()
ACTIVE = Merchant("m-1", "Tea House", "ACTIVE", "CNY", NOW_MS)


def request(**overrides: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "payment_id": "pay-1",
        "merchant_id": "m-1",
        "order_id": "o-1",
        "payer_id": "u-1",
        "amount_minor": 12345,
        "currency": "CNY",
        "method": "ALIPAY",
        "interface": "APP",
        "region": "CN",
        "created_at_ms": NOW_MS,
        "metadata": {"k": "v"},
    }
    fields.update(overrides)
    return PaymentRequest(**fields)


def always(_: PaymentRequest) -> bool:
    return True


def never(_: PaymentRequest) -> bool:
    return False


def codes(
    req: PaymentRequest,
    merchant: Merchant | None = ACTIVE,
    policy: ValidationPolicy = POLICY,
    routable: Any = always,
) -> list[str]:
    return [rejection.code for rejection in validate(req, merchant, NOW_MS, policy, routable)]


def test_a_good_request_is_valid() -> None:
    assert validate(request(), ACTIVE, NOW_MS, POLICY, DEFAULT_TABLE.has_rule_for) == []


def test_reason_codes_are_stable_upper_snake() -> None:
    assert all(re.fullmatch(r"[A-Z]+(_[A-Z]+)+", code) for code in REASON_CODES)
    assert {
        "AMOUNT_NOT_POSITIVE",
        "AMOUNT_ABOVE_LIMIT",
        "CURRENCY_UNKNOWN",
        "MERCHANT_UNKNOWN",
        "MERCHANT_SUSPENDED",
        "METHOD_NOT_ROUTABLE",
        "CREATED_AT_IN_FUTURE",
        "CREATED_AT_TOO_OLD",
        "REQUIRED_FIELD_EMPTY",
        "REGION_INVALID",
        "METHOD_UNKNOWN",
        "INTERFACE_UNKNOWN",
        "DUPLICATE_CONFLICT",
        "CHANNEL_DISABLED",
        "AMOUNT_NOT_INTEGER",
        "FIELD_TYPE_INVALID",
        "SIGNATURE_MISSING",
        "SIGNATURE_KEY_UNKNOWN",
        "SIGNATURE_KEY_MERCHANT_MISMATCH",
        "SIGNATURE_INVALID",
    } == REASON_CODES


@pytest.mark.parametrize("name", ["payment_id", "merchant_id", "order_id", "payer_id"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_required_field_empty_names_the_field(name: str, blank: str) -> None:
    found = v.check_required_fields(request(**{name: blank}))
    assert found == [Rejection(v.REQUIRED_FIELD_EMPTY, name)]


@pytest.mark.parametrize("value", [None, 7, b"pay"])
def test_required_field_of_the_wrong_type(value: object) -> None:
    found = v.check_required_fields(request(order_id=value))
    assert [r.code for r in found] == [v.FIELD_TYPE_INVALID]
    assert "order_id" in found[0].detail


def test_required_fields_pass() -> None:
    assert v.check_required_fields(request()) == []


@pytest.mark.parametrize("amount", [True, False, 1.0, "100", None])
def test_amount_must_be_an_int(amount: object) -> None:
    assert codes(request(amount_minor=amount)) == [v.AMOUNT_NOT_INTEGER]


@pytest.mark.parametrize("amount", [0, -1, -(10**5000)], ids=["zero", "minus-one", "huge"])
def test_amount_must_be_positive(amount: int) -> None:
    assert codes(request(amount_minor=amount)) == [v.AMOUNT_NOT_POSITIVE]


@pytest.mark.parametrize(
    ("currency", "limit"),
    [("JPY", 1_000_000), ("CNY", 100_000_000), ("KWD", 1_000_000_000), ("CLF", 10**10)],
)
def test_default_limit_is_a_million_major_units_for_every_exponent(
    currency: str, limit: int
) -> None:
    assert POLICY.limit_minor(currency) == limit
    assert v.check_amount_limit(request(currency=currency, amount_minor=limit), POLICY) == []
    over = v.check_amount_limit(request(currency=currency, amount_minor=limit + 1), POLICY)
    assert [r.code for r in over] == [v.AMOUNT_ABOVE_LIMIT]


def test_limit_override_per_currency() -> None:
    policy = ValidationPolicy(amount_limits_minor={"CNY": 500})
    assert codes(request(amount_minor=500), policy=policy) == []
    assert codes(request(amount_minor=501), policy=policy) == [v.AMOUNT_ABOVE_LIMIT]
    assert policy.limit_minor("USD") == 100_000_000


def test_huge_amounts_are_refused_without_crashing() -> None:
    found = validate(request(amount_minor=10**5000), ACTIVE, NOW_MS, POLICY, always)
    assert [r.code for r in found] == [v.AMOUNT_ABOVE_LIMIT]
    assert "bits" in found[0].detail


def test_containers_holding_huge_ints_are_described_not_rendered() -> None:
    # Found by Hypothesis: repr() of a list holding a >4300-digit int raises ValueError.
    found = validate(request(interface=[10**5000]), ACTIVE, NOW_MS, POLICY, always)
    assert found == [Rejection(v.INTERFACE_UNKNOWN, "interface <list>")]


def test_unknown_currency_does_not_crash_the_limit_rule() -> None:
    assert codes(request(currency="XAU", amount_minor=10**20)) == [v.CURRENCY_UNKNOWN]
    assert codes(request(currency=None)) == [v.CURRENCY_UNKNOWN]


@pytest.mark.parametrize("currency", ["CNY", "JPY", "KWD"])
def test_known_currency_passes(currency: str) -> None:
    assert v.check_currency(request(currency=currency)) == []


@pytest.mark.parametrize("method", ["PAYPAL", "alipay", "", None, 3])
def test_method_unknown(method: object) -> None:
    assert codes(request(method=method)) == [v.METHOD_UNKNOWN]


@pytest.mark.parametrize("method", sorted(PAYMENT_METHODS))
def test_every_method_is_known(method: str) -> None:
    assert v.check_method(request(method=method)) == []


@pytest.mark.parametrize("interface", ["WEB", "app", "", None])
def test_interface_unknown(interface: object) -> None:
    assert codes(request(interface=interface)) == [v.INTERFACE_UNKNOWN]


@pytest.mark.parametrize("interface", sorted(INTERFACES))
def test_every_interface_is_known(interface: str) -> None:
    assert v.check_interface(request(interface=interface)) == []


@pytest.mark.parametrize("region", ["cn", "CHN", "C", "", "ÄÖ", "C1", "CN\n", None, 86])
def test_region_must_be_two_ascii_upper_case_letters(region: object) -> None:
    assert codes(request(region=region)) == [v.REGION_INVALID]


@pytest.mark.parametrize("region", ["CN", "US", "HK"])
def test_region_passes(region: str) -> None:
    assert v.check_region(request(region=region)) == []


def test_created_at_window_boundaries() -> None:
    skew, age = POLICY.max_future_skew_ms, POLICY.max_age_ms
    assert skew == 5 * 60 * 1000 and age == 7 * 24 * 3600 * 1000
    assert codes(request(created_at_ms=NOW_MS + skew)) == []
    assert codes(request(created_at_ms=NOW_MS + skew + 1)) == [v.CREATED_AT_IN_FUTURE]
    assert codes(request(created_at_ms=NOW_MS - age)) == []
    assert codes(request(created_at_ms=NOW_MS - age - 1)) == [v.CREATED_AT_TOO_OLD]


@pytest.mark.parametrize("created", [True, "1700000000000", 1.7e12, None])
def test_created_at_must_be_an_int(created: object) -> None:
    assert codes(request(created_at_ms=created)) == [v.FIELD_TYPE_INVALID]


def test_created_at_extremes_do_not_crash() -> None:
    assert codes(request(created_at_ms=10**5000)) == [v.CREATED_AT_IN_FUTURE]
    assert codes(request(created_at_ms=-(10**5000))) == [v.CREATED_AT_TOO_OLD]


def test_metadata_must_map_text_to_text() -> None:
    assert v.check_metadata(request()) == []
    assert codes(request(metadata={"k": 1})) == [v.FIELD_TYPE_INVALID]
    assert codes(request(metadata={1: "v"})) == [v.FIELD_TYPE_INVALID]


def test_merchant_rules() -> None:
    assert v.check_merchant(request(), ACTIVE) == []
    assert codes(request(), merchant=None) == [v.MERCHANT_UNKNOWN]
    suspended = dataclasses.replace(ACTIVE, status="SUSPENDED")
    assert codes(request(), merchant=suspended) == [v.MERCHANT_SUSPENDED]
    # An unexpected status fails closed.
    closed = dataclasses.replace(ACTIVE, status="CLOSED")
    found = validate(request(), closed, NOW_MS, POLICY, always)
    assert [r.code for r in found] == [v.MERCHANT_SUSPENDED]
    assert "CLOSED" in found[0].detail
    # A lookup that returned another merchant's record is no record.
    assert codes(request(), merchant=dataclasses.replace(ACTIVE, merchant_id="m-2")) == [
        v.MERCHANT_UNKNOWN
    ]


def test_routable_rule() -> None:
    assert codes(request(), routable=never) == [v.METHOD_NOT_ROUTABLE]
    assert codes(request(currency="BRL"), routable=DEFAULT_TABLE.has_rule_for) == [
        v.METHOD_NOT_ROUTABLE
    ]


def test_router_is_not_asked_about_malformed_requests() -> None:
    def exploding(_: PaymentRequest) -> bool:
        raise AssertionError("router called")

    assert codes(request(method="X"), routable=exploding) == [v.METHOD_UNKNOWN]
    assert codes(request(currency="X"), routable=exploding) == [v.CURRENCY_UNKNOWN]
    assert codes(request(region="x"), routable=exploding) == [v.REGION_INVALID]


def test_all_failing_rules_are_reported_together() -> None:
    bad = request(
        payment_id="",
        order_id=" ",
        amount_minor=-5,
        currency="ZZZ",
        method="CASH",
        interface="KIOSK",
        region="cn",
        created_at_ms=NOW_MS + 10**9,
        metadata={"k": 2},
    )
    found = validate(bad, None, NOW_MS, POLICY, always)
    assert [r.code for r in found] == [
        v.REQUIRED_FIELD_EMPTY,
        v.REQUIRED_FIELD_EMPTY,
        v.AMOUNT_NOT_POSITIVE,
        v.CURRENCY_UNKNOWN,
        v.METHOD_UNKNOWN,
        v.INTERFACE_UNKNOWN,
        v.REGION_INVALID,
        v.CREATED_AT_IN_FUTURE,
        v.FIELD_TYPE_INVALID,
        v.MERCHANT_UNKNOWN,
    ]
    assert [r.detail for r in found[:2]] == ["payment_id", "order_id"]


def test_validation_and_routing_failures_together() -> None:
    found = codes(
        request(amount_minor=10**12, created_at_ms=0),
        merchant=dataclasses.replace(ACTIVE, status="SUSPENDED"),
        routable=never,
    )
    assert found == [
        v.AMOUNT_ABOVE_LIMIT,
        v.CREATED_AT_TOO_OLD,
        v.MERCHANT_SUSPENDED,
        v.METHOD_NOT_ROUTABLE,
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount_limits_minor": {"XAU": 5}},
        {"amount_limits_minor": {"CNY": 0}},
        {"amount_limits_minor": {"CNY": True}},
        {"default_limit_major": 0},
        {"max_future_skew_ms": -1},
        {"max_age_ms": 0},
        {"max_age_ms": 1.5},
    ],
)
def test_invalid_policy_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicy):
        ValidationPolicy(**kwargs)


def test_policy_is_frozen_and_owns_its_limits() -> None:
    limits = {"CNY": 100}
    policy = ValidationPolicy(amount_limits_minor=limits)
    limits["CNY"] = 1
    assert policy.limit_minor("CNY") == 100
    assert isinstance(policy.amount_limits_minor, MappingProxyType)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_age_ms = 1  # type: ignore[misc]
    hash(policy)


anything = st.one_of(
    st.text(max_size=12),
    st.sampled_from(sorted(PAYMENT_METHODS | INTERFACES | set(CURRENCY_EXPONENTS) | {"CN"})),
    st.integers(),
    st.integers(min_value=10**4400, max_value=10**4500),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
)


@given(
    values=st.fixed_dictionaries(
        {
            name: anything
            for name in (
                "payment_id",
                "merchant_id",
                "order_id",
                "payer_id",
                "amount_minor",
                "currency",
                "method",
                "interface",
                "region",
                "created_at_ms",
            )
        }
    ),
    metadata=st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), anything, max_size=3),
    merchant=st.one_of(
        st.none(),
        st.builds(
            Merchant,
            merchant_id=st.sampled_from(["m-1", "other"]),
            name=st.text(max_size=5),
            status=st.one_of(st.sampled_from(["ACTIVE", "SUSPENDED"]), st.text(max_size=5)),
            settlement_currency=st.just("CNY"),
            updated_at_ms=st.integers(),
        ),
    ),
)
def test_validate_never_raises_and_only_uses_known_codes(
    values: dict[str, Any], metadata: dict[Any, Any], merchant: Merchant | None
) -> None:
    req = PaymentRequest(**values, metadata=metadata)
    found = validate(req, merchant, NOW_MS, POLICY, DEFAULT_TABLE.has_rule_for)
    assert all(isinstance(r, Rejection) for r in found)
    assert {r.code for r in found} <= REASON_CODES
    assert all(len(r.detail) < 300 for r in found)


@given(
    amount=st.integers(min_value=1, max_value=10**6),
    currency=st.sampled_from(["CNY", "HKD", "USD", "JPY", "EUR"]),
    method=st.sampled_from(sorted(PAYMENT_METHODS)),
    interface=st.sampled_from(sorted(INTERFACES)),
    region=st.sampled_from(["CN", "HK", "US", "JP"]),
    age_ms=st.integers(min_value=-POLICY.max_future_skew_ms, max_value=POLICY.max_age_ms),
)
def test_well_formed_requests_are_valid(
    amount: int, currency: str, method: str, interface: str, region: str, age_ms: int
) -> None:
    req = request(
        amount_minor=amount,
        currency=currency,
        method=method,
        interface=interface,
        region=region,
        created_at_ms=NOW_MS - age_ms,
    )
    assert validate(req, ACTIVE, NOW_MS, POLICY, DEFAULT_TABLE.has_rule_for) == []


@given(amount=st.integers(), currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_amount_rules_match_a_reference_model(amount: int, currency: str) -> None:
    expected = []
    if amount <= 0:
        expected.append(v.AMOUNT_NOT_POSITIVE)
    elif amount > 1_000_000 * 10 ** CURRENCY_EXPONENTS[currency]:
        expected.append(v.AMOUNT_ABOVE_LIMIT)
    req = request(amount_minor=amount, currency=currency)
    assert codes(req) == expected


# -- merchant signatures ----------------------------------------------------------------------

KEY_1 = SigningKey("m-1.k1", "m-1", b"k" * 32, "active", 0)
KEY_2 = SigningKey("m-2.k1", "m-2", b"j" * 32, "active", 0)
KEYRING = Keyring([KEY_1, KEY_2])


def signed_by(key: SigningKey, req: PaymentRequest | None = None) -> PaymentRequest:
    req = req or request()
    return dataclasses.replace(req, signature_key_id=key.key_id, signature=sign(req, key))


def signature_codes(req: PaymentRequest, merchant: Merchant | None = ACTIVE) -> list[str]:
    found = validate(req, merchant, NOW_MS, POLICY, always, KEYRING)
    return [rejection.code for rejection in found]


def test_a_signed_request_is_valid_and_without_a_keyring_signatures_are_not_checked() -> None:
    assert signature_codes(signed_by(KEY_1)) == []
    assert codes(request()) == []


@pytest.mark.parametrize(("req", "code"), [
    (request(), v.SIGNATURE_MISSING),
    (request(signature_key_id="m-1.k1"), v.SIGNATURE_MISSING),
    (request(signature_key_id="m-1.k0", signature="ab" * 32), v.SIGNATURE_KEY_UNKNOWN),
    (signed_by(KEY_2), v.SIGNATURE_KEY_MERCHANT_MISMATCH),
    (dataclasses.replace(signed_by(KEY_1), amount_minor=12346), v.SIGNATURE_INVALID),
    (request(signature_key_id="m-1.k1", signature="ab" * 32), v.SIGNATURE_INVALID),
])
def test_each_signature_failure_has_its_own_code(req: PaymentRequest, code: str) -> None:
    assert signature_codes(req) == [code]
    assert code in REASON_CODES


def test_signature_is_checked_first_and_other_failures_still_reported() -> None:
    req = dataclasses.replace(signed_by(KEY_1), region="cn")
    assert signature_codes(req) == [v.SIGNATURE_INVALID, "REGION_INVALID"]
    assert signature_codes(signed_by(KEY_1), merchant=None) == ["MERCHANT_UNKNOWN"]


def test_the_readme_lists_every_rejection_reason_code_and_no_other() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text("utf-8")
    section = readme.split("### Rejection reason codes", 1)[1].split("\n### ", 1)[0]
    listed = re.findall(r"^\| `([A-Z_]+)` \|", section, re.M)
    assert len(listed) == len(set(listed))
    assert set(listed) == REASON_CODES
