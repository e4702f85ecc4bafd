"""Unit tests for the producer simulators: order generator, merchants file, channel decisions."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.keyring import init_keyring
from producers.channel_sim import OffsetTracker
from producers.channels import (
    FAULT_AMOUNT_MISMATCH,
    FAULT_CURRENCY_MISMATCH,
    FAULT_DUPLICATE,
    FAULT_LATE,
    FAULT_MISSING,
    FAULT_NONE,
    FAULT_ORPHAN,
    FAULTS,
    ChannelSimConfig,
    decide,
    expected_results,
    plan_confirmations,
)
from producers.cli import simulate
from producers.errors import MerchantFileError, SimulatorConfigError
from producers.merchants import (
    MerchantEntry,
    fold_merchant_records,
    load_merchants,
    parse_csv,
    parse_json,
    sample_merchants_path,
)
from producers.order_faults import SIGNATURE_KINDS
from producers.order_flow import KIND_HEADER, FlowStats, publish_orders
from producers.orders import (
    BAD_KINDS,
    CONFLICT,
    DEAD_LETTERED,
    DEDUPLICATED,
    DUPLICATE,
    GARBAGE_KINDS,
    INJECTED_KINDS,
    OUTCOMES,
    REJECTED,
    ROUTED,
    VALID,
    OrderMix,
    SimulatedOrder,
    expected_accounting,
    generate_orders,
)
from producers.signing import RequestSigner
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.errors import DecodeError
from schemas.registry import InMemoryRegistry
from settlement import idempotency, validation
from settlement.currencies import exponent
from settlement.model import Merchant, PaymentRequest
from settlement.reconciliation import MATCHED, MISSING_CONFIRMATION
from settlement.routing import DEFAULT_TABLE
from settlement.signing import Keyring, SigningKey
from settlement.validation import ValidationPolicy

NOW_MS = 1_750_000_000_000
MERCHANTS = load_merchants(sample_merchants_path())
# Fixed secrets so a run's signatures are reproducible too.
KEYRING = Keyring(
    SigningKey(f"{m.merchant_id}.k1", m.merchant_id, hashlib.sha256(m.merchant_id.encode())
               .digest(), "active", 0)
    for m in MERCHANTS
)


def clock() -> int:
    return NOW_MS


def orders(seed: int, count: int, **mix: Any) -> list[SimulatedOrder]:
    return list(generate_orders(seed, count, MERCHANTS, OrderMix(**mix), clock=clock))


def as_request(record: dict[str, Any]) -> PaymentRequest:
    fields = dict(record)
    fields["created_at_ms"] = fields.pop("created_at")
    return PaymentRequest.from_record(fields)


class ReferencePipeline:
    """A simple model of validate+route built from the domain core, to check the oracle."""

    def __init__(self, registry: InMemoryRegistry, keyring: Keyring | None = None) -> None:
        # With a keyring the producer library signs on send and validation checks signatures.
        self.keyring = keyring
        self.signer = RequestSigner(keyring) if keyring is not None else None
        self.decoder = AvroDeserializer(registry)
        self.serializer = AvroSerializer(registry, "payments.requested", "PaymentRequested")
        self.directory = {
            m.merchant_id: Merchant(m.merchant_id, m.name, m.status, m.settlement_currency, 0)
            for m in MERCHANTS
        }
        self.seen: dict[str, idempotency.SeenEntry] = {}
        self.policy = ValidationPolicy()

    def process(self, order: SimulatedOrder) -> tuple[str, str | None, str | None]:
        """(outcome, reason or error type, channel) for one published order."""
        value: bytes | None
        if order.record is not None:
            record = order.record if self.signer is None else self.signer.sign_record(order.record)
            value = self.serializer.encode(record)
        else:
            value = order.raw
        try:
            record = self.decoder.decode(value)
        except DecodeError as exc:
            return DEAD_LETTERED, exc.reason, None
        record["created_at"] = order.record["created_at"] if order.record else 0
        request = as_request(record)
        reasons = validation.validate(
            request, self.directory.get(request.merchant_id), NOW_MS, self.policy,
            DEFAULT_TABLE.has_rule_for, self.keyring,
        )
        if reasons:
            return REJECTED, ",".join(r.code for r in reasons), None
        fp = idempotency.fingerprint(request)
        verdict = idempotency.decide(self.seen.get(request.payment_id), fp, NOW_MS)
        if verdict is idempotency.IdempotencyDecision.DUPLICATE:
            return DEDUPLICATED, None, None
        if verdict is idempotency.IdempotencyDecision.CONFLICT:
            return REJECTED, validation.DUPLICATE_CONFLICT, None
        route = DEFAULT_TABLE.route(request)
        assert route.channel is not None
        self.seen[request.payment_id] = idempotency.SeenEntry(fp, NOW_MS)
        return ROUTED, None, route.channel


# -- the order generator ----------------------------------------------------------------------


def test_same_seed_same_orders_other_seed_other_orders() -> None:
    mix = {"bad_ratio": 0.1, "duplicate_ratio": 0.02, "conflict_ratio": 0.01}
    assert orders(42, 300, **mix) == orders(42, 300, **mix)
    assert orders(42, 300, **mix) != orders(43, 300, **mix)
    assert orders(42, 300, **mix)[:100] == orders(42, 100, **mix)


def test_payment_ids_are_deterministic_and_unique_except_dups_and_conflicts() -> None:
    run = orders(9, 2000, bad_ratio=0.05, duplicate_ratio=0.02, conflict_ratio=0.01)
    fresh = [o for o in run if o.kind not in (DUPLICATE, CONFLICT)]
    assert [o.payment_id for o in fresh] == [f"pay-9-{o.index:08d}" for o in fresh]
    assert len({o.payment_id for o in fresh}) == len(fresh)
    by_index = {o.index: o for o in run}
    for order in run:
        if order.kind in (DUPLICATE, CONFLICT):
            original = by_index[order.original_index]  # type: ignore[index]
            assert original.kind == VALID and original.index < order.index
            assert order.payment_id == original.payment_id


def test_valid_amounts_are_ints_within_the_currency_range() -> None:
    policy = ValidationPolicy()
    for order in orders(5, 3000):
        record = order.record
        assert record is not None and order.kind == VALID
        amount = record["amount_minor"]
        assert type(amount) is int
        unit = 10 ** exponent(record["currency"])
        assert unit <= amount <= 50_000 * unit <= policy.limit_minor(record["currency"])
        assert type(record["created_at"]) is int


def test_mix_is_roughly_respected() -> None:
    valid = [o.record for o in orders(11, 6000) if o.record is not None]
    regions = Counter(r["region"] for r in valid)
    assert 0.66 < regions["CN"] / len(valid) < 0.78
    currency_of = {"CN": "CNY", "HK": "HKD", "US": "USD", "JP": "JPY", "DE": "EUR", "FR": "EUR",
                   "KW": "KWD"}
    assert all(r["currency"] == currency_of[r["region"]] for r in valid)
    cn_methods = Counter(r["method"] for r in valid if r["region"] == "CN")
    cn_total = sum(cn_methods.values())
    assert (cn_methods["ALIPAY"] + cn_methods["WECHAT_PAY"]) / cn_total > 0.8
    abroad = Counter(r["method"] for r in valid if r["region"] in ("US", "DE", "FR", "KW"))
    assert abroad.most_common(1)[0][0] == "CARD"
    assert abroad["CARD"] / sum(abroad.values()) > 0.7
    merchants = Counter(r["merchant_id"] for r in valid)
    assert merchants.most_common(1)[0][0] == "m-0001"
    suspended = {m.merchant_id for m in MERCHANTS if m.status == "SUSPENDED"}
    assert not suspended & set(merchants)
    # Long tail: the largest amounts are far above the median.
    cny = sorted(r["amount_minor"] for r in valid if r["currency"] == "CNY")
    assert cny[-1] > 10 * cny[len(cny) // 2]


def test_valid_orders_route_under_default_rules() -> None:
    for order in orders(3, 2000):
        assert order.record is not None
        request = as_request(order.record)
        assert DEFAULT_TABLE.has_rule_for(request)
        assert DEFAULT_TABLE.route(request).channel == order.channel


def test_ratios_are_roughly_respected() -> None:
    run = orders(21, 20_000, bad_ratio=0.05, duplicate_ratio=0.01, conflict_ratio=0.002)
    kinds = Counter(o.kind for o in run)
    injected = sum(kinds[k] for k in INJECTED_KINDS)
    assert 800 < injected < 1200
    assert 140 < kinds[DUPLICATE] < 260
    assert 20 < kinds[CONFLICT] < 65


def test_every_bad_kind_is_generated_and_gives_its_reason() -> None:
    run = orders(8, 400, bad_ratio=0.25, keyring=KEYRING)
    kinds = Counter(o.kind for o in run)
    assert set(INJECTED_KINDS) <= set(kinds)
    pipeline = ReferencePipeline(InMemoryRegistry(), KEYRING)
    for order in run:
        outcome, reason, _channel = pipeline.process(order)
        assert outcome == order.expected, order
        if order.kind in BAD_KINDS:
            assert order.record is not None and order.raw is None
            assert order.reason in (reason or "").split(","), (order, reason)
        if order.kind in GARBAGE_KINDS:
            assert order.raw is not None and order.record is None
            assert reason == order.reason, order


def test_signature_faults_give_exactly_their_reason() -> None:
    run = orders(9, 600, bad_ratio=0.3, keyring=KEYRING, bad_kinds=SIGNATURE_KINDS)
    pipeline = ReferencePipeline(InMemoryRegistry(), KEYRING)
    seen = set()
    for order in run:
        outcome, reason, _channel = pipeline.process(order)
        assert outcome == order.expected, order
        if order.kind in SIGNATURE_KINDS:
            # Apart from its signature the request is valid: one reason, the intended one.
            assert reason == order.reason, (order, reason)
            seen.add(order.kind)
    assert seen == set(SIGNATURE_KINDS)


def test_without_a_keyring_no_signature_fault_is_injected() -> None:
    run = orders(9, 400, bad_ratio=0.5)
    assert not {o.kind for o in run} & set(SIGNATURE_KINDS)
    unknown = [o for o in run if o.kind == "bad-merchant-unknown"]
    # An invented merchant has no key: its request is sent unsigned, on purpose.
    assert unknown and all(o.record and o.record["signature"] is None for o in unknown)


def test_small_runs_cover_every_kind_once_there_are_enough_bad_records() -> None:
    run = orders(1, 60, bad_ratio=0.5, keyring=KEYRING)
    bad = [o for o in run if o.kind in INJECTED_KINDS]
    if len(bad) >= len(INJECTED_KINDS):
        assert {o.kind for o in bad} == set(INJECTED_KINDS)


def test_bad_kinds_can_be_restricted_and_inapplicable_ones_are_skipped() -> None:
    only = orders(2, 300, bad_ratio=0.3, bad_kinds=("garbage-empty-value",))
    assert {o.kind for o in only} <= {VALID, "garbage-empty-value"}
    active_only = [m for m in MERCHANTS if m.status == "ACTIVE"]
    run = list(generate_orders(2, 500, active_only, OrderMix(bad_ratio=0.5), clock=clock))
    assert "bad-merchant-suspended" not in {o.kind for o in run}
    with pytest.raises(SimulatorConfigError):
        generate_orders(2, 10, active_only,
                        OrderMix(bad_ratio=0.5, bad_kinds=("bad-merchant-suspended",)))


@pytest.mark.parametrize(
    "mix",
    [
        {"bad_ratio": 1.5},
        {"bad_ratio": 0.6, "duplicate_ratio": 0.6},
        {"bad_kinds": ("bad-nonsense",)},
        {"duplicate_ratio": -0.1},
    ],
)
def test_impossible_mixes_are_refused(mix: dict[str, Any]) -> None:
    with pytest.raises(SimulatorConfigError):
        OrderMix(**mix)


def test_no_active_merchant_is_refused() -> None:
    suspended = [MerchantEntry("m-1", "x", "SUSPENDED", "CNY")]
    with pytest.raises(SimulatorConfigError):
        generate_orders(1, 10, suspended)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 250),
    bad=st.floats(0, 0.4),
    dup=st.floats(0, 0.3),
    conflict=st.floats(0, 0.2),
    signed=st.booleans(),
)
def test_accounting_adds_up_and_matches_a_reference_pipeline(
    seed: int, count: int, bad: float, dup: float, conflict: float, signed: bool
) -> None:
    keyring = KEYRING if signed else None
    run = orders(seed, count, bad_ratio=bad, duplicate_ratio=dup, conflict_ratio=conflict,
                 keyring=keyring)
    accounting = expected_accounting(run)
    assert accounting.count == count == len(run)
    assert accounting.balanced
    assert sum(accounting[o] for o in OUTCOMES) == count
    assert accounting.to_dict()["routed"] == sum(accounting.channels.values())
    pipeline = ReferencePipeline(InMemoryRegistry(), keyring)
    seen = Counter(pipeline.process(order)[0] for order in run)
    assert seen == Counter({o: accounting[o] for o in OUTCOMES if accounting[o]})


# -- publishing -------------------------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any, dict[str, str] | None]] = []

    def send(self, topic: str, key: str, record: Any, headers: Any = None) -> None:
        self.sent.append(("record", key, record, headers))

    def send_raw(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: Any = None) -> None:
        self.sent.append(("raw", key, value, headers))


def test_publish_orders_paces_against_the_start_and_counts() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    run = orders(4, 50, bad_ratio=0.3)
    publisher = FakePublisher()
    stats = publish_orders(publisher, "payments.requested", run, FlowStats(), rate_per_s=10,
                           monotonic=lambda: now[0], sleep=sleep)
    assert stats.sent == 50 and len(publisher.sent) == 50
    assert sum(sleeps) == pytest.approx(4.9)
    assert stats.expected.balanced and stats.expected.count == 50
    for order, (how, key, payload, headers) in zip(run, publisher.sent, strict=True):
        assert headers == {KIND_HEADER: order.kind}
        if order.raw is not None:
            assert (how, key, payload) == ("raw", order.key.encode(), order.raw)
        else:
            assert (how, key, payload) == ("record", order.key, order.record)
    assert sum(stats.by_method.values()) == stats.expected.kinds[VALID]


@pytest.mark.parametrize("signatures", ["required", "off"])
def test_cli_dry_run_prints_the_expected_accounting(tmp_path: Path, signatures: str) -> None:
    report = tmp_path / "report.json"
    keyring_path = tmp_path / "ring.json"
    keyring = init_keyring(keyring_path, [m.merchant_id for m in MERCHANTS])
    result = CliRunner().invoke(
        simulate, ["orders", "--count", "300", "--seed", "5", "--rate", "0", "--dry-run",
                   "--bad-ratio", "0.1", "--report", str(report)],
        env={"SETTLE_SIGNATURES": signatures, "SETTLE_SIGNING_KEYRING": str(keyring_path)},
    )
    assert result.exit_code == 0, result.output
    assert "balanced" in result.output
    data = json.loads(report.read_text())
    # Signature faults only when the validator will enforce signatures.
    expected = expected_accounting(orders(
        5, 300, bad_ratio=0.1, duplicate_ratio=0.01, conflict_ratio=0.002,
        keyring=keyring if signatures == "required" else None))
    assert data["expected"] == expected.to_dict()
    assert data["sent"] == 300
    signature_faults = set(data["expected"]["kinds"]) & set(SIGNATURE_KINDS)
    assert bool(signature_faults) == (signatures == "required")


# -- the merchants file -----------------------------------------------------------------------


def test_sample_merchants_file_is_valid_and_varied() -> None:
    assert len(MERCHANTS) == 20
    assert sum(m.status == "SUSPENDED" for m in MERCHANTS) == 2
    currencies = Counter(m.settlement_currency for m in MERCHANTS)
    assert currencies.most_common(1)[0][0] == "CNY"
    assert {"CNY", "HKD", "USD", "JPY", "KWD", "EUR"} <= set(currencies)
    assert all(m.merchant_id.startswith("m-") for m in MERCHANTS)


def test_csv_problems_are_reported_by_line() -> None:
    text = (
        "merchant_id,name,status,settlement_currency\n"
        "m-1,Good,ACTIVE,CNY\n"
        "m-2,,ACTIVE,CNY\n"
        "\n"
        "m-3,Bad status,CLOSED,CNY\n"
        "m-4,Bad currency,ACTIVE,cny\n"
        "m-1,Again,ACTIVE,CNY\n"
    )
    with pytest.raises(MerchantFileError) as info:
        parse_csv(text)
    problems = info.value.problems
    assert problems[0] == "line 3: name is empty"
    assert problems[1].startswith("line 5: status 'CLOSED'")
    assert problems[2].startswith("line 6: settlement_currency 'cny'")
    assert problems[3] == "line 7: merchant_id m-1 repeats (first at line 2)"


def test_csv_header_and_empty_file_are_checked() -> None:
    with pytest.raises(MerchantFileError, match="header lacks column"):
        parse_csv("id,name\nm-1,x\n")
    with pytest.raises(MerchantFileError, match="no merchants"):
        parse_csv("merchant_id,name,status,settlement_currency\n")


def test_json_merchants_file(tmp_path: Path) -> None:
    rows = [{"merchant_id": "m-1", "name": "A", "status": "ACTIVE",
             "settlement_currency": "JPY"}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"merchants": rows}))
    assert load_merchants(path) == [MerchantEntry("m-1", "A", "ACTIVE", "JPY")]
    with pytest.raises(MerchantFileError, match="item 2"):
        parse_json(json.dumps([*rows, "nope"]))


class FakeMessage:
    def __init__(self, key: bytes, value: bytes | None, offset: int) -> None:
        self._key, self._value, self._offset = key, value, offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_fold_keeps_newest_state_and_honours_tombstones() -> None:
    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, "merchants", "Merchant")
    a = MerchantEntry("m-1", "A", "ACTIVE", "CNY")
    a_suspended = MerchantEntry("m-1", "A", "SUSPENDED", "CNY")
    b = MerchantEntry("m-2", "B", "ACTIVE", "USD")
    messages = [
        FakeMessage(b"m-1", ser.encode(a.to_record(2_000)), 0),
        FakeMessage(b"m-1", ser.encode(a_suspended.to_record(1_000)), 1),  # older: ignored
        FakeMessage(b"m-2", ser.encode(b.to_record(1_000)), 2),
        FakeMessage(b"m-2", None, 3),
        FakeMessage(b"m-3", b"garbage", 4),
    ]
    states, undecodable = fold_merchant_records(messages, registry)
    assert list(states) == ["m-1"] and states["m-1"].entry == a
    assert states["m-1"].updated_at_ms == 2_000
    assert undecodable == 1


# -- the channel simulator's decisions ----------------------------------------------------------


def routed(payment_id: str, amount_minor: int = 12_345, currency: str = "CNY",
           channel: str = "ALIPAY") -> dict[str, Any]:
    return {"payment_id": payment_id, "channel": channel, "amount_minor": amount_minor,
            "currency": currency}


def payment_ids(n: int) -> Iterator[str]:
    return (f"pay-7-{i:08d}" for i in range(n))


def test_plan_is_deterministic_and_independent_of_arrival_time() -> None:
    config = ChannelSimConfig(seed=3, fault_rate=0.5, decline_rate=0.2)
    for pid in payment_ids(300):
        early = plan_confirmations(routed(pid), NOW_MS, config)
        again = plan_confirmations(routed(pid), NOW_MS, config)
        late = plan_confirmations(routed(pid), NOW_MS + 60_000, config)
        assert early == again
        assert [p.record["confirmation_id"] for p in early] == [
            p.record["confirmation_id"] for p in late
        ]
        assert [p.fault for p in early] == [p.fault for p in late]
        assert [p.due_ms + 60_000 for p in early] == [p.due_ms for p in late]


def test_seed_changes_decisions() -> None:
    a = [decide(pid, ChannelSimConfig(seed=1, fault_rate=0.3)) for pid in payment_ids(500)]
    b = [decide(pid, ChannelSimConfig(seed=2, fault_rate=0.3)) for pid in payment_ids(500)]
    assert a != b


def test_fault_and_decline_rates_are_roughly_respected() -> None:
    config = ChannelSimConfig(seed=5, fault_rate=0.3, decline_rate=0.1)
    decisions = [decide(pid, config) for pid in payment_ids(30_000)]
    faults = Counter(d.fault for d in decisions)
    assert 0.28 < 1 - faults[FAULT_NONE] / 30_000 < 0.32
    for fault in FAULTS:
        assert 0.04 < faults[fault] / 30_000 < 0.06, fault
    clean = [d for d in decisions if d.fault == FAULT_NONE]
    declined = sum(d.declined for d in clean) / len(clean)
    assert 0.09 < declined < 0.11
    assert all(d.decline_code for d in decisions if d.declined)


def test_fault_subset_and_order_do_not_matter() -> None:
    a = ChannelSimConfig(seed=1, fault_rate=1.0, faults=("late", "missing"))
    b = ChannelSimConfig(seed=1, fault_rate=1.0, faults=("missing", "late"))
    decisions = [decide(pid, a) for pid in payment_ids(200)]
    assert decisions == [decide(pid, b) for pid in payment_ids(200)]
    assert {d.fault for d in decisions} == {FAULT_LATE, FAULT_MISSING}
    assert {decide(p, ChannelSimConfig(fault_rate=1.0, faults=())).fault
            for p in payment_ids(50)} == {FAULT_NONE}
    with pytest.raises(SimulatorConfigError):
        ChannelSimConfig(faults=("meteor",))
    with pytest.raises(SimulatorConfigError):
        ChannelSimConfig(decline_rate=2.0)


def first_with(fault: str, config: ChannelSimConfig) -> str:
    return next(pid for pid in payment_ids(10_000) if decide(pid, config).fault == fault)


@pytest.fixture(scope="module")
def serializer() -> AvroSerializer:
    return AvroSerializer(InMemoryRegistry(), "channel.confirmations", "ChannelConfirmation")


def test_each_fault_shapes_the_confirmations(serializer: AvroSerializer) -> None:
    config = ChannelSimConfig(seed=9, fault_rate=1.0, latency_ms=100, late_ms=20_000)
    amount = 123_456

    def plan(fault: str) -> list[Any]:
        pid = first_with(fault, config)
        planned = plan_confirmations(routed(pid, amount), NOW_MS, config)
        for p in planned:
            serializer.encode(p.record)  # every planned record is valid Avro
            assert p.fault == fault
        return planned

    assert plan(FAULT_MISSING) == []
    (mismatch,) = plan(FAULT_AMOUNT_MISMATCH)
    diff = mismatch.record["amount_minor"] - amount
    assert diff != 0 and abs(diff) <= amount // 100 + 1
    assert mismatch.record["status"] == "SUCCEEDED"
    (currency,) = plan(FAULT_CURRENCY_MISMATCH)
    assert currency.record["currency"] != "CNY"
    first, second = plan(FAULT_DUPLICATE)
    assert first.record["payment_id"] == second.record["payment_id"]
    assert first.record["confirmation_id"] != second.record["confirmation_id"]
    assert second.due_ms > first.due_ms
    normal, orphan = plan(FAULT_ORPHAN)
    assert orphan.key == "orphan-" + normal.key and orphan.key == orphan.record["payment_id"]
    (late,) = plan(FAULT_LATE)
    assert late.due_ms == NOW_MS + 20_000 == late.record["confirmed_at"]


def test_clean_confirmation_matches_the_routed_payment() -> None:
    config = ChannelSimConfig(seed=1, fault_rate=0.0, decline_rate=0.0, latency_ms=50,
                              reversal_rate=0.0)
    for pid in payment_ids(100):
        (planned,) = plan_confirmations(routed(pid, 999, "JPY", "CARD"), NOW_MS, config)
        record = planned.record
        assert (record["amount_minor"], record["currency"], record["channel"]) == (999, "JPY",
                                                                                   "CARD")
        assert record["status"] == "SUCCEEDED" and record["decline_code"] is None
        assert NOW_MS + 25 <= planned.due_ms <= NOW_MS + 75
        assert record["channel_txn_id"].startswith("CRD")
        assert planned.key == pid


def test_declines_carry_a_code() -> None:
    config = ChannelSimConfig(seed=1, fault_rate=0.0, decline_rate=1.0)
    (planned,) = plan_confirmations(routed("pay-x"), NOW_MS, config)
    assert planned.record["status"] == "FAILED" and planned.record["decline_code"]


def test_expected_results_name_reconciliation_outcomes() -> None:
    config = ChannelSimConfig(seed=2, fault_rate=1.0, decline_rate=0.0, faults=("late",))
    decision = decide("pay-1", config)
    assert expected_results(decision) == (MISSING_CONFIRMATION, MATCHED)


def test_offset_tracker_commits_only_answered_records() -> None:
    tracker = OffsetTracker()
    tp = ("payments.routed.alipay", 0)
    tracker.consumed(tp, 10, 2)
    tracker.consumed(tp, 11, 0)  # a missing confirmation: nothing to wait for
    tracker.consumed(tp, 12, 1)
    assert tracker.committable() == {tp: 10}
    tracker.produced(tp, 10)
    tracker.produced(tp, 12)
    assert tracker.committable() == {tp: 10}
    tracker.produced(tp, 10)
    assert tracker.committable() == {tp: 13}
    tracker.mark_committed({tp: 13})
    assert tracker.committable() == {}
    tracker.forget([tp])
    tracker.produced(tp, 99)  # after a revoke: ignored
    assert tracker.committable() == {}
