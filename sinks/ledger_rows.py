"""Ledger sink row builders (pure): payment and refund results to journals, states, exceptions."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from settlement.fees import DEFAULT_FEE_SPEC, FeeSchedule
from settlement.postings_v2 import KindJournal
from settlement.reconciliation import (
    AMOUNT_MISMATCH,
    MATCHED,
    MATCHED_MANUAL,
    MISSING_CONFIRMATION,
    OUTCOMES,
    PAYMENT_REVERSED,
    REFUND_REVERSED,
    TERMINAL_OUTCOMES,
)
from sinks import fields as f
from sinks.base import Rejection
from sinks.case_rows import CaseNews, case_rows
from sinks.dispute_rows import DisputeNews, RejectionRow, dispute_rows
from sinks.errors import InvalidRecord, TerminalStateConflict
from sinks.payment_journals import manual_journal, matched_journal, payment_reversal
from sinks.refund_rows import RefundExceptionRow, RefundRow, Reversal, refund_rows

DEFAULT_FEES: Final = FeeSchedule.from_spec(DEFAULT_FEE_SPEC)


class JournalRow(NamedTuple):
    """A ledger_journals row; columns in COPY order (JOURNAL_TYPES)."""

    journal_id: str
    kind: str
    source_id: str
    payment_id: str | None
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int


class EntryRow(NamedTuple):
    """A ledger_entries row; columns in COPY order (ENTRY_TYPES)."""

    journal_id: str
    payment_id: str | None
    account: str
    side: str
    amount_minor: int
    currency: str


JOURNAL_TYPES: Final = ("text", "text", "text", "text", "text", "int8", "int8", "int8")
ENTRY_TYPES: Final = ("text", "text", "text", "text", "int8", "text")


def journal_rows(posted: KindJournal) -> tuple[JournalRow, list[EntryRow]]:
    """The ledger_journals row and ledger_entries rows of one journal."""
    journal = posted.journal
    row = JournalRow(journal.journal_id, posted.kind, posted.source_id, posted.payment_id,
                     journal.currency, posted.gross_minor, posted.fee_minor, posted.net_minor)
    entries = [EntryRow(p.journal_id, posted.payment_id, p.account, p.side, p.amount_minor,
                        p.currency) for p in journal.postings]
    return row, entries


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
    order_id: str | None = None
    # MATCHED_MANUAL: the exception case whose resolution settled it, and its operators.
    case_id: str | None = None
    operator: str | None = None
    approver: str | None = None


# The terminal states a later one replaces, once: a late MATCHED or a manual match replaces
# MISSING_CONFIRMATION, a force-match (MATCHED_MANUAL) replaces AMOUNT_MISMATCH.
REPLACES: Final = frozenset({(MISSING_CONFIRMATION, MATCHED),
                             (MISSING_CONFIRMATION, MATCHED_MANUAL),
                             (AMOUNT_MISMATCH, MATCHED_MANUAL)})
# Terminal states that post a PAYMENT journal.
POSTING_STATES: Final = frozenset({MATCHED, MATCHED_MANUAL})


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

    journals: list[JournalRow] = field(default_factory=list)  # PAYMENT journals
    entries: list[EntryRow] = field(default_factory=list)
    payments: list[PaymentRow] = field(default_factory=list)
    exceptions: list[ExceptionRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # payment_id -> batch index of the MATCHED result behind its journal (for DB conflicts).
    matched_index: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    # Refund results: the refunds rows, their REFUND journals and their exceptions.
    refunds: list[RefundRow] = field(default_factory=list)
    refund_journals: list[JournalRow] = field(default_factory=list)
    refund_entries: list[EntryRow] = field(default_factory=list)
    refund_exceptions: list[RefundExceptionRow] = field(default_factory=list)
    # (payment_id, refund_id) -> batch index of its MATCHED refund result.
    refund_matched_index: dict[tuple[str, str], int] = field(default_factory=dict)
    # PAYMENT_REVERSED and REFUND_REVERSED results in batch order, with their batch index:
    # checked against the posted originals when written.
    reversals: list[tuple[int, Reversal]] = field(default_factory=list)
    # Dispute results that move a dispute, in batch order with their batch index (applied to
    # the stored disputes when written), and the REJECTED ones.
    disputes: list[tuple[int, DisputeNews]] = field(default_factory=list)
    dispute_rejections: list[RejectionRow] = field(default_factory=list)
    # Case events in batch order, each event id once.
    case_events: list[CaseNews] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ResultRows:
    """The rows of one result, before deduplication against the rest of the batch."""

    payment: PaymentRow | None
    journal: KindJournal | None
    journal_row: JournalRow | None
    exception: ExceptionRow | None
    reversal: Reversal | None = None


def result_rows(result: Mapping[str, Any], fees: FeeSchedule) -> ResultRows:
    """The rows of one decoded ReconciliationResult; InvalidRecord (or a domain error) if bad."""
    result_id = f.required_text(result, "result_id")
    payment_id = f.required_text(result, "payment_id")
    outcome = result.get("outcome")
    if outcome not in OUTCOMES:
        raise InvalidRecord(f"unknown outcome {outcome!r}")
    terminal = result.get("terminal")
    if terminal is not (outcome in TERMINAL_OUTCOMES):
        raise InvalidRecord(f"{outcome} with terminal={terminal!r}")
    late = result.get("late", False)
    if not isinstance(late, bool):
        raise InvalidRecord(f"late must be a boolean, got {late!r}")
    channel = f.channel(result)
    merchant_id = f.text(result, "merchant_id", required=False)
    order_id = f.text(result, "order_id", required=False)
    decided_at = f.timestamp(result, "decided_at")
    assert decided_at is not None
    created_at = f.timestamp(result, "created_at", required=False)
    expected = f.amount(result, "expected_amount_minor")
    expected_currency = f.currency(result, "expected_currency")
    detail = f.detail(result)

    journal = journal_row = exception = payment = None
    if outcome == REFUND_REVERSED:
        raise InvalidRecord("REFUND_REVERSED is a refund's outcome, not a payment's")
    if outcome == PAYMENT_REVERSED:
        reversal = payment_reversal(result, result_id, payment_id, channel, decided_at)
        return ResultRows(None, None, None, None, reversal)
    manual: tuple[str | None, str | None, str | None] = (None, None, None)
    if outcome == MATCHED:
        journal = matched_journal(result, payment_id, channel, fees)
        journal_row = journal_rows(journal)[0]
    elif outcome == MATCHED_MANUAL:
        journal = manual_journal(result, payment_id, channel)
        journal_row = journal_rows(journal)[0]
        manual = (f.text(result, "case_id"), f.text(result, "operator"),
                  f.text(result, "approver", required=False))
    else:
        exception = ExceptionRow(
            result_id, payment_id, merchant_id, channel, outcome, expected, expected_currency,
            f.amount(result, "confirmed_amount_minor"), f.currency(result, "confirmed_currency"),
            f.text(result, "confirmation_id", required=False),
            f.text(result, "channel_txn_id", required=False), detail, decided_at,
        )
    if terminal:
        if expected is not None and expected <= 0:
            raise InvalidRecord(f"expected_amount_minor must be > 0, got {expected}")
        payment = PaymentRow(
            payment_id, merchant_id, channel, expected, expected_currency, outcome, late,
            result_id, created_at, decided_at, order_id, *manual,
        )
    return ResultRows(payment, journal, journal_row, exception)


def merge_terminal(held: dict[Any, Any], replaced: set[Any], key: Any, row: Any) -> str:
    """Apply one terminal row (with .state and .result_id) to the batch's view of its payment
    or refund: "new", "late_match", "duplicate" or "lost"."""
    current = held.get(key)
    if current is None:
        held[key] = row
        return "new"
    if current.result_id == row.result_id:
        return "duplicate"
    # First terminal wins, except the one replacement of REPLACES (once): a late MATCHED
    # after MISSING_CONFIRMATION, or a manual match of a MISSING_CONFIRMATION or
    # AMOUNT_MISMATCH payment.
    late_match = (current.state, row.state) in REPLACES
    if late_match and key not in replaced:
        held[key] = row
        replaced.add(key)
        return "late_match"
    return "lost"


def _conflict(what: str, row: Any, held: Any) -> str:
    return (f"{row.state} result {row.result_id} for {what}, which is already {held.state} "
            f"by {held.result_id}")


def _add_payment(out: LedgerRows, index: int, rows: ResultRows, payments: dict[str, PaymentRow],
                 replaced: set[Any], journals: dict[str, KindJournal],
                 exceptions: dict[str, ExceptionRow]) -> None:
    if rows.payment is not None:
        verdict = merge_terminal(payments, replaced, rows.payment.payment_id, rows.payment)
        if verdict == "duplicate":
            out.duplicates += 1
            return
        if verdict == "lost" and rows.payment.state in POSTING_STATES:
            held = payments[rows.payment.payment_id]
            message = _conflict(f"payment {rows.payment.payment_id}", rows.payment, held)
            out.rejected.append(Rejection(index, TerminalStateConflict.__name__, message))
            return
    if rows.journal is not None:
        journals[rows.journal.source_id] = rows.journal
        out.matched_index[rows.journal.source_id] = index
    if rows.exception is not None:
        if rows.exception.result_id in exceptions:
            out.duplicates += 1
        else:
            exceptions[rows.exception.result_id] = rows.exception
    if rows.reversal is not None:
        _add_reversal(out, index, rows.reversal)


def _add_reversal(out: LedgerRows, index: int, reversal: Reversal) -> None:
    """Keep a reversal once per result id (a replay within the batch is a duplicate)."""
    if any(held.result_id == reversal.result_id for _, held in out.reversals):
        out.duplicates += 1
        return
    out.reversals.append((index, reversal))


def build_ledger_rows(results: Sequence[Mapping[str, Any]], fees: FeeSchedule,
                      refund_positions: Collection[int] = (),
                      dispute_positions: Collection[int] = (),
                      case_positions: Collection[int] = ()) -> LedgerRows:
    """The rows of a batch of decoded results, in batch order, each record judged on its own.

    `refund_positions`, `dispute_positions`, `case_positions`: the indexes of RefundResult,
    DisputeResult and CaseEvent records (the others are ReconciliationResults). A bad record
    is rejected (to be dead-lettered) and never stops the others. A MATCHED (or
    MATCHED_MANUAL) result that loses to another terminal state of its payment (or refund) is
    rejected as a TerminalStateConflict: silently dropping it would hide money.
    """
    out = LedgerRows()
    payments: dict[str, PaymentRow] = {}
    refunds: dict[tuple[str, str], RefundRow] = {}
    replaced: set[Any] = set()
    journals: dict[str, KindJournal] = {}
    refund_journals: dict[str, KindJournal] = {}
    exceptions: dict[str, ExceptionRow] = {}
    refund_exceptions: dict[str, RefundExceptionRow] = {}
    rejections: dict[str, RejectionRow] = {}
    events: dict[str, CaseNews] = {}
    for index, result in enumerate(results):
        if index in refund_positions:
            _add_refund(out, index, result, refunds, replaced, refund_journals,
                        refund_exceptions)
            continue
        if index in dispute_positions or index in case_positions:
            _add_dispute_or_case(out, index, result, index in case_positions, rejections,
                                 events)
            continue
        try:
            rows = result_rows(result, fees)
        except Exception as exc:  # judged per record: one bad record must not stop the batch
            out.rejected.append(Rejection(index, type(exc).__name__, str(exc)))
            continue
        _add_payment(out, index, rows, payments, replaced, journals, exceptions)
    out.payments = list(payments.values())
    out.exceptions = list(exceptions.values())
    out.refunds = list(refunds.values())
    out.refund_exceptions = list(refund_exceptions.values())
    out.dispute_rejections = list(rejections.values())
    out.case_events = list(events.values())
    for posted in journals.values():
        row, entries = journal_rows(posted)
        out.journals.append(row)
        out.entries.extend(entries)
    for posted in refund_journals.values():
        row, entries = journal_rows(posted)
        out.refund_journals.append(row)
        out.refund_entries.extend(entries)
    return out


def _add_refund(out: LedgerRows, index: int, result: Mapping[str, Any],
                refunds: dict[tuple[str, str], RefundRow], replaced: set[Any],
                journals: dict[str, KindJournal],
                exceptions: dict[str, RefundExceptionRow]) -> None:
    try:
        row, journal, exception, reversal = refund_rows(result)
    except Exception as exc:  # judged per record: one bad record must not stop the batch
        out.rejected.append(Rejection(index, type(exc).__name__, str(exc)))
        return
    if reversal is not None:
        _add_reversal(out, index, reversal)
        return
    if row is not None:
        key = (row.payment_id, row.refund_id)
        verdict = merge_terminal(refunds, replaced, key, row)
        if verdict == "duplicate":
            out.duplicates += 1
            return
        if verdict == "lost" and row.state == MATCHED:
            message = _conflict(f"refund {row.payment_id}/{row.refund_id}", row, refunds[key])
            out.rejected.append(Rejection(index, TerminalStateConflict.__name__, message))
            return
    if journal is not None and row is not None:
        journals[journal.source_id] = journal
        out.refund_matched_index[(row.payment_id, row.refund_id)] = index
    if exception is not None:
        if exception.result_id in exceptions:
            out.duplicates += 1
        else:
            exceptions[exception.result_id] = exception


def _add_dispute_or_case(out: LedgerRows, index: int, result: Mapping[str, Any], case: bool,
                         rejections: dict[str, RejectionRow],
                         events: dict[str, CaseNews]) -> None:
    """Keep a DisputeResult (moves in batch order, rejections once per result id) or a
    CaseEvent (once per event id)."""
    try:
        rows = case_rows(result) if case else dispute_rows(result)
    except Exception as exc:  # judged per record: one bad record must not stop the batch
        out.rejected.append(Rejection(index, type(exc).__name__, str(exc)))
        return
    if isinstance(rows, CaseNews):
        if rows.event.event_id in events:
            out.duplicates += 1
        else:
            events[rows.event.event_id] = rows
    elif isinstance(rows, RejectionRow):
        if rows.result_id in rejections:
            out.duplicates += 1
        else:
            rejections[rows.result_id] = rows
    else:
        out.disputes.append((index, rows))
