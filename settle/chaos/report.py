"""What a chaos run found: per fault its recovery, per run the figures and the verdict."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from settle.chaos.plan import STORM


@dataclass(slots=True)
class FaultOutcome:
    fault: str
    kind: str
    target: str
    planned_at_s: float
    at_s: float = 0.0
    healed_at_s: float | None = None
    progress_while_down: int | None = None
    recovery_s: float | None = None
    note: str = ""


@dataclass(slots=True)
class RunReport:
    """Per-run figures: the lead quotes them; the tests assert on them."""

    name: str
    seed: int
    payments_in: int = 0
    routed_expected: int = 0
    payments_settled: int = 0
    matched: int = 0
    batched: int = 0
    duplicates: int = 0
    lost: int = 0
    in_equals_out: bool = False
    ingest_balanced: bool = False
    ingest: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    books_ok: bool = False
    failed_checks: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    faults: list[FaultOutcome] = field(default_factory=list)
    publish_s: float = 0.0
    total_s: float = 0.0
    # What the publisher's stall watch did (producers.producer.AvroProducer).
    publisher_client_replacements: int = 0
    publisher_resent: int = 0
    publisher_extra_copies: int = 0  # requests read twice because of those re-sends
    duplicate_detail: dict[str, int] = field(default_factory=dict)
    lost_detail: dict[str, int] = field(default_factory=dict)
    # Where the requests without any validate output sit: "topic/partition" -> offset ranges.
    unaccounted_ranges: dict[str, list[list[int]]] = field(default_factory=dict)
    # Services found dead before the run and started again (see ensure_stack_up).
    stack_repairs: list[str] = field(default_factory=list)
    # Refunds: requests sent, their ledger (read = routed + rejected + dead-lettered +
    # identical re-sends), refund results by outcome, and the money recomputed from the
    # topics against the ledger and the batch tables (settle.recompute).
    refunds_sent: int = 0
    refund_ingest: dict[str, int] = field(default_factory=dict)
    refund_ingest_balanced: bool = False
    refund_outcomes: dict[str, int] = field(default_factory=dict)
    money_ok: bool = False
    money_mismatches: list[str] = field(default_factory=list)
    # Disputes and exception cases: dispute results by event, cases by status and by
    # resolution, cases resolved more than once, MATCHED_MANUAL payments, the operators'
    # actions (settle.case_flow), and the answer ledgers of channel.disputes and
    # cases.actions (every record answered or dead-lettered).
    dispute_events: dict[str, int] = field(default_factory=dict)
    cases_by_status: dict[str, int] = field(default_factory=dict)
    case_resolutions: dict[str, int] = field(default_factory=dict)
    cases_resolved_twice: int = 0
    matched_manual: int = 0
    case_flow: dict[str, Any] = field(default_factory=dict)
    dispute_ingest_balanced: bool = False
    case_ingest_balanced: bool = False

    @property
    def ok(self) -> bool:
        return (self.books_ok and self.ingest_balanced and self.in_equals_out
                and self.refund_ingest_balanced and self.money_ok
                and self.dispute_ingest_balanced and self.case_ingest_balanced
                and self.cases_resolved_twice == 0
                and set(self.cases_by_status) <= {"RESOLVED"}
                and self.duplicates == 0 and self.lost == 0 and not self.unexpected_exits
                and all(f.kind == STORM or f.recovery_s is not None for f in self.faults))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def offset_ranges(refs: Iterable[str]) -> dict[str, list[list[int]]]:
    """["t/0/5", "t/0/6", "t/0/9"] -> {"t/0": [[5, 6], [9, 9]]}: where records went missing."""
    by_tp: dict[str, list[int]] = {}
    for ref in refs:
        tp, _, offset = ref.rpartition("/")
        by_tp.setdefault(tp, []).append(int(offset))
    out: dict[str, list[list[int]]] = {}
    for tp, offsets in sorted(by_tp.items()):
        ranges: list[list[int]] = []
        for o in sorted(offsets):
            if ranges and o == ranges[-1][1] + 1:
                ranges[-1][1] = o
            else:
                ranges.append([o, o])
        out[tp] = ranges
    return out


def summary_lines(report: RunReport) -> Iterator[str]:
    yield (f"{report.name}: in {report.payments_in:,}, settled {report.payments_settled:,} "
           f"(of {report.routed_expected:,} routed), duplicates {report.duplicates}, "
           f"lost {report.lost}, in=out {report.in_equals_out}, books "
           f"{'ok' if report.books_ok else 'FAILED'}, ingest "
           f"{'balanced' if report.ingest_balanced else 'UNBALANCED'}, refunds "
           f"{report.refunds_sent:,} sent, "
           f"{'balanced' if report.refund_ingest_balanced else 'UNBALANCED'}, money "
           f"{'= ledger = batches' if report.money_ok else 'DISAGREES'}")
    for f in report.faults:
        rec = f"{f.recovery_s:.1f}s" if f.recovery_s is not None else (
            "n/a" if f.kind == STORM else "NOT RECOVERED")
        yield f"  {f.at_s:6.1f}s  {f.fault:<45} recovery {rec}"
    if report.publisher_client_replacements:
        yield (f"  publisher: stuck producer client replaced "
               f"{report.publisher_client_replacements}x, {report.publisher_resent:,} queued "
               f"records sent again, {report.publisher_extra_copies:,} of them landed twice "
               "(deduplicated)")
    for repair in report.stack_repairs:
        yield f"  STACK {repair}"
    for exit_ in report.unexpected_exits:
        yield f"  CRASH {exit_.splitlines()[0]}"
    for check in report.failed_checks:
        yield f"  FAILED {check}"
    for mismatch in report.money_mismatches:
        yield f"  MONEY {mismatch}"
