"""Per-payment reconciliation: pure transitions deciding one terminal outcome per payment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar, Self, cast

from settlement.errors import DomainError

# Outcomes: the public contract of reconciliation.results.
MATCHED = "MATCHED"
DECLINED = "DECLINED"
AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
MISSING_CONFIRMATION = "MISSING_CONFIRMATION"
DUPLICATE_CONFIRMATION = "DUPLICATE_CONFIRMATION"
ORPHAN_CONFIRMATION = "ORPHAN_CONFIRMATION"
LATE_CONFIRMATION = "LATE_CONFIRMATION"
# An operator's resolution of the payment's exception case settled it (settlement.cases):
# never an automatic decision, so MATCHED keeps meaning "the channel confirmed exactly this".
MATCHED_MANUAL = "MATCHED_MANUAL"
# After a MATCHED: the channel took the money back (settlement.refunds decides these).
PAYMENT_REVERSED = "PAYMENT_REVERSED"
REFUND_REVERSED = "REFUND_REVERSED"
REVERSAL_EXCEPTION = "REVERSAL_EXCEPTION"
TERMINAL_OUTCOMES = frozenset(
    {MATCHED, DECLINED, AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION, MATCHED_MANUAL}
)
RECORD_OUTCOMES = frozenset({DUPLICATE_CONFIRMATION, ORPHAN_CONFIRMATION, LATE_CONFIRMATION,
                             PAYMENT_REVERSED, REFUND_REVERSED, REVERSAL_EXCEPTION})
OUTCOMES = TERMINAL_OUTCOMES | RECORD_OUTCOMES

# The case resolutions that settle a payment by hand, and the outcome each one replaces:
# a force-match settles an AMOUNT_MISMATCH at the confirmed amount, a mark-received settles
# a MISSING_CONFIRMATION at the expected amount (the operator vouching the funds arrived).
FORCE_MATCH = "FORCE_MATCH"
MARK_RECEIVED = "MARK_RECEIVED"
MANUAL_MATCH_FROM = MappingProxyType(
    {FORCE_MATCH: AMOUNT_MISMATCH, MARK_RECEIVED: MISSING_CONFIRMATION}
)

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
# A captured payment taken back by its channel: never a reconciliation answer, decided
# against the payment's refund book (settlement.refunds.on_payment_reversal).
REVERSED = "REVERSED"
CONFIRMATION_STATUSES = frozenset({SUCCEEDED, FAILED, REVERSED})

# Confirmation ids remembered per payment to make redeliveries no-ops. Bounded so a channel
# that spams one payment cannot grow the table value forever; an id pushed out and then
# redelivered is reported as DUPLICATE_CONFIRMATION with the same result_id every time, which
# never changes the terminal state and which sinks dedupe.
SEEN_CONFIRMATION_IDS_MAX = 64
STATE_FORMAT_VERSION = 1


class ReconError(DomainError, ValueError):
    """Reconciliation was called with input that breaks its rules (a caller bug)."""


class RoutedConflict(ReconError):
    """The same payment_id was routed twice with different details."""


class ReconInvariantError(ReconError):
    """A transition would break a reconciliation invariant; nothing may be emitted."""


def _check(cls_name: str, obj: object, strs: tuple[str, ...], ints: tuple[str, ...]) -> None:
    for name in strs:
        value = getattr(obj, name)
        if not isinstance(value, str) or not value:
            raise ReconError(f"{cls_name}.{name} must be a non-empty string, got {value!r}")
    for name in ints:
        value = getattr(obj, name)
        # bool is an int subclass; True as an amount or a timestamp is always a bug.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReconError(f"{cls_name}.{name} must be an int, got {value!r}")


class _Flat:
    """to_dict/from_dict for frozen dataclasses whose fields are already JSON-compatible."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        try:
            result: Self = cast(Any, cls)(**data)
        except TypeError as exc:  # unknown or missing keys
            raise ReconError(f"cannot read {cls.__name__} from {dict(data)!r}: {exc}") from exc
        return result


@dataclass(frozen=True, slots=True)
class RoutedInfo(_Flat):
    """What the reconciler needs from payments.routed.<channel>."""

    payment_id: str
    merchant_id: str
    channel: str
    amount_minor: int
    currency: str
    created_at_ms: int
    routed_at_ms: int
    # The merchant's order id, carried to the results (None in states kept before it was).
    order_id: str | None = None

    def __post_init__(self) -> None:
        _check(
            "RoutedInfo",
            self,
            ("payment_id", "merchant_id", "channel", "currency"),
            ("amount_minor", "created_at_ms", "routed_at_ms"),
        )
        if self.amount_minor <= 0:
            raise ReconError(f"RoutedInfo.amount_minor must be > 0, got {self.amount_minor}")


@dataclass(frozen=True, slots=True)
class Confirmation(_Flat):
    """A channel's answer for one payment, as read from channel.confirmations."""

    confirmation_id: str
    channel: str
    channel_txn_id: str
    payment_id: str
    status: str
    amount_minor: int
    currency: str
    confirmed_at_ms: int

    def __post_init__(self) -> None:
        _check(
            "Confirmation",
            self,
            ("confirmation_id", "channel", "channel_txn_id", "payment_id", "currency"),
            ("amount_minor", "confirmed_at_ms"),
        )
        if self.status not in CONFIRMATION_STATUSES:
            raise ReconError(f"Confirmation.status must be SUCCEEDED, FAILED or REVERSED: "
                             f"{self.status!r}")
        if self.amount_minor < 0:
            raise ReconError(f"Confirmation.amount_minor must be >= 0, got {self.amount_minor}")


@dataclass(frozen=True, slots=True)
class ReconPolicy:
    """Timing rules: how long to wait for a channel, for a routed payment, and to keep state."""

    sla_ms_by_channel: Mapping[str, int]
    default_sla_ms: int
    orphan_grace_ms: int
    retain_decided_ms: int

    def __post_init__(self) -> None:
        values = {**self.sla_ms_by_channel, "default_sla_ms": self.default_sla_ms}
        values.update(orphan_grace_ms=self.orphan_grace_ms)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ReconError(f"ReconPolicy {name} must be an int > 0, got {value!r}")
        retain = self.retain_decided_ms
        if isinstance(retain, bool) or not isinstance(retain, int) or retain < 0:
            raise ReconError(f"ReconPolicy retain_decided_ms must be an int >= 0: {retain!r}")
        object.__setattr__(
            self, "sla_ms_by_channel", MappingProxyType(dict(self.sla_ms_by_channel))
        )

    def sla_ms_for(self, channel: str) -> int:
        return self.sla_ms_by_channel.get(channel, self.default_sla_ms)


def result_id_for(payment_id: str, outcome: str, confirmation_id: str | None) -> str:
    """Deterministic, so a replayed event yields the same id and sinks can dedupe on it."""
    return f"{payment_id}:{outcome}:{confirmation_id or '-'}"


@dataclass(frozen=True, slots=True)
class ResultRecord(_Flat):
    """One record on reconciliation.results: a terminal decision or a record for follow-up."""

    result_id: str
    payment_id: str
    merchant_id: str | None
    channel: str | None
    outcome: str
    terminal: bool
    late: bool
    expected_amount_minor: int | None
    expected_currency: str | None
    confirmed_amount_minor: int | None
    confirmed_currency: str | None
    confirmation_id: str | None
    channel_txn_id: str | None
    created_at_ms: int | None
    decided_at_ms: int
    detail: str
    order_id: str | None = None
    # The gross a MATCHED_MANUAL settles (a MATCHED settles its expected amount; None here).
    settled_amount_minor: int | None = None
    # MATCHED_MANUAL: the case whose resolution settled it, who resolved and who approved it.
    case_id: str | None = None
    operator: str | None = None
    approver: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ReconInvariantError(f"unknown outcome {self.outcome!r}")
        if self.terminal != (self.outcome in TERMINAL_OUTCOMES):
            raise ReconInvariantError(f"{self.outcome} with terminal={self.terminal}")
        if self.result_id != result_id_for(self.payment_id, self.outcome, self.confirmation_id):
            raise ReconInvariantError(f"result_id {self.result_id!r} is not deterministic")
        # The one invariant the ledger relies on: money is only ever posted for what the
        # payment asked for, in its currency. Checked on construction, so also on read-back.
        expected = (self.expected_amount_minor, self.expected_currency)
        confirmed = (self.confirmed_amount_minor, self.confirmed_currency)
        if self.outcome == MATCHED and (None in expected or expected != confirmed):
            raise ReconInvariantError(f"MATCHED without equal amounts and currencies: {self}")
        if self.outcome == MATCHED_MANUAL:
            _check_manual(self)
        elif (self.settled_amount_minor, self.case_id, self.operator, self.approver) != (
                None, None, None, None):
            raise ReconInvariantError(f"{self.outcome} with a manual settlement: {self}")


def _check_manual(result: ResultRecord) -> None:
    """A MATCHED_MANUAL settles a positive amount in the payment's currency: the confirmed
    amount when a confirmation stands behind it, else the expected one; named by its case."""
    settled = result.settled_amount_minor
    confirmed = result.confirmed_amount_minor
    wanted = confirmed if confirmed is not None else result.expected_amount_minor
    checks = {
        "settled > 0": isinstance(settled, int) and not isinstance(settled, bool)
        and settled > 0,
        "settled is the confirmed amount, else the expected one": settled == wanted,
        "in the payment's currency": result.expected_currency is not None
        and result.confirmed_currency in (None, result.expected_currency),
        "names its case and operator": bool(result.case_id) and bool(result.operator),
        "approver is another operator": result.approver is None
        or not same_operator(result.approver, result.operator or ""),
    }
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise ReconInvariantError(f"MATCHED_MANUAL {result.result_id}: broken {broken}")


def same_operator(a: str, b: str) -> bool:
    """Operators are names typed by people: " Alice" and "alice" are one person."""
    return a.strip().casefold() == b.strip().casefold()


@dataclass(frozen=True, slots=True)
class ReconState(_Flat):
    """Everything the reconciler remembers about one payment; a value in a changelogged table."""

    payment_id: str
    first_seen_ms: int
    routed: RoutedInfo | None = None
    # When the routed payment reached us; the SLA never starts before it (see _missing_at_ms).
    routed_seen_ms: int | None = None
    # Confirmations held until the routed payment arrives, in arrival order: the first decides.
    pending: tuple[Confirmation, ...] = ()
    seen_confirmation_ids: tuple[str, ...] = ()
    outcome: str | None = None
    decided_at_ms: int | None = None
    decided_by: str | None = None  # confirmation id behind the outcome; None for MISSING
    missing_declared: bool = False
    # The first confirmation after MISSING decides the late fate, matched or not, exactly once.
    late_confirmation_id: str | None = None
    late_matched: bool = False
    orphan_declared: bool = False
    # MATCHED_MANUAL: the outcome it replaced and the case whose resolution settled it.
    manual_from: str | None = None
    manual_case_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pending", tuple(self.pending))
        object.__setattr__(self, "seen_confirmation_ids", tuple(self.seen_confirmation_ids))
        routed, outcome, late_id = self.routed, self.outcome, self.late_confirmation_id
        manual = outcome == MATCHED_MANUAL
        was_missing = (outcome == MISSING_CONFIRMATION
                       or (outcome == MATCHED and self.late_matched)
                       or (manual and self.manual_from == MISSING_CONFIRMATION))
        checks = {
            "pending only while not routed": not (self.pending and routed is not None),
            "routed_seen_ms set iff routed": (routed is None) == (self.routed_seen_ms is None),
            "routed is this payment": routed is None or routed.payment_id == self.payment_id,
            "outcome is terminal": outcome is None or outcome in TERMINAL_OUTCOMES,
            "decided needs routed": outcome is None or None not in (routed, self.decided_at_ms),
            "MISSING iff declared, until a late match": was_missing == self.missing_declared,
            "late confirmation only after MISSING": self.missing_declared or late_id is None,
            "late match has its confirmation": not self.late_matched
            or (late_id is not None and late_id == self.decided_by),
            "manual match iff from a resolvable outcome, by a case": manual == (
                self.manual_from in MANUAL_MATCH_FROM.values()) == bool(self.manual_case_id),
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise ReconInvariantError(f"ReconState {self.payment_id}: broken {broken}")

    def to_dict(self) -> dict[str, Any]:
        data = super(ReconState, self).to_dict()
        data["v"] = STATE_FORMAT_VERSION
        data["routed"] = self.routed.to_dict() if self.routed is not None else None
        data["pending"] = [conf.to_dict() for conf in self.pending]
        data["seen_confirmation_ids"] = list(self.seen_confirmation_ids)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReconState:
        values = dict(data)
        if values.pop("v", None) != STATE_FORMAT_VERSION:
            raise ReconError(f"unknown ReconState format version {data.get('v')!r}")
        routed = values.get("routed")
        values["routed"] = RoutedInfo.from_dict(routed) if routed is not None else None
        values["pending"] = tuple(Confirmation.from_dict(c) for c in values.get("pending", ()))
        values["seen_confirmation_ids"] = tuple(values.get("seen_confirmation_ids", ()))
        return super(ReconState, cls).from_dict(values)


Transition = tuple[ReconState, list[ResultRecord]]


def classify(routed: RoutedInfo, conf: Confirmation) -> tuple[str, str]:
    """(terminal outcome, detail) for a confirmation on the routed channel.

    FAILED wins over any amount difference: no money moved, so it is a decline. Currency is
    compared before amount because amounts in different currencies are not comparable.
    """
    if conf.status == FAILED:
        return DECLINED, f"channel declined ({conf.channel_txn_id})"
    if conf.currency != routed.currency:
        return CURRENCY_MISMATCH, f"expected {routed.currency}, confirmed {conf.currency}"
    if conf.amount_minor != routed.amount_minor:
        return AMOUNT_MISMATCH, f"expected {routed.amount_minor}, confirmed {conf.amount_minor}"
    return MATCHED, "confirmed amount and currency equal the routed payment"


def _record(
    state: ReconState,
    outcome: str,
    now_ms: int,
    detail: str,
    conf: Confirmation | None = None,
    late: bool = False,
) -> ResultRecord:
    routed = state.routed
    return ResultRecord(
        result_id=result_id_for(state.payment_id, outcome, conf.confirmation_id if conf else None),
        payment_id=state.payment_id,
        merchant_id=routed.merchant_id if routed else None,
        # The confirmation's channel, when there is one, is where the money actually is.
        channel=conf.channel if conf else (routed.channel if routed else None),
        outcome=outcome,
        terminal=outcome in TERMINAL_OUTCOMES,
        late=late,
        expected_amount_minor=routed.amount_minor if routed else None,
        expected_currency=routed.currency if routed else None,
        confirmed_amount_minor=conf.amount_minor if conf else None,
        confirmed_currency=conf.currency if conf else None,
        confirmation_id=conf.confirmation_id if conf else None,
        channel_txn_id=conf.channel_txn_id if conf else None,
        created_at_ms=routed.created_at_ms if routed else None,
        decided_at_ms=now_ms,
        detail=detail,
        order_id=routed.order_id if routed else None,
    )


def _set_outcome(state: ReconState, outcome: str, now_ms: int, **changes: Any) -> ReconState:
    # The only automatic terminal transitions: undecided -> any terminal outcome, and the
    # single MISSING -> MATCHED (late); an operator's case adds AMOUNT_MISMATCH or MISSING ->
    # MATCHED_MANUAL (on_manual_match). Anything else would publish a second verdict.
    late_match = state.outcome == MISSING_CONFIRMATION and outcome == MATCHED
    if state.outcome is not None and not (late_match and not state.late_matched):
        raise ReconInvariantError(f"{state.payment_id}: {state.outcome} -> {outcome} refused")
    return replace(state, outcome=outcome, decided_at_ms=now_ms, late_matched=late_match, **changes)


def _already_seen(state: ReconState, confirmation_id: str) -> bool:
    return (
        confirmation_id in state.seen_confirmation_ids
        or confirmation_id in (state.decided_by, state.late_confirmation_id)
        or any(conf.confirmation_id == confirmation_id for conf in state.pending)
    )


def _remember(state: ReconState, confirmation_id: str) -> ReconState:
    seen = (*state.seen_confirmation_ids, confirmation_id)[-SEEN_CONFIRMATION_IDS_MAX:]
    return replace(state, seen_confirmation_ids=seen)


def _apply(state: ReconState, conf: Confirmation, now_ms: int) -> Transition:
    """A new confirmation for a routed payment."""
    routed = state.routed
    assert routed is not None  # callers only apply once routed; kept for mypy
    if conf.channel != routed.channel:
        # Not an answer to the request we sent, so it must not decide (or pay) this payment.
        detail = f"confirmation from {conf.channel}, payment was routed to {routed.channel}"
        return state, [_record(state, ORPHAN_CONFIRMATION, now_ms, detail, conf)]
    outcome, detail = classify(routed, conf)
    if state.outcome is None:
        state = _set_outcome(state, outcome, now_ms, decided_by=conf.confirmation_id)
        return state, [_record(state, outcome, now_ms, detail, conf)]
    if state.outcome == MISSING_CONFIRMATION and state.late_confirmation_id is None:
        cid = conf.confirmation_id
        if outcome == MATCHED:
            # Still pay the merchant: the channel did take the money, only later than the SLA.
            state = _set_outcome(state, MATCHED, now_ms, decided_by=cid, late_confirmation_id=cid)
            detail = f"late: {detail}, after MISSING_CONFIRMATION"
            return state, [_record(state, MATCHED, now_ms, detail, conf, late=True)]
        state = replace(state, late_confirmation_id=cid)
        detail = f"after MISSING_CONFIRMATION, would be {outcome}: {detail}"
        return state, [_record(state, LATE_CONFIRMATION, now_ms, detail, conf, late=True)]
    by = (f"case {state.manual_case_id}" if state.outcome == MATCHED_MANUAL
          else state.decided_by or "timer")
    detail = f"payment already {state.outcome} by {by}"
    return state, [_record(state, DUPLICATE_CONFIRMATION, now_ms, detail, conf)]


def _state_for(state: ReconState | None, payment_id: str, now_ms: int) -> ReconState:
    if state is None:
        return ReconState(payment_id=payment_id, first_seen_ms=now_ms)
    if state.payment_id != payment_id:
        raise ReconError(f"event for {payment_id} applied to the state of {state.payment_id}")
    return state


def on_routed(state: ReconState | None, routed: RoutedInfo, now_ms: int) -> Transition:
    """A routed payment arrived: record it and decide on the confirmations already held.

    The first held confirmation (arrival order) decides; the other held ones become
    DUPLICATE_CONFIRMATION. This also holds after ORPHAN_CONFIRMATION was declared: the
    orphan records stay published (they were true when written) and the payment is decided
    normally, so a slow routed topic costs an exception record, not the merchant's money.
    """
    state = _state_for(state, routed.payment_id, now_ms)
    if state.routed is not None:
        if state.routed == routed:
            return state, []  # redelivery
        raise RoutedConflict(f"{routed.payment_id} routed as {state.routed}, now as {routed}")
    held = state.pending
    state = replace(state, routed=routed, routed_seen_ms=now_ms, pending=())
    results: list[ResultRecord] = []
    for conf in held:
        if conf.channel != routed.channel and state.orphan_declared:
            continue  # already published as ORPHAN_CONFIRMATION with this result_id
        state, records = _apply(state, conf, now_ms)
        results.extend(records)
    return state, results


def on_confirmation(state: ReconState | None, conf: Confirmation, now_ms: int) -> Transition:
    """A confirmation arrived: decide, record a duplicate or late answer, or hold it."""
    if conf.status == REVERSED:
        raise ReconError(f"{conf.payment_id}: a reversal is no reconciliation answer")
    state = _state_for(state, conf.payment_id, now_ms)
    if _already_seen(state, conf.confirmation_id):
        return state, []  # the same confirmation redelivered: idempotent no-op
    state = _remember(state, conf.confirmation_id)
    if state.routed is None:
        state = replace(state, pending=(*state.pending, conf))
        if state.orphan_declared:
            # The payment's grace period is over; report this one at once as well.
            detail = "no routed payment after the orphan grace period"
            return state, [_record(state, ORPHAN_CONFIRMATION, now_ms, detail, conf)]
        return state, []
    return _apply(state, conf, now_ms)


def on_manual_match(
    state: ReconState,
    settled_amount_minor: int,
    now_ms: int,
    case_id: str,
    operator: str,
    approver: str | None,
    resolution: str,
    channel_txn_id: str | None = None,
) -> Transition:
    """An operator's resolution settles the payment: MATCHED_MANUAL, terminal, once.

    FORCE_MATCH settles an AMOUNT_MISMATCH at the amount its channel confirmed (the case's
    amount, passed as `settled_amount_minor`, with the confirmation's `channel_txn_id` when
    known); MARK_RECEIVED settles a MISSING_CONFIRMATION at the expected amount. Anything else
    is a caller bug (the case rules refuse it first): ReconError, nothing changes.
    """
    wanted = MANUAL_MATCH_FROM.get(resolution)
    routed = state.routed
    if wanted is None:
        raise ReconError(f"{state.payment_id}: {resolution!r} does not settle a payment")
    if state.outcome != wanted or routed is None:
        raise ReconError(f"{state.payment_id}: {resolution} needs {wanted}, payment is "
                         f"{state.outcome or 'undecided'}")
    mark = resolution == MARK_RECEIVED
    if mark and settled_amount_minor != routed.amount_minor:
        raise ReconError(f"{state.payment_id}: MARK_RECEIVED settles the expected "
                         f"{routed.amount_minor}, not {settled_amount_minor}")
    if not mark and settled_amount_minor == routed.amount_minor:
        raise ReconError(f"{state.payment_id}: FORCE_MATCH of the expected amount")
    confirmation_id = None if mark else state.decided_by
    state = replace(state, outcome=MATCHED_MANUAL, decided_at_ms=now_ms, manual_from=wanted,
                    manual_case_id=case_id)
    verb = "marked received" if mark else "force-matched"
    detail = (f"{verb} by case {case_id}: settles {settled_amount_minor} {routed.currency} "
              f"(expected {routed.amount_minor}) after {wanted}")
    result = ResultRecord(
        result_id=result_id_for(state.payment_id, MATCHED_MANUAL, confirmation_id),
        payment_id=state.payment_id, merchant_id=routed.merchant_id, channel=routed.channel,
        outcome=MATCHED_MANUAL, terminal=True, late=False,
        expected_amount_minor=routed.amount_minor, expected_currency=routed.currency,
        confirmed_amount_minor=None if mark else settled_amount_minor,
        confirmed_currency=None if mark else routed.currency,
        confirmation_id=confirmation_id, channel_txn_id=None if mark else channel_txn_id,
        created_at_ms=routed.created_at_ms, decided_at_ms=now_ms, detail=detail,
        order_id=routed.order_id, settled_amount_minor=settled_amount_minor, case_id=case_id,
        operator=operator, approver=approver,
    )
    return state, [result]


def _missing_at_ms(state: ReconState, policy: ReconPolicy) -> int | None:
    if state.routed is None or state.routed_seen_ms is None or state.outcome is not None:
        return None
    # The SLA starts when the channel was asked, but never before we saw the payment: after
    # an outage the reconciler must not declare a backlog MISSING before reading its answers.
    started_ms = max(state.routed.routed_at_ms, state.routed_seen_ms)
    return started_ms + policy.sla_ms_for(state.routed.channel)


def _orphan_at_ms(state: ReconState, policy: ReconPolicy) -> int | None:
    if state.routed is not None or not state.pending or state.orphan_declared:
        return None
    return state.first_seen_ms + policy.orphan_grace_ms


def on_tick(state: ReconState, now_ms: int, policy: ReconPolicy) -> Transition:
    """Timer: declare MISSING_CONFIRMATION or ORPHAN_CONFIRMATION once their time has come."""
    missing_at_ms = _missing_at_ms(state, policy)
    if missing_at_ms is not None and now_ms >= missing_at_ms:
        state = _set_outcome(state, MISSING_CONFIRMATION, now_ms, missing_declared=True)
        detail = f"no confirmation by {missing_at_ms} (channel SLA)"
        return state, [_record(state, MISSING_CONFIRMATION, now_ms, detail)]
    orphan_at_ms = _orphan_at_ms(state, policy)
    if orphan_at_ms is not None and now_ms >= orphan_at_ms:
        state = replace(state, orphan_declared=True)
        detail = "no routed payment after the orphan grace period"
        return state, [
            _record(state, ORPHAN_CONFIRMATION, now_ms, detail, c) for c in state.pending
        ]
    return state, []


def deadline_ms(state: ReconState, policy: ReconPolicy) -> int | None:
    """When on_tick can next change this state, or None if only a new event can."""
    missing_at_ms = _missing_at_ms(state, policy)
    return missing_at_ms if missing_at_ms is not None else _orphan_at_ms(state, policy)


def evict_at_ms(state: ReconState, policy: ReconPolicy) -> int | None:
    """When the state may be dropped from the table, or None while it is still needed."""
    if state.outcome is not None and state.decided_at_ms is not None:
        return state.decided_at_ms + policy.retain_decided_ms
    if state.routed is None and state.orphan_declared:
        return state.first_seen_ms + policy.orphan_grace_ms + policy.retain_decided_ms
    return None


def is_evictable(state: ReconState, now_ms: int, policy: ReconPolicy) -> bool:
    """True once the payment was decided (or its orphans reported) retain_decided_ms ago.

    The trade-off: after eviction the payment is forgotten, so a further confirmation for it
    is held as new and reported as ORPHAN_CONFIRMATION instead of DUPLICATE or LATE, and an
    orphan's routed payment arriving later ends as MISSING_CONFIRMATION. Worse, a redelivered
    routed payment would start over; so retain_decided_ms must exceed the longest time either
    input topic can be replayed (commit interval plus recovery), and, for a MISSING payment,
    the time within which late confirmations should still pay the merchant.
    """
    evict_at = evict_at_ms(state, policy)
    return evict_at is not None and now_ms >= evict_at
