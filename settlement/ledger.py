"""Double-entry ledger postings for matched payments; every journal balances per currency."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from settlement.errors import DomainError
from settlement.fees import FeeSchedule

DEBIT = "DEBIT"
CREDIT = "CREDIT"
SIDES = frozenset({DEBIT, CREDIT})

# Account kinds. Accounts are "<kind>:<owner>" strings so the sink can store them as text and
# analysts can group by prefix without a lookup table.
CLEARING = "clearing"  # asset: money a channel has collected for us and still owes us
PAYABLE = "payable"  # liability: money we owe a merchant until it is settled
FEE_REVENUE = "fee_revenue"  # income: our fee, per channel

JOURNAL_ID_PREFIX = "J:"


class LedgerError(DomainError, ValueError):
    """A posting or journal broke a ledger rule (a caller bug)."""


class UnbalancedJournal(LedgerError):
    """A journal's debits and credits differ; it must never be written."""


def clearing_account(channel: str) -> str:
    return _account(CLEARING, channel)


def payable_account(merchant_id: str) -> str:
    return _account(PAYABLE, merchant_id)


def fee_revenue_account(channel: str) -> str:
    return _account(FEE_REVENUE, channel)


def _account(kind: str, owner: str) -> str:
    if not isinstance(owner, str) or not owner:
        raise LedgerError(f"{kind} account owner must be a non-empty string, got {owner!r}")
    return f"{kind}:{owner}"


def journal_id_for(payment_id: str) -> str:
    """Deterministic: a replayed match produces the same journal id, so the sink can dedupe."""
    if not isinstance(payment_id, str) or not payment_id:
        raise LedgerError(f"payment_id must be a non-empty string, got {payment_id!r}")
    return JOURNAL_ID_PREFIX + payment_id


@dataclass(frozen=True, slots=True)
class Posting:
    """One line of a journal: an amount on one side of one account."""

    journal_id: str
    account: str
    side: str
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise LedgerError(f"side must be DEBIT or CREDIT, got {self.side!r}")
        amount = self.amount_minor
        # Zero postings carry no information and negative ones hide which side is meant.
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise LedgerError(f"posting amount_minor must be an int > 0, got {amount!r}")
        for name in ("journal_id", "account", "currency"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise LedgerError(f"posting {name} must be a non-empty string, got {value!r}")

    @property
    def signed_minor(self) -> int:
        """Debit-positive: debits count +amount, credits -amount."""
        return self.amount_minor if self.side == DEBIT else -self.amount_minor

    def to_dict(self) -> dict[str, Any]:
        return {
            "journal_id": self.journal_id,
            "account": self.account,
            "side": self.side,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
        }


@dataclass(frozen=True, slots=True)
class Journal:
    """A set of postings in one currency that balance; constructing one checks that."""

    journal_id: str
    payment_id: str
    currency: str
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "postings", tuple(self.postings))
        assert_balanced(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "journal_id": self.journal_id,
            "payment_id": self.payment_id,
            "currency": self.currency,
            "postings": [p.to_dict() for p in self.postings],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journal:
        # Reading back re-runs every check: a stored journal that no longer balances is refused.
        return cls(
            journal_id=data["journal_id"],
            payment_id=data["payment_id"],
            currency=data["currency"],
            postings=tuple(Posting(**p) for p in data["postings"]),
        )


def assert_balanced(journal: Journal) -> None:
    """Raise UnbalancedJournal unless debits equal credits and every posting fits the journal."""
    if not journal.postings:
        raise UnbalancedJournal(f"journal {journal.journal_id} has no postings")
    debits = credits = 0
    for posting in journal.postings:
        if posting.journal_id != journal.journal_id:
            raise UnbalancedJournal(
                f"posting for {posting.journal_id} inside journal {journal.journal_id}"
            )
        # One currency per journal: a cross-currency journal can "balance" in sum and still
        # create money in one currency, so it is refused outright.
        if posting.currency != journal.currency:
            raise UnbalancedJournal(
                f"journal {journal.journal_id} in {journal.currency} has a posting in "
                f"{posting.currency}"
            )
        if posting.side == DEBIT:
            debits += posting.amount_minor
        else:
            credits += posting.amount_minor
    if debits != credits:
        raise UnbalancedJournal(
            f"journal {journal.journal_id}: debits {debits} != credits {credits} "
            f"({journal.currency})"
        )


def balances(postings: Iterable[Posting]) -> dict[tuple[str, str], int]:
    """Net balance per (account, currency), debit-positive.

    Debit-positive means asset accounts (clearing) show positive balances and liability and
    income accounts (payable, fee_revenue) show negative ones; so over any set of balanced
    journals the balances of each currency sum to exactly zero. What a merchant is owed is
    -balances[(payable_account(m), currency)].
    """
    totals: dict[tuple[str, str], int] = {}
    for posting in postings:
        key = (posting.account, posting.currency)
        totals[key] = totals.get(key, 0) + posting.signed_minor
    return totals


def journal_for_match(
    payment_id: str,
    merchant_id: str,
    channel: str,
    gross_minor: int,
    currency: str,
    fees: FeeSchedule,
) -> Journal:
    """The journal for a MATCHED payment: the channel owes us gross; we owe the merchant net.

    DEBIT clearing:<channel> gross, CREDIT payable:<merchant> net, CREDIT fee_revenue:<channel>
    fee. A zero leg is left out because postings must be > 0: with a 0 bps fee there is no
    fee leg, and with a 10_000 bps fee (fee == gross) there is no payable leg, so the journal
    still balances and the merchant's payable, like its settlement net, gains 0.
    """
    if isinstance(gross_minor, bool) or not isinstance(gross_minor, int) or gross_minor <= 0:
        raise LedgerError(
            f"gross_minor of a matched payment must be an int > 0, got {gross_minor!r}"
        )
    fee = fees.fee_for(channel, gross_minor)
    net = gross_minor - fee
    journal_id = journal_id_for(payment_id)
    legs = [
        (clearing_account(channel), DEBIT, gross_minor),
        (payable_account(merchant_id), CREDIT, net),
        (fee_revenue_account(channel), CREDIT, fee),
    ]
    postings = tuple(
        Posting(journal_id, account, side, amount, currency)
        for account, side, amount in legs
        if amount > 0
    )
    return Journal(journal_id, payment_id, currency, postings)
