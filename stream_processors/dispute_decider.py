"""Disputes in the reconcile stage: ChannelDispute records decided against the payment's refund
book (settlement.disputes), answered on disputes.results.

The book lives in the payment's table value (stream_processors.refund_decider describes it);
a dispute input is one write to that value, its outputs remembered under `r_emitted` like a
refund input's, so a record read again after a crash re-sends exactly what it produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.codec import AvroSerializer, to_epoch_ms
from settlement import disputes as dp
from settlement import refunds as rf
from stream_processors.outputs import SOURCE_HEADER, Output
from stream_processors.refund_decider import r_emitted_by


@dataclass(slots=True)
class DisputeDecision:
    """What a dispute input decided, for the caller's metrics (and its exception cases)."""

    outputs: list[Output] = field(default_factory=list)
    outcomes: list[dp.DisputeOutcome] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)  # (channel, event)
    reasons: list[str] = field(default_factory=list)  # reason codes of REJECTED results


def dispute_info(record: dict[str, Any]) -> dp.DisputeNews:
    """A decoded ChannelDispute as the core reads it (raises DisputeError when unreadable)."""
    respond_by = record.get("respond_by")
    return dp.DisputeNews(
        event_id=record["event_id"],
        dispute_id=record["dispute_id"],
        channel=str(record["channel"]).lower(),
        channel_dispute_id=record["channel_dispute_id"],
        payment_id=record["payment_id"],
        stage=record["stage"],
        status=record["status"],
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        occurred_at_ms=to_epoch_ms(record["occurred_at"]),
        funds_withdrawn=record.get("funds_withdrawn", False),
        fee_minor=record.get("fee_minor", 0),
        reason_code=record.get("reason_code"),
        respond_by_ms=to_epoch_ms(respond_by) if respond_by is not None else None,
    )


def replayed(raw: Any, ref: bytes, payment_id: str) -> list[Output] | None:
    """The outputs a dispute input at `ref` produced, if this value applied it."""
    return r_emitted_by(raw, ref, payment_id)


class DisputeDecider:
    """Decides dispute records with the core and encodes the results."""

    def __init__(self, registry: Any, topics: Any) -> None:
        self._topics = topics
        self._results = AvroSerializer(registry, topics.dispute_results, "DisputeResult")
        self.serializers = [self._results]
        self.topic = topics.disputes

    def on_dispute(self, book: rf.RefundBook | None, news: dp.DisputeNews, payment_known: bool,
                   now: int, ref: bytes) -> tuple[rf.RefundBook | None, DisputeDecision]:
        new, outcomes = dp.on_dispute(book, news, now, payment_known=payment_known)
        out = DisputeDecision(outcomes=list(outcomes))
        for outcome in outcomes:
            out.outputs.append(Output(self._topics.dispute_results, outcome.payment_id.encode(),
                                      self._results.encode(result_record(outcome)),
                                      ((SOURCE_HEADER, ref),)))
            out.results.append((outcome.channel, outcome.event))
            out.reasons.extend(outcome.reason_codes)
        return new, out


def result_record(outcome: dp.DisputeOutcome) -> dict[str, Any]:
    """The DisputeResult record of one outcome."""
    return {
        "result_id": outcome.result_id,
        "dispute_id": outcome.dispute_id,
        "payment_id": outcome.payment_id,
        "merchant_id": outcome.merchant_id,
        "order_id": outcome.order_id,
        "channel": outcome.channel.upper(),
        "channel_dispute_id": outcome.channel_dispute_id,
        "event": outcome.event,
        "stage": outcome.stage,
        "status": outcome.status,
        "amount_minor": outcome.amount_minor,
        "currency": outcome.currency,
        "funds_withdrawn": outcome.funds_withdrawn,
        "fee_minor": outcome.fee_minor,
        "reasons": [{"code": r.code, "detail": r.detail} for r in outcome.reasons],
        "reason_code": outcome.reason_code,
        "respond_by": outcome.respond_by_ms,
        "captured_minor": outcome.captured_minor,
        "held_minor": outcome.held_minor,
        "disputed_lost_minor": outcome.disputed_lost_minor,
        "refundable_minor": outcome.refundable_minor,
        "occurred_at": outcome.occurred_at_ms,
        "decided_at": outcome.decided_at_ms,
        "detail": outcome.detail,
    }
