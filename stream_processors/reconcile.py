"""Reconcile, one record or tick at a time: decode, run the core transition, say what to publish."""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import AvroDeserializer, AvroSerializer, RegistryPrefetch
from schemas.errors import DecodeError, RegistryUnavailable
from settlement import reconciliation as recon
from settlement import refunds as rf
from settlement.cases import CaseError, CasePolicy
from settlement.fees import FeeSchedule
from settlement.reconciliation import (
    Confirmation,
    ReconPolicy,
    ReconState,
    ResultRecord,
    RoutedInfo,
)
from stream_processors.case_decider import (
    CaseDecider,
    CaseOut,
    c_emitted_by,
    case_action_info,
    cases_due_ms,
    holds_state,
    pruned,
)
from stream_processors.dead_letters import DeadLetters, error_label
from stream_processors.dispute_decider import DisputeDecider, DisputeDecision, dispute_info
from stream_processors.dispute_decider import replayed as dispute_replayed
from stream_processors.errors import NotCopartitioned
from stream_processors.outputs import SOURCE_HEADER, Output, now_ms, source_ref
from stream_processors.placement import Origin, Placement, PlacementError
from stream_processors.reconcile_records import confirmation_info, result_record, routed_info
from stream_processors.refund_decider import (
    RefundDecider,
    RefundDecision,
    book_for_match,
    book_of,
    r_emitted_by,
    r_remembered,
)
from stream_processors.refund_decider import confirmation_info as refund_confirmation_info
from stream_processors.refund_decider import request_info as refund_request_info
from stream_processors.replay import (
    emitted_by,
    kept,
    remembered,
    tick_replay,
    with_tick,
)
from stream_processors.ticks import (
    TICK_KEYS_MAX,
    TICK_RETRY_MS,
    DeadlineQueue,
    items_by_partition,
)
from stream_processors.transient import is_transient

log = logging.getLogger(__name__)

STAGE: Final = "reconcile"

# What became of one input (the `settle_stage_records_total` outcome label).
APPLIED: Final = "applied"
REPLAYED: Final = "replayed"  # an input applied before a crash, read again: outputs re-sent
TICKED: Final = "ticked"
DEAD_LETTERED: Final = "dead_lettered"
# A third party's confirmation on another partition than its payment_id's: moved there first
# (stream_processors.placement); it is applied when read back from there.
MOVED: Final = "moved"

# Replays after a crash (stream_processors.replay): each state keeps the encoded results of
# its last few applied inputs, and a per-partition outbox key, under this prefix, the
# payments each recent tick decided.
TICK_OUTBOX_PREFIX: Final = "\x00tick-outbox/"
# How long an answer about a payment the stage does not hold is remembered (for replays after
# a crash or an outage of the worker; the value is dropped by the first tick after it).
ANSWER_MEMORY_MS: Final = 3_600_000
WAITING_CONFIRMATION: Final = "confirmation"
WAITING_ROUTED: Final = "routed"


@dataclass(slots=True)
class ReconDecision:
    """What became of one input record or tick."""

    outcome: str
    outputs: list[Output] = field(default_factory=list)
    results: list[ResultRecord] = field(default_factory=list)
    # (channel, seconds from routing to MATCHED) per match, for the histogram.
    matched_after_s: list[tuple[str, float]] = field(default_factory=list)
    error_type: str | None = None  # a dead letter's metrics label (dead_letters.error_label)
    evicted: int = 0
    tick_errors: int = 0
    refunds: list[RefundDecision] = field(default_factory=list)
    disputes: list[DisputeDecision] = field(default_factory=list)
    cases: list[tuple[str, str]] = field(default_factory=list)  # (case event kind, outcome)


class ReconcileProcessor:
    """The reconcile stage without faust: a dict for the table in tests, a faust Table live.

    Table value: {"partition": p, "state": ReconState.to_dict()} under the payment_id. The
    partition is kept because deadlines are per partition (a tick of partition p may only
    touch p's keys). With a `placement`, a confirmation a third party wrote on another
    partition than its payment_id's is moved there before it touches any state, so every
    state lives on its payment_id's partition; a record that still disagrees (the pipeline's
    own topics with another partition count) is dead-lettered, never joined.

    Failure policy per record: undecodable or invalid for the core -> dead letter with the
    original bytes; anything unexpected -> dead letter as well, so no exception reaches faust.
    RegistryUnavailable is raised before anything is written, so the caller retries the record.
    Every state change is computed and encoded first and written last (re-assigned, never
    mutated in place), so a retry never sees a half-applied record.
    """

    def __init__(
        self,
        registry: Any,
        store: MutableMapping[str, Any],
        policy: ReconPolicy,
        fees: FeeSchedule,
        topics: Any,
        tick_topic: str,
        clock: Callable[[], int] = now_ms,
        placement: Placement | None = None,
        refund_policy: rf.RefundPolicy | None = None,
        keyring: Any = None,
        case_policy: CasePolicy | None = None,
    ) -> None:
        self._store = store
        self._placement = placement
        self._policy = policy
        self._fees = fees
        self._topics = topics
        self.tick_topic = tick_topic
        self._clock = clock
        self._decoder = AvroDeserializer(registry)
        self._results_ser = AvroSerializer(registry, topics.results, "ReconciliationResult")
        self._dlq = DeadLetters(registry, topics.dlq, STAGE)
        self.refunds = RefundDecider(registry, topics, refund_policy or rf.RefundPolicy(),
                                     keyring, clock)
        self.disputes = DisputeDecider(registry, topics)
        self.cases = CaseDecider(
            registry, topics, case_policy or CasePolicy(retain_ms=policy.retain_decided_ms),
            fees, clock)
        self.prefetch = RegistryPrefetch(
            [self._decoder], [self._results_ser, self._dlq.serializer, *self.refunds.serializers,
                              *self.disputes.serializers, *self.cases.serializers])
        self._routed_channel = {topics.routed(ch): ch for ch in topics.channels}
        self.deadlines = DeadlineQueue(self._scan_deadlines)
        # partition -> payment_id -> (waiting_for, channel, since_ms), for the backlog gauges.
        self._waiting: dict[int, dict[str, tuple[str, str, int]]] = {}

    # -- entry points -------------------------------------------------------------------------

    def process(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
        headers: Any = None,
    ) -> ReconDecision:
        """One input record or tick; a record of the placement topic is processed as the
        record at its original coordinates (named by `headers`)."""
        if topic == self.tick_topic:
            return self.on_tick(partition, source_ref(topic, partition, offset).encode())
        src = Origin(topic, partition, offset)
        if self._placement is not None and topic == self._placement.topic:
            try:
                src = self._placement.origin_of(headers)
            except PlacementError as exc:
                return self._dead_letter(key, value, src, exc)
        ref = src.ref.encode()
        try:
            return self._on_input(key, value, src, partition, ref, moved=src.topic != topic)
        except RegistryUnavailable:
            raise
        except _BadInput as exc:
            log.warning("reconcile: dead-lettering %s: %s", ref.decode(), exc)
            return self._dead_letter(key, value, src, exc.cause)
        except Exception as exc:  # per-event catch: an escaped exception skips the event
            if is_transient(exc):
                raise  # the agent retries the event (see stream_processors.transient)
            log.exception("reconcile: cannot process %s", ref.decode())
            return self._dead_letter(key, value, src, exc)

    def on_tick(self, partition: int, ref: bytes = b"tick") -> ReconDecision:
        """Decide MISSING/ORPHAN and evict, for this partition's keys whose time has come.

        Never raises: a key that fails is retried later (a registry outage stops this tick,
        keeping what was decided so far, whose results must still be published).
        """
        now = self._clock()
        decision = ReconDecision(TICKED)
        outbox_key = f"{TICK_OUTBOX_PREFIX}{partition}"
        outbox = self._store.get(outbox_key)
        replay = tick_replay(outbox, ref)
        if replay is not None:
            for payment_id in replay:
                raw = self._store.get(payment_id)
                emitted = emitted_by(raw, ref)
                if emitted:
                    decision.outputs.extend(self._outputs(payment_id, emitted, ref))
                decision.outputs.extend(r_emitted_by(raw, ref, payment_id) or [])
                decision.outputs.extend(c_emitted_by(raw, ref) or [])
            return decision
        try:
            self._ensure(partition)
            due = self.deadlines.pop_due(partition, now, TICK_KEYS_MAX)
        except Exception:  # a tick is never dead-lettered; the next one tries again
            log.exception("reconcile: cannot rebuild the deadlines of partition %d", partition)
            decision.tick_errors += 1
            return decision
        for n, payment_id in enumerate(due):
            try:
                self._tick_key(payment_id, partition, now, decision, ref)
            except RegistryUnavailable as exc:
                # Nothing of this key was written; it and every key not reached yet (popped
                # from the queue with it) stay due, and the next tick retries them.
                log.warning("reconcile: registry unavailable during a tick: %s", exc)
                for later in due[n:]:
                    self.deadlines.schedule(partition, later, now)
                decision.tick_errors += 1
                break
            except Exception:
                log.exception("reconcile: tick failed for %s; retrying in %d ms",
                              payment_id, TICK_RETRY_MS)
                self.deadlines.schedule(partition, payment_id, now + TICK_RETRY_MS)
                decision.tick_errors += 1
        decided = sorted({out.key.decode() for out in decision.outputs if out.key is not None})
        if decided:
            self._store[outbox_key] = with_tick(outbox, partition, ref, decided)
        return decision

    def forget_partitions(self) -> None:
        """Drop in-memory indexes (on rebalance); each partition is rebuilt on its next event."""
        self.deadlines.forget()
        self._waiting.clear()

    def backlog(self, at_ms: int | None = None) -> dict[tuple[str, str], tuple[int, float]]:
        """(channel, waiting_for) -> (count, age in seconds of the oldest), this worker only."""
        now = self._clock() if at_ms is None else at_ms
        out: dict[tuple[str, str], tuple[int, float]] = {}
        for waiting in self._waiting.values():
            for waiting_for, channel, since_ms in waiting.values():
                count, oldest_s = out.get((channel, waiting_for), (0, 0.0))
                out[(channel, waiting_for)] = (count + 1, max(oldest_s, (now - since_ms) / 1000))
        return out

    def __len__(self) -> int:
        return len(self._store)

    # -- inputs -------------------------------------------------------------------------------

    def _on_input(
        self, key: bytes | None, value: bytes | None, src: Origin, partition: int, ref: bytes,
        moved: bool,
    ) -> ReconDecision:
        now = self._clock()
        if src.topic in self.refunds.topics:
            return self._on_refund_input(key, value, src, partition, ref, moved, now)
        if src.topic == self.disputes.topic:
            return self._on_dispute_input(value, src, partition, ref, moved, now)
        if src.topic == self.cases.topic:
            return self._on_case_action(key, value, src, partition, ref, moved, now)
        channel = self._routed_channel.get(src.topic)
        try:
            record = self._decoder.decode(value)
            event: RoutedInfo | Confirmation = (
                routed_info(record, channel) if channel is not None else confirmation_info(record)
            )
        except (DecodeError, recon.ReconError, KeyError, TypeError, ValueError) as exc:
            raise _BadInput(exc) from exc
        payment_id = event.payment_id
        external = self._placement is not None and src.topic in self._placement.external
        reversal = isinstance(event, Confirmation) and event.status == recon.REVERSED
        if external and not moved and value is not None:
            # Placed by the payment_id it names, whatever the writer's partitioner or key.
            assert self._placement is not None
            target = self._placement.misplaced(src.topic, partition, payment_id)
            if target is not None:
                return ReconDecision(MOVED, [self._placement.move(payment_id, value, src,
                                                                  target)])
        elif key is not None and key != payment_id.encode():
            raise _BadInput(NotCopartitioned(f"key {key!r} is not payment_id {payment_id!r}"))
        self._ensure(partition)
        state = self._load(payment_id, partition)
        raw = self._store.get(payment_id)
        emitted = emitted_by(raw, ref)
        if emitted is not None:
            return ReconDecision(REPLAYED, self._outputs(payment_id, emitted, ref)
                                 + (c_emitted_by(raw, ref) or []))
        if reversal:
            assert isinstance(event, Confirmation)
            return self._on_reversal(event, state, raw, partition, ref, now)
        try:
            if isinstance(event, RoutedInfo):
                new_state, results = recon.on_routed(state, event, now)
            else:
                new_state, results = recon.on_confirmation(state, event, now)
        except recon.ReconError as exc:  # e.g. RoutedConflict: one payment_id, two bodies
            raise _BadInput(exc) from exc
        decision = ReconDecision(APPLIED)
        book = self._publish(new_state, results, ref, decision, book_of(raw))
        applied = remembered(raw, ref, decision.outputs)
        raw = self._with_cases(decision, self.cases.after_results(raw, partition, results, now,
                                                                  ref))
        self._save(new_state, partition, applied, raw, book)
        return decision

    def _on_reversal(self, conf: Confirmation, state: ReconState | None, raw: Any,
                     partition: int, ref: bytes, now: int) -> ReconDecision:
        """A channel took a captured payment back: PAYMENT_REVERSED (the mirror of its
        payment journal) against its refund book, or a REVERSAL_EXCEPTION; never held,
        never a reconciliation answer."""
        try:
            book = book_of(raw)
        except rf.RefundError as exc:
            raise _BadInput(exc) from exc
        routed = state.routed if state is not None else None
        fee = net = None
        if book is None:
            outcome = recon.REVERSAL_EXCEPTION
            detail = ("reversal of a payment never MATCHED" if state is not None
                      else "reversal of a payment the reconciler does not hold")
            new_book = None
        else:
            new_book, outcome, detail = rf.on_payment_reversal(book, rf.PaymentReversal(
                conf.confirmation_id, conf.channel, conf.amount_minor, conf.currency), now)
            if not outcome:
                return ReconDecision(APPLIED)  # the same reversal again
            if outcome == recon.PAYMENT_REVERSED:
                fee, net = book.fee_minor, book.captured_minor - book.fee_minor
        result = ResultRecord(
            result_id=recon.result_id_for(conf.payment_id, outcome, conf.confirmation_id),
            payment_id=conf.payment_id,
            merchant_id=book.merchant_id if book else (routed.merchant_id if routed else None),
            channel=conf.channel, outcome=outcome, terminal=False, late=False,
            expected_amount_minor=book.captured_minor if book else (
                routed.amount_minor if routed else None),
            expected_currency=book.currency if book else (routed.currency if routed else None),
            confirmed_amount_minor=conf.amount_minor, confirmed_currency=conf.currency,
            confirmation_id=conf.confirmation_id, channel_txn_id=conf.channel_txn_id,
            created_at_ms=routed.created_at_ms if routed else None, decided_at_ms=now,
            detail=detail, order_id=book.order_id if book else (
                routed.order_id if routed else None))
        value = self._results_ser.encode(result_record(result, fee, net))
        decision = ReconDecision(APPLIED, [Output(self._topics.results,
                                                  conf.payment_id.encode(), value,
                                                  ((SOURCE_HEADER, ref),))], results=[result])
        emitted = remembered(raw, ref, decision.outputs)
        # A REVERSAL_EXCEPTION opens a case, kept even for a payment the stage does not hold.
        cased = self._with_cases(decision, self.cases.after_results(raw, partition, [result],
                                                                    now, ref))
        if cased is not None:  # remembered, so a replay re-sends it
            stored = dict(cased)
            if new_book is not None:
                stored["book"] = new_book.to_dict()
            stored["emitted"] = emitted
            self._store[conf.payment_id] = stored
            if cased is not raw:
                self.deadlines.schedule(partition, conf.payment_id, self._next_due_raw(stored))
        return decision

    def _on_refund_input(
        self, key: bytes | None, value: bytes | None, src: Origin, partition: int, ref: bytes,
        moved: bool, now: int,
    ) -> ReconDecision:
        try:
            record = self._decoder.decode(value)
            event = (refund_request_info(record) if self.refunds.is_request(src.topic)
                     else refund_confirmation_info(record))
            payment_id = event.payment_id
            if not isinstance(payment_id, str) or not payment_id:
                raise rf.RefundError(f"payment_id must be a non-empty string: {payment_id!r}")
        except (DecodeError, rf.RefundError, KeyError, TypeError, ValueError) as exc:
            raise _BadInput(exc) from exc
        moved_to = self._move_if_misplaced(payment_id, value, src, partition, moved)
        if moved_to is not None:
            return moved_to
        raw = self._held(payment_id, partition)
        replayed = r_emitted_by(raw, ref, payment_id)
        if replayed is not None:
            return ReconDecision(REPLAYED, replayed + (c_emitted_by(raw, ref) or []))
        try:
            book = book_of(raw)
        except rf.RefundError as exc:
            raise _BadInput(exc) from exc
        if isinstance(event, rf.RefundConfirmation):
            new_book, out = self.refunds.on_confirmation(book, event, now, ref)
        else:
            known = raw is not None and raw.get("state") is not None
            new_book, out = self.refunds.on_request(book, record, event, known, now, ref)
        decision = ReconDecision(APPLIED, list(out.outputs), refunds=[out])
        if raw is None and out.outputs:
            # A payment the stage does not hold (yet): the answer is remembered for a while,
            # so a replay after a crash re-sends it even when the payment arrived meanwhile
            # (inputs of different topics are not read in the same order twice).
            memory = {"partition": partition, "r_emitted": r_remembered(None, ref, out.outputs),
                      "forget_at": now + ANSWER_MEMORY_MS}
            self._store[payment_id] = memory
            self.deadlines.schedule(partition, payment_id, self._next_due_raw(memory))
        elif raw is not None and (new_book is not book or out.outputs):
            value_ = dict(raw)
            if "forget_at" in value_:  # still only answers: remembered for a while longer
                value_["forget_at"] = now + ANSWER_MEMORY_MS
            value_["book"] = new_book.to_dict() if new_book is not None else None
            value_["r_emitted"] = r_remembered(raw, ref, out.outputs)
            value_ = self._with_cases(decision, self.cases.after_refunds(
                value_, partition, out.outcomes, new_book, now, ref))
            self._store[payment_id] = value_
            self.deadlines.schedule(partition, payment_id, self._next_due_raw(value_))
        return decision

    def _on_dispute_input(self, value: bytes | None, src: Origin, partition: int, ref: bytes,
                          moved: bool, now: int) -> ReconDecision:
        """A channel's news about a dispute, decided against the payment's refund book in the
        value's one write; a dispute of a payment the stage does not hold is answered
        REJECTED and nothing is stored (decided again, the same way, if read again)."""
        try:
            news = dispute_info(self._decoder.decode(value))
        except (DecodeError, KeyError, TypeError, ValueError) as exc:  # DisputeError too
            raise _BadInput(exc) from exc
        payment_id = news.payment_id
        moved_to = self._move_if_misplaced(payment_id, value, src, partition, moved)
        if moved_to is not None:
            return moved_to
        raw = self._held(payment_id, partition)
        replayed = dispute_replayed(raw, ref, payment_id)
        if replayed is not None:
            return ReconDecision(REPLAYED, replayed + (c_emitted_by(raw, ref) or []))
        try:
            book = book_of(raw)
        except rf.RefundError as exc:
            raise _BadInput(exc) from exc
        known = raw is not None and raw.get("state") is not None
        new_book, out = self.disputes.on_dispute(book, news, known, now, ref)
        decision = ReconDecision(APPLIED, list(out.outputs), disputes=[out])
        # A REJECTED record opens a case, kept even for a payment the stage does not hold.
        cased = self._with_cases(decision, self.cases.after_disputes(raw, partition,
                                                                     out.outcomes, now, ref))
        if cased is not raw or (raw is not None and (new_book is not book or out.outputs)):
            stored = dict(cased)
            if new_book is not None:
                stored["book"] = new_book.to_dict()
            stored["r_emitted"] = r_remembered(raw, ref, out.outputs)
            self._store[payment_id] = stored
            self.deadlines.schedule(partition, payment_id, self._next_due_raw(stored))
        return decision

    def _move_if_misplaced(self, payment_id: str, value: bytes | None, src: Origin,
                           partition: int, moved: bool) -> ReconDecision | None:
        """A record of an external topic on another partition than its payment_id's: moved
        there first (the MOVED decision), whatever the writer's partitioner or key."""
        assert self._placement is None or src.topic in self._placement.external
        if self._placement is None or moved or value is None:
            return None
        target = self._placement.misplaced(src.topic, partition, payment_id)
        if target is None:
            return None
        return ReconDecision(MOVED, [self._placement.move(payment_id, value, src, target)])

    def _held(self, payment_id: str, partition: int) -> Any:
        """The payment's table value (None if not held); it must live on this partition."""
        self._ensure(partition)
        raw = self._store.get(payment_id)
        if raw is not None and raw["partition"] != partition:
            raise _BadInput(NotCopartitioned(
                f"{payment_id} is kept on partition {raw['partition']}, record is on {partition}"))
        return raw

    def _outputs(self, payment_id: str, values: list[str], ref: bytes) -> list[Output]:
        return [Output(self._topics.results, payment_id.encode(), bytes.fromhex(v),
                       ((SOURCE_HEADER, ref),)) for v in values]

    def _tick_key(
        self, payment_id: str, partition: int, now: int, decision: ReconDecision, ref: bytes
    ) -> None:
        state = self._load(payment_id, partition)
        raw = self._store.get(payment_id)
        if raw is not None and raw.get("book") is not None:
            self._tick_book(payment_id, raw, partition, now, decision, ref)
            raw = self._store.get(payment_id)
        if raw is not None and raw.get("cases"):
            raw = self._prune_cases(payment_id, raw, now)
        if state is None:
            self._unwait(partition, payment_id)
            if raw is not None:
                self._tick_book_only(payment_id, raw, partition, now, decision)
            return
        before = state
        emitted = None
        due = recon.deadline_ms(state, self._policy)
        if due is not None and now >= due:  # re-checked: the queue may be early or stale
            state, results = recon.on_tick(state, now, self._policy)
            first = len(decision.outputs)
            self._publish(state, results, ref, decision)
            if results:
                emitted = remembered(raw, ref, decision.outputs[first:])
                raw = self._with_cases(decision, self.cases.after_results(
                    raw, partition, results, now, ref))
        # An open case about the payment keeps its state: a resolution may still settle it.
        if recon.is_evictable(state, now, self._policy) and not holds_state(raw):
            self._unwait(partition, payment_id)
            if raw is not None and (raw.get("book") is not None or raw.get("cases")):
                # The payment's refund book and its cases outlive its reconciliation state.
                value = {k: v for k, v in raw.items() if k not in ("state", "emitted")}
                self._store[payment_id] = value
                self.deadlines.schedule(partition, payment_id, self._next_due_raw(value))
            else:
                del self._store[payment_id]
            decision.evicted += 1
        elif state is before:  # nothing changed: no changelog write, only the next deadline
            self.deadlines.schedule(partition, payment_id, self._next_due(state, raw))
        else:
            self._save(state, partition, emitted if emitted is not None else kept(raw), raw)

    def _tick_book(self, payment_id: str, raw: dict[str, Any], partition: int, now: int,
                   decision: ReconDecision, ref: bytes) -> None:
        """Declare overdue refunds MISSING_CONFIRMATION (a write only when one is)."""
        book = book_of(raw)
        assert book is not None
        due = rf.deadline_ms(book, self.refunds.policy)
        if due is None or now < due:
            return
        new_book, out = self.refunds.on_tick(book, now, ref)
        if out.outputs:
            decision.outputs.extend(out.outputs)
            decision.refunds.append(out)
            value = dict(raw)
            value["book"] = new_book.to_dict()
            value["r_emitted"] = r_remembered(raw, ref, out.outputs)
            value = self._with_cases(decision, self.cases.after_refunds(
                value, partition, out.outcomes, new_book, now, ref))
            self._store[payment_id] = value

    def _tick_book_only(self, payment_id: str, raw: dict[str, Any], partition: int, now: int,
                        decision: ReconDecision) -> None:
        """A value holding only a refund book, cases or remembered answers: forget the book
        once its refund window is over, the answers at their `forget_at`, the value once no
        case is left either."""
        book = book_of(raw)
        evict = (rf.evict_at_ms(book, self.refunds.policy) if book is not None
                 else raw.get("forget_at", now))
        if evict is not None and now >= evict:
            if raw.get("cases"):  # kept until each case is resolved and retained
                if book is not None:
                    raw = {k: v for k, v in raw.items() if k not in ("book", "r_emitted")}
                    self._store[payment_id] = raw
                self.deadlines.schedule(partition, payment_id, self._next_due_raw(raw))
                return
            del self._store[payment_id]
            decision.evicted += 1
            return
        self.deadlines.schedule(partition, payment_id, self._next_due_raw(raw))

    def _prune_cases(self, payment_id: str, raw: dict[str, Any], now: int) -> dict[str, Any]:
        """Drop the value's cases resolved retain_ms ago (a write only when one is)."""
        value = pruned(raw, now, self.cases.policy)
        if value is None:
            return raw
        self._store[payment_id] = value
        return value

    # -- exception cases ----------------------------------------------------------------------

    def _on_case_action(
        self, key: bytes | None, value: bytes | None, src: Origin, partition: int, ref: bytes,
        moved: bool, now: int,
    ) -> ReconDecision:
        """An operator's action on one of a payment's cases, applied in the value's one write
        (with the MATCHED_MANUAL settlement a money resolution makes)."""
        try:
            action = case_action_info(self._decoder.decode(value))
            if not action.payment_id or not action.case_id:
                raise CaseError("payment_id and case_id must be non-empty strings")
        except (DecodeError, CaseError, KeyError, TypeError, ValueError) as exc:
            raise _BadInput(exc) from exc
        payment_id = action.payment_id
        moved_to = self._move_if_misplaced(payment_id, value, src, partition, moved)
        if moved_to is not None:
            return moved_to
        raw = self._held(payment_id, partition)
        replayed = c_emitted_by(raw, ref)
        if replayed is not None:
            return ReconDecision(REPLAYED, replayed)
        try:
            out = self.cases.on_action(raw, partition, action, None if moved else key, now, ref)
        except (CaseError, rf.RefundError) as exc:  # a stored value that cannot be read
            raise _BadInput(exc) from exc
        decision = ReconDecision(APPLIED)
        self._with_cases(decision, out)
        if out.raw is raw or out.raw is None:
            return decision
        stored = out.raw.get("state")
        if out.state is not None or stored is not None:
            state = out.state or ReconState.from_dict(stored)
            self._save(state, partition, kept(out.raw), out.raw, out.book)
        else:
            self._store[payment_id] = out.raw
            self.deadlines.schedule(partition, payment_id, self._next_due_raw(out.raw))
        return decision

    def _with_cases(self, decision: ReconDecision, out: CaseOut) -> Any:
        """Add what the cases made of an input to its decision; the value after."""
        decision.outputs.extend(out.outputs)
        decision.results.extend(out.results)
        decision.cases.extend(out.counts)
        return out.raw

    # -- state --------------------------------------------------------------------------------

    def _load(self, payment_id: str, partition: int) -> ReconState | None:
        raw = self._store.get(payment_id)
        if raw is None:
            return None
        if raw.get("state") is None:  # a refund book whose payment state was evicted
            if raw["partition"] != partition:
                raise _BadInput(NotCopartitioned(
                    f"{payment_id} is kept on partition {raw['partition']}, record is on "
                    f"{partition}"))
            return None
        if raw["partition"] != partition:
            raise _BadInput(NotCopartitioned(
                f"{payment_id} is kept on partition {raw['partition']}, record is on {partition}"
            ))
        return ReconState.from_dict(raw["state"])

    def _save(self, state: ReconState, partition: int,
              emitted: list[list[Any]] | None = None, raw: Any = None,
              book: rf.RefundBook | None = None) -> None:
        # Re-assign the whole value: faust only changelogs assignments.
        value: dict[str, Any] = {"partition": partition, "state": state.to_dict()}
        if emitted:
            value["emitted"] = emitted
        if book is not None:
            value["book"] = book.to_dict()
        elif isinstance(raw, dict) and raw.get("book") is not None:
            value["book"] = raw["book"]
        if isinstance(raw, dict) and raw.get("r_emitted"):
            value["r_emitted"] = raw["r_emitted"]
        for name in ("cases", "c_emitted"):  # the payment's exception cases
            if isinstance(raw, dict) and raw.get(name):
                value[name] = raw[name]
        self._store[state.payment_id] = value
        self.deadlines.schedule(partition, state.payment_id, self._next_due(state, value))
        waiting = _waiting_for(state)
        if waiting is None:
            self._unwait(partition, state.payment_id)
        else:
            self._waiting.setdefault(partition, {})[state.payment_id] = waiting

    def _unwait(self, partition: int, payment_id: str) -> None:
        self._waiting.get(partition, {}).pop(payment_id, None)

    def _next_due(self, state: ReconState, raw: Any = None) -> int | None:
        due = recon.deadline_ms(state, self._policy)
        evict = None if holds_state(raw) else recon.evict_at_ms(state, self._policy)
        times = [t for t in (due, evict, cases_due_ms(raw, self.cases.policy)) if t is not None]
        book_due = self._book_due(raw)
        if book_due is not None:
            times.append(book_due)
        return min(times) if times else None

    def _book_due(self, raw: Any) -> int | None:
        if not isinstance(raw, dict) or raw.get("book") is None:
            return None
        return rf.stored_deadline_ms(raw["book"], self.refunds.policy)

    def _next_due_raw(self, raw: dict[str, Any]) -> int | None:
        """The next deadline of a value: its state's, its refunds', its book's eviction or
        its resolved cases'."""
        if raw.get("state") is not None:
            return self._next_due(ReconState.from_dict(raw["state"]), raw)
        book = book_of(raw)
        times = [cases_due_ms(raw, self.cases.policy), raw.get("forget_at")]
        if book is not None:
            times += [rf.deadline_ms(book, self.refunds.policy),
                      rf.evict_at_ms(book, self.refunds.policy)]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def _ensure(self, partition: int) -> None:
        if partition not in self._waiting:
            self._waiting[partition] = {}
        self.deadlines.ensure(partition)

    def _scan_deadlines(self, partition: int) -> list[tuple[str, int | None]]:
        """Rebuild a partition's deadlines and backlog from the table (after a rebalance)."""
        out: list[tuple[str, int | None]] = []
        waiting = self._waiting.setdefault(partition, {})
        for payment_id, raw in items_by_partition(self._store, partition):
            if payment_id.startswith(TICK_OUTBOX_PREFIX):
                continue
            try:
                if raw.get("state") is None:
                    out.append((payment_id, self._next_due_raw(raw)))
                    continue
                state = ReconState.from_dict(raw["state"])
                out.append((payment_id, self._next_due(state, raw)))
            except Exception:  # a bad value must not stop the rebuild; it is logged once
                log.exception("reconcile: unreadable state for %s", payment_id)
                continue
            wait = _waiting_for(state)
            if wait is not None:
                waiting[payment_id] = wait
        return out

    # -- outputs ------------------------------------------------------------------------------

    def _publish(
        self,
        state: ReconState,
        results: list[ResultRecord],
        ref: bytes,
        decision: ReconDecision,
        book: rf.RefundBook | None = None,
    ) -> rf.RefundBook | None:
        """Encode the results; a MATCHED payment opens its refund book (returned)."""
        for result in results:
            fee = net = None
            if result.outcome == recon.MATCHED and result.channel is not None:
                # The one place the fee is computed; the ledger and settle stages read it here.
                assert result.expected_amount_minor is not None
                fee = self._fees.fee_for(result.channel, result.expected_amount_minor)
                net = result.expected_amount_minor - fee
                routed = state.routed
                if routed is not None:
                    seconds = max(0, result.decided_at_ms - routed.routed_at_ms) / 1000
                    decision.matched_after_s.append((result.channel, seconds))
                if result.terminal and book is None and routed is not None:
                    book = book_for_match(state, result, fee)
            value = self._results_ser.encode(result_record(result, fee, net))
            decision.outputs.append(
                Output(self._topics.results, result.payment_id.encode(), value,
                       ((SOURCE_HEADER, ref),))
            )
            decision.results.append(result)
        return book

    def _dead_letter(
        self, key: bytes | None, value: bytes | None, src: Origin, exc: BaseException,
    ) -> ReconDecision:
        out = self._dlq.letter(key, value, src.topic, src.partition, src.offset, exc,
                               self._clock())
        return ReconDecision(DEAD_LETTERED, [out], error_type=error_label(exc))


class _BadInput(Exception):
    """Internal: wraps the error that makes a record unusable (dead-lettered quietly)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _waiting_for(state: ReconState) -> tuple[str, str, int] | None:
    if state.outcome is not None:
        return None
    if state.routed is not None and state.routed_seen_ms is not None:
        return WAITING_CONFIRMATION, state.routed.channel, state.routed_seen_ms
    if state.pending and not state.orphan_declared:
        return WAITING_ROUTED, state.pending[0].channel, state.first_seen_ms
    return None
