"""Pure row builders of the settlement sink: settlement batches checked against their items."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from settlement.batches import BatchItem, SettlementBatch
from sinks.base import Rejection
from sinks.errors import BatchContentConflict, InvalidRecord, PaymentInAnotherBatch

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class BatchRow(NamedTuple):
    """A settlement_batches row; columns in COPY order."""

    batch_id: str
    merchant_id: str
    currency: str
    window_start: datetime
    window_end: datetime
    payment_count: int
    gross_minor: int
    fee_minor: int
    net_minor: int
    closed_at: datetime


class ItemRow(NamedTuple):
    """A settlement_batch_items row; columns in COPY order."""

    batch_id: str
    payment_id: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    matched_at: datetime


@dataclass(slots=True)
class SettlementRows:
    """The batches and items of one micro-batch of records, deduplicated."""

    batches: list[BatchRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    batch_index: dict[str, int] = field(default_factory=dict)  # batch_id -> record index
    duplicates: int = 0


def _epoch_ms(value: Any, name: str) -> int:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRecord(f"{name} must be a timezone-aware datetime, got {value!r}")
    return (value - _EPOCH) // _ONE_MS


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidRecord(f"{name} must be a non-empty string without NUL, got {value!r}")
    return value


def batch_rows(record: Mapping[str, Any]) -> tuple[BatchRow, list[ItemRow]]:
    """The rows of one decoded SettlementBatch; InvalidRecord or a BatchError if it is wrong.

    The domain's SettlementBatch re-checks the deterministic batch id and that the totals
    equal the items' sums; the rest are the constraints of the tables, checked here so a bad
    record is dead-lettered instead of failing the whole transaction.
    """
    items = record.get("items")
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise InvalidRecord("items must be a list of SettlementItem records")
    domain_items = tuple(
        BatchItem(
            payment_id=_text(item.get("payment_id"), "items.payment_id"),
            gross_minor=item.get("gross_minor"),
            fee_minor=item.get("fee_minor"),
            net_minor=item.get("net_minor"),
            matched_at_ms=_epoch_ms(item.get("matched_at"), "items.matched_at"),
        )
        for item in items
    )
    batch = SettlementBatch(
        batch_id=_text(record.get("batch_id"), "batch_id"),
        merchant_id=_text(record.get("merchant_id"), "merchant_id"),
        currency=_text(record.get("currency"), "currency"),
        window_start_ms=_epoch_ms(record.get("window_start"), "window_start"),
        window_end_ms=_epoch_ms(record.get("window_end"), "window_end"),
        payment_count=record.get("payment_count"),  # type: ignore[arg-type]
        gross_minor=record.get("gross_minor"),  # type: ignore[arg-type]
        fee_minor=record.get("fee_minor"),  # type: ignore[arg-type]
        net_minor=record.get("net_minor"),  # type: ignore[arg-type]
        closed_at_ms=_epoch_ms(record.get("closed_at"), "closed_at"),
        items=domain_items,
    )
    if not _CURRENCY.match(batch.currency):
        raise InvalidRecord(f"currency must be an ISO 4217 alpha-3 code, got {batch.currency!r}")
    if batch.window_end_ms <= batch.window_start_ms:
        raise InvalidRecord(f"batch {batch.batch_id}: window_end must be after window_start")
    if batch.payment_count <= 0 or batch.gross_minor <= 0 or batch.fee_minor < 0:
        raise InvalidRecord(
            f"batch {batch.batch_id}: needs payments, gross > 0 and fee >= 0; got "
            f"count={batch.payment_count} gross={batch.gross_minor} fee={batch.fee_minor}"
        )
    row = BatchRow(
        batch.batch_id, batch.merchant_id, batch.currency, record["window_start"],
        record["window_end"], batch.payment_count, batch.gross_minor, batch.fee_minor,
        batch.net_minor, record["closed_at"],
    )
    item_rows = [
        ItemRow(batch.batch_id, i["payment_id"], i["gross_minor"], i["fee_minor"],
                i["net_minor"], i["matched_at"])
        for i in items
    ]
    return row, item_rows


def same_content(a: tuple[BatchRow, list[ItemRow]], b: tuple[BatchRow, list[ItemRow]]) -> bool:
    """Equal apart from closed_at: a re-closed window publishes the same batch again."""
    # closed_at is the last column of BatchRow.
    return a[0][:-1] == b[0][:-1] and sorted(a[1]) == sorted(b[1])


def build_settlement_rows(records: Sequence[Mapping[str, Any]]) -> SettlementRows:
    """The rows of a micro-batch of decoded batches, each record judged on its own.

    The same batch again with the same content is a duplicate (kept once); with other
    content it is a BatchContentConflict. A payment in two different batches rejects the
    later batch whole (PaymentInAnotherBatch): a partial batch is never written.
    """
    out = SettlementRows()
    accepted: dict[str, tuple[BatchRow, list[ItemRow]]] = {}
    owner: dict[str, str] = {}  # payment_id -> batch_id, within this micro-batch
    for index, record in enumerate(records):
        try:
            rows = batch_rows(record)
        except Exception as exc:  # judged per record: one bad batch must not stop the others
            out.rejected.append(Rejection(index, type(exc).__name__, str(exc)))
            continue
        batch_id = rows[0].batch_id
        held = accepted.get(batch_id)
        if held is not None:
            if same_content(held, rows):
                out.duplicates += 1
            else:
                message = f"batch {batch_id} arrived again with different contents"
                out.rejected.append(Rejection(index, BatchContentConflict.__name__, message))
            continue
        clash = next((i.payment_id for i in rows[1] if i.payment_id in owner), None)
        if clash is not None:
            message = (
                f"batch {batch_id}: payment {clash} is already settled in batch "
                f"{owner[clash]}; the batch is not written"
            )
            out.rejected.append(Rejection(index, PaymentInAnotherBatch.__name__, message))
            continue
        accepted[batch_id] = rows
        out.batch_index[batch_id] = index
        owner.update((item.payment_id, batch_id) for item in rows[1])
    for row, items in accepted.values():
        out.batches.append(row)
        out.items.extend(items)
    return out
