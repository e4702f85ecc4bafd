"""Settlement batch arithmetic: accumulate matched payments per merchant, currency and window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from settlement.errors import DomainError
from settlement.fees import FeeSchedule
from settlement.windows import Window, WindowPolicy, batch_id, close_at_ms

BATCH_FORMAT_VERSION = 1
TOTALS_FORMAT_VERSION = 1


class BatchError(DomainError, ValueError):
    """A batch or batch item broke the batch rules (a caller bug)."""


class BatchConflict(BatchError):
    """The same payment_id was added twice with different amounts."""


class BatchInvariantError(BatchError):
    """A batch's totals disagree with its items; it must never be published."""


def _require_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BatchError(f"{name} must be an int, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One matched payment in a batch, with the same fee split the ledger posted."""

    payment_id: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    matched_at_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.payment_id, str) or not self.payment_id:
            raise BatchError(f"payment_id must be a non-empty string, got {self.payment_id!r}")
        gross = _require_int("gross_minor", self.gross_minor)
        fee = _require_int("fee_minor", self.fee_minor)
        net = _require_int("net_minor", self.net_minor)
        _require_int("matched_at_ms", self.matched_at_ms)
        if gross <= 0 or fee < 0 or net < 0 or fee + net != gross:
            raise BatchError(
                f"item {self.payment_id}: need gross > 0, fee >= 0, net >= 0 and "
                f"fee + net == gross; got gross={gross} fee={fee} net={net}"
            )

    @classmethod
    def for_match(
        cls,
        payment_id: str,
        channel: str,
        gross_minor: int,
        matched_at_ms: int,
        fees: FeeSchedule,
    ) -> BatchItem:
        """Split with the schedule the ledger uses, so batch nets equal the merchant payable."""
        fee = fees.fee_for(channel, gross_minor)
        return cls(payment_id, gross_minor, fee, gross_minor - fee, matched_at_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "gross_minor": self.gross_minor,
            "fee_minor": self.fee_minor,
            "net_minor": self.net_minor,
            "matched_at_ms": self.matched_at_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchItem:
        return cls(**data)


def _check_totals(
    where: str,
    items: tuple[BatchItem, ...],
    payment_count: int,
    gross_minor: int,
    fee_minor: int,
    net_minor: int,
) -> None:
    # Totals are kept (or published) separately from the items and recomputed here, so a bug
    # in either the running sums or the item list is caught before money moves.
    ids = {item.payment_id for item in items}
    checks = {
        "payment_count == len(items)": payment_count == len(items),
        "payment ids unique": len(ids) == len(items),
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
    """A closed batch: what is published to settlements.batches and paid to the merchant."""

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        if self.batch_id != batch_id(self.merchant_id, self.currency, self.window_start_ms):
            raise BatchInvariantError(f"batch id {self.batch_id!r} does not match its key")
        _check_totals(
            self.batch_id,
            self.items,
            self.payment_count,
            self.gross_minor,
            self.fee_minor,
            self.net_minor,
        )

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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SettlementBatch:
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
    # Redelivered payments are expected under at-least-once delivery; counting them makes the
    # "nothing applied twice" guarantee observable in metrics.
    duplicates_ignored: int = 0
    # Derived from items for O(1) membership; not stored, not compared.
    _ids: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "_ids", frozenset(item.payment_id for item in self.items))
        if self.batch_id != batch_id(self.merchant_id, self.currency, self.window_start_ms):
            raise BatchInvariantError(f"batch id {self.batch_id!r} does not match its key")
        if self.window_end_ms <= self.window_start_ms:
            raise BatchError(f"batch {self.batch_id}: window end must be after its start")

    @classmethod
    def new(cls, merchant_id: str, currency: str, window: Window) -> OpenBatch:
        start_ms, end_ms = window
        key = batch_id(merchant_id, currency, start_ms)
        return cls(key, merchant_id, currency, start_ms, end_ms)

    @property
    def payment_count(self) -> int:
        return len(self.items)

    def __contains__(self, payment_id: object) -> bool:
        return payment_id in self._ids

    def add(self, item: BatchItem) -> OpenBatch:
        """A batch with the item added; the same item again is a counted no-op.

        The same payment_id with different amounts is a BatchConflict: the fee split is
        deterministic, so a difference means a bug upstream, not a redelivery.
        """
        if item.payment_id in self._ids:
            existing = next(i for i in self.items if i.payment_id == item.payment_id)
            if existing != item:
                raise BatchConflict(
                    f"batch {self.batch_id}: payment {item.payment_id} already added as "
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

    def close(self, now_ms: int) -> SettlementBatch:
        """The closed batch. Deterministic apart from closed_at_ms, so a re-close after a crash
        publishes the same batch_id and items and the sink keeps the first."""
        _check_totals(
            self.batch_id,
            self.items,
            self.payment_count,
            self.gross_minor,
            self.fee_minor,
            self.net_minor,
        )
        return BatchTotals.of(self).close(now_ms, self.items)

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
        if data.get("v") != BATCH_FORMAT_VERSION:
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
            batch.payment_count,
            batch.gross_minor,
            batch.fee_minor,
            batch.net_minor,
        )
        return batch


def _require_count(name: str, value: object) -> int:
    if _require_int(name, value) < 0:
        raise BatchError(f"{name} must be >= 0, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """An open batch without its items: its window and running sums, O(1) in size.

    The caller keeps the items elsewhere (the settle stage: one table key per item) and hands
    them to close(), which checks them against these totals before anything is published.
    add() does not look for duplicates: the caller owns the item store and must ask it first.
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

    def __post_init__(self) -> None:
        if self.batch_id != batch_id(self.merchant_id, self.currency, self.window_start_ms):
            raise BatchInvariantError(f"batch id {self.batch_id!r} does not match its key")
        _require_int("window_end_ms", self.window_end_ms)
        if self.window_end_ms <= self.window_start_ms:
            raise BatchError(f"batch {self.batch_id}: window end must be after its start")
        for name in ("payment_count", "gross_minor", "fee_minor", "net_minor"):
            _require_count(name, getattr(self, name))
        if self.gross_minor != self.fee_minor + self.net_minor:
            raise BatchInvariantError(f"batch {self.batch_id}: gross != fee + net")

    @classmethod
    def new(cls, merchant_id: str, currency: str, window: Window) -> BatchTotals:
        start_ms, end_ms = window
        return cls(batch_id(merchant_id, currency, start_ms), merchant_id, currency, start_ms,
                   end_ms)

    @property
    def window(self) -> Window:
        return Window(self.window_start_ms, self.window_end_ms)

    def add(self, item: BatchItem) -> BatchTotals:
        """The totals with one more item (the caller has made sure it is a new one)."""
        return replace(
            self,
            payment_count=self.payment_count + 1,
            gross_minor=self.gross_minor + item.gross_minor,
            fee_minor=self.fee_minor + item.fee_minor,
            net_minor=self.net_minor + item.net_minor,
        )

    def close_at_ms(self, policy: WindowPolicy) -> int:
        return close_at_ms((self.window_start_ms, self.window_end_ms), policy)

    def close(self, now_ms: int, items: Iterable[BatchItem]) -> SettlementBatch:
        """The closed batch with these items; BatchInvariantError if they disagree with the
        totals (count, unique ids, sums), so a lost or extra item is never published."""
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
            items=tuple(items),
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
            "gross_minor": self.gross_minor,
            "fee_minor": self.fee_minor,
            "net_minor": self.net_minor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchTotals:
        if data.get("v") != TOTALS_FORMAT_VERSION:
            raise BatchError(f"unknown batch totals format version {data.get('v')!r}")
        return cls(**{key: value for key, value in data.items() if key != "v"})

    @classmethod
    def of(cls, batch: OpenBatch) -> BatchTotals:
        """The totals of an OpenBatch (which checked them against its items on read-back)."""
        return cls(batch.batch_id, batch.merchant_id, batch.currency, batch.window_start_ms,
                   batch.window_end_ms, batch.payment_count, batch.gross_minor,
                   batch.fee_minor, batch.net_minor)


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
