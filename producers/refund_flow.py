"""Seed-reproducible refunds for the order flow: which payments get refunds, of what, when,
and what the reconcile stage must decide for each.

A share of the valid payments the flow publishes get refunds, each refund of a payment sent
`delay_ms` after it (a refund is only accepted once its payment is MATCHED; one that arrives
earlier is rejected PAYMENT_NOT_CAPTURED, a valid but unhelpful outcome), the late scenario
`late_delay_ms` after it (past the payment's batch). Scenarios:

    full        one refund of the captured amount                     accepted
    partial     one refund of part of it                              accepted
    partials    2-3 refunds adding up to at most the captured amount  accepted each
    over        more than captured                                    REFUND_EXCEEDS_REFUNDABLE
    resend      the same refund sent twice, byte for byte             accepted, deduplicated
    conflict    the same refund_id again with another amount          accepted, DUPLICATE_CONFLICT
    race        all but one unit, then two refunds racing for it      accepted x2, EXCEEDS
    unknown     a refund of a payment_id never sent                   PAYMENT_UNKNOWN
    declined    a refund of a payment the channel declines            PAYMENT_NOT_CAPTURED
    late        one refund sent after late_delay_ms                   accepted

The expected decisions assume the payment is MATCHED when its refund arrives. Given the
channel simulator's settings (`channel`), the planner knows which payments the channel
declines (the only source of `declined`) and leaves payments it faults (missing, mismatch,
late...), reverses or may dispute (producers.dispute_flow) without refunds, so the
expectation is exact; without them, `declined` is never planned and a refund of a payment the
channel declines, faults, reverses or disputes is mis-expected.

Refund reversals: a refund the channel reverses (REVERSED after its SUCCEEDED answer) was
still accepted when requested, so it counts as accepted, and, with `channel`, also as
`reversed` (its amount in reversed_minor). A reversal makes its amount refundable again, so
a race whose accepted refunds the channel reverses does not send its racing third request
(whether it is rejected would depend on when the reversal arrives); every other scenario
decides the same whatever the timing (an identical re-send is deduplicated and a refund_id
re-used with another amount is a conflict, reversed or not).
Pure apart from the caller's clock: every choice comes from a RNG seeded by the run's seed
(its own stream, so adding refunds never changes the payments).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from producers.channels import FAULT_NONE, ChannelSimConfig, decide, decide_refund
from producers.dispute_flow import dispute_drawn
from producers.errors import SimulatorConfigError

FULL: Final = "full"
PARTIAL: Final = "partial"
PARTIALS: Final = "partials"
OVER: Final = "over"
RESEND: Final = "resend"
CONFLICT: Final = "conflict"
RACE: Final = "race"
UNKNOWN: Final = "unknown"
DECLINED: Final = "declined"
LATE: Final = "late"
SCENARIOS: Final = (FULL, PARTIAL, PARTIALS, OVER, RESEND, CONFLICT, RACE, UNKNOWN, DECLINED,
                    LATE)
# Scenarios are dealt from a shuffled deck holding each this many times, so every scenario
# shows up once every sum(weights) refunded payments, even in a small run. DECLINED is not
# dealt: a payment the channel declines gets it (0 turns it off).
DEFAULT_WEIGHTS: Final[Mapping[str, int]] = {
    FULL: 4, PARTIAL: 5, PARTIALS: 3, OVER: 1, RESEND: 1, CONFLICT: 1, RACE: 1, UNKNOWN: 1,
    LATE: 3, DECLINED: 1,
}

# What the reconcile stage does with each refund request.
ACCEPTED: Final = "accepted"  # routed to the channel (refunds.routed)
REJECTED: Final = "rejected"  # refunds.rejected with `reason`
DEDUPLICATED: Final = "deduplicated"  # an identical re-send, dropped and counted
REFUND_OUTCOMES: Final = (ACCEPTED, REJECTED, DEDUPLICATED)

# Reason codes of refunds.rejected (the reconcile stage's refund rules).
PAYMENT_UNKNOWN: Final = "PAYMENT_UNKNOWN"
PAYMENT_NOT_CAPTURED: Final = "PAYMENT_NOT_CAPTURED"
REFUND_EXCEEDS_REFUNDABLE: Final = "REFUND_EXCEEDS_REFUNDABLE"
DUPLICATE_CONFLICT: Final = "DUPLICATE_CONFLICT"


@dataclass(frozen=True, slots=True)
class RefundMix:
    """How many refunds, of what kind, and when (ratio: share of valid payments refunded)."""

    ratio: float = 0.03
    delay_ms: int = 5_000
    # 0 leaves out the late scenario (a run then ends delay_ms after its last payment).
    late_delay_ms: int = 0
    weights: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    # The channel simulator's settings, to know which payments it declines or faults.
    channel: ChannelSimConfig | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise SimulatorConfigError(f"refund ratio must lie in [0, 1], got {self.ratio}")
        if self.delay_ms < 0 or self.late_delay_ms < 0:
            raise SimulatorConfigError("refund delays must be >= 0")
        unknown = sorted(set(self.weights) - set(SCENARIOS))
        if unknown:
            raise SimulatorConfigError(f"unknown refund scenario(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(SCENARIOS)}")
        if any(w < 0 for w in self.weights.values()):
            raise SimulatorConfigError("refund scenario weights must be >= 0")

    def drawable(self) -> dict[str, int]:
        """The scenarios drawn for a payment the channel captures (declined is not drawn: it
        follows from the channel's decision)."""
        return {s: w for s, w in self.weights.items()
                if w > 0 and s != DECLINED and (s != LATE or self.late_delay_ms > 0)}


@dataclass(frozen=True, slots=True)
class PlannedRefund:
    """One RefundRequested to send at `due_ms` and what the reconcile stage must decide.

    `record` lacks requested_at (stamped at send time); a re-send (`same_as`: the seq of the
    request it repeats) is sent as the very record sent then. `reversed`: an accepted refund
    the channel will reverse (known only from the channel's settings).
    """

    seq: int
    due_ms: int
    scenario: str
    record: dict[str, Any]
    expected: str
    reason: str | None = None
    same_as: int | None = None
    reversed: bool = False

    @property
    def key(self) -> str:
        return str(self.record["payment_id"])


@dataclass(slots=True)
class RefundAccounting:
    """Refund requests sent, by scenario, and what the reconcile stage must do with them."""

    count: int = 0
    scenarios: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    accepted_minor: Counter[str] = field(default_factory=Counter)  # per currency
    by_scenario_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Accepted refunds the channel will reverse (among `accepted`), and their amounts.
    reversed: int = 0
    reversed_minor: Counter[str] = field(default_factory=Counter)  # per currency

    def add(self, refund: PlannedRefund) -> None:
        self.count += 1
        self.scenarios[refund.scenario] += 1
        self.outcomes[refund.expected] += 1
        self.by_scenario_outcome[(refund.scenario, refund.expected)] += 1
        if refund.reason is not None:
            self.reasons[refund.reason] += 1
        if refund.expected == ACCEPTED:
            self.accepted_minor[str(refund.record["currency"])] += int(
                refund.record["amount_minor"])
            if refund.reversed:
                self.reversed += 1
                self.reversed_minor[str(refund.record["currency"])] += int(
                    refund.record["amount_minor"])

    @property
    def balanced(self) -> bool:
        return sum(self.outcomes[o] for o in REFUND_OUTCOMES) == self.count

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            **{outcome: self.outcomes[outcome] for outcome in REFUND_OUTCOMES},
            "scenarios": dict(sorted(self.scenarios.items())),
            "by_scenario": {
                scenario: {o: self.by_scenario_outcome[(scenario, o)] for o in REFUND_OUTCOMES
                           if self.by_scenario_outcome[(scenario, o)]}
                for scenario in sorted(self.scenarios)
            },
            "reasons": dict(sorted(self.reasons.items())),
            "accepted_minor_by_currency": dict(sorted(self.accepted_minor.items())),
            "reversed": self.reversed,
            "reversed_minor_by_currency": dict(sorted(self.reversed_minor.items())),
        }


class RefundPlanner:
    """Plans refunds for the payments a run publishes and hands them out when due."""

    def __init__(self, seed: int, mix: RefundMix) -> None:
        self.seed = seed
        self.mix = mix
        self.rng = random.Random(f"refunds-{seed}")
        self._drawable = mix.drawable()
        self._deck: list[str] = []
        self._heap: list[tuple[int, int, PlannedRefund]] = []
        self._seq = 0
        self._ids = 0
        self.planned = RefundAccounting()
        self.payments: Counter[str] = Counter()  # payments given each scenario

    def __len__(self) -> int:
        return len(self._heap)

    def next_due_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now_ms: int) -> list[PlannedRefund]:
        """Every planned refund due at `now_ms`, in plan order."""
        out = []
        while self._heap and self._heap[0][0] <= now_ms:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def drain(self) -> list[PlannedRefund]:
        """Every refund still planned (a dry run, or a run that stops waiting)."""
        out = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        return out

    def on_payment(self, payment: Mapping[str, Any], sent_ms: int) -> None:
        """Perhaps plan refunds for a valid payment just published at `sent_ms`."""
        if self.mix.ratio <= 0:
            return
        payment_id = str(payment["payment_id"])
        channel = self.mix.channel
        scenario = None
        if channel is not None:
            decision = decide(payment_id, channel)
            if decision.declined:
                if self.mix.weights.get(DECLINED, 0) > 0 and self.rng.random() < self.mix.ratio:
                    scenario = DECLINED
                else:
                    return
            elif decision.fault != FAULT_NONE:
                return  # not MATCHED on time: its refunds' fate depends on timing
            elif decision.reversed:
                return  # reversed: its refunds would race the reversal
            elif dispute_drawn(channel.seed, payment_id, channel.disputes):
                return  # perhaps disputed: its refunds would race the dispute
        if scenario is None:
            if not self._drawable or self.rng.random() >= self.mix.ratio:
                return
            if not self._deck:
                self._deck = [name for name, weight in self._drawable.items()
                              for _ in range(weight)]
                self.rng.shuffle(self._deck)
            scenario = self._deck.pop()
        self.payments[scenario] += 1
        refunds = self._plan(scenario, payment, sent_ms)
        if channel is not None:
            refunds = self._with_reversals(refunds, channel)
        for refund in refunds:
            self.planned.add(refund)
            heapq.heappush(self._heap, (refund.due_ms, refund.seq, refund))

    @staticmethod
    def _with_reversals(refunds: list[PlannedRefund], channel: ChannelSimConfig
                        ) -> list[PlannedRefund]:
        """Mark the accepted refunds the channel will reverse; a race with one drops its
        racing request (the reversal would make the unit refundable again)."""
        out = [replace(r, reversed=True) if r.expected == ACCEPTED and decide_refund(
                   r.key, str(r.record["refund_id"]), channel).reversed else r
               for r in refunds]
        if any(r.reversed for r in out) and out[0].scenario == RACE:
            out = [r for r in out if r.expected == ACCEPTED]
        return out

    def _refund_id(self) -> str:
        self._ids += 1
        return f"rf-{self.seed}-{self._ids:07d}"

    def _make(self, scenario: str, payment: Mapping[str, Any], due_ms: int, amount: int,
              expected: str, reason: str | None = None, refund_id: str | None = None,
              payment_id: str | None = None, same_as: int | None = None) -> PlannedRefund:
        self._seq += 1
        record = {
            "refund_id": refund_id or self._refund_id(),
            "payment_id": payment_id or str(payment["payment_id"]),
            "merchant_id": payment["merchant_id"],
            "amount_minor": amount,
            "currency": payment["currency"],
            "reason": f"simulated {scenario} refund",
            "metadata": {"source": "settle-simulate", "scenario": scenario},
        }
        return PlannedRefund(self._seq, due_ms, scenario, record, expected, reason, same_as)

    def _plan(self, scenario: str, payment: Mapping[str, Any], sent_ms: int
              ) -> list[PlannedRefund]:
        rng, captured = self.rng, int(payment["amount_minor"])
        due = sent_ms + self.mix.delay_ms
        make = self._make

        def part(upper: int) -> int:
            return 1 + rng.randrange(max(1, upper - 1)) if upper > 1 else 1

        if scenario == FULL:
            return [make(FULL, payment, due, captured, ACCEPTED)]
        if scenario == PARTIAL:
            return [make(PARTIAL, payment, due, part(captured), ACCEPTED)]
        if scenario == LATE:
            return [make(LATE, payment, sent_ms + self.mix.late_delay_ms,
                         rng.choice((captured, part(captured))), ACCEPTED)]
        if scenario == PARTIALS:
            pieces, left = [], captured
            for _ in range(rng.choice((2, 3))):
                if left <= 0:
                    break
                amount = part(left) if left > 1 else 1
                pieces.append(amount)
                left -= amount
            # Spread over a second so they arrive one by one.
            return [make(PARTIALS, payment, due + 300 * n, amount, ACCEPTED)
                    for n, amount in enumerate(pieces)]
        if scenario == OVER:
            over = captured + 1 + rng.randrange(max(1, captured // 10))
            return [make(OVER, payment, due, over, REJECTED, REFUND_EXCEEDS_REFUNDABLE)]
        if scenario == RESEND:
            first = make(RESEND, payment, due, part(captured), ACCEPTED)
            again = make(RESEND, payment, due, int(first.record["amount_minor"]), DEDUPLICATED,
                         refund_id=str(first.record["refund_id"]), same_as=first.seq)
            return [first, again]
        if scenario == CONFLICT:
            amount = part(captured) if captured > 1 else 1
            first = make(CONFLICT, payment, due, amount, ACCEPTED)
            other = amount - 1 if amount > 1 else amount + 1
            return [first, make(CONFLICT, payment, due, other, REJECTED, DUPLICATE_CONFLICT,
                                refund_id=str(first.record["refund_id"]))]
        if scenario == RACE:
            out = []
            if captured > 1:
                out.append(make(RACE, payment, due, captured - 1, ACCEPTED))
            out.append(make(RACE, payment, due, 1, ACCEPTED))
            out.append(make(RACE, payment, due, 1, REJECTED, REFUND_EXCEEDS_REFUNDABLE))
            return out
        if scenario == UNKNOWN:
            return [make(UNKNOWN, payment, due, part(captured), REJECTED, PAYMENT_UNKNOWN,
                         payment_id=f"{payment['payment_id']}-never-sent")]
        if scenario == DECLINED:
            return [make(DECLINED, payment, due, captured, REJECTED, PAYMENT_NOT_CAPTURED)]
        raise ValueError(f"unknown refund scenario {scenario!r}")
