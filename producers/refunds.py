"""Refund requests from the producer side: build, check, read from a file and publish them.

A RefundRequested record is keyed by payment_id (co-partitioned with the payment's state) and
signed on send by AvroProducer (canonical form refund-v1, the merchant's newest active key).
These checks catch an operator's typos before anything is sent; the reconcile stage still
decides every rule (captured amount, currency of the payment, idempotency).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from producers.errors import RefundFileError
from schemas.topics import REFUNDS_REQUESTED
from settlement.currencies import is_known
from settlement.refund_model import REFUND_ID_PATTERN, valid_refund_id

FILE_FIELDS: Final = ("payment_id", "merchant_id", "amount_minor", "currency")
OPTIONAL_FIELDS: Final = ("refund_id", "reason")
LONG_MAX: Final = 2**63 - 1
_PROBLEMS_SHOWN_MAX: Final = 20


class RefundSender(Protocol):
    def send(self, topic: str, key: str, record: Mapping[str, Any],
             headers: Mapping[str, str] | None = None) -> None: ...


def new_refund_id() -> str:
    """A fresh refund id (uuid-based, within REFUND_ID_PATTERN)."""
    return f"rf-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class RefundSpec:
    """One refund to request: what an operator or a refunds file row gives."""

    payment_id: str
    merchant_id: str
    amount_minor: int
    currency: str
    refund_id: str = field(default_factory=new_refund_id)
    reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_record(self, requested_at_ms: int) -> dict[str, Any]:
        """The unsigned RefundRequested record (AvroProducer signs it on send)."""
        return {
            "refund_id": self.refund_id,
            "payment_id": self.payment_id,
            "merchant_id": self.merchant_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "reason": self.reason,
            "requested_at": requested_at_ms,
            "metadata": dict(self.metadata),
        }


def spec_problems(payment_id: str, merchant_id: str, amount_minor: int, currency: str,
                  refund_id: str) -> list[str]:
    """What is wrong with one refund request (empty when it may be sent)."""
    problems = []
    if not payment_id.strip():
        problems.append("payment_id is empty")
    if not merchant_id.strip():
        problems.append("merchant_id is empty")
    if not 0 < amount_minor <= LONG_MAX:
        problems.append(f"amount_minor must be a positive integer, got {amount_minor}")
    if not is_known(currency):
        problems.append(f"currency {currency!r} is not an ISO 4217 code (upper case, e.g. CNY)")
    if not valid_refund_id(refund_id):
        problems.append(f"refund_id {refund_id!r} must match {REFUND_ID_PATTERN.pattern}")
    return problems


def make_spec(payment_id: str, merchant_id: str, amount_minor: int, currency: str,
              refund_id: str | None = None, reason: str | None = None) -> RefundSpec:
    """A checked RefundSpec; RefundFileError lists every problem."""
    chosen = refund_id if refund_id is not None else new_refund_id()
    problems = spec_problems(payment_id, merchant_id, amount_minor, currency, chosen)
    if problems:
        raise RefundFileError("; ".join(problems), problems)
    return RefundSpec(payment_id, merchant_id, amount_minor, currency, chosen, reason or None)


def _parse_amount(text: str) -> int:
    text = text.strip()
    if not text or not text.lstrip("-").isdigit() or not text.isascii():
        raise ValueError(f"amount_minor {text!r} is not an integer of minor units")
    return int(text)


@dataclass(slots=True)
class RefundFile:
    """A refunds file read and checked: good rows, and each bad row's problems by line."""

    specs: list[tuple[int, RefundSpec]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    def raise_if_bad(self) -> None:
        if not self.problems:
            return
        shown = self.problems[:_PROBLEMS_SHOWN_MAX]
        more = len(self.problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        raise RefundFileError(
            f"{len(self.bad_lines)} bad row(s) in the refunds file, nothing sent "
            f"(--skip-bad sends the good ones):\n  {text}", self.problems)


def parse_refunds_csv(text: str, new_id: Callable[[], str] = new_refund_id) -> RefundFile:
    """Rows of CSV text with a header naming FILE_FIELDS (refund_id and reason optional).

    A row without refund_id gets a fresh one. Two rows under one (payment_id, refund_id) are
    an error: the second would be dropped as a re-send or rejected as a conflict.
    """
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [name for name in FILE_FIELDS if name not in header]
    if missing:
        raise RefundFileError(
            f"line 1: header lacks column(s) {', '.join(missing)}; expected "
            f"{','.join(FILE_FIELDS)}[,{','.join(OPTIONAL_FIELDS)}]")
    out = RefundFile()
    seen: dict[tuple[str, str], int] = {}
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        found: list[str] = []
        if None in row:
            found.append("more columns than the header")
        values = {k: (row.get(k) or "").strip() for k in (*FILE_FIELDS, *OPTIONAL_FIELDS)}
        try:
            amount = _parse_amount(values["amount_minor"])
        except ValueError as exc:
            found.append(str(exc))
            amount = 1
        refund_id = values["refund_id"] or new_id()
        found += spec_problems(values["payment_id"], values["merchant_id"], amount,
                               values["currency"], refund_id)
        pair = (values["payment_id"], refund_id)
        if not found and pair in seen:
            found.append(f"refund {refund_id} of {values['payment_id']} repeats "
                         f"(first at line {seen[pair]})")
        if found:
            out.bad_lines.append(line)
            out.problems.extend(f"line {line}: {problem}" for problem in found)
            continue
        seen[pair] = line
        out.specs.append((line, RefundSpec(values["payment_id"], values["merchant_id"], amount,
                                           values["currency"], refund_id,
                                           values["reason"] or None)))
    return out


def load_refunds_file(path: Path) -> RefundFile:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RefundFileError(f"cannot read {path}: {exc}") from exc
    return parse_refunds_csv(text)


def publish_refunds(
    sender: RefundSender,
    specs: Iterable[RefundSpec],
    clock: Callable[[], int],
    topic: str = REFUNDS_REQUESTED,
    on_sent: Callable[[RefundSpec], None] | None = None,
) -> list[dict[str, Any]]:
    """Send each refund request keyed by its payment_id; returns the records sent (unsigned
    as built: the producer adds the signature)."""
    sent = []
    for spec in specs:
        record = spec.to_record(clock())
        sender.send(topic, spec.payment_id, record)
        sent.append(record)
        if on_sent is not None:
            on_sent(spec)
    return sent


def summarise(specs: Sequence[RefundSpec]) -> dict[str, dict[str, int]]:
    """Per currency: how many refunds and their total amount (minor units)."""
    out: dict[str, dict[str, int]] = {}
    for spec in specs:
        entry = out.setdefault(spec.currency, {"refunds": 0, "amount_minor": 0})
        entry["refunds"] += 1
        entry["amount_minor"] += spec.amount_minor
    return out
