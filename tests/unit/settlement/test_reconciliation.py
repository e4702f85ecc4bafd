"""Unit and property tests for settlement.reconciliation against a simple reference model."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement import reconciliation as recon
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    DECLINED,
    DUPLICATE_CONFIRMATION,
    FAILED,
    LATE_CONFIRMATION,
    MATCHED,
    MISSING_CONFIRMATION,
    ORPHAN_CONFIRMATION,
    SEEN_CONFIRMATION_IDS_MAX,
    SUCCEEDED,
    TERMINAL_OUTCOMES,
    Confirmation,
    ReconError,
    ReconInvariantError,
    ReconPolicy,
    ReconState,
    ResultRecord,
    RoutedConflict,
    RoutedInfo,
    deadline_ms,
    evict_at_ms,
    is_evictable,
    on_confirmation,
    on_routed,
    on_tick,
)

PID = "pay-1"
CHANNEL = "alipay"
AMOUNT = 1_000
CURRENCY = "CNY"
SLA_MS = 50
GRACE_MS = 30
RETAIN_MS = 1_000
POLICY = ReconPolicy({CHANNEL: SLA_MS, "card": 999}, 77, GRACE_MS, RETAIN_MS)
ROUTED = RoutedInfo(PID, "m-1", CHANNEL, AMOUNT, CURRENCY, created_at_ms=0, routed_at_ms=0)


def conf(cid: str, kind: str = "ok") -> Confirmation:
    """A confirmation of a kind: ok, declined, amount, currency or channel (wrong channel)."""
    return Confirmation(
        confirmation_id=cid,
        channel="card" if kind == "channel" else CHANNEL,
        channel_txn_id=f"txn-{cid}",
        payment_id=PID,
        status=FAILED if kind == "declined" else SUCCEEDED,
        # A decline carrying a wrong amount is still a decline.
        amount_minor=AMOUNT + 1 if kind in ("amount", "declined") else AMOUNT,
        currency="USD" if kind == "currency" else CURRENCY,
        confirmed_at_ms=0,
    )


def outcomes(results: list[ResultRecord]) -> list[str]:
    return [r.outcome for r in results]


def routed_state(now_ms: int = 0) -> ReconState:
    state, results = on_routed(None, ROUTED, now_ms)
    assert results == []
    return state


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        ("ok", MATCHED),
        ("declined", DECLINED),
        ("amount", AMOUNT_MISMATCH),
        ("currency", CURRENCY_MISMATCH),
    ],
)
def test_first_confirmation_decides(kind: str, outcome: str) -> None:
    state, results = on_confirmation(routed_state(), conf("c1", kind), 10)
    assert outcomes(results) == [outcome]
    (record,) = results
    assert record.result_id == f"{PID}:{outcome}:c1"
    assert record.terminal and not record.late
    assert (record.merchant_id, record.channel, record.created_at_ms) == ("m-1", CHANNEL, 0)
    assert (record.expected_amount_minor, record.expected_currency) == (AMOUNT, CURRENCY)
    assert record.channel_txn_id == "txn-c1" and record.decided_at_ms == 10
    assert state.outcome == outcome and state.decided_at_ms == 10 and state.decided_by == "c1"
    assert deadline_ms(state, POLICY) is None


def test_redelivery_is_a_no_op_and_another_id_is_a_duplicate() -> None:
    state, _ = on_confirmation(routed_state(), conf("c1"), 10)
    assert on_confirmation(state, conf("c1"), 11) == (state, [])
    state, results = on_confirmation(state, conf("c2", "declined"), 12)
    assert outcomes(results) == [DUPLICATE_CONFIRMATION]
    assert results[0].result_id == f"{PID}:DUPLICATE_CONFIRMATION:c2"
    assert not results[0].terminal
    assert state.outcome == MATCHED


def test_confirmations_before_the_payment_are_held() -> None:
    state, results = on_confirmation(None, conf("c1", "amount"), 5)
    assert results == [] and state.routed is None and state.first_seen_ms == 5
    state, results = on_confirmation(state, conf("c2"), 6)
    assert results == []
    assert on_confirmation(state, conf("c1", "amount"), 7) == (state, [])
    state, results = on_routed(state, ROUTED, 8)
    assert outcomes(results) == [AMOUNT_MISMATCH, DUPLICATE_CONFIRMATION]
    assert [r.confirmation_id for r in results] == ["c1", "c2"]
    assert state.pending == () and state.outcome == AMOUNT_MISMATCH


def test_missing_then_late_match_exactly_once() -> None:
    state = routed_state(now_ms=0)
    assert deadline_ms(state, POLICY) == SLA_MS
    assert on_tick(state, SLA_MS - 1, POLICY) == (state, [])
    state, results = on_tick(state, SLA_MS, POLICY)
    assert outcomes(results) == [MISSING_CONFIRMATION]
    assert results[0].result_id == f"{PID}:MISSING_CONFIRMATION:-" and results[0].terminal
    assert on_tick(state, 10 * SLA_MS, POLICY) == (state, [])

    state, results = on_confirmation(state, conf("c1"), 100)
    (record,) = results
    assert (record.outcome, record.terminal, record.late) == (MATCHED, True, True)
    assert state.outcome == MATCHED and state.late_matched and state.decided_at_ms == 100
    assert on_confirmation(state, conf("c1"), 101) == (state, [])
    state, results = on_confirmation(state, conf("c2"), 102)
    assert outcomes(results) == [DUPLICATE_CONFIRMATION]


def test_late_non_match_is_recorded_and_decides_the_late_fate() -> None:
    state, _ = on_tick(routed_state(), SLA_MS, POLICY)
    state, results = on_confirmation(state, conf("c1", "declined"), 100)
    (record,) = results
    assert (record.outcome, record.terminal, record.late) == (LATE_CONFIRMATION, False, True)
    assert "DECLINED" in record.detail
    assert state.outcome == MISSING_CONFIRMATION
    state, results = on_confirmation(state, conf("c2"), 101)
    assert outcomes(results) == [DUPLICATE_CONFIRMATION]
    assert state.outcome == MISSING_CONFIRMATION


def test_orphan_then_payment_arrives() -> None:
    state, _ = on_confirmation(None, conf("c1"), 100)
    assert deadline_ms(state, POLICY) == 100 + GRACE_MS
    assert on_tick(state, 100 + GRACE_MS - 1, POLICY) == (state, [])
    state, results = on_tick(state, 100 + GRACE_MS, POLICY)
    assert outcomes(results) == [ORPHAN_CONFIRMATION]
    assert results[0].merchant_id is None and results[0].channel == CHANNEL
    assert state.orphan_declared and deadline_ms(state, POLICY) is None
    # A further confirmation after the grace period is reported at once.
    state, results = on_confirmation(state, conf("c2", "channel"), 140)
    assert [r.result_id for r in results] == [f"{PID}:ORPHAN_CONFIRMATION:c2"]
    # The payment still gets decided normally; c2 is not reported a second time.
    state, results = on_routed(state, ROUTED, 150)
    assert outcomes(results) == [MATCHED]
    assert state.outcome == MATCHED and state.orphan_declared


def test_wrong_channel_never_decides() -> None:
    state, results = on_confirmation(routed_state(), conf("c1", "channel"), 10)
    assert outcomes(results) == [ORPHAN_CONFIRMATION]
    assert results[0].channel == "card" and results[0].merchant_id == "m-1"
    assert state.outcome is None
    state, results = on_confirmation(state, conf("c2"), 11)
    assert outcomes(results) == [MATCHED]


def test_routed_redelivery_and_conflict() -> None:
    state = routed_state()
    assert on_routed(state, ROUTED, 5) == (state, [])
    with pytest.raises(RoutedConflict):
        on_routed(state, replace(ROUTED, amount_minor=AMOUNT + 1), 5)
    with pytest.raises(ReconError):
        on_confirmation(state, replace(conf("c1"), payment_id="other"), 5)


def test_sla_starts_no_earlier_than_we_saw_the_payment() -> None:
    # After an outage the routed record is old; its answer may still be in our backlog.
    state = routed_state(now_ms=10_000)
    assert deadline_ms(state, POLICY) == 10_000 + SLA_MS
    card = replace(ROUTED, channel="card", routed_at_ms=20_000)
    assert deadline_ms(on_routed(None, card, 10_000)[0], POLICY) == 20_000 + 999
    other = replace(ROUTED, channel="wechat_pay")
    assert deadline_ms(on_routed(None, other, 0)[0], POLICY) == 77


def test_eviction() -> None:
    state = routed_state()
    assert evict_at_ms(state, POLICY) is None and not is_evictable(state, 10**12, POLICY)
    state, _ = on_confirmation(state, conf("c1"), 10)
    assert evict_at_ms(state, POLICY) == 10 + RETAIN_MS
    assert not is_evictable(state, 10 + RETAIN_MS - 1, POLICY)
    assert is_evictable(state, 10 + RETAIN_MS, POLICY)
    # The trade-off: once evicted, a further confirmation is just held, then an orphan.
    state, results = on_confirmation(None, conf("c2"), 2_000)
    assert results == []
    state, results = on_tick(state, 2_000 + GRACE_MS, POLICY)
    assert outcomes(results) == [ORPHAN_CONFIRMATION]
    assert evict_at_ms(state, POLICY) == 2_000 + GRACE_MS + RETAIN_MS
    held, _ = on_confirmation(None, conf("c3"), 0)
    assert evict_at_ms(held, POLICY) is None


def test_seen_ids_are_bounded() -> None:
    state, _ = on_confirmation(routed_state(), conf("c0"), 1)
    for i in range(1, 3 * SEEN_CONFIRMATION_IDS_MAX):
        state, results = on_confirmation(state, conf(f"c{i}"), 1)
        assert outcomes(results) == [DUPLICATE_CONFIRMATION]
    assert len(state.seen_confirmation_ids) == SEEN_CONFIRMATION_IDS_MAX
    # The deciding confirmation is remembered outside the bounded list.
    assert on_confirmation(state, conf("c0"), 2) == (state, [])


def test_state_round_trips_through_json() -> None:
    state, _ = on_confirmation(None, conf("c1"), 1)
    state, _ = on_confirmation(state, conf("c2", "amount"), 2)
    state, _ = on_tick(state, 1 + GRACE_MS, POLICY)
    for step in (state, on_routed(state, ROUTED, 40)[0]):
        data = json.loads(json.dumps(step.to_dict()))
        assert ReconState.from_dict(data) == step
    with pytest.raises(ReconError):
        ReconState.from_dict(dict(state.to_dict(), v=2))
    with pytest.raises(ReconError):
        ReconState.from_dict(dict(state.to_dict(), surprise=1))


def test_invariants_are_enforced() -> None:
    decided, (record,) = on_confirmation(routed_state(), conf("c1"), 10)
    with pytest.raises(ReconInvariantError):
        recon._set_outcome(decided, DECLINED, 11)
    missing, _ = on_tick(routed_state(), SLA_MS, POLICY)
    late, _ = on_confirmation(missing, conf("c1"), 60)
    with pytest.raises(ReconInvariantError):
        recon._set_outcome(late, MATCHED, 61)
    with pytest.raises(ReconInvariantError):
        replace(record, confirmed_amount_minor=AMOUNT + 1)
    with pytest.raises(ReconInvariantError):
        replace(record, result_id="something-else")
    with pytest.raises(ReconInvariantError):
        replace(record, terminal=False)
    with pytest.raises(ReconInvariantError):
        replace(decided, missing_declared=True)
    with pytest.raises(ReconInvariantError):
        replace(decided, pending=(conf("c9"),))
    with pytest.raises(ReconInvariantError):
        ReconState(PID, 0, outcome=MATCHED, decided_at_ms=1)
    assert ResultRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize(
    "change",
    [
        {"status": "PENDING"},
        {"amount_minor": -1},
        {"amount_minor": True},
        {"confirmation_id": ""},
        {"confirmed_at_ms": 1.5},
    ],
)
def test_confirmation_rules(change: dict[str, Any]) -> None:
    with pytest.raises(ReconError):
        replace(conf("c1"), **change)


def test_routed_and_policy_rules() -> None:
    with pytest.raises(ReconError):
        replace(ROUTED, amount_minor=0)
    with pytest.raises(ReconError):
        replace(ROUTED, merchant_id="")
    with pytest.raises(ReconError):
        ReconPolicy({"alipay": 0}, 1, 1, 0)
    with pytest.raises(ReconError):
        ReconPolicy({}, 1, 1, -1)
    with pytest.raises(ReconError):
        ReconPolicy({}, True, 1, 0)


# --- property test against a reference model -----------------------------------------------

KIND_OUTCOME = {
    "ok": MATCHED,
    "declined": DECLINED,
    "amount": AMOUNT_MISMATCH,
    "currency": CURRENCY_MISMATCH,
}
Event = tuple[str, Confirmation | None]


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[int, Event]]:
    kinds = draw(st.lists(st.sampled_from([*KIND_OUTCOME, "channel"]), max_size=5))
    events: list[Event] = [("routed", None)] * draw(st.integers(1, 2))
    for i, kind in enumerate(kinds):
        events += [("conf", conf(f"c{i}", kind))] * draw(st.integers(1, 3))
    events += [("tick", None)] * draw(st.integers(0, 4))
    ordered = draw(st.permutations(events))
    n = len(ordered)
    gaps = draw(st.lists(st.sampled_from([0, 1, 7, 29, 60]), min_size=n, max_size=n))
    if draw(st.booleans()):
        # Bias towards the rare shape "routed, SLA passes, then the answers": late paths.
        ordered.remove(("routed", None))
        ordered[:0] = [("routed", None), ("tick", None)]
        gaps[:0] = [0, SLA_MS]
    now_ms, timed = 0, []
    for gap, event in zip(gaps, ordered, strict=False):
        now_ms += gap
        timed.append((now_ms, event))
    return timed


def run(timed: list[tuple[int, Event]]) -> tuple[ReconState, list[ResultRecord]]:
    state: ReconState | None = None
    results: list[ResultRecord] = []
    final_ms = (timed[-1][0] if timed else 0) + 10 * (SLA_MS + GRACE_MS)
    for now_ms, (kind, confirmation) in [*timed, (final_ms, ("tick", None))]:
        if kind == "routed":
            state, out = on_routed(state, ROUTED, now_ms)
        elif kind == "conf":
            assert confirmation is not None
            state, out = on_confirmation(state, confirmation, now_ms)
        elif state is not None:  # the agent only ticks payments it has state for
            state, out = on_tick(state, now_ms, POLICY)
        else:
            continue
        results += out
        # What the agent does: store the state in a changelogged table and read it back.
        state = ReconState.from_dict(json.loads(json.dumps(state.to_dict())))
        check_deadline(state, now_ms)
    assert state is not None
    return state, results


def check_deadline(state: ReconState, now_ms: int) -> None:
    """deadline_ms is exact: a tick before it changes nothing, a tick at it does."""
    deadline = deadline_ms(state, POLICY)
    if deadline is None:
        assert on_tick(state, now_ms + 10**9, POLICY) == (state, [])
    else:
        if deadline - 1 >= now_ms:
            assert on_tick(state, deadline - 1, POLICY) == (state, [])
        assert on_tick(state, max(deadline, now_ms), POLICY)[1] != []


class Expected(NamedTuple):
    terminal: list[str]  # terminal outcomes in order: one, or MISSING then a late MATCHED
    duplicates: int
    late_records: int
    orphans: set[str]


def reference(timed: list[tuple[int, Event]]) -> Expected:
    """What should happen, from first principles rather than from the state machine."""
    events = [*timed, (10**12, ("tick", None))]
    routed_at = next(i for i, (_t, (kind, _c)) in enumerate(events) if kind == "routed")
    missing_after_ms = events[routed_at][0] + SLA_MS
    first_seen: dict[str, tuple[int, Confirmation]] = {}
    for i, (_t, (kind, c)) in enumerate(events):
        if kind == "conf" and c is not None and c.confirmation_id not in first_seen:
            first_seen[c.confirmation_id] = (i, c)
    right = sorted((i, c) for i, c in first_seen.values() if c.channel == CHANNEL)
    wrong = {cid for cid, (_i, c) in first_seen.items() if c.channel != CHANNEL}
    missing_tick = next(
        i
        for i, (t, (kind, _c)) in enumerate(events)
        if kind == "tick" and i > routed_at and t >= missing_after_ms
    )
    decider = right[0] if right else None
    late_records = 0
    if decider is not None and decider[0] < missing_tick:
        terminal = [KIND_OUTCOME[kind_of(decider[1])]]
    elif decider is not None and kind_of(decider[1]) == "ok":
        terminal = [MISSING_CONFIRMATION, MATCHED]
    else:
        terminal = [MISSING_CONFIRMATION]
        late_records = int(decider is not None)
    # Orphans: every wrong-channel confirmation once; right-channel ones only if the grace
    # period ran out (on a tick) before the payment arrived.
    orphans = set(wrong)
    first_conf = min((i for i, _c in first_seen.values()), default=None)
    if first_conf is not None and first_conf < routed_at:
        first_t = events[first_conf][0]
        held_too_long = any(
            kind == "tick" and t >= first_t + GRACE_MS
            for t, (kind, _c) in events[first_conf + 1 : routed_at]
        )
        if held_too_long:
            orphans |= {c.confirmation_id for i, c in right if i < routed_at}
    return Expected(terminal, max(0, len(right) - 1), late_records, orphans)


def kind_of(c: Confirmation) -> str:
    return next(k for k in KIND_OUTCOME if conf(c.confirmation_id, k) == c)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_reconciliation_matches_reference(timed: list[tuple[int, Event]]) -> None:
    state, results = run(timed)
    expected = reference(timed)
    by_outcome = Counter(r.outcome for r in results)

    terminal = [r for r in results if r.terminal]
    assert [r.outcome for r in terminal] == expected.terminal
    assert all(r.outcome in TERMINAL_OUTCOMES for r in terminal)
    assert state.outcome == terminal[-1].outcome
    assert by_outcome[MATCHED] <= 1
    assert [r.late for r in terminal] == [False, True][: len(terminal)]
    assert by_outcome[DUPLICATE_CONFIRMATION] == expected.duplicates
    assert by_outcome[LATE_CONFIRMATION] == expected.late_records
    orphans = Counter(r.confirmation_id for r in results if r.outcome == ORPHAN_CONFIRMATION)
    assert orphans == Counter(expected.orphans)  # each orphan reported exactly once
    for r in results:
        if r.outcome == MATCHED:
            assert (r.expected_amount_minor, r.expected_currency) == (
                r.confirmed_amount_minor,
                r.confirmed_currency,
            )
    # Result ids are unique per payment and the same on a replay of the same events.
    ids = [r.result_id for r in results]
    assert len(set(ids)) == len(ids)
    assert [r.result_id for r in run(timed)[1]] == ids
