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
