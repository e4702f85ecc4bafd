"""End to end on the real stack: 20,000 payments with every channel fault, refunds of every
kind, disputes decided every way and every exception case resolved by two operators; books
audited and money recomputed from the topics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.config import Settings
from settle.e2e import run_e2e

pytestmark = pytest.mark.e2e

COUNT = int(os.environ.get("SETTLE_E2E_COUNT", "20000"))


def test_twenty_thousand_payments_settle_exactly_once(stack: Settings, tmp_path: Path) -> None:
    result = run_e2e(stack, tmp_path, COUNT, seed=4242, bad_ratio=0.02, timeout_s=900,
                     say=print)
    failed = [f"{c.name}: {c.detail}" for c in result.books.checks if not c.ok]
    assert not failed, failed

    # Ingest: every request is where the generator says it must be.
    assert result.ingest.balanced
    assert result.ingest.read == COUNT
    for outcome in ("routed", "rejected", "dead_lettered", "deduplicated"):
        assert getattr(result.ingest, outcome) == result.expected[outcome], outcome

    # Every routed payment reached exactly one terminal state, in PostgreSQL too.
    assert sum(result.states.values()) == result.expected["routed"]
    # Every kind of channel fault was injected and recognised.
    for state in ("MATCHED", "DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH",
                  "MISSING_CONFIRMATION"):
        assert result.states.get(state, 0) > 0, (state, result.states)
    for outcome in ("DUPLICATE_CONFIRMATION", "ORPHAN_CONFIRMATION"):
        assert result.exceptions.get(outcome, 0) > 0, (outcome, result.exceptions)
    # A late SUCCEEDED turned MISSING into MATCHED (paid once), others were recorded late.
    assert result.late_matched > 0 or result.exceptions.get("LATE_CONFIRMATION", 0) > 0

    # Refunds: every request where the order flow says it must be, every scenario sent.
    sent = result.refunds_expected
    refunds = result.refund_ingest
    assert refunds is not None and refunds.balanced, refunds
    assert refunds.read == sent.count
    assert (refunds.routed, refunds.rejected, refunds.duplicates) == (
        sent.outcomes["accepted"], sent.outcomes["rejected"], sent.outcomes["deduplicated"])
    assert refunds.dead_lettered == 0
    for scenario in ("full", "partial", "partials", "over", "resend", "conflict", "race",
                     "unknown", "declined", "late"):
        assert sent.scenarios[scenario] > 0, (scenario, sent.scenarios)
    # Each accepted refund reached exactly one terminal outcome; most were refunded.
    money = result.money
    assert money is not None
    assert sum(money.refund_terminal.values()) == sent.outcomes["accepted"], money
    assert money.refund_terminal["MATCHED"] > sent.outcomes["accepted"] // 2, money
    # Ledger, batches and the recomputation from the topics agree to the minor unit, with
    # refunds netted into later batches: some paid 0 and carried a balance forward.
    assert money.ok, money.mismatches()
    assert money.negative_batches > 0 and money.carried_batches > 0, money
    # Channels took some captured payments back: each netted out of its merchant's batches.
    assert money.payment_reversals > 0, money
    print(f"e2e refunds: sent {sent.to_dict()}; results {dict(money.refund_outcomes)}; "
          f"money per currency {money.totals()}; {money.negative_batches} batches netted "
          f"below 0, {money.carried_batches} carried a balance, {money.absorbing_batches} "
          f"took one in; reversed: {money.payment_reversals} payments, "
          f"{money.refund_reversals} refunds")

    # Disputes: every dispute the simulator planned reached the books, each closed, and the
    # amounts held, released and lost (with fees) are the plan's, per currency.
    planned = result.disputes_expected
    assert planned is not None and planned.disputes > 0
    states = result.disputes["states"]
    won = sum(planned.decisions.get(d, 0) for d in ("WON", "CANCELLED"))
    lost = sum(planned.decisions.get(d, 0) for d in ("LOST", "ACCEPTED", "EXPIRED"))
    assert (states.get("WON", 0), states.get("LOST", 0), states.get("OPEN", 0)) == (
        won, lost, 0), (states, planned.decisions)
    for currency, books in result.disputes["money"].items():
        assert books == {"opened": planned.opened_minor.get(currency, 0),
                         "released": planned.released_minor.get(currency, 0),
                         "lost": planned.lost_minor.get(currency, 0),
                         "fee": planned.fee_minor.get(currency, 0)}, currency
    assert set(result.disputes["money"]) == set(planned.opened_minor)
    # A channel contradicting its decision (won after lost) is refused, not applied.
    assert result.disputes["rejected"] == planned.contradicted
    assert result.dispute_ingest is not None and result.dispute_ingest.balanced, \
        result.dispute_ingest
    # Exception cases: one per exception, every one resolved exactly once, each money
    # resolution a MATCHED_MANUAL payment; the operators' every action answered.
    cases = result.cases
    assert cases["opened"] == result.cases_expected, (cases["opened"], result.cases_expected)
    assert sum(cases["opened"].values()) > 0
    assert cases["status"] == {"RESOLVED": sum(cases["opened"].values())}, cases["status"]
    assert cases["resolved_twice"] == 0
    assert cases["matched_manual"] == cases["money_resolutions"] > 0, cases
    assert cases["approved"] > 0, cases
    flow = result.case_flow
    assert flow is not None and flow.unanswered == 0 and flow.left_open == 0, flow
    assert result.case_ingest is not None and result.case_ingest.balanced, result.case_ingest
    assert money.manual_matches == cases["matched_manual"], money
    print(f"e2e disputes: {dict(planned.decisions)} decided, {planned.contradicted} "
          f"contradicted; per currency "
          f"{result.disputes['money']}; rejected records {result.disputes['rejected']}")
    print(f"e2e cases: opened {cases['opened']}; resolved {cases['resolution']} "
          f"({cases['approved']} approved by a second operator); operators {flow.as_dict()}")
    print(f"e2e: {result.payments_per_s:,.0f} payments/s, latency p50 "
          f"{result.latency_ms_p50} ms, p99 {result.latency_ms_p99} ms")
