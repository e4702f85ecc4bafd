"""Settlement batch arithmetic: net payments, refunds, their reversals and disputes' holds,
releases and fees per merchant, currency and window, and close them with the merchant's
carried negative balance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from settlement.batch_items import (
    CREDIT_KINDS,
    DEBIT_KINDS,
    BatchError,
    BatchItem,
    payout_split,
    require_int,
)
from settlement.refund_model import (
    ITEM_DISPUTE_FEE,
    ITEM_DISPUTE_HOLD,
    ITEM_DISPUTE_RELEASE,
    ITEM_PAYMENT,
    ITEM_PAYMENT_REVERSAL,
    ITEM_REFUND,
    ITEM_REFUND_REVERSAL,
)
from settlement.windows import Window, WindowPolicy, batch_id, close_at_ms

__all__ = [
    "BatchConflict", "BatchError", "BatchInvariantError", "BatchItem", "BatchTotals",
    "OpenBatch", "SettlementBatch", "due_batches", "payout_split",
]

# Version 2: items have a kind and an item_id (refunds, negative), totals count refunds.
# Version 1 (payments only) is still read: its items are PAYMENTs, it has no refunds.
BATCH_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
# Totals version 3 also count reversals (payment_reversal_count, refund_reversal_count),
# version 4 disputes' items (dispute_hold_count, dispute_release_count, dispute_fee_count).
TOTALS_FORMAT_VERSION = 4
_READABLE_TOTALS_VERSIONS = (1, 2, 3, 4)
_REVERSAL_COUNTS = ("payment_reversal_count", "refund_reversal_count")
_DISPUTE_COUNTS = ("dispute_hold_count", "dispute_release_count", "dispute_fee_count")
# The BatchTotals field counting each kind.
COUNT_FIELDS: dict[str, str] = {
    ITEM_PAYMENT: "payment_count", ITEM_REFUND: "refund_count",
    ITEM_PAYMENT_REVERSAL: "payment_reversal_count",
    ITEM_REFUND_REVERSAL: "refund_reversal_count",
    ITEM_DISPUTE_HOLD: "dispute_hold_count", ITEM_DISPUTE_RELEASE: "dispute_release_count",
    ITEM_DISPUTE_FEE: "dispute_fee_count",
}


class BatchConflict(BatchError):
    """The same item (kind and id) was added twice with different amounts."""


class BatchInvariantError(BatchError):
    """A batch's totals disagree with its items; it must never be published."""


def _check_totals(
    where: str,
    items: tuple[BatchItem, ...],
    counts: Mapping[str, int],
    gross_minor: int,
    fee_minor: int,
    net_minor: int,
) -> None:
    """Totals against their items. `counts` holds the item count of each kind the caller
    keeps (a published batch: PAYMENT and REFUND only; its reversals count in neither)."""
    # Totals are kept (or published) separately from the items and recomputed here, so a bug
    # in either the running sums or the item list is caught before money moves.
    ids = {item.identity for item in items}
    kinds = Counter(item.kind for item in items)
    checks = {
        **{f"{kind} count == {kind} items": count == kinds[kind]
           for kind, count in counts.items()},
        "item (kind, id) unique": len(ids) == len(items),
        "gross == net + fee": gross_minor == net_minor + fee_minor,
        "gross == sum(item gross)": gross_minor == sum(i.gross_minor for i in items),
        "fee == sum(item fee)": fee_minor == sum(i.fee_minor for i in items),
        "net == sum(item net)": net_minor == sum(i.net_minor for i in items),
    }
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise BatchInvariantError(f"{where}: broken invariants {broken}")


@dataclass(frozen=True, slots=True)
class SettlementBatch:
    """A closed batch: what is published to settlements.batches and paid to the merchant.

    payment_count counts its PAYMENT items, refund_count its REFUND items; its reversal and
    dispute items count in neither (the record has no field for them: see `count`).
    Its totals are signed sums of its items; carried_in_minor (<= 0) is the merchant and
    currency's negative balance left by its previous batch; payout_minor = max(net +
    carried_in, 0) is paid, carried_out_minor = min(net + carried_in, 0) goes to the next
    batch. Left as None, payout and carried_out are derived; given, they are checked.
    """

    batch_id: str
    merchant_id: str
    currency: str
    window_start_ms: int
    window_end_ms: int
    payment_count: int
    gross_minor: int
    fee_minor: int
    net_minor: int
    closed_at_ms: int
    items: tuple[BatchItem, ...]
    refund_count: int = 0
    carried_in_minor: int = 0
    payout_minor: int | None = None
    carried_out_minor: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        if self.batch_id != batch_id(self.merchant_id, self.currency, self.window_start_ms):
            raise BatchInvariantError(f"batch id {self.batch_id!r} does not match its key")
        for name in ("payment_count", "refund_count"):
            _require_count(name, getattr(self, name))
        for name in ("gross_minor", "fee_minor", "net_minor", "closed_at_ms"):
            require_int(name, getattr(self, name))
        _check_totals(
            self.batch_id,
            self.items,
            {ITEM_PAYMENT: self.payment_count, ITEM_REFUND: self.refund_count},
            self.gross_minor,
            self.fee_minor,
            self.net_minor,
        )
        try:
            payout, carried_out = payout_split(self.net_minor, self.carried_in_minor)
        except BatchError as exc:
            raise BatchInvariantError(f"{self.batch_id}: {exc}") from exc
        if self.payout_minor is None:
            object.__setattr__(self, "payout_minor", payout)
        if self.carried_out_minor is None:
            object.__setattr__(self, "carried_out_minor", carried_out)
        if (self.payout_minor, self.carried_out_minor) != (payout, carried_out):
            raise BatchInvariantError(
                f"{self.batch_id}: net {self.net_minor} with carried_in "
                f"{self.carried_in_minor} pays {payout} and carries {carried_out}, not "
                f"{self.payout_minor} and {self.carried_out_minor}")

    @property
    def payment_reversal_count(self) -> int:
        return self.count(ITEM_PAYMENT_REVERSAL)

    @property
    def refund_reversal_count(self) -> int:
        return self.count(ITEM_REFUND_REVERSAL)

    def count(self, kind: str) -> int:
        """The batch's items of one kind."""
        return sum(1 for item in self.items if item.kind == kind)

    @property
    def payout(self) -> int:
        """payout_minor as an int (never None after construction)."""
        assert self.payout_minor is not None
        return self.payout_minor

    @property
    def carried_out(self) -> int:
        """carried_out_minor as an int (never None after construction)."""
        assert self.carried_out_minor is not None
        return self.carried_out_minor

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "merchant_id": self.merchant_id,
            "currency": self.currency,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "payment_count": self.payment_count,
            "gross_minor": self.gross_minor,
            "fee_minor": self.fee_minor,
            "net_minor": self.net_minor,
            "closed_at_ms": self.closed_at_ms,
            "items": [item.to_dict() for item in self.items],
            "refund_count": self.refund_count,
            "carried_in_minor": self.carried_in_minor,
            "payout_minor": self.payout_minor,
            "carried_out_minor": self.carried_out_minor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SettlementBatch:
        """A batch back from to_dict, every invariant checked again; a dict written before
        refunds existed reads with no refunds, nothing carried and its net paid out."""
        fields = {key: value for key, value in data.items() if key != "items"}
        items = tuple(BatchItem.from_dict(item) for item in data["items"])
        return cls(**fields, items=items)


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """An accumulating batch with its items; add() returns a new OpenBatch.

    Each add copies the item tuple (O(n)): fine for a model or a small batch. The settle stage
    keeps BatchTotals instead, with the items stored one per key beside them, so an add costs
    O(1) whatever the size of the batch.
    """

    batch_id: str
    merchant_id: str
    currency: str
    window_start_ms: int
    window_end_ms: int
    items: tuple[BatchItem, ...] = ()
    gross_minor: int = 0
    fee_minor: int = 0
    net_minor: int = 0
    # Redelivered items are expected under at-least-once delivery; counting them makes the
    # "nothing applied twice" guarantee observable in metrics.
    duplicates_ignored: int = 0
    # Derived from items for O(1) membership; not stored, not compared.
    _ids: frozenset[tuple[str, str]] = field(
        default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "_ids", frozenset(item.identity for item in self.items))
        if self.batch_id != batch_id(self.merchant_id, self.currency, self.window_start_ms):
            raise BatchInvariantError(f"batch id {self.batch_id!r} does not match its key")
        if self.window_end_ms <= self.window_start_ms:
            raise BatchError(f"batch {self.batch_id}: window end must be after its start")

    @classmethod
    def new(cls, merchant_id: str, currency: str, window: Window) -> OpenBatch:
        start_ms, end_ms = window
        key = batch_id(merchant_id, currency, start_ms)
        return cls(key, merchant_id, currency, start_ms, end_ms)

    def count(self, kind: str) -> int:
        """The batch's items of one kind."""
        return sum(1 for item in self.items if item.kind == kind)

    @property
    def payment_count(self) -> int:
        return self.count(ITEM_PAYMENT)

    @property
    def refund_count(self) -> int:
        return self.count(ITEM_REFUND)

    @property
    def payment_reversal_count(self) -> int:
        return self.count(ITEM_PAYMENT_REVERSAL)

    @property
    def refund_reversal_count(self) -> int:
        return self.count(ITEM_REFUND_REVERSAL)

    def __contains__(self, identity: object) -> bool:
        """Whether an item is in the batch: by (kind, item_id), or a payment by its id."""
        if isinstance(identity, str):
            identity = (ITEM_PAYMENT, identity)
        return identity in self._ids

    def add(self, item: BatchItem) -> OpenBatch:
        """A batch with the item added; the same item again is a counted no-op.

        The same (kind, item_id) with different amounts is a BatchConflict: the split is
        decided once upstream, so a difference means a bug, not a redelivery.
        """
        if item.identity in self._ids:
            existing = next(i for i in self.items if i.identity == item.identity)
            if existing != item:
                raise BatchConflict(
                    f"batch {self.batch_id}: {item.kind} {item.item_id} already added as "
                    f"{existing}, now {item}"
                )
            return replace(self, duplicates_ignored=self.duplicates_ignored + 1)
        return replace(
            self,
            items=(*self.items, item),
            gross_minor=self.gross_minor + item.gross_minor,
            fee_minor=self.fee_minor + item.fee_minor,
            net_minor=self.net_minor + item.net_minor,
        )

    def close_at_ms(self, policy: WindowPolicy) -> int:
        return close_at_ms((self.window_start_ms, self.window_end_ms), policy)

    def close(self, now_ms: int, carried_in_minor: int = 0) -> SettlementBatch:
        """The closed batch. Deterministic apart from closed_at_ms, so a re-close after a crash
        (with the same carried balance) publishes the same batch and the sink keeps the first."""
        _check_totals(
            self.batch_id,
            self.items,
            {},  # its counts are its items'
            self.gross_minor,
            self.fee_minor,
            self.net_minor,
        )
        return BatchTotals.of(self).close(now_ms, self.items, carried_in_minor)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": BATCH_FORMAT_VERSION,
            "batch_id": self.batch_id,
            "merchant_id": self.merchant_id,
            "currency": self.currency,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "items": [item.to_dict() for item in self.items],
            "gross_minor": self.gross_minor,
            "fee_minor": self.fee_minor,
            "net_minor": self.net_minor,
            "duplicates_ignored": self.duplicates_ignored,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenBatch:
        if data.get("v") not in _READABLE_VERSIONS:
            raise BatchError(f"unknown open batch format version {data.get('v')!r}")
        batch = cls(
            batch_id=data["batch_id"],
            merchant_id=data["merchant_id"],
            currency=data["currency"],
            window_start_ms=data["window_start_ms"],
            window_end_ms=data["window_end_ms"],
            items=tuple(BatchItem.from_dict(item) for item in data["items"]),
            gross_minor=data["gross_minor"],
            fee_minor=data["fee_minor"],
            net_minor=data["net_minor"],
            duplicates_ignored=data["duplicates_ignored"],
        )
        # Checked again on read-back: a corrupted changelog must fail here, not at payout.
        _check_totals(
            batch.batch_id,
            batch.items,
            {},  # its counts are its items'
            batch.gross_minor,
            batch.fee_minor,
            batch.net_minor,
        )
        return batch


def _require_count(name: str, value: object) -> int:
    if require_int(name, value) < 0:
        raise BatchError(f"{name} must be >= 0, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """An open batch without its items: its window and running sums, O(1) in size.

    The caller keeps the items elsewhere (the settle stage: one table key per item) and hands
    them to close(), which checks them against these totals before anything is published.
    add() does not look for duplicates: the caller owns the item store and must ask it first.
    The sums are signed: payments, refund reversals and dispute releases add; refunds,
    payment reversals, dispute holds and dispute fees subtract. Every kind is counted, though
    a closed batch publishes only payment_count and refund_count.
    """

    batch_id: str
    merchant_id: str
    currency: str
    window_start_ms: int
    window_end_ms: int
    payment_count: int = 0
    gross_minor: int = 0
    fee_minor: int = 0
    net_minor: int = 0
    refund_count: int = 0
    payment_reversal_count: int = 0
    refund_reversal_count: int = 0
    dispute_hold_count: int = 0
    dispute_release_count: int = 0
    dispute_fee_count: int = 0

    def __post_init__(self) -> None:
        if self.batch_id != batch_id(self.merchant_id, self.currency, self.window_start_ms):
            raise BatchInvariantError(f"batch id {self.batch_id!r} does not match its key")
        require_int("window_end_ms", self.window_end_ms)
        if self.window_end_ms <= self.window_start_ms:
            raise BatchError(f"batch {self.batch_id}: window end must be after its start")
        for name in COUNT_FIELDS.values():
            _require_count(name, getattr(self, name))
        sums = tuple(require_int(name, getattr(self, name))
                     for name in ("gross_minor", "fee_minor", "net_minor"))
        if self.gross_minor != self.fee_minor + self.net_minor:
            raise BatchInvariantError(f"batch {self.batch_id}: gross != fee + net")
        # Each adding item (CREDIT_KINDS) adds gross > 0, fee and net >= 0; each subtracting
        # one (DEBIT_KINDS) the opposite. So with only adding items no sum is negative, with
        # only subtracting ones none is positive, and an empty batch is all zeros.
        credits, debits = self.credit_count, self.debit_count
        if not debits and (min(sums) < 0 or (credits and sums[0] <= 0)):
            raise BatchInvariantError(
                f"batch {self.batch_id}: adding items only, yet {sums}")
        if not credits and (max(sums) > 0 or (debits and sums[0] >= 0)):
            raise BatchInvariantError(
                f"batch {self.batch_id}: subtracting items only, yet {sums}")

    @classmethod
    def new(cls, merchant_id: str, currency: str, window: Window) -> BatchTotals:
        start_ms, end_ms = window
        return cls(batch_id(merchant_id, currency, start_ms), merchant_id, currency, start_ms,
                   end_ms)

    @property
    def window(self) -> Window:
        return Window(self.window_start_ms, self.window_end_ms)

    @property
    def counts(self) -> dict[str, int]:
        """Item count by kind."""
        return {kind: getattr(self, name) for kind, name in COUNT_FIELDS.items()}

    @property
    def credit_count(self) -> int:
        """Items that add (payments, refund reversals, dispute releases)."""
        return sum(n for kind, n in self.counts.items() if kind in CREDIT_KINDS)

    @property
    def debit_count(self) -> int:
        """Items that subtract (refunds, payment reversals, dispute holds and fees)."""
        return sum(n for kind, n in self.counts.items() if kind in DEBIT_KINDS)

    @property
    def item_count(self) -> int:
        """Items of every kind: the settle stage numbers its items 0 .. item_count - 1."""
        return sum(self.counts.values())

    def add(self, item: BatchItem) -> BatchTotals:
        """The totals with one more item (the caller has made sure it is a new one)."""
        name = COUNT_FIELDS[item.kind]
        return replace(
            self,
            **{name: getattr(self, name) + 1},
            gross_minor=self.gross_minor + item.gross_minor,
            fee_minor=self.fee_minor + item.fee_minor,
            net_minor=self.net_minor + item.net_minor,
        )

    def close_at_ms(self, policy: WindowPolicy) -> int:
        return close_at_ms((self.window_start_ms, self.window_end_ms), policy)

    def close(self, now_ms: int, items: Iterable[BatchItem],
              carried_in_minor: int = 0) -> SettlementBatch:
        """The closed batch with these items and the key's carried balance; BatchInvariantError
        if the items disagree with the totals (counts of every kind, unique ids, sums), so a
        lost or extra item is never published."""
        items = tuple(items)
        _check_totals(self.batch_id, items, self.counts, self.gross_minor, self.fee_minor,
                      self.net_minor)
        return SettlementBatch(
            batch_id=self.batch_id,
            merchant_id=self.merchant_id,
            currency=self.currency,
            window_start_ms=self.window_start_ms,
            window_end_ms=self.window_end_ms,
            payment_count=self.payment_count,
            gross_minor=self.gross_minor,
            fee_minor=self.fee_minor,
            net_minor=self.net_minor,
            closed_at_ms=now_ms,
            items=items,
            refund_count=self.refund_count,
            carried_in_minor=carried_in_minor,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": TOTALS_FORMAT_VERSION,
            "batch_id": self.batch_id,
            "merchant_id": self.merchant_id,
            "currency": self.currency,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "payment_count": self.payment_count,
            "refund_count": self.refund_count,
            "payment_reversal_count": self.payment_reversal_count,
            "refund_reversal_count": self.refund_reversal_count,
            "dispute_hold_count": self.dispute_hold_count,
            "dispute_release_count": self.dispute_release_count,
            "dispute_fee_count": self.dispute_fee_count,
            "gross_minor": self.gross_minor,
            "fee_minor": self.fee_minor,
            "net_minor": self.net_minor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchTotals:
        """Totals back from to_dict, every invariant checked again (version 1: payments only;
        version 2: no reversals; version 3: no disputes)."""
        version = data.get("v")
        if version not in _READABLE_TOTALS_VERSIONS:
            raise BatchError(f"unknown batch totals format version {version!r}")
        if version == 1 and "refund_count" in data:
            raise BatchError("batch totals of format 1 cannot have refunds")
        if version in (1, 2) and set(_REVERSAL_COUNTS) & set(data):
            raise BatchError(f"batch totals of format {version} cannot have reversals")
        if version in (1, 2, 3) and set(_DISPUTE_COUNTS) & set(data):
            raise BatchError(f"batch totals of format {version} cannot have dispute items")
        return cls(**{key: value for key, value in data.items() if key != "v"})

    @classmethod
    def of(cls, batch: OpenBatch) -> BatchTotals:
        """The totals of an OpenBatch (which checked them against its items on read-back)."""
        return cls(batch.batch_id, batch.merchant_id, batch.currency, batch.window_start_ms,
                   batch.window_end_ms, gross_minor=batch.gross_minor,
                   fee_minor=batch.fee_minor, net_minor=batch.net_minor,
                   **{name: batch.count(kind) for kind, name in COUNT_FIELDS.items()})


class _Closable(Protocol):
    @property
    def batch_id(self) -> str: ...

    @property
    def window_start_ms(self) -> int: ...

    def close_at_ms(self, policy: WindowPolicy) -> int: ...


B = TypeVar("B", bound=_Closable)


def due_batches(open_batches: Iterable[B], now_ms: int, policy: WindowPolicy) -> list[B]:
    """Batches whose window closed (now >= end + grace), oldest first, ties by batch_id.

    Closing is left to the caller (batch.close(now_ms), then delete it from the table) so that
    publishing and deleting stay in the agent, where the Kafka side effects are.
    """
    due = [batch for batch in open_batches if now_ms >= batch.close_at_ms(policy)]
    return sorted(due, key=lambda batch: (batch.window_start_ms, batch.batch_id))
