"""Pure row builders of the settlement sink: batches checked against their items, payouts."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from settlement.batches import BatchError, BatchInvariantError
from settlement.postings_v2 import carry, payout_journal
from settlement.refund_model import (
    DISPUTE_ITEM_KINDS,
    ITEM_DISPUTE_RELEASE,
    ITEM_PAYMENT,
    ITEM_PAYMENT_REVERSAL,
    ITEM_REFUND,
    ITEM_REFUND_REVERSAL,
    split_source_id,
)
from settlement.windows import batch_id as batch_id_for
from sinks.base import Rejection
from sinks.errors import BatchContentConflict, InvalidRecord, PaymentInAnotherBatch
from sinks.ledger_rows import EntryRow, JournalRow, journal_rows

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
    refund_count: int
    carried_in_minor: int
    payout_minor: int | None  # None: a batch written before payouts existed
    carried_out_minor: int
    closed_at: datetime


class ItemRow(NamedTuple):
    """A settlement_batch_items row; columns in COPY order."""

    batch_id: str
    kind: str
    item_id: str
    payment_id: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    matched_at: datetime


@dataclass(slots=True)
class SettlementRows:
    """The batches, items and payout journals of one micro-batch of records, deduplicated."""

    batches: list[BatchRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)
    journals: list[JournalRow] = field(default_factory=list)  # PAYOUT journals
    entries: list[EntryRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    batch_index: dict[str, int] = field(default_factory=dict)  # batch_id -> record index
    duplicates: int = 0


class BatchRows(NamedTuple):
    batch: BatchRow
    items: list[ItemRow]
    payout: tuple[JournalRow, list[EntryRow]] | None


def _epoch_ms(value: Any, name: str) -> int:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRecord(f"{name} must be a timezone-aware datetime, got {value!r}")
    return (value - _EPOCH) // _ONE_MS


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidRecord(f"{name} must be a non-empty string without NUL, got {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"{name} must be an int, got {value!r}")
    return value


def item_row(batch_id: str, item: Mapping[str, Any]) -> ItemRow:
    """One SettlementItem, its kind, id and signs checked: PAYMENT and REFUND_REVERSAL
    positive, REFUND and PAYMENT_REVERSAL negative (a reversal settles its original's net
    back, with the opposite sign); a dispute's items, named by '<payment_id>/<dispute_id>',
    carry no fee: DISPUTE_HOLD and DISPUTE_FEE negative, DISPUTE_RELEASE positive."""
    payment_id = _text(item.get("payment_id"), "items.payment_id")
    kind = item.get("kind", ITEM_PAYMENT)
    item_id = item.get("item_id")
    gross, fee, net = (_int(item.get(n), f"items.{n}")
                       for n in ("gross_minor", "fee_minor", "net_minor"))
    _epoch_ms(item.get("matched_at"), "items.matched_at")
    if gross != net + fee:
        raise BatchError(f"item {item_id or payment_id}: gross {gross} != net {net} + fee {fee}")
    if kind == ITEM_PAYMENT:
        item_id = payment_id if item_id is None else item_id  # written before item ids
        if item_id != payment_id:
            raise InvalidRecord(f"PAYMENT item {item_id!r} must have item_id = payment_id")
        if gross <= 0 or fee < 0 or net < 0:
            raise InvalidRecord(f"PAYMENT item {item_id}: need gross > 0, fee >= 0, net >= 0; "
                                f"got {gross}, {fee}, {net}")
    elif kind == ITEM_PAYMENT_REVERSAL:
        item_id = _text(item_id, "items.item_id")
        if item_id != payment_id:
            raise InvalidRecord(f"PAYMENT_REVERSAL item {item_id!r} must have item_id = "
                                "payment_id")
        if gross >= 0 or fee > 0 or net > 0:
            raise InvalidRecord(f"PAYMENT_REVERSAL item {item_id}: need gross < 0, fee <= 0, "
                                f"net <= 0; got {gross}, {fee}, {net}")
    elif kind in (ITEM_REFUND, ITEM_REFUND_REVERSAL):
        item_id = _text(item_id, "items.item_id")
        if split_source_id(item_id)[0] != payment_id:
            raise InvalidRecord(f"{kind} item {item_id!r} is not a refund of {payment_id}")
        sign = -1 if kind == ITEM_REFUND else 1
        if sign * gross <= 0 or sign * fee < 0 or sign * net < 0:
            wanted = "< 0, fee <= 0, net <= 0" if sign < 0 else "> 0, fee >= 0, net >= 0"
            raise InvalidRecord(f"{kind} item {item_id}: need gross {wanted}; "
                                f"got {gross}, {fee}, {net}")
    elif kind in DISPUTE_ITEM_KINDS:
        item_id = _text(item_id, "items.item_id")
        if split_source_id(item_id)[0] != payment_id:
            raise InvalidRecord(f"{kind} item {item_id!r} is not a dispute of {payment_id}")
        sign = 1 if kind == ITEM_DISPUTE_RELEASE else -1
        if sign * gross <= 0 or fee != 0:
            wanted = "> 0" if sign > 0 else "< 0"
            raise InvalidRecord(f"{kind} item {item_id}: need gross = net {wanted} and fee 0; "
                                f"got {gross}, {fee}, {net}")
    else:
        raise InvalidRecord(f"unknown item kind {kind!r}")
    return ItemRow(batch_id, kind, item_id, payment_id, gross, fee, net, item["matched_at"])


def batch_rows(record: Mapping[str, Any]) -> BatchRows:
    """The rows of one decoded SettlementBatch; InvalidRecord or a BatchError if it is wrong.

    Checked here, so a bad record is dead-lettered instead of failing the transaction: the
    deterministic batch id; totals = the items' signed sums; counts by kind; one item per
    (kind, item_id); payout = max(net + carried_in, 0) and carried_out = min(net +
    carried_in, 0). A batch without payout_minor (written before payouts) must hold only
    payments and carry nothing, and posts no payout journal. Reversal and dispute items count
    in neither payment_count nor refund_count.
    """
    items = record.get("items")
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise InvalidRecord("items must be a list of SettlementItem records")
    bid = _text(record.get("batch_id"), "batch_id")
    merchant_id = _text(record.get("merchant_id"), "merchant_id")
    currency = _text(record.get("currency"), "currency")
    if not _CURRENCY.match(currency):
        raise InvalidRecord(f"currency must be an ISO 4217 alpha-3 code, got {currency!r}")
    start_ms = _epoch_ms(record.get("window_start"), "window_start")
    end_ms = _epoch_ms(record.get("window_end"), "window_end")
    _epoch_ms(record.get("closed_at"), "closed_at")
    if end_ms <= start_ms:
        raise InvalidRecord(f"batch {bid}: window_end must be after window_start")
    if bid != batch_id_for(merchant_id, currency, start_ms):
        raise BatchInvariantError(f"batch id {bid!r} does not match its merchant, currency, window")
    rows = [item_row(bid, i) for i in items]
    payment_count = _int(record.get("payment_count"), "payment_count")
    refund_count = _int(record.get("refund_count", 0), "refund_count")
    gross, fee, net = (_int(record.get(n), n) for n in ("gross_minor", "fee_minor", "net_minor"))
    carried_in = _int(record.get("carried_in_minor", 0), "carried_in_minor")
    carried_out = _int(record.get("carried_out_minor", 0), "carried_out_minor")
    payout = record.get("payout_minor")
    if not rows:
        raise InvalidRecord(f"batch {bid} has no items: an empty batch pays nobody")
    checks = {
        "payment_count = PAYMENT items": payment_count == sum(r.kind == ITEM_PAYMENT
                                                               for r in rows),
        "refund_count = REFUND items": refund_count == sum(r.kind == ITEM_REFUND for r in rows),
        "one item per (kind, item_id)": len({(r.kind, r.item_id) for r in rows}) == len(rows),
        "gross = net + fee": gross == net + fee,
        "gross = Σ item gross": gross == sum(r.gross_minor for r in rows),
        "fee = Σ item fee": fee == sum(r.fee_minor for r in rows),
        "net = Σ item net": net == sum(r.net_minor for r in rows),
    }
    if payout is None:
        checks["no payout: PAYMENT items only, nothing carried"] = (
            all(r.kind == ITEM_PAYMENT for r in rows) and carried_in == 0
            and carried_out == 0)
    else:
        payout = _int(payout, "payout_minor")
        checks["carried_in <= 0"] = carried_in <= 0
        checks["(payout, carried_out) = carry(net, carried_in)"] = (
            carried_in <= 0 and (payout, carried_out) == carry(net, carried_in))
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise BatchInvariantError(f"batch {bid}: broken invariants {broken}")
    row = BatchRow(bid, merchant_id, currency, record["window_start"], record["window_end"],
                   payment_count, gross, fee, net, refund_count, carried_in, payout,
                   carried_out, record["closed_at"])
    posted = (journal_rows(payout_journal(bid, merchant_id, currency, payout))
              if payout is not None and payout > 0 else None)
    return BatchRows(row, rows, posted)


def same_content(a: BatchRows, b: BatchRows) -> bool:
    """Equal apart from closed_at: a re-closed window publishes the same batch again."""
    # closed_at is the last column of BatchRow.
    return a.batch[:-1] == b.batch[:-1] and sorted(a.items) == sorted(b.items)


def build_settlement_rows(records: Sequence[Mapping[str, Any]]) -> SettlementRows:
    """The rows of a micro-batch of decoded batches, each record judged on its own.

    The same batch again with the same content is a duplicate (kept once); with other
    content it is a BatchContentConflict. An item (payment or refund) in two different
    batches rejects the later batch whole (PaymentInAnotherBatch): a partial batch is never
    written.
    """
    out = SettlementRows()
    accepted: dict[str, BatchRows] = {}
    owner: dict[tuple[str, str], str] = {}  # (kind, item_id) -> batch_id, this micro-batch
    for index, record in enumerate(records):
        try:
            rows = batch_rows(record)
        except Exception as exc:  # judged per record: one bad batch must not stop the others
            out.rejected.append(Rejection(index, type(exc).__name__, str(exc)))
            continue
        bid = rows.batch.batch_id
        held = accepted.get(bid)
        if held is not None:
            if same_content(held, rows):
                out.duplicates += 1
            else:
                message = f"batch {bid} arrived again with different contents"
                out.rejected.append(Rejection(index, BatchContentConflict.__name__, message))
            continue
        clash = next((i for i in rows.items if (i.kind, i.item_id) in owner), None)
        if clash is not None:
            message = (
                f"batch {bid}: {clash.kind} {clash.item_id} is already settled in batch "
                f"{owner[(clash.kind, clash.item_id)]}; the batch is not written"
            )
            out.rejected.append(Rejection(index, PaymentInAnotherBatch.__name__, message))
            continue
        accepted[bid] = rows
        out.batch_index[bid] = index
        owner.update(((i.kind, i.item_id), bid) for i in rows.items)
    for rows in accepted.values():
        out.batches.append(rows.batch)
        out.items.extend(rows.items)
        if rows.payout is not None:
            out.journals.append(rows.payout[0])
            out.entries.extend(rows.payout[1])
    return out
