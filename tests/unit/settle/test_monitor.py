"""settle monitor's pure parts: lag arithmetic and what a scrape shows from a snapshot."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from infra.config import Settings
from settle.monitor import INVARIANTS, Monitor, MonitorOptions, Snapshot, lag_of


def test_lag_is_end_minus_committed_never_negative_and_skips_uncommitted() -> None:
    end = {("t", 0): 100, ("t", 1): 50, ("t", 2): 10}
    committed = {("t", 0): 60, ("t", 1): 55, ("t", 2): -1001, ("other", 0): 5}
    assert lag_of(committed, end) == {("t", 0): 40, ("t", 1): 0}


def _scrape(snapshot: Snapshot) -> str:
    monitor = Monitor(Settings(), MonitorOptions(topics=("t",)))
    monitor.snapshot = snapshot
    registry = CollectorRegistry()
    registry.register(monitor)
    return generate_latest(registry).decode()


def test_a_scrape_shows_the_snapshot_and_nothing_stale() -> None:
    books = dict.fromkeys(INVARIANTS, 0)
    books["batches_match_ledger"] = 3
    text = _scrape(Snapshot(
        end_offsets={("payments.requested", 0): 120},
        lag={("settle-validate", "payments.requested", 0): 7},
        offsets_at=1.0, books=books, books_at=2.0, books_duration_s=0.5))
    assert ('settle_consumer_lag_records{group="settle-validate",partition="0",'
            'topic="payments.requested"} 7.0') in text
    assert 'settle_topic_end_offset{partition="0",topic="payments.requested"} 120.0' in text
    assert 'settle_books_balanced{invariant="batches_match_ledger"} 0.0' in text
    assert 'settle_books_balanced{invariant="journals_balanced"} 1.0' in text
    assert 'settle_books_violations{invariant="batches_match_ledger"} 3.0' in text
    assert "settle_books_check_timestamp_seconds 2.0" in text


def test_before_the_first_check_no_books_series_claims_balance() -> None:
    text = _scrape(Snapshot())
    assert "settle_books_balanced{" not in text
    assert "settle_books_check_timestamp_seconds 0.0" in text


def test_dispute_and_case_gauges_appear_once_read_and_the_new_invariants_are_checked(
) -> None:
    from settle.books_gauges import CaseGauges

    for name in ("dispute_holds_balance", "dispute_receivables_balance",
                 "dispute_events_posted_once", "disputes_held_before_released",
                 "cases_resolved_once", "disputes_settled_in_time", "manual_matches_posted"):
        assert name in INVARIANTS, name
    assert "settle_disputes_open" not in _scrape(Snapshot())
    text = _scrape(Snapshot(cases=CaseGauges(
        disputes_open={("card", "DISPUTE"): 2},
        disputes_by_deadline={("card", "0-2d"): 1, ("card", "none"): 1},
        soonest_respond_by_s={"card": -60.0},
        held_minor={"CNY": 12_345},
        cases_open={("AMOUNT_MISMATCH", "3-7d"): 4},
        oldest_case_age_s={"AMOUNT_MISMATCH": 300_000.0},
        awaiting_approval={"MISSING_CONFIRMATION": 1},
        oldest_awaiting_s={"MISSING_CONFIRMATION": 7_200.0})))
    for line in ('settle_disputes_open{channel="card",stage="DISPUTE"} 2.0',
                 'settle_disputes_open_by_deadline{channel="card",due_in="0-2d"} 1.0',
                 'settle_disputes_respond_by_soonest_seconds{channel="card"} -60.0',
                 'settle_disputes_held_minor{currency="CNY"} 12345.0',
                 'settle_cases_open{age="3-7d",outcome="AMOUNT_MISMATCH"} 4.0',
                 'settle_cases_open_oldest_age_seconds{outcome="AMOUNT_MISMATCH"} 300000.0',
                 'settle_cases_awaiting_approval{outcome="MISSING_CONFIRMATION"} 1.0',
                 'settle_cases_awaiting_approval_oldest_age_seconds'
                 '{outcome="MISSING_CONFIRMATION"} 7200.0'):
        assert line in text, line


def test_the_deadline_and_age_buckets_are_ordered_sql_cases() -> None:
    from settle.books_gauges import OPEN_CASES, OPEN_DISPUTES_BY_DEADLINE

    assert ("WHEN respond_by - now() < interval '2 days' THEN '0-2d' "
            "WHEN respond_by - now() < interval '7 days' THEN '2-7d'") in OPEN_DISPUTES_BY_DEADLINE
    assert "ELSE '30d+'" in OPEN_DISPUTES_BY_DEADLINE
    assert ("WHEN now() - COALESCE(opened_at, last_event_at) < interval '1 days' THEN '0-1d'"
            in OPEN_CASES)
    assert "ELSE '7d+'" in OPEN_CASES
