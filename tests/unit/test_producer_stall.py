"""The stall watch's rule: when a queued record is stuck rather than waiting for a leader."""

from __future__ import annotations

from producers.producer import is_stuck


def test_young_records_are_never_stuck() -> None:
    assert not is_stuck(5.0, 20.0, [1, 1, 1, 1])
    assert not is_stuck(None, 20.0, [1, 1])


def test_old_record_with_every_leader_present_is_stuck() -> None:
    assert is_stuck(20.0, 20.0, [1, 1, 1, 1])
    assert is_stuck(90.0, 20.0, [0, 2, 1])


def test_waiting_for_a_broker_or_an_election_is_not_stuck() -> None:
    assert not is_stuck(90.0, 20.0, None)  # the broker did not answer
    assert not is_stuck(90.0, 20.0, [])  # no partitions known
    assert not is_stuck(90.0, 20.0, [1, -1, 1, 1])  # one partition has no leader yet
