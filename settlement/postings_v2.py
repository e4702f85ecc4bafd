"""Ledger v2 postings beside the payment's: refund, payout and dispute journals, and the batch
carry.

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

Disputes (source '<payment_id>/<dispute_id>'; D = the disputed amount, X = the dispute fee;
"withdrawn": the channel took D back from us when the dispute opened):
  DISPUTE_OPEN  ('DO:<source>'): DEBIT payable:<m> D, CREDIT dispute_hold:<m> D;
          withdrawn also DEBIT dispute_receivable:<ch> D, CREDIT clearing:<ch> D
  DISPUTE_WON   ('DW:<source>'): DEBIT dispute_hold:<m> D, CREDIT payable:<m> D;
          withdrawn also DEBIT clearing:<ch> D, CREDIT dispute_receivable:<ch> D
  DISPUTE_LOST  ('DL:<source>'): DEBIT dispute_hold:<m> D, CREDIT dispute_receivable:<ch> D
          (withdrawn) or clearing:<ch> D (not); X > 0 also DEBIT payable:<m> X,
          CREDIT clearing:<ch> X (one clearing credit of D + X when not withdrawn: one entry
          per journal, account and side)
A dispute journal stores gross = D + X, fee = X (0 unless LOST), net = D. Its gross is the
merchant side's debits (payable and dispute_hold); the channel pair of a withdrawn OPEN or
WON adds D more debits, so those journals debit 2 x gross in all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from settlement.ledger import (
    CREDIT,
    DEBIT,
    PAYABLE,
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
    DISPUTE_JOURNAL_KINDS,
    JOURNAL_DISPUTE_LOST,
    JOURNAL_DISPUTE_OPEN,
    JOURNAL_DISPUTE_WON,
    JOURNAL_KINDS,
    JOURNAL_PAYMENT,
    JOURNAL_PAYMENT_REVERSAL,
    JOURNAL_PAYOUT,
    JOURNAL_REFUND,
    JOURNAL_REFUND_REVERSAL,
    RefundIdError,
    dispute_source_id,
    refund_source_id,
)

PAYOUT_DUE: Final = "payout_due"  # liability: closed batches' payouts not yet paid out
DISPUTE_HOLD: Final = "dispute_hold"  # liability: a merchant's funds frozen by open disputes
# Asset: what a channel withdrew for open disputes and returns if the merchant wins.
DISPUTE_RECEIVABLE: Final = "dispute_receivable"
REFUND_JOURNAL_PREFIX: Final = "RF:"
PAYOUT_JOURNAL_PREFIX: Final = "P:"
PAYMENT_REVERSAL_JOURNAL_PREFIX: Final = "PR:"
REFUND_REVERSAL_JOURNAL_PREFIX: Final = "RR:"
DISPUTE_JOURNAL_PREFIX: Final = {JOURNAL_DISPUTE_OPEN: "DO:", JOURNAL_DISPUTE_WON: "DW:",
                                 JOURNAL_DISPUTE_LOST: "DL:"}
# The journal kind each reversal kind mirrors.
REVERSED_KIND: Final = {JOURNAL_PAYMENT_REVERSAL: JOURNAL_PAYMENT,
                        JOURNAL_REFUND_REVERSAL: JOURNAL_REFUND}


class PostingError(LedgerError):
    """Amounts that would post a wrong journal (a split that does not add up, a sign)."""


def _owned(kind: str, owner: str) -> str:
    if not isinstance(owner, str) or not owner:
        raise PostingError(f"{kind} owner must be a non-empty string, got {owner!r}")
    return f"{kind}:{owner}"


def payout_due_account(merchant_id: str) -> str:
    return _owned(PAYOUT_DUE, merchant_id)


def dispute_hold_account(merchant_id: str) -> str:
    return _owned(DISPUTE_HOLD, merchant_id)


def dispute_receivable_account(channel: str) -> str:
    return _owned(DISPUTE_RECEIVABLE, channel)


def _merchant_side(account: str) -> bool:
    """payable:<m> or dispute_hold:<m>: the accounts a dispute journal's gross is debited on."""
    return account.startswith((f"{PAYABLE}:", f"{DISPUTE_HOLD}:"))


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
        if self.kind in DISPUTE_JOURNAL_KINDS:
            self._check_dispute(debits)
        elif debits != gross:
            raise PostingError(
                f"journal {self.journal.journal_id}: debits {debits} != gross {gross}")

    def _check_dispute(self, debits: int) -> None:
        """gross = D + X is the merchant side's debits; the channel pair adds D (withdrawn OPEN
        or WON only); only a LOST dispute has a fee."""
        merchant = sum(p.amount_minor for p in self.journal.postings
                       if p.side == DEBIT and _merchant_side(p.account))
        channel_pair = (0, self.net_minor) if self.kind != JOURNAL_DISPUTE_LOST else (0,)
        if (merchant != self.gross_minor or debits - merchant not in channel_pair
                or (self.fee_minor and self.kind != JOURNAL_DISPUTE_LOST)):
            raise PostingError(
                f"{self.kind} journal {self.journal.journal_id}: merchant-side debits "
                f"{merchant}, all debits {debits}, for gross {self.gross_minor}, fee "
                f"{self.fee_minor}, net {self.net_minor}")

    @property
    def journal_id(self) -> str:
        return self.journal.journal_id

    @property
    def currency(self) -> str:
        return self.journal.currency


def _journal(journal_id: str, owner: str, currency: str,
             legs: tuple[tuple[str, str, int], ...]) -> Journal:
    # One entry per account and side (the ledger_entries key): equal legs add up.
    merged: dict[tuple[str, str], int] = {}
    for account, side, amount in legs:
        merged[(account, side)] = merged.get((account, side), 0) + amount
    postings = tuple(Posting(journal_id, account, side, amount, currency)
                     for (account, side), amount in merged.items() if amount > 0)  # no zero legs
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


def _dispute_source(payment_id: str, dispute_id: str) -> str:
    try:
        return dispute_source_id(payment_id, dispute_id)
    except RefundIdError as exc:
        raise PostingError(str(exc)) from exc


def _disputed(source_id: str, amount_minor: int, withdrawn: bool) -> int:
    amount = _int("amount_minor", amount_minor)
    if amount <= 0:
        raise PostingError(f"dispute {source_id}: the disputed amount must be > 0, got {amount}")
    if not isinstance(withdrawn, bool):
        raise PostingError(f"dispute {source_id}: funds_withdrawn must be a bool, "
                           f"got {withdrawn!r}")
    return amount


def dispute_open_journal(payment_id: str, dispute_id: str, merchant_id: str, channel: str,
                         amount_minor: int, funds_withdrawn: bool,
                         currency: str) -> KindJournal:
    """The DISPUTE_OPEN journal: D moves from payable:<m> to dispute_hold:<m> (no longer
    payable out); a channel that withdrew D owes it back (dispute_receivable) and no longer
    holds it for us (clearing)."""
    source_id = _dispute_source(payment_id, dispute_id)
    amount = _disputed(source_id, amount_minor, funds_withdrawn)
    legs = [(payable_account(merchant_id), DEBIT, amount),
            (dispute_hold_account(merchant_id), CREDIT, amount)]
    if funds_withdrawn:
        legs += [(dispute_receivable_account(channel), DEBIT, amount),
                 (clearing_account(channel), CREDIT, amount)]
    journal = _journal(DISPUTE_JOURNAL_PREFIX[JOURNAL_DISPUTE_OPEN] + source_id, payment_id,
                       currency, tuple(legs))
    return KindJournal(JOURNAL_DISPUTE_OPEN, source_id, payment_id, amount, 0, amount, journal)


def dispute_won_journal(payment_id: str, dispute_id: str, merchant_id: str, channel: str,
                        amount_minor: int, funds_withdrawn: bool,
                        currency: str) -> KindJournal:
    """The DISPUTE_WON journal: the opening's exact mirror. D goes back from dispute_hold:<m>
    to payable:<m>; a withdrawn D comes back from the channel (receivable -> clearing)."""
    source_id = _dispute_source(payment_id, dispute_id)
    amount = _disputed(source_id, amount_minor, funds_withdrawn)
    legs = [(dispute_hold_account(merchant_id), DEBIT, amount),
            (payable_account(merchant_id), CREDIT, amount)]
    if funds_withdrawn:
        legs += [(clearing_account(channel), DEBIT, amount),
                 (dispute_receivable_account(channel), CREDIT, amount)]
    journal = _journal(DISPUTE_JOURNAL_PREFIX[JOURNAL_DISPUTE_WON] + source_id, payment_id,
                       currency, tuple(legs))
    return KindJournal(JOURNAL_DISPUTE_WON, source_id, payment_id, amount, 0, amount, journal)


def dispute_lost_journal(payment_id: str, dispute_id: str, merchant_id: str, channel: str,
                         amount_minor: int, funds_withdrawn: bool, fee_minor: int,
                         currency: str) -> KindJournal:
    """The DISPUTE_LOST journal: the held D leaves for good (to settle the receivable of a
    withdrawn dispute, else out of clearing now), and the dispute fee X >= 0 is charged to
    the merchant's payable and paid to the channel (clearing)."""
    source_id = _dispute_source(payment_id, dispute_id)
    amount = _disputed(source_id, amount_minor, funds_withdrawn)
    fee = _int("fee_minor", fee_minor)
    if fee < 0:
        raise PostingError(f"dispute {source_id}: the dispute fee must be >= 0, got {fee}")
    gone_to = (dispute_receivable_account(channel) if funds_withdrawn
               else clearing_account(channel))
    journal = _journal(DISPUTE_JOURNAL_PREFIX[JOURNAL_DISPUTE_LOST] + source_id, payment_id,
                       currency, (
                           (dispute_hold_account(merchant_id), DEBIT, amount),
                           (gone_to, CREDIT, amount),
                           (payable_account(merchant_id), DEBIT, fee),
                           (clearing_account(channel), CREDIT, fee),
                       ))
    return KindJournal(JOURNAL_DISPUTE_LOST, source_id, payment_id, amount + fee, fee, amount,
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
