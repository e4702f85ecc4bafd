"""Refunds in the reconcile stage: requests and channel answers decided against the payment's
refund book, which lives in the payment's table value beside its reconciliation state.

Table value of a payment (stream_processors.reconcile): {"partition": p, "state": ReconState
(absent once evicted), "emitted": [...], "book": RefundBook (from its MATCHED on), "r_emitted":
[[source ref, [[topic, hex value], ...]], ...]}. One value, one write per input: a refund
decision and the payment's state can never disagree after a crash. `r_emitted` keeps the
outputs of the last few refund inputs and ticks, so one read again after a crash re-sends
exactly what it produced (see stream_processors.replay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import AvroSerializer, to_epoch_ms
from settlement import refunds as rf
from settlement.reconciliation import MATCHED, REFUND_REVERSED, ReconState, ResultRecord
from settlement.refund_model import RefundRequest
from settlement.signing import Keyring, verify_refund
from stream_processors.outputs import SOURCE_HEADER, Output

R_EMITTED_KEEP: Final = 8

# What became of a refund request (the settle_refund_requests_total decision label).
ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
DUPLICATE: Final = "duplicate"


@dataclass(slots=True)
class RefundDecision:
    """What a refund input or tick decided, for the caller's metrics."""

    outputs: list[Output] = field(default_factory=list)
    request: str | None = None  # ACCEPTED / REJECTED / DUPLICATE for a request
    reasons: list[str] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)  # (channel, outcome)
    over_capture: int = 0  # answers that would refund more than was captured
    outcomes: list[rf.RefundOutcome] = field(default_factory=list)  # for exception cases


def request_info(record: dict[str, Any]) -> RefundRequest:
    return RefundRequest(
        refund_id=record["refund_id"],
        payment_id=record["payment_id"],
        merchant_id=record["merchant_id"],
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        requested_at_ms=to_epoch_ms(record["requested_at"]),
        reason=record.get("reason"),
        metadata=record.get("metadata") or {},
        signature_key_id=record.get("signature_key_id"),
        signature=record.get("signature"),
    )


def confirmation_info(record: dict[str, Any]) -> rf.RefundConfirmation:
    return rf.RefundConfirmation(
        confirmation_id=record["confirmation_id"],
        channel=str(record["channel"]).lower(),
        refund_id=record["refund_id"],
        payment_id=record["payment_id"],
        channel_refund_id=record["channel_refund_id"],
        status=record["status"],
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        confirmed_at_ms=to_epoch_ms(record["confirmed_at"]),
    )


def book_of(raw: Any) -> rf.RefundBook | None:
    if not isinstance(raw, dict) or raw.get("book") is None:
        return None
    return rf.RefundBook.from_dict(raw["book"])


def book_for_match(state: ReconState, result: ResultRecord, fee_minor: int) -> rf.RefundBook:
    """The refund book a MATCHED payment opens: what was captured, its fee, where."""
    routed = state.routed
    assert routed is not None and result.outcome == MATCHED
    return rf.RefundBook(
        payment_id=state.payment_id,
        merchant_id=routed.merchant_id,
        channel=routed.channel,
        currency=routed.currency,
        captured_minor=routed.amount_minor,
        fee_minor=fee_minor,
        captured_at_ms=result.decided_at_ms,
        order_id=routed.order_id,
        channel_txn_id=result.channel_txn_id,
    )


def r_emitted_by(raw: Any, ref: bytes, payment_id: str) -> list[Output] | None:
    """The outputs a refund (or dispute) input or tick at `ref` produced, if this value
    applied it, keyed by the payment (also when the value holds no book)."""
    if not isinstance(raw, dict):
        return None
    wanted = ref.decode()
    key = payment_id.encode()
    for source, values in raw.get("r_emitted", ()):
        if source == wanted:
            return [Output(topic, key, bytes.fromhex(value), ((SOURCE_HEADER, ref),))
                    for topic, value in values]
    return None


def r_remembered(raw: Any, ref: bytes, outputs: list[Output]) -> list[list[Any]]:
    kept = list(raw.get("r_emitted", [])) if isinstance(raw, dict) else []
    return [*kept[-(R_EMITTED_KEEP - 1):],
            [ref.decode(), [[o.topic, o.value.hex()] for o in outputs]]]


class RefundDecider:
    """Encodes the core's refund decisions into the stage's outputs."""

    def __init__(self, registry: Any, topics: Any, policy: rf.RefundPolicy,
                 keyring: Keyring | None, clock: Callable[[], int]) -> None:
        self._topics = topics
        self.policy = policy
        self.keyring = keyring
        self._clock = clock
        self._routed = AvroSerializer(registry, topics.refunds_routed, "RoutedRefund")
        self._rejected = AvroSerializer(registry, topics.refunds_rejected, "RefundRejected")
        self._results = AvroSerializer(registry, topics.refund_results, "RefundResult")
        self.serializers = [self._routed, self._rejected, self._results]
        self.topics = frozenset({topics.refunds_requested, topics.refund_confirmations})

    def is_request(self, topic: str) -> bool:
        return topic == self._topics.refunds_requested

    # -- requests -------------------------------------------------------------------------

    def on_request(self, book: rf.RefundBook | None, record: dict[str, Any],
                   request: RefundRequest, payment_known: bool, now: int, ref: bytes,
                   ) -> tuple[rf.RefundBook | None, RefundDecision]:
        signature = None
        if self.keyring is not None:
            failure = verify_refund(request, self.keyring)
            if failure is not None:
                signature = rf.Rejection(failure.code, failure.detail)
        decision = rf.decide_request(book, request, now, self.policy,
                                     payment_known=payment_known, signature_failure=signature)
        out = RefundDecision()
        key = request.payment_id.encode()
        headers = ((SOURCE_HEADER, ref),)
        if decision.duplicate:
            out.request = DUPLICATE
            return decision.book, out
        if decision.accepted is None:
            out.request = REJECTED
            out.reasons = [r.code for r in decision.rejections]
            value = self._rejected.encode({
                "refund_id": request.refund_id if isinstance(request.refund_id, str) else "",
                "payment_id": request.payment_id,
                "merchant_id": request.merchant_id,
                "reasons": [{"code": r.code, "detail": r.detail} for r in decision.rejections],
                "request": record,
                "rejected_at": now,
            })
            out.outputs.append(Output(self._topics.refunds_rejected, key, value, headers))
            return decision.book, out
        new = decision.book
        assert new is not None
        refund = decision.accepted
        out.request = ACCEPTED
        value = self._routed.encode({
            "refund_id": refund.refund_id,
            "payment_id": new.payment_id,
            "merchant_id": new.merchant_id,
            "order_id": new.order_id,
            "channel": new.channel.upper(),
            "channel_txn_id": new.channel_txn_id,
            "amount_minor": refund.amount_minor,
            "currency": new.currency,
            "reason": refund.reason,
            "requested_at": refund.requested_at_ms,
            "routed_at": refund.routed_at_ms,
        })
        out.outputs.append(Output(self._topics.refunds_routed, key, value, headers))
        return new, out

    # -- answers and ticks ----------------------------------------------------------------

    def on_confirmation(self, book: rf.RefundBook | None, conf: rf.RefundConfirmation,
                        now: int, ref: bytes) -> tuple[rf.RefundBook | None, RefundDecision]:
        out = RefundDecision()
        if book is not None and conf.status == "SUCCEEDED":
            refund = book.get(conf.refund_id)
            room = book.captured_minor - book.refunded_minor
            if refund is not None and conf.amount_minor > room:
                out.over_capture += 1
        new, results = rf.on_confirmation(book, conf, now, self.policy)
        self._publish(new, results, ref, out)
        return new, out

    def on_tick(self, book: rf.RefundBook, now: int, ref: bytes,
                ) -> tuple[rf.RefundBook, RefundDecision]:
        out = RefundDecision()
        new, results = rf.on_tick(book, now, self.policy)
        self._publish(new, results, ref, out)
        return new, out

    def _publish(self, book: rf.RefundBook | None, results: list[rf.RefundOutcome],
                 ref: bytes, out: RefundDecision) -> None:
        for result in results:
            refund, conf = result.refund, result.confirmation
            # The split of a refund, and the mirror of it when the refund is reversed.
            fee = (refund.fee_returned_minor
                   if refund is not None and result.outcome in (MATCHED, REFUND_REVERSED)
                   else None)
            amount = refund.amount_minor if refund is not None else None
            channel = conf.channel if conf is not None else (book.channel if book else None)
            value = self._results.encode({
                "result_id": result.result_id,
                "refund_id": result.refund_id,
                "payment_id": result.payment_id,
                "merchant_id": book.merchant_id if book else None,
                "order_id": book.order_id if book else None,
                "channel": channel.upper() if channel else None,
                "outcome": result.outcome,
                "terminal": result.terminal,
                "late": result.late,
                "amount_minor": amount,
                "currency": book.currency if book and refund else None,
                "confirmed_amount_minor": conf.amount_minor if conf else None,
                "confirmed_currency": conf.currency if conf else None,
                "confirmation_id": conf.confirmation_id if conf else None,
                "channel_refund_id": conf.channel_refund_id if conf else None,
                "fee_returned_minor": fee,
                "net_minor": amount - fee if fee is not None and amount is not None else None,
                "captured_minor": book.captured_minor if book else None,
                "refunded_minor": result.refunded_minor,
                "refundable_minor": result.refundable_minor,
                "requested_at": refund.requested_at_ms if refund else None,
                "decided_at": result.decided_at_ms,
                "detail": result.detail,
            })
            out.outputs.append(Output(self._topics.refund_results, result.payment_id.encode(),
                                      value, ((SOURCE_HEADER, ref),)))
            out.results.append((channel or "unknown", result.outcome))
            out.outcomes.append(result)
