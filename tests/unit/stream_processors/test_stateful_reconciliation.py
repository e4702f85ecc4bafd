"""Stateful property test: the reconcile stage against a reference model, events in any order.

The machine drives the real ReconcileProcessor (Avro in, Avro out, a dict as its table, an
injected clock) with routed payments and channel confirmations that are delivered in any
order, redelivered, delayed past the channel SLA and the orphan grace, across restarts. A
plain-Python model predicts every result record, step by step; invariants that need no model
(one terminal outcome per payment, MATCHED only for equal money, no second result for a
redelivery) are checked after every step as well.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.fees import FeeSchedule
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    DECLINED,
    DUPLICATE_CONFIRMATION,
    LATE_CONFIRMATION,
    MATCHED,
    MISSING_CONFIRMATION,
    ORPHAN_CONFIRMATION,
    TERMINAL_OUTCOMES,
    ReconPolicy,
    ReconState,
    ResultRecord,
)
from stream_processors.reconcile import APPLIED, TICKED, ReconcileProcessor, ReconDecision

T0 = 1_764_000_000_000
SLA_MS = 30_000
CARD_SLA_MS = 60_000
GRACE_MS = 20_000
RETAIN_MS = 120_000
# How long after its first delivery a record may be redelivered (a replay after a crash).
# Only a routed payment needs the bound: is_evictable documents that retention must exceed
# it, because a routed payment replayed after its state was evicted would start over.
REPLAY_MS = 100_000
assert REPLAY_MS < RETAIN_MS
PARTITIONS = 2
# Few payments, many steps: the interest is in the interleavings of each payment's events.
PAYMENTS_MAX = 6
TOPICS = TopicNames()
TICKS = "settle-reconcile-ticks"
CHANNELS = ("alipay", "wechat_pay", "unionpay", "card")
FEE_BPS = {"alipay": 60, "wechat_pay": 60, "unionpay": 45, "card": 180}
FEES = FeeSchedule(FEE_BPS, 0)
POLICY = ReconPolicy({"card": CARD_SLA_MS}, SLA_MS, GRACE_MS, RETAIN_MS)
CURRENCIES = ("CNY", "JPY", "KWD")
KINDS = ("ok", "ok", "declined", "amount", "currency", "channel")  # "ok" twice: more matches
DELTAS = st.sampled_from([-5, -2, -1, 1, 2, 5])
PAYMENTS = st.fixed_dictionaries({
    "merchant": st.sampled_from(["m-1", "m-2"]),
    "currency": st.sampled_from(CURRENCIES),
    "amount_minor": st.integers(1, 10**12),
    "channel": st.sampled_from(CHANNELS),
    "routed_ago_ms": st.sampled_from([0, 0, 1_000, SLA_MS]),
    "answers": st.lists(st.tuples(st.sampled_from(KINDS), DELTAS, st.integers(1, 3)),
                        max_size=3),
})
STEPS_MS = (1, 999, 999, 5_000, 5_000, GRACE_MS - 1, GRACE_MS, SLA_MS, CARD_SLA_MS, RETAIN_MS)

Published = tuple[str, str | None, bool]  # (outcome, confirmation_id, late)


def ref_fee(channel: str, gross_minor: int) -> int:
    """The README's rule, written out again: round half up to the minor unit."""
    return (gross_minor * FEE_BPS[channel] + 5_000) // 10_000


@dataclass(frozen=True)
class Conf:
    """A confirmation as the channel sent it."""

    cid: str
    pid: str
    channel: str
    status: str
    amount_minor: int
    currency: str


@dataclass
class RefState:
    """The reference's memory of one payment (forgotten on eviction, like the table's)."""

    first_seen_ms: int
    routed_seen_ms: int | None = None
    held: list[Conf] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    orphan_declared: bool = False
    terminal: str | None = None
    decided_at_ms: int | None = None
    late_fate_decided: bool = False


@dataclass
class Payment:
    pid: str
    merchant_id: str
    currency: str
    amount_minor: int
    channel: str
    partition: int
    routed_at_ms: int
    ref: RefState | None = None
    published: list[ResultRecord] = field(default_factory=list)
    evicted: bool = False

    def sla_ms(self) -> int:
        return CARD_SLA_MS if self.channel == "card" else SLA_MS

    def classify(self, conf: Conf) -> str:
        """Spec: a decline is a decline whatever its amount; currency before amount."""
        if conf.status == "FAILED":
            return DECLINED
        if conf.currency != self.currency:
            return CURRENCY_MISMATCH
        if conf.amount_minor != self.amount_minor:
            return AMOUNT_MISMATCH
        return MATCHED

    # -- the reference model: what each event should publish ----------------------------------

    def _state(self, now_ms: int) -> RefState:
        if self.ref is None:
            self.ref = RefState(first_seen_ms=now_ms)
        return self.ref

    def on_routed(self, now_ms: int) -> list[Published]:
        ref = self._state(now_ms)
        if ref.routed_seen_ms is not None:
            return []  # a redelivery
        ref.routed_seen_ms = now_ms
        out: list[Published] = []
        for conf in ref.held:  # held answers decide in arrival order
            if conf.channel != self.channel and ref.orphan_declared:
                continue  # already reported as an orphan when the grace ran out
            out += self._apply(conf, now_ms)
        ref.held = []
        return out

    def on_confirmation(self, conf: Conf, now_ms: int) -> list[Published]:
        ref = self._state(now_ms)
        if conf.cid in ref.seen:
            return []  # a redelivery
        ref.seen.add(conf.cid)
        if ref.routed_seen_ms is None:
            ref.held.append(conf)
            return [(ORPHAN_CONFIRMATION, conf.cid, False)] if ref.orphan_declared else []
        return self._apply(conf, now_ms)

    def _apply(self, conf: Conf, now_ms: int) -> list[Published]:
        ref = self.ref
        assert ref is not None
        if conf.channel != self.channel:
            return [(ORPHAN_CONFIRMATION, conf.cid, False)]
        outcome = self.classify(conf)
        if ref.terminal is None:
            ref.terminal, ref.decided_at_ms = outcome, now_ms
            return [(outcome, conf.cid, False)]
        if ref.terminal == MISSING_CONFIRMATION and not ref.late_fate_decided:
            ref.late_fate_decided = True
            if outcome == MATCHED:
                ref.terminal, ref.decided_at_ms = MATCHED, now_ms
                return [(MATCHED, conf.cid, True)]
            return [(LATE_CONFIRMATION, conf.cid, True)]
        return [(DUPLICATE_CONFIRMATION, conf.cid, False)]

    def on_tick(self, now_ms: int) -> list[Published]:
        ref = self.ref
        if ref is None:
            return []
        out: list[Published] = []
        if ref.routed_seen_ms is not None:
            started_ms = max(self.routed_at_ms, ref.routed_seen_ms)
            if ref.terminal is None and now_ms >= started_ms + self.sla_ms():
                ref.terminal, ref.decided_at_ms = MISSING_CONFIRMATION, now_ms
                out.append((MISSING_CONFIRMATION, None, False))
        elif ref.held and not ref.orphan_declared and now_ms >= ref.first_seen_ms + GRACE_MS:
            ref.orphan_declared = True
            out += [(ORPHAN_CONFIRMATION, c.cid, False) for c in ref.held]
        # Eviction, as is_evictable documents it: retain_decided_ms after the decision, or
        # after the orphan report of a payment that never arrived; never while the exception
        # case a mismatch or a MISSING_CONFIRMATION opened is open (no operator acts here).
        if ref.terminal in (AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION):
            evict_at_ms: int | None = None
        elif ref.decided_at_ms is not None:
            evict_at_ms = ref.decided_at_ms + RETAIN_MS
        elif ref.routed_seen_ms is None and ref.orphan_declared:
            evict_at_ms = ref.first_seen_ms + GRACE_MS + RETAIN_MS
        else:
            evict_at_ms = None
        if evict_at_ms is not None and now_ms >= evict_at_ms:
            self.ref, self.evicted = None, True
        return out


@dataclass(frozen=True)
class Event:
    kind: str  # "routed" or "conf"
    pid: str
    conf: Conf | None = None


class ReconcileMachine(RuleBasedStateMachine):
    @initialize(first=PAYMENTS)
    def setup(self, first: dict[str, Any]) -> None:
        self.now = T0
        self.registry = InMemoryRegistry()
        self.store: dict[str, Any] = {}
        self.proc = self._processor(self.store)
        self.routed_ser = {
            ch: AvroSerializer(self.registry, TOPICS.routed(ch), "RoutedPayment")
            for ch in CHANNELS
        }
        self.conf_ser = AvroSerializer(self.registry, TOPICS.confirmations, "ChannelConfirmation")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0
        self.payments: dict[str, Payment] = {}
        self.outbox: list[Event] = []  # produced upstream, not yet read by the reconciler
        self.delivered: list[tuple[Event, int]] = []  # (event, first delivery time)
        self.answers = 0
        self._create(**first)

    def _processor(self, store: dict[str, Any]) -> ReconcileProcessor:
        return ReconcileProcessor(
            self.registry, store, POLICY, FEES, TOPICS, TICKS, clock=lambda: self.now
        )

    # -- upstream: payments and channel answers come into being ------------------------------

    @precondition(lambda self: len(self.payments) < PAYMENTS_MAX)
    @rule(payment=PAYMENTS)
    def create_payment(self, payment: dict[str, Any]) -> None:
        self._create(**payment)

    def _create(
        self,
        merchant: str,
        currency: str,
        amount_minor: int,
        channel: str,
        routed_ago_ms: int,
        answers: list[tuple[str, int, int]],
    ) -> None:
        n = len(self.payments)
        pid = f"p-{n}"
        # routed_at earlier than our clock: the record was delayed on its way to us.
        pay = Payment(pid, merchant, currency, amount_minor, channel, n % PARTITIONS,
                      self.now - routed_ago_ms)
        self.payments[pid] = pay
        self.outbox.append(Event("routed", pid))
        for kind, delta, other in answers:
            self._answer(pay, kind, delta, other)

    @precondition(lambda self: self.payments)
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from(KINDS), delta=DELTAS,
          other=st.integers(1, 3))
    def channel_answers(self, pick: int, kind: str, delta: int, other: int) -> None:
        """Another answer for any payment, e.g. a channel that retries with a new id."""
        self._answer(list(self.payments.values())[pick % len(self.payments)], kind, delta, other)

    def _answer(self, pay: Payment, kind: str, delta: int, other: int) -> None:
        channel, status = pay.channel, "SUCCEEDED"
        amount, currency = pay.amount_minor, pay.currency
        if kind == "declined":
            status = "FAILED"  # with any amount: a decline is a decline
            amount = max(0, amount + delta)
        elif kind == "amount":
            amount = amount + delta if amount + delta >= 0 else amount - delta
        elif kind == "currency":
            currency = CURRENCIES[(CURRENCIES.index(currency) + other) % len(CURRENCIES)]
        elif kind == "channel":
            channel = CHANNELS[(CHANNELS.index(channel) + other) % len(CHANNELS)]
        self.answers += 1
        conf = Conf(f"c-{self.answers}", pay.pid, channel, status, amount, currency)
        self.outbox.append(Event("conf", pay.pid, conf))

    # -- the reconciler reads: in any order, again, later --------------------------------------

    @precondition(lambda self: self.outbox)
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
          answers_only=st.booleans())
    def deliver(self, picks: list[int], answers_only: bool) -> None:
        """The next records the reconciler reads, picked from everything produced so far;
        with answers_only, channel answers overtake their routed payments."""
        for pick in picks:
            ready = [e for e in self.outbox if e.kind == "conf" or not answers_only]
            if ready:
                event = ready[pick % len(ready)]
                self.outbox.remove(event)
                self.delivered.append((event, self.now))
                self._deliver(event)

    @precondition(lambda self: self.delivered)
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=3))
    def redeliver(self, picks: list[int]) -> None:
        replayable = [
            e for e, first_ms in self.delivered
            if e.kind == "conf" or self.now - first_ms < REPLAY_MS
        ]
        for pick in picks if replayable else []:
            self._deliver(replayable[pick % len(replayable)])

    @precondition(lambda self: self.payments)
    @rule(step_ms=st.sampled_from(STEPS_MS))
    def advance(self, step_ms: int) -> None:
        self.now += step_ms

    @precondition(lambda self: self.payments)
    @rule(partition=st.sampled_from([None, *range(PARTITIONS)]))
    def tick_partitions(self, partition: int | None) -> None:
        """The timer ticks one partition, or (None) every partition."""
        for p in range(PARTITIONS) if partition is None else [partition]:
            self.tick(p)

    def tick(self, partition: int) -> None:
        self.offset += 1
        d = self.proc.process(b"tick", str(self.now).encode(), TICKS, partition, self.offset)
        assert d.outcome == TICKED and d.tick_errors == 0, d
        expected = {
            pay.pid: pay.on_tick(self.now)
            for pay in self.payments.values()
            if pay.partition == partition
        }
        self._check(d, expected)

    @precondition(lambda self: self.payments)
    @rule(json_copy=st.booleans(), skew_ms=st.sampled_from([0, 0, 1, 1_000, 4_000]))
    def restart(self, json_copy: bool, skew_ms: int) -> None:
        """A crash or rebalance: in-memory indexes are lost, the table is recovered, and the
        new owner's clock may be a little behind the old one's."""
        self.now -= skew_ms
        if json_copy:  # recovered from the changelog: a fresh processor on a JSON copy
            self.store = json.loads(json.dumps(self.store))
            self.proc = self._processor(self.store)
        else:
            self.proc.forget_partitions()

    @precondition(lambda self: len(self.delivered) >= 8)
    @rule()
    def drain(self) -> None:
        """Every routed payment arrives, time passes every deadline: all are decided."""
        for event in [e for e in self.outbox if e.kind == "routed"]:
            self.outbox.remove(event)
            self.delivered.append((event, self.now))
            self._deliver(event)
        # The SLA starts at routed_at or when we read it, whichever is later; a clock set
        # back by a restart can leave either ahead of our now.
        started_ms = max([self.now, *(p.routed_at_ms for p in self.payments.values()),
                          *(p.ref.routed_seen_ms or 0 for p in self.payments.values() if p.ref)])
        self.now = started_ms + max(CARD_SLA_MS, SLA_MS, GRACE_MS)
        for partition in range(PARTITIONS):
            self.tick(partition)
        for pay in self.payments.values():
            terminal = [r for r in pay.published if r.terminal]
            assert terminal, f"{pay.pid} undecided after every deadline: {pay.published}"
            if not pay.evicted:
                assert pay.ref is not None and terminal[-1].outcome == pay.ref.terminal
                self._check_conservation(pay)

    # -- checks --------------------------------------------------------------------------------

    def _deliver(self, event: Event) -> None:
        pay = self.payments[event.pid]
        self.offset += 1
        if event.kind == "routed":
            value = self.routed_ser[pay.channel].encode({
                "payment_id": pay.pid, "merchant_id": pay.merchant_id, "order_id": "o",
                "payer_id": "u", "amount_minor": pay.amount_minor, "currency": pay.currency,
                "method": "ALIPAY", "interface": "APP", "region": "CN",
                "created_at": pay.routed_at_ms - 10, "metadata": {},
                "channel": pay.channel.upper(), "rule_id": "r", "routed_at": pay.routed_at_ms,
            })
            topic = TOPICS.routed(pay.channel)
            expected = pay.on_routed(self.now)
        else:
            conf = event.conf
            assert conf is not None
            value = self.conf_ser.encode({
                "confirmation_id": conf.cid, "channel": conf.channel.upper(),
                "channel_txn_id": f"t-{conf.cid}", "payment_id": conf.pid,
                "status": conf.status, "amount_minor": conf.amount_minor,
                "currency": conf.currency, "confirmed_at": self.now, "decline_code": None,
            })
            topic = TOPICS.confirmations
            expected = pay.on_confirmation(conf, self.now)
        d = self.proc.process(pay.pid.encode(), value, topic, pay.partition, self.offset)
        assert d.outcome == APPLIED, d  # one decision per record read, never a dead letter
        self._check(d, {pay.pid: expected})

    def _check(self, d: ReconDecision, expected: dict[str, list[Published]]) -> None:
        got: dict[str, list[Published]] = defaultdict(list)
        # Beside the results: only the case events of the exceptions they opened or closed.
        results = [o for o in d.outputs if o.topic == TOPICS.results]
        assert all(o.topic == TOPICS.case_events for o in d.outputs if o not in results)
        for result, out in zip(d.results, results, strict=True):
            got[result.payment_id].append((result.outcome, result.confirmation_id, result.late))
            pay = self.payments[result.payment_id]
            assert out.topic == TOPICS.results and out.key == pay.pid.encode()
            if result.outcome == MATCHED:
                avro = self.decoder.decode(out.value)
                assert (avro["expected_amount_minor"], avro["expected_currency"]) == (
                    pay.amount_minor, pay.currency)
                assert (avro["confirmed_amount_minor"], avro["confirmed_currency"]) == (
                    pay.amount_minor, pay.currency)
                assert avro["merchant_id"] == pay.merchant_id
                assert avro["channel"] == pay.channel.upper()
                fee = ref_fee(pay.channel, pay.amount_minor)
                assert (avro["fee_minor"], avro["net_minor"]) == (fee, pay.amount_minor - fee)
            pay.published.append(result)
        wanted = {pid: out for pid, out in expected.items() if out}
        assert dict(got) == wanted, f"published {dict(got)}, reference says {wanted}"

    def _check_conservation(self, pay: Payment) -> None:
        """Every confirmation read is answered once: decided, or a DUPLICATE/LATE/ORPHAN record.

        A right-channel answer held past the orphan grace is reported as ORPHAN first and then
        decides (or duplicates) once the payment arrives: that is its one extra record.
        """
        delivered = {e.conf.cid: e.conf for e, _t in self.delivered
                     if e.conf is not None and e.pid == pay.pid}
        answers = Counter(r.confirmation_id for r in pay.published
                          if r.confirmation_id is not None)
        orphans = Counter(r.confirmation_id for r in pay.published
                          if r.outcome == ORPHAN_CONFIRMATION)
        assert set(answers) == set(delivered)
        for cid, conf in delivered.items():
            extra = orphans[cid] if conf.channel == pay.channel else 0
            assert answers[cid] - extra == 1 and extra <= 1, (cid, pay.published)
        grace_orphans = sum(orphans[c] for c, conf in delivered.items()
                            if conf.channel == pay.channel)
        missing = sum(1 for r in pay.published if r.outcome == MISSING_CONFIRMATION)
        assert len(pay.published) == len(delivered) + grace_orphans + missing

    @invariant()
    def one_terminal_outcome_per_payment(self) -> None:
        if not hasattr(self, "payments"):
            return
        for pay in self.payments.values():
            terminal = [r for r in pay.published if r.terminal]
            assert all(r.outcome in TERMINAL_OUTCOMES for r in terminal)
            # One verdict, never changed; the one documented exception is a late SUCCEEDED
            # turning MISSING_CONFIRMATION into MATCHED (late=True), exactly once.
            shape = [(r.outcome, r.late) for r in terminal]
            assert len(shape) <= 1 or shape == [
                (MISSING_CONFIRMATION, False), (MATCHED, True)], shape
            assert not shape or shape[0][1] is False
            ids = [r.result_id for r in pay.published]
            if pay.evicted:
                # After eviction a replayed answer is new to the table: its ORPHAN record may
                # repeat (sinks dedupe on result_id); a terminal one never may.
                repeats = [i for i, n in Counter(ids).items() if n > 1]
                assert all(":ORPHAN_CONFIRMATION:" in i for i in repeats), repeats
            else:
                assert len(set(ids)) == len(ids), ids
            raw = self.store.get(pay.pid)
            if raw is not None and raw.get("state") is None:
                # A MATCHED payment's refund book outlives its reconciliation state.
                assert raw["book"]["payment_id"] == pay.pid and raw["partition"] == pay.partition
                raw = None
            if raw is not None:
                state = ReconState.from_dict(raw["state"])
                assert raw["partition"] == pay.partition
                assert pay.ref is not None, f"{pay.pid} kept in the table after its eviction"
                assert state.outcome == pay.ref.terminal
                if not pay.evicted:
                    assert state.outcome == (terminal[-1].outcome if terminal else None)
            else:
                assert pay.ref is None, f"{pay.pid} evicted before its time"

    def teardown(self) -> None:
        # Hypothesis calls teardown in a `finally`: after a failed step, report that step's
        # error rather than whatever the drain would then trip over.
        if hasattr(self, "payments") and sys.exc_info()[0] is None:
            self.drain()


ReconcileMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, derandomize=True,
    report_multiple_bugs=False,
)
TestReconcileStateful = ReconcileMachine.TestCase
