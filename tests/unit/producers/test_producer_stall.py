"""The stall watch's rule: when a queued record is stuck rather than waiting for a leader."""

from __future__ import annotations

from producers.producer import is_stuck, leaders_present


def test_young_records_are_never_stuck() -> None:
    assert not is_stuck(5.0, 20.0, 60.0, 10.0)
    assert not is_stuck(None, 20.0, 60.0, 10.0)


def test_old_record_after_the_grace_with_every_leader_present_is_stuck() -> None:
    assert is_stuck(20.0, 20.0, 10.0, 10.0)
    assert is_stuck(90.0, 20.0, 45.0, 10.0)


def test_a_broker_just_back_gets_its_grace() -> None:
    # Records queued while the broker restarted are old when it comes back; the client
    # needs seconds to reconnect and retry them: not stuck yet.
    assert not is_stuck(45.0, 20.0, 0.0, 10.0)
    assert not is_stuck(45.0, 20.0, 9.9, 10.0)


def test_waiting_for_a_broker_or_an_election_is_not_stuck() -> None:
    assert not is_stuck(90.0, 20.0, None, 10.0)


def test_leaders_present_needs_an_answer_and_a_leader_everywhere() -> None:
    assert leaders_present([1, 1, 0])
    assert not leaders_present(None)  # the broker did not answer
    assert not leaders_present([])  # no partitions known
    assert not leaders_present([1, -1, 1, 1])  # one partition has no leader yet
