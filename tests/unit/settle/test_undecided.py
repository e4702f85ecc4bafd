"""Routed payments without a terminal state: when one counts as overdue, and what a scrape shows."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from infra.config import Settings
from settle.monitor import Monitor, MonitorOptions, Snapshot
from settle.undecided import Overdue, RoutedSource, UndecidedTracker

CARD = "payments.routed.card"
ALIPAY = "payments.routed.alipay"
SOURCES = (RoutedSource(CARD, "card", grace_s=90.0), RoutedSource(ALIPAY, "alipay", grace_s=30.0))
T0 = 1_800_000_000_000  # ms


def _tracker() -> UndecidedTracker:
    return UndecidedTracker(SOURCES)


def test_a_payment_reconcile_has_not_consumed_never_counts_however_old() -> None:
    t = _tracker()
    t.add(CARD, 0, 0, "p-1", T0)
    t.consumed({}, T0 + 3_600_000)  # reconcile never committed on the partition
    t.consumed({(CARD, 0): 0}, T0 + 3_600_000)  # nor past the record
    assert t.to_check() == []
    assert t.overdue(T0 + 7_200_000)["card"] == Overdue(0, 0.0)
    assert t.sizes() == (1, 0)


def test_a_consumed_payment_counts_only_after_its_channel_s_grace() -> None:
    t = _tracker()
    t.add(CARD, 0, 0, "p-card", T0)
    t.add(ALIPAY, 2, 5, "p-ali", T0)
    t.consumed({(CARD, 0): 1, (ALIPAY, 2): 6}, T0 + 1_000)
    assert sorted(t.to_check()) == ["p-ali", "p-card"]
    # 60 s after reconcile consumed them: past alipay's 30 s, within card's 90 s
    assert t.overdue(T0 + 61_000) == {"card": Overdue(0, 0.0), "alipay": Overdue(1, 60.0)}
    assert t.overdue(T0 + 91_000)["card"] == Overdue(0, 0.0)  # exactly its grace: not yet
    assert t.overdue(T0 + 92_000) == {"card": Overdue(1, 91.0), "alipay": Overdue(1, 91.0)}


def test_the_clock_starts_when_reconcile_is_seen_past_it_not_at_routing() -> None:
    # Routed an hour before reconcile read it (reconcile was behind): its SLA starts late.
    t = _tracker()
    t.add(ALIPAY, 0, 0, "p-1", T0)
    t.consumed({(ALIPAY, 0): 1}, T0 + 3_600_000)
    assert t.overdue(T0 + 3_600_000 + 29_000)["alipay"].count == 0
    assert t.overdue(T0 + 3_600_000 + 31_000)["alipay"] == Overdue(1, 31.0)


def test_decided_payments_are_forgotten_and_the_rest_stay_counted() -> None:
    t = _tracker()
    for offset, pid in enumerate(("p-1", "p-2", "p-3")):
        t.add(ALIPAY, 0, offset, pid, T0)
    t.consumed({(ALIPAY, 0): 2}, T0)  # p-3 not consumed yet
    t.decided({"p-1", "p-unknown"})
    assert t.to_check() == ["p-2"]
    assert t.overdue(T0 + 60_000)["alipay"] == Overdue(1, 60.0)
    t.decided({"p-2"})
    assert t.overdue(T0 + 60_000)["alipay"] == Overdue(0, 0.0)
    assert t.sizes() == (1, 0)


def test_a_re_sent_routed_record_keeps_the_first_clock() -> None:
    t = _tracker()
    t.add(ALIPAY, 1, 10, "p-1", T0)
    t.consumed({(ALIPAY, 1): 11}, T0)
    t.add(ALIPAY, 1, 11, "p-1", T0 + 50_000)  # validate re-sent it after a crash
    t.consumed({(ALIPAY, 1): 12}, T0 + 50_000)
    assert t.to_check() == ["p-1"]
    assert t.overdue(T0 + 40_000)["alipay"] == Overdue(1, 40.0)


def _scrape(snapshot: Snapshot) -> str:
    monitor = Monitor(Settings(), MonitorOptions(topics=("t",)))
    monitor.snapshot = snapshot
    registry = CollectorRegistry()
    registry.register(monitor)
    return generate_latest(registry).decode()


def test_a_scrape_shows_every_channel_s_overdue_count_and_oldest_age() -> None:
    text = _scrape(Snapshot(undecided={"card": Overdue(2, 301.5), "alipay": Overdue()}))
    assert 'settle_routed_undecided_payments{channel="card"} 2.0' in text
    assert 'settle_routed_undecided_payments{channel="alipay"} 0.0' in text
    assert 'settle_routed_undecided_oldest_age_seconds{channel="card"} 301.5' in text
    assert 'settle_routed_undecided_oldest_age_seconds{channel="alipay"} 0.0' in text


def test_before_the_first_check_no_undecided_series_claims_zero() -> None:
    assert "settle_routed_undecided_payments{" not in _scrape(Snapshot())
