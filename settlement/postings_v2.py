"""Ledger v2 postings beside the payment's: refund and payout journals, and the batch carry.

Every journal has a kind and a source id, unique together (settlement.refund_model names
them). Amounts are checked before any posting is built; the Journal re-checks the balance.

  REFUND  (source '<payment_id>/<refund_id>', id 'RF:<source>'):
          DEBIT payable:<m> R - f, DEBIT fee_revenue:<ch> f, CREDIT clearing:<ch> R
  PAYOUT  (source batch_id, id 'P:<batch_id>'):
          DEBIT payable:<m> payout, CREDIT payout_due:<m> payout (only when payout > 0)
  PAYMENT_REVERSAL  (source payment_id, id 'PR:<payment_id>'): the PAYMENT journal's mirror,
          DEBIT payable:<m> G - F, DEBIT fee_revenue:<ch> F, CREDIT clearing:<ch> G
  REFUND_REVERSAL   (source '<payment_id>/<refund_id>', id 'RR:<source>'): the REFUND
          journal's mirror, DEBIT clearing:<ch> R, CREDIT payable:<m> R - f,
          CREDIT fee_revenue:<ch> f

A reversal journal stores the original's amounts (gross, fee, net >= 0) and posts the
original's entries with the sides swapped: `mirror_mismatch` says how a posted pair differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from settlement.ledger import (
    CREDIT,
    DEBIT,
    Journal,
    LedgerError,
    Posting,
    assert_balanced,
    clearing_account,
    fee_revenue_account,
    journal_id_for,
    payable_account,
)
from settlement.refund_model import (
    JOURNAL_KINDS,
    JOURNAL_PAYMENT,
    JOURNAL_PAYMENT_REVERSAL,
    JOURNAL_PAYOUT,
    JOURNAL_REFUND,
    JOURNAL_REFUND_REVERSAL,
    refund_source_id,
)

PAYOUT_DUE: Final = "payout_due"  # liability: closed batches' payouts not yet paid out
REFUND_JOURNAL_PREFIX: Final = "RF:"
PAYOUT_JOURNAL_PREFIX: Final = "P:"
PAYMENT_REVERSAL_JOURNAL_PREFIX: Final = "PR:"
REFUND_REVERSAL_JOURNAL_PREFIX: Final = "RR:"
# The journal kind each reversal kind mirrors.
REVERSED_KIND: Final = {JOURNAL_PAYMENT_REVERSAL: JOURNAL_PAYMENT,
                        JOURNAL_REFUND_REVERSAL: JOURNAL_REFUND}


class PostingError(LedgerError):
    """Amounts that would post a wrong journal (a split that does not add up, a sign)."""


def payout_due_account(merchant_id: str) -> str:
    if not isinstance(merchant_id, str) or not merchant_id:
        raise PostingError(f"payout_due owner must be a non-empty string, got {merchant_id!r}")
    return f"{PAYOUT_DUE}:{merchant_id}"


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PostingError(f"{name} must be an int count of minor units, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class KindJournal:
    """A journal with its v2 identity and the amounts stored beside it.

    gross = net + fee >= 0 each, and gross equals the journal's debits: what the
    ledger_journals checks and `settle audit books` read back.
    """

    kind: str
    source_id: str
    payment_id: str | None
    gross_minor: int
    fee_minor: int
    net_minor: int
    journal: Journal

    def __post_init__(self) -> None:
        if self.kind not in JOURNAL_KINDS:
            raise PostingError(f"unknown journal kind {self.kind!r}")
        if not isinstance(self.source_id, str) or not self.source_id:
            raise PostingError(f"source_id must be a non-empty string, got {self.source_id!r}")
        gross, fee, net = (_int("gross_minor", self.gross_minor),
                           _int("fee_minor", self.fee_minor), _int("net_minor", self.net_minor))
        if gross <= 0 or fee < 0 or net < 0 or gross != net + fee:
            raise PostingError(f"journal {self.source_id}: need gross > 0, fee >= 0, net >= 0 "
                               f"and gross == net + fee; got {gross}, {fee}, {net}")
        if (self.kind == JOURNAL_PAYOUT) != (self.payment_id is None):
            has = "has no" if self.payment_id is None else "has a"
            raise PostingError(f"a {self.kind} journal {has} payment_id")
        assert_balanced(self.journal)
        debits = sum(p.amount_minor for p in self.journal.postings if p.side == DEBIT)
        if debits != gross:
            raise PostingError(
                f"journal {self.journal.journal_id}: debits {debits} != gross {gross}")

    @property
    def journal_id(self) -> str:
        return self.journal.journal_id

    @property
    def currency(self) -> str:
        return self.journal.currency


def _journal(journal_id: str, owner: str, currency: str,
             legs: tuple[tuple[str, str, int], ...]) -> Journal:
    postings = tuple(Posting(journal_id, account, side, amount, currency)
                     for account, side, amount in legs if amount > 0)  # no zero legs
    return Journal(journal_id, owner, currency, postings)


def payment_journal(payment_id: str, merchant_id: str, channel: str, gross_minor: int,
                    fee_minor: int, currency: str) -> KindJournal:
    """The PAYMENT journal with a fee decided upstream (settlement.ledger's legs)."""
    gross, fee = _int("gross_minor", gross_minor), _int("fee_minor", fee_minor)
    if gross <= 0 or not 0 <= fee <= gross:
        raise PostingError(f"payment {payment_id}: need gross > 0 and 0 <= fee <= gross; "
                           f"got {gross}, {fee}")
    journal_id = journal_id_for(payment_id)
    journal = _journal(journal_id, payment_id, currency, (
        (clearing_account(channel), DEBIT, gross),
        (payable_account(merchant_id), CREDIT, gross - fee),
        (fee_revenue_account(channel), CREDIT, fee),
    ))
    return KindJournal(JOURNAL_PAYMENT, payment_id, payment_id, gross, fee, gross - fee, journal)


def refund_journal(payment_id: str, refund_id: str, merchant_id: str, channel: str,
                   amount_minor: int, fee_returned_minor: int, net_minor: int,
                   currency: str) -> KindJournal:
    """The REFUND journal of a succeeded refund R = net + f (the split decided upstream)."""
    source_id = refund_source_id(payment_id, refund_id)
    amount = _int("amount_minor", amount_minor)
    fee = _int("fee_returned_minor", fee_returned_minor)
    net = _int("net_minor", net_minor)
    if amount <= 0 or fee < 0 or net < 0 or amount != net + fee:
        raise PostingError(f"refund {source_id}: need R > 0, f >= 0, net >= 0 and "
                           f"R == net + f; got R={amount} f={fee} net={net}")
    journal = _journal(REFUND_JOURNAL_PREFIX + source_id, payment_id, currency, (
        (payable_account(merchant_id), DEBIT, net),
        (fee_revenue_account(channel), DEBIT, fee),
        (clearing_account(channel), CREDIT, amount),
    ))
    return KindJournal(JOURNAL_REFUND, source_id, payment_id, amount, fee, net, journal)


def payout_journal(batch_id: str, merchant_id: str, currency: str,
                   payout_minor: int) -> KindJournal:
    """The PAYOUT journal of a closed batch that pays something (payout > 0)."""
    payout = _int("payout_minor", payout_minor)
    if payout <= 0:
        raise PostingError(f"batch {batch_id}: a payout journal needs payout > 0, got {payout}")
    if not isinstance(batch_id, str) or not batch_id:
        raise PostingError(f"batch_id must be a non-empty string, got {batch_id!r}")
    journal = _journal(PAYOUT_JOURNAL_PREFIX + batch_id, batch_id, currency, (
        (payable_account(merchant_id), DEBIT, payout),
        (payout_due_account(merchant_id), CREDIT, payout),
    ))
    return KindJournal(JOURNAL_PAYOUT, batch_id, None, payout, 0, payout, journal)


def _split(what: str, gross_minor: int, fee_minor: int, net_minor: int) -> tuple[int, int, int]:
    gross, fee = _int("gross_minor", gross_minor), _int("fee_minor", fee_minor)
    net = _int("net_minor", net_minor)
    if gross <= 0 or fee < 0 or net < 0 or gross != net + fee:
        raise PostingError(f"{what}: need gross > 0, fee >= 0, net >= 0 and gross == net + fee;"
                           f" got gross={gross} fee={fee} net={net}")
    return gross, fee, net


def payment_reversal_journal(payment_id: str, merchant_id: str, channel: str,
                             gross_minor: int, fee_minor: int, net_minor: int,
                             currency: str) -> KindJournal:
    """The PAYMENT_REVERSAL journal: the exact mirror of the PAYMENT journal of G = net + F
    (the split published by the reconciler, never recomputed here)."""
    gross, fee, net = _split(f"reversal of payment {payment_id}", gross_minor, fee_minor,
                             net_minor)
    journal = _journal(PAYMENT_REVERSAL_JOURNAL_PREFIX + payment_id, payment_id, currency, (
        (payable_account(merchant_id), DEBIT, net),
        (fee_revenue_account(channel), DEBIT, fee),
        (clearing_account(channel), CREDIT, gross),
    ))
    return KindJournal(JOURNAL_PAYMENT_REVERSAL, payment_id, payment_id, gross, fee, net,
                       journal)


def refund_reversal_journal(payment_id: str, refund_id: str, merchant_id: str, channel: str,
                            amount_minor: int, fee_returned_minor: int, net_minor: int,
                            currency: str) -> KindJournal:
    """The REFUND_REVERSAL journal: the exact mirror of the REFUND journal of R = net + f."""
    source_id = refund_source_id(payment_id, refund_id)
    amount, fee, net = _split(f"reversal of refund {source_id}", amount_minor,
                              fee_returned_minor, net_minor)
    journal = _journal(REFUND_REVERSAL_JOURNAL_PREFIX + source_id, payment_id, currency, (
        (clearing_account(channel), DEBIT, amount),
        (payable_account(merchant_id), CREDIT, net),
        (fee_revenue_account(channel), CREDIT, fee),
    ))
    return KindJournal(JOURNAL_REFUND_REVERSAL, source_id, payment_id, amount, fee, net,
                       journal)


Leg = tuple[str, str, int]  # (account, side, amount_minor)


def mirror_mismatch(original: tuple[str, str, int, int, int],
                    original_legs: Iterable[Leg],
                    reversal: tuple[str, str, int, int, int],
                    reversal_legs: Iterable[Leg]) -> str | None:
    """How a reversal journal fails to mirror its original exactly, or None when it does.

    `original` and `reversal`: (kind, currency, gross, fee, net) of each journal. Exact mirror:
    the reversal kind of the original's kind, the same currency and amounts, and the same
    legs (account, amount) with every side swapped.
    """
    o_kind, o_currency, *o_amounts = original
    r_kind, r_currency, *r_amounts = reversal
    if REVERSED_KIND.get(r_kind) != o_kind:
        return f"a {r_kind} journal cannot reverse a {o_kind} journal"
    if o_currency != r_currency:
        return f"currency {r_currency} differs from the original's {o_currency}"
    if o_amounts != r_amounts:
        return (f"gross/fee/net {tuple(r_amounts)} differ from the original's "
                f"{tuple(o_amounts)}")
    swapped = sorted((account, CREDIT if side == DEBIT else DEBIT, amount)
                     for account, side, amount in original_legs)
    legs = sorted(reversal_legs)
    if legs != swapped:
        return f"postings {legs} are not the original's swapped {swapped}"
    return None


def carry(net_minor: int, carried_in_minor: int) -> tuple[int, int]:
    """(payout, carried_out) of a batch: max(net + carried_in, 0), min(net + carried_in, 0)."""
    net, carried_in = _int("net_minor", net_minor), _int("carried_in_minor", carried_in_minor)
    if carried_in > 0:
        raise PostingError(f"carried_in_minor must be <= 0, got {carried_in}")
    balance = net + carried_in
    return max(balance, 0), min(balance, 0)
