"""Seed-reproducible order flow: valid payments plus injected duplicates, conflicts and bad input.

`generate_orders` is pure apart from the injected clock: the same seed, count, merchants and
mix give the same sequence of orders (created_at aside), and every order says what it is and
where the pipeline must put it, so a run's expected accounting is known before it starts.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from producers.clients import wall_clock_ms
from producers.errors import SimulatorConfigError
from producers.market import (
    DEFAULT_MARKET,
    Market,
    pick,
    probe_request,
    routable_methods,
    unroutable_combos,
    zipf_weights,
)
from producers.order_faults import (
    BAD_KINDS,
    BAD_REASONS,
    GARBAGE_ERRORS,
    GARBAGE_KINDS,
    INJECTED_KINDS,
    FaultContext,
    applicable_bad_kinds,
    make_bad,
    make_garbage,
)
from settlement.model import MERCHANT_ACTIVE, MERCHANT_SUSPENDED
from settlement.routing import DEFAULT_TABLE, RoutingTable
from settlement.signing import Keyring
from settlement.validation import DUPLICATE_CONFLICT, ValidationPolicy

__all__ = [
    "BAD_KINDS",
    "CONFLICT",
    "DEAD_LETTERED",
    "DEDUPLICATED",
    "DUPLICATE",
    "GARBAGE_KINDS",
    "INJECTED_KINDS",
    "OUTCOMES",
    "REJECTED",
    "ROUTED",
    "VALID",
    "Accounting",
    "OrderMix",
    "SimulatedOrder",
    "expected_accounting",
    "generate_orders",
]

VALID: Final = "valid"
DUPLICATE: Final = "dup"
CONFLICT: Final = "conflict"

# Where the validate+route stage must put each input (design guarantee 1).
ROUTED: Final = "routed"
REJECTED: Final = "rejected"
DEAD_LETTERED: Final = "dead_lettered"
DEDUPLICATED: Final = "deduplicated"
OUTCOMES: Final = (ROUTED, REJECTED, DEAD_LETTERED, DEDUPLICATED)


class MerchantLike(Protocol):
    @property
    def merchant_id(self) -> str: ...

    @property
    def status(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SimulatedOrder:
    """One record to publish to payments.requested and what the pipeline must make of it.

    Exactly one of `record` (a PaymentRequested dict, amounts in int minor units, created_at
    in int epoch ms) and `raw` (wire bytes published as they are) is set. `reason` is the
    rejection reason code (or dead-letter error type) the pipeline should report.
    """

    index: int
    kind: str
    payment_id: str
    expected: str
    record: dict[str, Any] | None = None
    raw: bytes | None = None
    reason: str | None = None
    channel: str | None = None
    original_index: int | None = None

    @property
    def key(self) -> str:
        return self.payment_id


@dataclass(frozen=True, slots=True)
class OrderMix:
    """What to inject besides valid payments, and the rules that decide validity.

    Ratios are fractions of `count`. `schema_id` is the registry id of the payments.requested
    value schema: garbage built from a real body (truncated, bad magic) carries it so only the
    intended defect makes it undecodable.
    """

    bad_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    conflict_ratio: float = 0.0
    bad_kinds: tuple[str, ...] = INJECTED_KINDS
    schema_id: int = 1
    unknown_schema_id: int = 999_999
    market: Market = DEFAULT_MARKET
    routing: RoutingTable = DEFAULT_TABLE
    policy: ValidationPolicy = field(default_factory=ValidationPolicy)
    # Duplicates and conflicts re-use one of the latest this-many valid payments.
    recent_max: int = 10_000
    # The run's signing keyring: with one, the signature fault kinds are injected too (the
    # producer signs every other request on send). None: signatures are not enforced.
    keyring: Keyring | None = None

    def __post_init__(self) -> None:
        for name in ("bad_ratio", "duplicate_ratio", "conflict_ratio"):
            ratio = getattr(self, name)
            if not 0.0 <= ratio <= 1.0:
                raise SimulatorConfigError(f"{name} must lie in [0, 1], got {ratio}")
        if self.bad_ratio + self.duplicate_ratio + self.conflict_ratio > 1.0:
            raise SimulatorConfigError("bad, duplicate and conflict ratios add up to more than 1")
        unknown = sorted(set(self.bad_kinds) - set(INJECTED_KINDS))
        if unknown:
            raise SimulatorConfigError(
                f"unknown bad kind(s) {', '.join(unknown)}; known: {', '.join(INJECTED_KINDS)}"
            )
        if self.schema_id == self.unknown_schema_id:
            raise SimulatorConfigError("unknown_schema_id must differ from schema_id")
        if self.recent_max < 1:
            raise SimulatorConfigError("recent_max must be at least 1")


@dataclass(slots=True)
class Accounting:
    """Expected fate of a run's records: in = routed + rejected + dead_lettered + deduplicated."""

    count: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, order: SimulatedOrder) -> None:
        self.count += 1
        self.outcomes[order.expected] += 1
        self.kinds[order.kind] += 1
        if order.channel is not None:
            self.channels[order.channel] += 1
        if order.reason is not None:
            self.reasons[order.reason] += 1

    def __getitem__(self, outcome: str) -> int:
        return self.outcomes[outcome]

    @property
    def balanced(self) -> bool:
        return sum(self.outcomes[o] for o in OUTCOMES) == self.count

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, e.g. for an end-to-end test's oracle file."""
        return {
            "count": self.count,
            **{outcome: self.outcomes[outcome] for outcome in OUTCOMES},
            "kinds": dict(sorted(self.kinds.items())),
            "routed_by_channel": dict(sorted(self.channels.items())),
            "reasons": dict(sorted(self.reasons.items())),
        }


def expected_accounting(orders: Iterable[SimulatedOrder]) -> Accounting:
    """Sum what the pipeline must do with these orders."""
    accounting = Accounting()
    for order in orders:
        accounting.add(order)
    return accounting


class _Generator:
    """The state of one run: a seeded RNG, the market tables and the recent valid payments."""

    def __init__(
        self, seed: int, merchants: Sequence[MerchantLike], mix: OrderMix,
        clock: Callable[[], int],
    ) -> None:
        self.seed = seed
        self.mix = mix
        self.clock = clock
        self.rng = random.Random(seed)
        self.active = [m.merchant_id for m in merchants if m.status == MERCHANT_ACTIVE]
        if not self.active:
            raise SimulatorConfigError("no ACTIVE merchant to generate valid payments for")
        self.merchant_weights = zipf_weights(len(self.active))
        self.known_ids = frozenset(m.merchant_id for m in merchants)
        self.suspended = tuple(m.merchant_id for m in merchants if m.status == MERCHANT_SUSPENDED)
        self.methods = routable_methods(mix.market, mix.routing)
        # A region without any routable method would make "valid" a lie: leave it out.
        self.regions = tuple((r, w) for r, w in mix.market.regions if self.methods[r])
        if not self.regions:
            raise SimulatorConfigError("the routing table routes no method of any region")
        self.unroutable = tuple(unroutable_combos(mix.market, mix.routing))
        self.recent: deque[SimulatedOrder] = deque(maxlen=mix.recent_max)
        self.bad_cycle: list[str] = []
        self.bad_kinds = applicable_bad_kinds(mix.bad_kinds, self._context(0))
        if mix.bad_ratio > 0 and not self.bad_kinds:
            raise SimulatorConfigError(
                "none of the requested bad kinds can be built with these merchants and routing"
            )

    def _context(self, now_ms: int) -> FaultContext:
        return FaultContext(
            policy=self.mix.policy,
            now_ms=now_ms,
            known_merchant_ids=self.known_ids,
            suspended_merchant_ids=self.suspended,
            unroutable=self.unroutable,
            draw_amount_minor=self.mix.market.draw_amount_minor,
            schema_id=self.mix.schema_id,
            unknown_schema_id=self.mix.unknown_schema_id,
            keyring=self.mix.keyring,
        )

    def _request(self, index: int, now_ms: int) -> dict[str, Any]:
        """A request every rule accepts: ACTIVE merchant, routable method, in-limit amount."""
        rng, market = self.rng, self.mix.market
        merchant_id = rng.choices(self.active, weights=self.merchant_weights)[0]
        region = pick(rng, self.regions)
        currency = market.currency_of(region)
        method = pick(rng, self.methods[region])
        interface = pick(rng, market.interfaces_by_method[method])
        return {
            "payment_id": f"pay-{self.seed}-{index:08d}",
            "merchant_id": merchant_id,
            "order_id": f"ord-{self.seed}-{index:08d}",
            "payer_id": f"payer-{rng.randrange(market.payer_pool):06d}",
            "amount_minor": market.draw_amount_minor(rng, currency),
            "currency": currency,
            "method": method,
            "interface": interface,
            "region": region,
            "created_at": now_ms,
            "metadata": {"source": "settle-simulate"},
        }

    def _channel(self, record: dict[str, Any]) -> str:
        request = probe_request(record["method"], record["region"], record["currency"])
        decision = self.mix.routing.route(request)
        if decision.channel is None:
            raise AssertionError(f"generated a valid request that does not route: {record}")
        return decision.channel

    def _next_bad_kind(self) -> str:
        # Cycle through every applicable kind (reshuffled per cycle), so even a small run
        # covers all of them once it has as many bad records as kinds.
        if not self.bad_cycle:
            self.bad_cycle = list(self.bad_kinds)
            self.rng.shuffle(self.bad_cycle)
        return self.bad_cycle.pop()

    def order(self, index: int) -> SimulatedOrder:
        rng, mix = self.rng, self.mix
        draw = rng.random()
        now_ms = self.clock()
        if draw < mix.bad_ratio:
            return self._bad(index, now_ms)
        draw -= mix.bad_ratio
        if self.recent and draw < mix.duplicate_ratio:
            original = self.recent[rng.randrange(len(self.recent))]
            assert original.record is not None
            return SimulatedOrder(
                index, DUPLICATE, original.payment_id, DEDUPLICATED,
                record=dict(original.record, metadata=dict(original.record["metadata"])),
                original_index=original.index,
            )
        draw -= mix.duplicate_ratio
        if self.recent and draw < mix.conflict_ratio:
            original = self.recent[rng.randrange(len(self.recent))]
            assert original.record is not None
            amount_minor = original.record["amount_minor"]
            changed = amount_minor + 1 + rng.randrange(max(1, amount_minor // 10))
            return SimulatedOrder(
                index, CONFLICT, original.payment_id, REJECTED,
                record=dict(original.record, amount_minor=changed,
                            metadata=dict(original.record["metadata"])),
                reason=DUPLICATE_CONFLICT, original_index=original.index,
            )
        record = self._request(index, now_ms)
        valid = SimulatedOrder(
            index, VALID, record["payment_id"], ROUTED, record=record,
            channel=self._channel(record),
        )
        self.recent.append(valid)
        return valid

    def _bad(self, index: int, now_ms: int) -> SimulatedOrder:
        kind = self._next_bad_kind()
        base = self._request(index, now_ms)
        ctx = self._context(now_ms)
        if kind in GARBAGE_ERRORS:
            raw = make_garbage(kind, self.rng, base, ctx)
            return SimulatedOrder(
                index, kind, base["payment_id"], DEAD_LETTERED, raw=raw,
                reason=GARBAGE_ERRORS[kind],
            )
        make_bad(kind, self.rng, base, ctx)
        return SimulatedOrder(
            index, kind, base["payment_id"], REJECTED, record=base, reason=BAD_REASONS[kind]
        )


def generate_orders(
    seed: int,
    count: int,
    merchants: Sequence[MerchantLike],
    mix: OrderMix | None = None,
    clock: Callable[[], int] = wall_clock_ms,
) -> Iterator[SimulatedOrder]:
    """Yield `count` orders, reproducible from `seed`; created_at comes from `clock` (epoch ms).

    Valid payments use only ACTIVE merchants and method/region/currency combinations the
    routing table routes. A duplicate re-sends an earlier valid payment byte for byte; a
    conflict re-uses its payment_id with a larger amount. payment_id is
    f"pay-{seed}-{index:08d}", so rerunning a seed republishes the same ids (as conflicts,
    since created_at moves on): use a fresh seed for fresh traffic.
    """
    if count < 0:
        raise SimulatorConfigError(f"count must be >= 0, got {count}")
    # Built here, not inside a generator body, so a bad mix fails at the call, not at next().
    generator = _Generator(seed, merchants, mix or OrderMix(), clock)
    return (generator.order(index) for index in range(count))
