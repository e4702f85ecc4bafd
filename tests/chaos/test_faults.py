"""Fault injection on the real stack: each scenario pushes a few thousand payments (and
refunds of some) through an isolated pipeline while a fault hits it, then asserts the
audits, no duplicate, no loss, in = out and the money recomputed from the topics. Run
alone with `pytest -m chaos` (or `-k SCENARIO`).

The broker, PostgreSQL and registry scenarios stop and start services of the stack named by
the SETTLE_* environment through `deploy/stack.sh`: run them on a stack of your own.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from infra.config import Settings
from settle.chaos import (
    STORM,
    ensure_stack_up,
    run_plan,
    scenarios,
    stack_service,
    stack_status,
    summary_lines,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

SCENARIOS = scenarios()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_scenario(stack: Settings, tmp_path: Path, name: str) -> None:
    plan = SCENARIOS[name]
    # Figures for the lead to quote: <SETTLE_RUN_DIR>/chaos/chaos-<scenario>.json.
    report = run_plan(stack, tmp_path, plan, say=print, report_dir=stack.run_dir / "chaos")
    for line in summary_lines(report):
        print(line)
    for repair in report.stack_repairs:
        # Shown in pytest's warnings summary even when the scenario passes.
        warnings.warn(f"{name}: {repair}", stacklevel=1)

    assert not report.failed_checks, report.failed_checks
    assert report.books_ok
    assert report.ingest_balanced, report.ingest
    assert report.payments_in == plan.count + sum(f.size for f in plan.faults if f.kind == STORM)
    # Requests the publisher's stall watch sent again may land twice; each extra copy must
    # be read and deduplicated (see AvroProducer), and no more than were re-sent.
    extra = report.publisher_extra_copies
    assert 0 <= extra <= report.publisher_resent, (extra, report.publisher_resent)
    assert report.ingest["read"] == report.payments_in + extra
    expected = {**report.expected, "deduplicated": report.expected["deduplicated"] + extra}
    assert report.ingest == {**report.ingest, **expected}, (report.ingest, expected)
    assert report.duplicates == 0, report.duplicate_detail
    assert report.lost == 0, report.lost_detail
    assert report.payments_settled == report.routed_expected
    assert report.batched == report.matched
    assert report.in_equals_out
    assert not report.unexpected_exits, report.unexpected_exits
    # Refunds in the flow: every request accounted for, none refunded twice (the books audit:
    # one journal per refund, refunds within captures, each in one batch), and the money
    # recomputed from the topics equal to the ledger and the batch tables.
    assert report.refunds_sent > 0
    assert report.refund_ingest_balanced, report.refund_ingest
    assert report.money_ok, report.money_mismatches
    # Disputes and exception cases in the flow: every dispute record and every operator's
    # action answered, every case resolved exactly once while the faults hit.
    assert report.dispute_ingest_balanced and report.case_ingest_balanced
    assert set(report.cases_by_status) <= {"RESOLVED"}, report.cases_by_status
    assert report.cases_resolved_twice == 0
    for fault in report.faults:
        if fault.kind != STORM:
            assert fault.recovery_s is not None, (fault.fault, fault.note)
    assert report.ok


def test_a_dead_service_is_started_before_a_scenario(stack: Settings) -> None:
    """A scenario begins from a whole stack: a service found dead is started, and said so."""
    stack_service("stop", "registry")
    said: list[str] = []
    repairs = ensure_stack_up(said.append)
    assert len(repairs) == 1 and repairs[0].startswith("registry was not up"), repairs
    assert any("The end of its log" in line for line in said), said
    code, table, _tails = stack_status()
    assert code == 0, table
    assert ensure_stack_up() == []
