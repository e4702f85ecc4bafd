"""Ledger sink row builders (pure): reconciliation results to journals, payments, exceptions."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from settlement.fees import DEFAULT_FEE_SPEC, FeeSchedule
from settlement.ledger import (
    CREDIT,
    DEBIT,
    Journal,
    Posting,
    assert_balanced,
    clearing_account,
    fee_revenue_account,
    journal_for_match,
    journal_id_for,
    payable_account,
)
from settlement.reconciliation import (
    MATCHED,
    MISSING_CONFIRMATION,
    OUTCOMES,
    TERMINAL_OUTCOMES,
)
from sinks.base import Rejection
from sinks.errors import InvalidRecord, TerminalStateConflict

DEFAULT_FEES: Final = FeeSchedule.from_spec(DEFAULT_FEE_SPEC)
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class JournalRow(NamedTuple):
    """A ledger_journals row; columns in COPY order."""

    journal_id: str
    payment_id: str
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int


class EntryRow(NamedTuple):
    """A ledger_entries row; columns in COPY order."""

    journal_id: str
    payment_id: str
    account: str
    side: str
    amount_minor: int
    currency: str


class PaymentRow(NamedTuple):
    """A payments row: the payment's terminal state; columns in COPY order."""

    payment_id: str
    merchant_id: str | None
    channel: str | None
    amount_minor: int | None
    currency: str | None
    state: str
    late: bool
    result_id: str
    created_at: datetime | None
    decided_at: datetime


class ExceptionRow(NamedTuple):
    """A reconciliation_exceptions row (every non-MATCHED outcome); columns in COPY order."""

    result_id: str
    payment_id: str
    merchant_id: str | None
    channel: str | None
    outcome: str
    expected_amount_minor: int | None
    expected_currency: str | None
    confirmed_amount_minor: int | None
    confirmed_currency: str | None
    confirmation_id: str | None
    channel_txn_id: str | None
    detail: str
    decided_at: datetime


@dataclass(slots=True)
class LedgerRows:
    """Everything one batch of results writes, deduplicated within the batch."""

    journals: list[JournalRow] = field(default_factory=list)
    entries: list[EntryRow] = field(default_factory=list)
    payments: list[PaymentRow] = field(default_factory=list)
    exceptions: list[ExceptionRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # payment_id -> batch index of the MATCHED result behind its journal (for DB conflicts).
    matched_index: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class ResultRows:
    """The rows of one result, before deduplication against the rest of the batch."""

    payment: PaymentRow | None
    journal: Journal | None
    journal_row: JournalRow | None
    exception: ExceptionRow | None


def _text(result: Mapping[str, Any], name: str, required: bool = True) -> str | None:
    value = result.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InvalidRecord(f"{name} must be a non-empty string, got {value!r}")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise InvalidRecord(f"{name} contains a NUL character")
    return value


def _amount(result: Mapping[str, Any], name: str) -> int | None:
    value = result.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"{name} must be an integer count of minor units, got {value!r}")
    return value


def _currency(result: Mapping[str, Any], name: str) -> str | None:
    value = result.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise InvalidRecord(f"{name} must be an ISO 4217 alpha-3 code, got {value!r}")
    return value


def _timestamp(result: Mapping[str, Any], name: str, required: bool = True) -> datetime | None:
    value = result.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRecord(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def journal_with_fee(
    payment_id: str, merchant_id: str, channel: str, gross_minor: int, fee: int, currency: str
) -> Journal:
    """The journal_for_match legs with a fee decided upstream (the record's fee_minor)."""
    if not 0 <= fee <= gross_minor:
        raise InvalidRecord(f"fee_minor {fee} must be within 0..gross_minor {gross_minor}")
    journal_id = journal_id_for(payment_id)
    legs = (
        (clearing_account(channel), DEBIT, gross_minor),
        (payable_account(merchant_id), CREDIT, gross_minor - fee),
        (fee_revenue_account(channel), CREDIT, fee),
    )
    postings = tuple(
        Posting(journal_id, account, side, amount, currency)
        for account, side, amount in legs
        if amount > 0  # postings are > 0; a zero leg is left out, as journal_for_match does
    )
    return Journal(journal_id, payment_id, currency, postings)


def _matched_journal(
    result: Mapping[str, Any], payment_id: str, channel: str | None, fees: FeeSchedule
) -> tuple[Journal, JournalRow]:
    merchant_id = _text(result, "merchant_id", required=False)
    if merchant_id is None or channel is None:
        raise InvalidRecord("a MATCHED result needs merchant_id and channel to post a journal")
    gross = _amount(result, "expected_amount_minor")
    currency = _currency(result, "expected_currency")
    confirmed = (_amount(result, "confirmed_amount_minor"), _currency(result, "confirmed_currency"))
    if gross is None or currency is None or (gross, currency) != confirmed:
        raise InvalidRecord(
            f"MATCHED needs equal expected and confirmed amounts: expected "
            f"{(gross, currency)}, confirmed {confirmed}"
        )
    if gross <= 0:
        raise InvalidRecord(f"a MATCHED amount must be > 0, got {gross}")
    fee, net = _amount(result, "fee_minor"), _amount(result, "net_minor")
    if fee is None and net is None:
        # Older results carry no split: the same schedule the reconciler uses decides it.
        fee = fees.fee_for(channel, gross)
        journal = journal_for_match(payment_id, merchant_id, channel, gross, currency, fees)
    elif fee is None or net is None:
        raise InvalidRecord("fee_minor and net_minor must both be set or both be null")
    elif fee < 0 or net < 0 or fee + net != gross:
        raise InvalidRecord(f"fee_minor {fee} + net_minor {net} != gross {gross} (or negative)")
    else:
        journal = journal_with_fee(payment_id, merchant_id, channel, gross, fee, currency)
    assert_balanced(journal)  # again, where it is written: it must never reach the table unbalanced
    row = JournalRow(journal.journal_id, payment_id, currency, gross, fee, gross - fee)
    return journal, row


def result_rows(result: Mapping[str, Any], fees: FeeSchedule) -> ResultRows:
    """The rows of one decoded ReconciliationResult; InvalidRecord (or a domain error) if bad."""
    result_id = _text(result, "result_id")
    payment_id = _text(result, "payment_id")
    assert result_id is not None and payment_id is not None
    outcome = result.get("outcome")
    if outcome not in OUTCOMES:
        raise InvalidRecord(f"unknown outcome {outcome!r}")
    terminal = result.get("terminal")
    if terminal is not (outcome in TERMINAL_OUTCOMES):
        raise InvalidRecord(f"{outcome} with terminal={terminal!r}")
    late = result.get("late", False)
    if not isinstance(late, bool):
        raise InvalidRecord(f"late must be a boolean, got {late!r}")
    raw_channel = _text(result, "channel", required=False)
    # Avro's Channel enum is upper-case; accounts, fees and topics use the lower-case name.
    channel = raw_channel.lower() if raw_channel is not None else None
    merchant_id = _text(result, "merchant_id", required=False)
    decided_at = _timestamp(result, "decided_at")
    assert decided_at is not None
    created_at = _timestamp(result, "created_at", required=False)
    expected = _amount(result, "expected_amount_minor")
    expected_currency = _currency(result, "expected_currency")
    detail = result.get("detail") or ""
    if not isinstance(detail, str) or "\x00" in detail:
        raise InvalidRecord("detail must be a string without NUL characters")

    journal = journal_row = exception = payment = None
    if outcome == MATCHED:
        journal, journal_row = _matched_journal(result, payment_id, channel, fees)
    else:
        exception = ExceptionRow(
            result_id, payment_id, merchant_id, channel, outcome, expected, expected_currency,
            _amount(result, "confirmed_amount_minor"), _currency(result, "confirmed_currency"),
            _text(result, "confirmation_id", required=False),
            _text(result, "channel_txn_id", required=False), detail, decided_at,
        )
    if terminal:
        if expected is not None and expected <= 0:
            raise InvalidRecord(f"expected_amount_minor must be > 0, got {expected}")
        payment = PaymentRow(
            payment_id, merchant_id, channel, expected, expected_currency, outcome, late,
            result_id, created_at, decided_at,
        )
    return ResultRows(payment, journal, journal_row, exception)


def _merge_payment(
    payments: dict[str, PaymentRow], replaced: set[str], row: PaymentRow
) -> str:
    """Apply one terminal row to the batch's view: "new", "late_match", "duplicate" or "lost"."""
    current = payments.get(row.payment_id)
    if current is None:
        payments[row.payment_id] = row
        return "new"
    if current.result_id == row.result_id:
        return "duplicate"
    # First terminal wins, except the one late MATCHED after MISSING_CONFIRMATION (once).
    late_match = current.state == MISSING_CONFIRMATION and row.state == MATCHED
    if late_match and row.payment_id not in replaced:
        payments[row.payment_id] = row
        replaced.add(row.payment_id)
        return "late_match"
    return "lost"


def build_ledger_rows(results: Sequence[Mapping[str, Any]], fees: FeeSchedule) -> LedgerRows:
    """The rows of a batch of decoded results, in batch order, each record judged on its own.

    A bad record is rejected (to be dead-lettered) and never stops the others. A MATCHED
    result that loses to another terminal state of its payment is rejected as a
    TerminalStateConflict: silently dropping it would hide money the channel took.
    """
    out = LedgerRows()
    payments: dict[str, PaymentRow] = {}
    replaced: set[str] = set()
    journals: dict[str, tuple[JournalRow, Journal]] = {}
    exceptions: dict[str, ExceptionRow] = {}
    for index, result in enumerate(results):
        try:
            rows = result_rows(result, fees)
        except Exception as exc:  # judged per record: one bad record must not stop the batch
            out.rejected.append(Rejection(index, type(exc).__name__, str(exc)))
            continue
        if rows.payment is not None:
            verdict = _merge_payment(payments, replaced, rows.payment)
            if verdict == "duplicate":
                out.duplicates += 1
                continue
            if verdict == "lost" and rows.payment.state == MATCHED:
                held = payments[rows.payment.payment_id]
                message = (
                    f"MATCHED result {rows.payment.result_id} for payment "
                    f"{rows.payment.payment_id}, which is already {held.state} by {held.result_id}"
                )
                out.rejected.append(Rejection(index, TerminalStateConflict.__name__, message))
                continue
        if rows.journal is not None and rows.journal_row is not None:
            journals[rows.journal_row.payment_id] = (rows.journal_row, rows.journal)
            out.matched_index[rows.journal_row.payment_id] = index
        if rows.exception is not None:
            if rows.exception.result_id in exceptions:
                out.duplicates += 1
            else:
                exceptions[rows.exception.result_id] = rows.exception
    out.payments = list(payments.values())
    out.exceptions = list(exceptions.values())
    for journal_row, journal in journals.values():
        out.journals.append(journal_row)
        out.entries.extend(
            EntryRow(p.journal_id, journal.payment_id, p.account, p.side, p.amount_minor,
                     p.currency)
            for p in journal.postings
        )
    return out
