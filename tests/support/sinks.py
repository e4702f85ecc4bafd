"""Records, topics and a one-call sink run for the PostgreSQL sinks' tests on the real stack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.config import Settings
from producers.producer import AvroProducer
from schemas.registry import RegistryClient
from settlement.fees import FeeSchedule
from sinks.base import Writer
from sinks.offsets_consumer import OffsetsConsumer
from sinks.options import SinkOptions, SinkStats

FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180")
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Topics:
    results: str
    batches: str
    dlq: str


def publish(stack: Settings, registry: RegistryClient, topic: str,
            records: Sequence[tuple[str, Any]]) -> None:
    """Publish (key, record) pairs in order; a bytes record is sent raw (garbage)."""
    with AvroProducer(stack.kafka, registry, client_id="test-sinks") as producer:
        for key, record in records:
            if isinstance(record, bytes):
                producer.send_raw(topic, key.encode(), record)
            else:
                producer.send(topic, key, record)


def run_sink(stack: Settings, registry: RegistryClient, writer: Writer, topic: str, dlq: str,
             group: str, **options: Any) -> SinkStats:
    opts = SinkOptions(group_id=group, topic=topic, dlq_topic=dlq, batch_wait_ms=100,
                       idle_exit_s=options.pop("idle_exit_s", 3.0), **options)
    return OffsetsConsumer(stack, registry, writer, opts).run(install_signal_handlers=False)


def result(pid: str, outcome: str, *, merchant: str | None = "m-1", channel: str | None = "ALIPAY",
           amount: int | None = 10_000, confirmed: int | None = None, currency: str = "CNY",
           conf: str | None = "c1", late: bool = False, split: tuple[int, int] | None = None,
           minutes: int = 0) -> tuple[str, dict[str, Any]]:
    terminal = outcome in {"MATCHED", "DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH",
                           "MISSING_CONFIRMATION"}
    record = {
        "result_id": f"{pid}:{outcome}:{conf or '-'}",
        "payment_id": pid,
        "merchant_id": merchant,
        "channel": channel,
        "outcome": outcome,
        "terminal": terminal,
        "late": late,
        "expected_amount_minor": amount,
        "expected_currency": currency if amount is not None else None,
        "confirmed_amount_minor": (amount if confirmed is None else confirmed) if conf else None,
        "confirmed_currency": currency if conf else None,
        "confirmation_id": conf,
        "channel_txn_id": f"tx-{conf}" if conf else None,
        "created_at": T0,
        "decided_at": T0 + timedelta(minutes=minutes),
        "detail": f"test {outcome}",
        "fee_minor": split[0] if split else None,
        "net_minor": split[1] if split else None,
    }
    return pid, record


def batch(merchant: str, window: int, items: Sequence[tuple[str, int, int]], *,
          closed_minutes: int = 0, gross: int | None = None) -> tuple[str, dict[str, Any]]:
    start = T0 + timedelta(days=window)
    start_ms = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    batch_id = f"B:{merchant}:CNY:{start_ms}"
    record = {
        "batch_id": batch_id, "merchant_id": merchant, "currency": "CNY",
        "window_start": start, "window_end": start + timedelta(days=1),
        "payment_count": len(items),
        "gross_minor": sum(g for _, g, _ in items) if gross is None else gross,
        "fee_minor": sum(f for _, _, f in items),
        "net_minor": sum(g - f for _, g, f in items),
        "closed_at": start + timedelta(days=1, minutes=10 + closed_minutes),
        "items": [{"payment_id": pid, "gross_minor": g, "fee_minor": f, "net_minor": g - f,
                   "matched_at": start + timedelta(hours=1)} for pid, g, f in items],
    }
    return batch_id, record


def refund_result(pid: str, rid: str, outcome: str, *, amount: int = 3_000,
                  split: tuple[int, int] | None = (18, 2_982), conf: str | None = "rc1",
                  late: bool = False, merchant: str = "m-1", minutes: int = 0,
                  ) -> tuple[str, dict[str, Any]]:
    """A RefundResult keyed by payment_id; `split` = (fee returned, net) of a MATCHED (or
    REFUND_REVERSED) one."""
    terminal = outcome in {"MATCHED", "DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH",
                           "MISSING_CONFIRMATION"}
    matched = outcome in {"MATCHED", "REFUND_REVERSED"}
    record = {
        "result_id": f"{pid}/{rid}:{outcome}:{conf or '-'}",
        "refund_id": rid, "payment_id": pid, "merchant_id": merchant, "order_id": f"o-{pid}",
        "channel": "ALIPAY", "outcome": outcome, "terminal": terminal, "late": late,
        "amount_minor": amount, "currency": "CNY",
        "confirmed_amount_minor": amount if conf else None,
        "confirmed_currency": "CNY" if conf else None,
        "confirmation_id": conf, "channel_refund_id": f"cr-{conf}" if conf else None,
        "fee_returned_minor": split[0] if matched and split else None,
        "net_minor": split[1] if matched and split else None,
        "captured_minor": 10_000, "refunded_minor": 0, "refundable_minor": 0,
        "requested_at": T0, "decided_at": T0 + timedelta(minutes=minutes), "detail": "",
    }
    return pid, record
