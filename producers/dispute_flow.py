"""Simulated disputes (chargebacks): which captured card and UnionPay payments a payer disputes,
and the ChannelDispute records the channel publishes about each, when.

Pure: every choice is a function of (seed, payment_id) through SHA-256, never of RNG state or
arrival order, so a replay plans the same records with the same event ids (a re-sent record is
ignored downstream as a redelivery).

A share (`rate`) of the payments the channel answered SUCCEEDED without a fault and does not
reverse is disputed, on the channels in `channels`. Each dispute is a short story:

    [PRE_DISPUTE OPENED ->] DISPUTE OPENED [-> PRE_ARBITRATION OPENED] -> decision

`open_delay_ms` after the SUCCEEDED answer (a `late_share` of them `late_open_ms` after it
instead: after the payment's settlement batch has closed), each further stage `stage_gap_ms`
later, the decision `decide_delay_ms` after the last stage. Decisions: WON, LOST (the fee
charged), ACCEPTED (the merchant gives in; no fee), EXPIRED (no answer in time; the fee
charged), CANCELLED (the payer withdraws it). The amount is the payment's (a `partial_share`
dispute part of it); the channel withdraws the funds at once on a `withdrawn_share`, the same
on every record of one dispute. A `redelivery_share` of disputes get their first record sent
twice (same event_id).

Payments with refunds planned by the order flow: refund_flow leaves every payment this module
may dispute without refunds (`dispute_drawn`), so no refund races a dispute for the money.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from producers.errors import SimulatorConfigError
from settlement.currencies import exponent, is_known
from settlement.disputes import (
    ACCEPTED,
    CANCELLED,
    DISPUTE,
    EVENT_LOST,
    EVENT_OPENED,
    EVENT_REJECTED,
    EVENT_STAGE_CHANGED,
    EVENT_WON,
    EXPIRED,
    LOST,
    LOST_STATUSES,
    OPENED,
    PRE_ARBITRATION,
    PRE_DISPUTE,
    WON,
)

DAY_MS: Final = 86_400_000
DECISIONS: Final = (WON, LOST, ACCEPTED, EXPIRED, CANCELLED)
# The decisions that charge the channel's dispute fee (ACCEPTED: the merchant gave in before
# the channel reviewed it; the simulated channel waives the fee then).
FEE_CHARGED: Final = frozenset({LOST, EXPIRED})
DEFAULT_DECISION_WEIGHTS: Final[Mapping[str, int]] = {
    WON: 4, LOST: 3, ACCEPTED: 2, EXPIRED: 1, CANCELLED: 1,
}
DISPUTED_CHANNELS: Final = ("CARD", "UNIONPAY")
# Reason codes as each channel reports them: card, Visa's dispute conditions (fraud, not
# received, cancelled, not as described, duplicate); UnionPay, four-digit codes of its kind
# (its full list is not public: these stand in for them).
REASON_CODES: Final[Mapping[str, tuple[str, ...]]] = {
    "CARD": ("10.4", "13.1", "13.2", "13.3", "12.6.1"),
    "UNIONPAY": ("4514", "4515", "4526", "4527", "4562"),
}
# The channel's dispute fee in major units of the payment's currency.
FEE_MAJOR: Final[Mapping[str, int]] = {
    "USD": 15, "EUR": 15, "HKD": 120, "CNY": 100, "JPY": 2000, "KWD": 5,
}
FEE_MAJOR_DEFAULT: Final = 15
_ID_PREFIX: Final = {"CARD": "CB", "UNIONPAY": "UPD"}
_U64: Final = 2**64


@dataclass(frozen=True, slots=True)
class DisputeSimConfig:
    """How often and how the simulated channels dispute captured payments (rate 0: never)."""

    rate: float = 0.02
    channels: tuple[str, ...] = DISPUTED_CHANNELS
    open_delay_ms: int = 2_000
    stage_gap_ms: int = 1_000
    decide_delay_ms: int = 3_000
    late_share: float = 0.25
    late_open_ms: int = 12_000
    withdrawn_share: float = 0.5
    partial_share: float = 0.2
    pre_dispute_share: float = 0.2
    pre_arbitration_share: float = 0.1
    redelivery_share: float = 0.1
    # A channel that later contradicts its own decision (won after lost, lost after won):
    # the stage must refuse it (DISPUTE_ALREADY_CLOSED) and open an exception case.
    contradiction_share: float = 0.1
    respond_by_days: int = 7
    decision_weights: Mapping[str, int] = field(
        default_factory=lambda: dict(DEFAULT_DECISION_WEIGHTS))

    def __post_init__(self) -> None:
        for name in ("rate", "late_share", "withdrawn_share", "partial_share",
                     "pre_dispute_share", "pre_arbitration_share", "redelivery_share",
                     "contradiction_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise SimulatorConfigError(f"dispute {name} must lie in [0, 1], got {share}")
        for name in ("open_delay_ms", "stage_gap_ms", "decide_delay_ms", "late_open_ms",
                     "respond_by_days"):
            if getattr(self, name) < 0:
                raise SimulatorConfigError(f"dispute {name} must be >= 0")
        channels = tuple(c.upper() for c in self.channels)
        unknown = sorted(set(channels) - set(DISPUTED_CHANNELS))
        if unknown:
            raise SimulatorConfigError(f"disputes on {', '.join(unknown)}: only "
                                       f"{', '.join(DISPUTED_CHANNELS)} have chargebacks here")
        object.__setattr__(self, "channels", channels)
        unknown = sorted(set(self.decision_weights) - set(DECISIONS))
        if unknown:
            raise SimulatorConfigError(f"unknown dispute decision(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(DECISIONS)}")
        weights = {d: self.decision_weights.get(d, 0) for d in DECISIONS}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise SimulatorConfigError("dispute decision weights must be >= 0, one of them > 0")
        object.__setattr__(self, "decision_weights", weights)


@dataclass(frozen=True, slots=True)
class DisputeStory:
    """What happens to one disputed payment, before any record is built."""

    dispute_id: str
    channel_dispute_id: str
    amount_minor: int
    funds_withdrawn: bool
    fee_minor: int
    reason_code: str
    stages: tuple[str, ...]
    decision: str
    late: bool
    redelivered: bool
    contradicted: bool = False


@dataclass(frozen=True, slots=True)
class PlannedDispute:
    """A ChannelDispute to publish at `due_ms` (the heap of the simulator holds these beside
    the confirmations)."""

    due_ms: int
    record: dict[str, Any]
    redelivery: bool = False

    @property
    def key(self) -> str:
        return str(self.record["payment_id"])

    @property
    def is_refund(self) -> bool:
        return False


def _digest(seed: int, payment_id: str, salt: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{payment_id}\x1f{salt}".encode()).digest()


def _unit(seed: int, payment_id: str, salt: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, payment_id, salt)."""
    return int.from_bytes(_digest(seed, payment_id, salt)[:8], "big") / _U64


def _index(seed: int, payment_id: str, salt: str, size: int) -> int:
    return int.from_bytes(_digest(seed, payment_id, salt)[:8], "big") % size


def dispute_drawn(seed: int, payment_id: str, config: DisputeSimConfig) -> bool:
    """The draw alone (whatever the channel): true for every payment that may be disputed."""
    return config.rate > 0 and _unit(seed, payment_id, "dispute") < config.rate


def dispute_id_for(payment_id: str) -> str:
    """Stable per payment (at most one simulated dispute each)."""
    return "dsp-" + hashlib.sha256(f"dispute\x1f{payment_id}".encode()).hexdigest()[:32]


def dispute_event_id(dispute_id: str, n: int) -> str:
    """The n-th record of a dispute: the same on a replay, so a re-sent record dedupes."""
    return "dev-" + hashlib.sha256(f"{dispute_id}\x1f{n}".encode()).hexdigest()[:32]


def dispute_fee_minor(currency: str) -> int:
    """The channel's fee for a lost dispute, in minor units of `currency`."""
    major = FEE_MAJOR.get(currency, FEE_MAJOR_DEFAULT)
    return major * 10 ** exponent(currency) if is_known(currency) else major


def story(seed: int, routed: Mapping[str, Any], config: DisputeSimConfig) -> DisputeStory:
    """The dispute of one payment (whether it is disputed at all is `dispute_drawn`'s)."""
    payment_id, channel = str(routed["payment_id"]), str(routed["channel"]).upper()
    amount, currency = int(routed["amount_minor"]), str(routed["currency"])
    dispute_id = dispute_id_for(payment_id)
    if amount > 1 and _unit(seed, payment_id, "dispute-partial") < config.partial_share:
        amount = 1 + _index(seed, payment_id, "dispute-amount", amount - 1)
    deck = [d for d in DECISIONS for _ in range(config.decision_weights[d])]
    decision = deck[_index(seed, payment_id, "dispute-decision", len(deck))]
    stages = [DISPUTE]
    if _unit(seed, payment_id, "dispute-pre") < config.pre_dispute_share:
        stages.insert(0, PRE_DISPUTE)
    if _unit(seed, payment_id, "dispute-arbitration") < config.pre_arbitration_share:
        stages.append(PRE_ARBITRATION)
    codes = REASON_CODES.get(channel, ("4853",))
    number = int.from_bytes(_digest(seed, payment_id, "dispute-number")[:8], "big") % 10**12
    return DisputeStory(
        dispute_id=dispute_id,
        channel_dispute_id=f"{_ID_PREFIX.get(channel, channel[:3])}{number:012d}",
        amount_minor=amount,
        funds_withdrawn=_unit(seed, payment_id, "dispute-withdrawn") < config.withdrawn_share,
        fee_minor=dispute_fee_minor(currency) if decision in FEE_CHARGED else 0,
        reason_code=codes[_index(seed, payment_id, "dispute-reason", len(codes))],
        stages=tuple(stages),
        decision=decision,
        late=_unit(seed, payment_id, "dispute-late") < config.late_share,
        redelivered=_unit(seed, payment_id, "dispute-redelivery") < config.redelivery_share,
        contradicted=(_unit(seed, payment_id, "dispute-contradiction")
                      < config.contradiction_share),
    )


def plan_disputes(routed: Mapping[str, Any], answered_ms: int, seed: int, captured: bool,
                  config: DisputeSimConfig) -> list[PlannedDispute]:
    """The ChannelDispute records for one routed payment the channel answered at
    `answered_ms`; `captured`: it was answered SUCCEEDED without a fault and is not reversed
    (only such a payment is disputed). Nothing for most payments."""
    payment_id, channel = str(routed["payment_id"]), str(routed["channel"]).upper()
    if not captured or channel not in config.channels or not dispute_drawn(
            seed, payment_id, config):
        return []
    told = story(seed, routed, config)
    at_ms = answered_ms + (config.late_open_ms if told.late else config.open_delay_ms)
    planned: list[PlannedDispute] = []

    def record(n: int, stage: str, status: str, occurred_ms: int, fee: int,
               respond_by: int | None) -> dict[str, Any]:
        return {
            "event_id": dispute_event_id(told.dispute_id, n),
            "dispute_id": told.dispute_id,
            "channel": channel,
            "channel_dispute_id": told.channel_dispute_id,
            "payment_id": payment_id,
            "stage": stage,
            "status": status,
            "amount_minor": told.amount_minor,
            "currency": str(routed["currency"]),
            "funds_withdrawn": told.funds_withdrawn,
            "fee_minor": fee,
            "reason_code": told.reason_code,
            "respond_by": respond_by,
            "occurred_at": occurred_ms,
        }

    for n, stage in enumerate(told.stages):
        if n:
            at_ms += config.stage_gap_ms
        opened = record(n, stage, OPENED, at_ms, 0, at_ms + config.respond_by_days * DAY_MS)
        planned.append(PlannedDispute(at_ms, opened))
        if n == 0 and told.redelivered:
            planned.append(PlannedDispute(at_ms + config.stage_gap_ms // 2, dict(opened),
                                          redelivery=True))
    at_ms += config.decide_delay_ms
    planned.append(PlannedDispute(at_ms, record(len(told.stages), told.stages[-1], told.decision,
                                                at_ms, told.fee_minor, None)))
    if told.contradicted:
        at_ms += config.stage_gap_ms
        other = WON if told.decision in LOST_STATUSES else LOST
        planned.append(PlannedDispute(at_ms, record(len(told.stages) + 1, told.stages[-1],
                                                    other, at_ms, 0, None)))
    return planned


def expected_dispute_events(told: DisputeStory) -> tuple[str, ...]:
    """The DisputeResult events the reconcile stage should answer a dispute's records with,
    in order (a redelivered record gets none), when the payment is MATCHED first."""
    staged = tuple(EVENT_STAGE_CHANGED for _ in told.stages[1:])
    closing = EVENT_LOST if told.decision in LOST_STATUSES else EVENT_WON
    refused = (EVENT_REJECTED,) if told.contradicted else ()
    return (EVENT_OPENED, *staged, closing, *refused)


@dataclass(slots=True)
class DisputeCounts:
    """Dispute records the simulator published: per channel, per stage/status, redeliveries."""

    opened: dict[str, int] = field(default_factory=dict)  # disputes opened, per channel
    records: dict[str, int] = field(default_factory=dict)  # per "STAGE STATUS"
    redelivered: int = 0

    def add(self, planned: PlannedDispute) -> None:
        record = planned.record
        if planned.redelivery:
            self.redelivered += 1
            return
        key = f"{record['stage']} {record['status']}"
        self.records[key] = self.records.get(key, 0) + 1
        if record["event_id"] == dispute_event_id(str(record["dispute_id"]), 0):
            channel = str(record["channel"])
            self.opened[channel] = self.opened.get(channel, 0) + 1

    @property
    def published(self) -> int:
        return sum(self.records.values()) + self.redelivered


@dataclass(slots=True)
class DisputeTally:
    """What a run's disputes should do to the books, per currency (minor units): opened
    (held), released (won or cancelled), lost for good, and the fees charged."""

    decisions: dict[str, int] = field(default_factory=dict)
    opened_minor: dict[str, int] = field(default_factory=dict)
    released_minor: dict[str, int] = field(default_factory=dict)
    lost_minor: dict[str, int] = field(default_factory=dict)
    fee_minor: dict[str, int] = field(default_factory=dict)
    contradicted: int = 0  # decisions the channel contradicts later (refused by the stage)

    def add(self, told: DisputeStory, currency: str) -> None:
        def bump(into: dict[str, int], key: str, amount: int) -> None:
            into[key] = into.get(key, 0) + amount

        bump(self.decisions, told.decision, 1)
        self.contradicted += told.contradicted
        bump(self.opened_minor, currency, told.amount_minor)
        if told.decision in LOST_STATUSES:
            bump(self.lost_minor, currency, told.amount_minor)
            bump(self.fee_minor, currency, told.fee_minor)
        else:
            bump(self.released_minor, currency, told.amount_minor)

    @property
    def disputes(self) -> int:
        return sum(self.decisions.values())


def tally_disputes(routed: Iterable[Mapping[str, Any]], seed: int,
                   captured: Callable[[str], bool], config: DisputeSimConfig) -> DisputeTally:
    """The tally of every dispute the simulator plans for these routed payments
    (`captured(payment_id)`: the channel answered it SUCCEEDED, no fault, not reversed)."""
    out = DisputeTally()
    for record in routed:
        payment_id = str(record["payment_id"])
        if plan_disputes(record, 0, seed, captured(payment_id), config):
            out.add(story(seed, record, config), str(record["currency"]))
    return out
