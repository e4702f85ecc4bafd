"""Exception cases in the reconcile stage: opened from the stage's own exception results,
resolved by operators' CaseActions, kept in the payment's table value.

Table value of a payment (stream_processors.reconcile) gains "cases": {case_id: Case} and
"c_emitted": [[source ref, [[topic, hex value], ...]], ...], the case events (and the
MATCHED_MANUAL result) each recent input or tick produced, so one read again after a crash
re-sends exactly them (see stream_processors.replay). The case and the decision that opened
or resolved it are written in the same value, with one write per input.

Retention: a payment's reconciliation state is kept while a PAYMENT case about it is open (a
money resolution needs it); a resolved case is dropped retain_ms after it resolved; a value
left with nothing but cases goes once the last of them is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import AvroSerializer, to_epoch_ms
from settlement import cases as cs
from settlement import reconciliation as recon
from settlement import refunds as rf
from settlement.cases import Case, CaseAction, CasePolicy, CaseStep
from settlement.disputes import EVENT_REJECTED, DisputeOutcome
from settlement.fees import FeeSchedule
from settlement.reconciliation import ReconState, ResultRecord
from stream_processors.outputs import SOURCE_HEADER, Output
from stream_processors.reconcile_records import result_record

C_EMITTED_KEEP: Final = 8


@dataclass(slots=True)
class CaseOut:
    """What the cases made of one input or tick: outputs to publish, metrics, the value after.

    `raw` is the table value with the cases and their replay memory updated (the input value
    itself when nothing changed, None when there was none and none is needed); `state` and
    `book` are set when a resolution settled the payment (MATCHED_MANUAL).
    """

    raw: Any
    outputs: list[Output] = field(default_factory=list)
    counts: list[tuple[str, str]] = field(default_factory=list)  # (event kind, case outcome)
    results: list[ResultRecord] = field(default_factory=list)
    state: ReconState | None = None
    book: rf.RefundBook | None = None


def case_action_info(record: dict[str, Any]) -> CaseAction:
    """A CaseAction record."""
    return CaseAction(
        action_id=record["action_id"],
        case_id=record["case_id"],
        payment_id=record["payment_id"],
        kind=record["kind"],
        resolution=record.get("resolution"),
        operator=record["operator"],
        remark=record["remark"],
        requested_at_ms=to_epoch_ms(record["requested_at"]),
    )


def cases_of(raw: Any) -> dict[str, Case]:
    if not isinstance(raw, dict) or not raw.get("cases"):
        return {}
    return {case_id: Case.from_dict(data) for case_id, data in raw["cases"].items()}


def holds_state(raw: Any) -> bool:
    """True while a PAYMENT case of the value is open: its reconciliation state must stay."""
    if not isinstance(raw, dict) or not raw.get("cases"):
        return False
    return any(data["subject"] == cs.PAYMENT and data["status"] != cs.RESOLVED
               for data in raw["cases"].values())


def cases_due_ms(raw: Any, policy: CasePolicy) -> int | None:
    """When the next resolved case of the value may be dropped (None: none resolved)."""
    if not isinstance(raw, dict) or not raw.get("cases"):
        return None
    times = [data["resolved_at_ms"] + policy.retain_ms for data in raw["cases"].values()
             if data.get("resolved_at_ms") is not None]
    return min(times) if times else None


def pruned(raw: dict[str, Any], now: int, policy: CasePolicy) -> dict[str, Any] | None:
    """The value without its cases resolved retain_ms ago, or None when none is due."""
    stored = raw.get("cases") or {}
    kept = {case_id: data for case_id, data in stored.items()
            if data.get("resolved_at_ms") is None
            or now < data["resolved_at_ms"] + policy.retain_ms}
    if len(kept) == len(stored):
        return None
    value = dict(raw)
    if kept:
        value["cases"] = kept
    else:
        value.pop("cases", None)
        value.pop("c_emitted", None)
    return value


def c_emitted_by(raw: Any, ref: bytes) -> list[Output] | None:
    """The case outputs the input or tick at `ref` produced, if this value applied it."""
    if not isinstance(raw, dict):
        return None
    wanted = ref.decode()
    for source, values in raw.get("c_emitted", ()):
        if source == wanted:
            return [Output(topic, key.encode(), bytes.fromhex(value), ((SOURCE_HEADER, ref),))
                    for topic, key, value in values]
    return None


def _remembered(raw: Any, ref: bytes, outputs: list[Output]) -> list[list[Any]]:
    """The value's recent case outputs plus these; a tick that already stored some for this
    value (its refunds' cases, then its payment's) adds to its own entry."""
    entries = list(raw.get("c_emitted", [])) if isinstance(raw, dict) else []
    wanted = ref.decode()
    encoded = [[o.topic, (o.key or b"").decode(), o.value.hex()] for o in outputs]
    if entries and entries[-1][0] == wanted:
        return [*entries[:-1], [wanted, [*entries[-1][1], *encoded]]]
    return [*entries[-(C_EMITTED_KEEP - 1):], [wanted, encoded]]


def book_for_manual_match(state: ReconState, result: ResultRecord, fee_minor: int,
                          ) -> rf.RefundBook:
    """The refund book a MATCHED_MANUAL payment opens: captured is what it settled."""
    routed = state.routed
    settled = result.settled_amount_minor
    assert routed is not None and result.outcome == recon.MATCHED_MANUAL and settled
    return rf.RefundBook(
        payment_id=state.payment_id, merchant_id=routed.merchant_id, channel=routed.channel,
        currency=routed.currency, captured_minor=settled, fee_minor=fee_minor,
        captured_at_ms=result.decided_at_ms, order_id=routed.order_id,
        channel_txn_id=result.channel_txn_id,
    )


def _evidence(**values: object) -> dict[str, str]:
    return {name: str(value) for name, value in values.items()
            if value is not None and value != ""}


class CaseDecider:
    """Opens, resolves and encodes the cases of the reconcile stage's table values."""

    def __init__(self, registry: Any, topics: Any, policy: CasePolicy, fees: FeeSchedule,
                 clock: Callable[[], int]) -> None:
        self._topics = topics
        self.policy = policy
        self._fees = fees
        self._clock = clock
        self._events = AvroSerializer(registry, topics.case_events, "CaseEvent")
        self._results = AvroSerializer(registry, topics.results, "ReconciliationResult")
        self.serializers = [self._events, self._results]
        self.topic = topics.case_actions

    # -- opening --------------------------------------------------------------------------

    def after_results(self, raw: Any, partition: int, results: Iterable[ResultRecord],
                      now: int, ref: bytes) -> CaseOut:
        """Cases for a payment's exception results; a late MATCHED closes its MISSING case."""
        results = [r for r in results if r.outcome in cs.PAYMENT_CASE_OUTCOMES
                   or (r.outcome == recon.MATCHED and r.late)]
        if not results:  # the common case: nothing to read or write
            return CaseOut(raw)
        cases = cases_of(raw)
        steps: list[tuple[Case, CaseStep]] = []
        for result in results:
            if result.outcome == recon.MATCHED and result.late:
                for case_id, case in list(cases.items()):
                    closed, done = cs.auto_resolve(case, now, result.result_id)
                    cases[case_id] = closed
                    steps.extend((closed, step) for step in done)
                continue
            opens = (result.outcome == recon.REVERSAL_EXCEPTION
                     or (result.terminal and result.outcome in cs.PAYMENT_CASE_OUTCOMES))
            if not opens or cs.case_id_for(result.result_id) in cases:
                continue
            amount, currency = result.expected_amount_minor, result.expected_currency
            if result.outcome == recon.AMOUNT_MISMATCH or amount is None:
                amount, currency = result.confirmed_amount_minor, result.confirmed_currency
            case, step = cs.open_case(
                payment_id=result.payment_id, subject=cs.PAYMENT, subject_id=result.payment_id,
                outcome=result.outcome, opened_by=result.result_id, now_ms=now,
                merchant_id=result.merchant_id, channel=result.channel, amount_minor=amount,
                currency=currency, evidence=_evidence(
                    expected_amount_minor=result.expected_amount_minor,
                    expected_currency=result.expected_currency,
                    confirmed_amount_minor=result.confirmed_amount_minor,
                    confirmed_currency=result.confirmed_currency,
                    confirmation_id=result.confirmation_id,
                    channel_txn_id=result.channel_txn_id, detail=result.detail))
            cases[case.case_id] = case
            steps.append((case, step))
        return self._stored(raw, partition, cases, steps, ref)

    def after_refunds(self, raw: Any, partition: int, outcomes: Iterable[rf.RefundOutcome],
                      book: rf.RefundBook | None, now: int, ref: bytes) -> CaseOut:
        """Cases for a refund's exception results (REFUND subject)."""
        outcomes = [r for r in outcomes if r.outcome in cs.REFUND_CASE_OUTCOMES]
        if not outcomes:
            return CaseOut(raw)
        cases = cases_of(raw)
        steps: list[tuple[Case, CaseStep]] = []
        for result in outcomes:
            if result.outcome not in cs.REFUND_CASE_OUTCOMES \
                    or cs.case_id_for(result.result_id) in cases:
                continue
            refund, conf = result.refund, result.confirmation
            amount = refund.amount_minor if refund is not None else None
            currency = book.currency if book is not None and refund is not None else None
            if amount is None and conf is not None:
                amount, currency = conf.amount_minor, conf.currency
            channel = conf.channel if conf is not None else (book.channel if book else None)
            case, step = cs.open_case(
                payment_id=result.payment_id, subject=cs.REFUND, subject_id=result.refund_id,
                outcome=result.outcome, opened_by=result.result_id, now_ms=now,
                merchant_id=book.merchant_id if book else None, channel=channel,
                amount_minor=amount, currency=currency, evidence=_evidence(
                    refund_id=result.refund_id, expected_amount_minor=amount,
                    expected_currency=currency,
                    confirmed_amount_minor=conf.amount_minor if conf else None,
                    confirmed_currency=conf.currency if conf else None,
                    confirmation_id=conf.confirmation_id if conf else None,
                    channel_refund_id=conf.channel_refund_id if conf else None,
                    detail=result.detail))
            cases[case.case_id] = case
            steps.append((case, step))
        return self._stored(raw, partition, cases, steps, ref)

    def after_disputes(self, raw: Any, partition: int, outcomes: Iterable[DisputeOutcome],
                       now: int, ref: bytes) -> CaseOut:
        """Cases for rejected dispute records (DISPUTE subject, outcome DISPUTE_REJECTED)."""
        outcomes = [r for r in outcomes if r.event == EVENT_REJECTED]
        if not outcomes:
            return CaseOut(raw)
        cases = cases_of(raw)
        steps: list[tuple[Case, CaseStep]] = []
        for result in outcomes:
            if result.event != EVENT_REJECTED or cs.case_id_for(result.result_id) in cases:
                continue
            case, step = cs.open_case(
                payment_id=result.payment_id, subject=cs.DISPUTE,
                subject_id=result.dispute_id or "-", outcome=cs.DISPUTE_REJECTED,
                opened_by=result.result_id, now_ms=now, merchant_id=result.merchant_id,
                channel=result.channel, amount_minor=result.amount_minor,
                currency=result.currency, evidence=_evidence(
                    dispute_id=result.dispute_id, channel_dispute_id=result.channel_dispute_id,
                    event_id=result.event_id, stage=result.stage, status=result.status,
                    amount_minor=result.amount_minor, currency=result.currency,
                    reason_codes=",".join(result.reason_codes),
                    channel_reason_code=result.reason_code, detail=result.detail))
            cases[case.case_id] = case
            steps.append((case, step))
        return self._stored(raw, partition, cases, steps, ref)

    # -- actions --------------------------------------------------------------------------

    def on_action(self, raw: Any, partition: int, action: CaseAction, key: bytes | None,
                  now: int, ref: bytes) -> CaseOut:
        """An operator's action on one of the payment's cases (`key`: the record's key as
        written, None for a record moved by the stage or written without one)."""
        if key is not None and key != action.payment_id.encode():
            step = cs.refused_without_case(action, cs.PAYMENT_MISMATCH, (
                f"the record's key {key!r} is not its payment_id {action.payment_id!r}"), now)
            return CaseOut(raw, [self._event(None, step, ref, action)],
                           [(step.kind, cs.UNKNOWN_OUTCOME)])
        cases = cases_of(raw)
        case = cases.get(action.case_id)
        if case is None:
            step = cs.refused_without_case(action, cs.CASE_UNKNOWN, (
                f"no case {action.case_id} for payment {action.payment_id}"), now)
            out = CaseOut(raw, [self._event(None, step, ref, action)],
                          [(step.kind, cs.UNKNOWN_OUTCOME)])
            if raw is not None:  # a payment the stage holds remembers, so replays re-send
                out.raw = self._value(raw, partition, cases, out.outputs, ref)
            return out
        state = (ReconState.from_dict(raw["state"])
                 if isinstance(raw, dict) and raw.get("state") is not None else None)
        new, steps, apply = cs.on_action(case, action, now, self.policy,
                                         payment_state_held=state is not None)
        out = CaseOut(raw)
        if apply in cs.MONEY_RESOLUTIONS:
            assert state is not None and new.amount_minor is not None and new.operator
            try:
                out.state, out.results = recon.on_manual_match(
                    state, new.amount_minor, now, new.case_id, new.operator, new.approver,
                    apply, channel_txn_id=new.evidence.get("channel_txn_id"))
            except recon.ReconError as exc:
                # The case rules admitted it but the payment cannot take it (its state moved
                # on): refused, the case unchanged.
                new, steps, apply = cs.refuse(case, action, cs.RESOLUTION_NOT_ALLOWED,
                                              str(exc), now)
        for result in out.results:
            assert result.settled_amount_minor is not None and result.channel is not None
            fee = self._fees.fee_for(result.channel, result.settled_amount_minor)
            value = self._results.encode(
                result_record(result, fee, result.settled_amount_minor - fee))
            out.outputs.append(Output(self._topics.results, result.payment_id.encode(), value,
                                      ((SOURCE_HEADER, ref),)))
            book = rf.RefundBook.from_dict(raw["book"]) if raw.get("book") else None
            assert out.state is not None
            out.book = book or book_for_manual_match(out.state, result, fee)
        cases[new.case_id] = new
        for step in steps:
            out.outputs.append(self._event(new, step, ref))
            out.counts.append((step.kind, new.outcome))
        if out.outputs or new != case:
            out.raw = self._value(raw, partition, cases, out.outputs, ref)
        return out

    # -- encoding and storing -------------------------------------------------------------

    def _stored(self, raw: Any, partition: int, cases: dict[str, Case],
                steps: list[tuple[Case, CaseStep]], ref: bytes) -> CaseOut:
        if not steps:
            return CaseOut(raw)
        outputs = [self._event(case, step, ref) for case, step in steps]
        counts = [(step.kind, case.outcome) for case, step in steps]
        return CaseOut(self._value(raw, partition, cases, outputs, ref), outputs, counts)

    def _value(self, raw: Any, partition: int, cases: Mapping[str, Case],
               outputs: list[Output], ref: bytes) -> dict[str, Any]:
        value: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {"partition": partition}
        value["cases"] = {case_id: case.to_dict() for case_id, case in cases.items()}
        if not value["cases"]:
            del value["cases"]
        value["c_emitted"] = _remembered(raw, ref, outputs)
        return value

    def _event(self, case: Case | None, step: CaseStep, ref: bytes,
               action: CaseAction | None = None) -> Output:
        """The CaseEvent of a step; without a case (an action naming none the stage holds)
        the action names the case and its payment, the rest is unknown."""
        if case is None:
            assert action is not None
            payment_id, case_id = action.payment_id, action.case_id
            about: dict[str, Any] = {
                "merchant_id": None, "channel": None, "subject": cs.PAYMENT,
                "subject_id": action.payment_id, "outcome": cs.UNKNOWN_OUTCOME,
                "opened_by": cs.UNKNOWN_OPENED_BY,
                "amount_minor": None, "currency": None}
        else:
            payment_id, case_id = case.payment_id, case.case_id
            about = {
                "merchant_id": case.merchant_id,
                "channel": case.channel.upper() if case.channel else None,
                "subject": case.subject, "subject_id": case.subject_id,
                "outcome": case.outcome, "opened_by": case.opened_by,
                "amount_minor": case.amount_minor, "currency": case.currency}
        value = self._events.encode({
            "event_id": step.event_id, "case_id": case_id, "payment_id": payment_id, **about,
            "kind": step.kind, "status": step.status, "resolution": step.resolution,
            "action_id": step.action_id, "operator": step.operator, "approver": step.approver,
            "remark": step.remark, "reason": step.reason, "evidence": dict(step.evidence),
            "occurred_at": step.occurred_at_ms,
        })
        return Output(self._topics.case_events, payment_id.encode(), value,
                      ((SOURCE_HEADER, ref),))
