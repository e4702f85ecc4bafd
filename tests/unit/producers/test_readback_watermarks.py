"""Reading a topic back right after it was created: its leader may not be known yet."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from producers.clients import _watermarks


class LeaderElected:
    """A consumer whose partition answers NOT_LEADER_FOR_PARTITION `misses` times first."""

    def __init__(self, misses: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.misses, self.code, self.asked = misses, code, 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.asked += 1
        if self.asked <= self.misses:
            raise KafkaException(KafkaError(self.code))
        return 0, 7


def test_a_partition_without_a_leader_yet_is_asked_again() -> None:
    consumer: Any = LeaderElected(misses=2)
    assert _watermarks(consumer, TopicPartition("t", 0), time.monotonic() + 10) == (0, 7)
    assert consumer.asked == 3


def test_other_errors_and_the_deadline_are_not_retried() -> None:
    consumer: Any = LeaderElected(misses=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        _watermarks(consumer, TopicPartition("t", 0), time.monotonic() + 10)
    late: Any = LeaderElected(misses=100)
    with pytest.raises(KafkaException):
        _watermarks(late, TopicPartition("t", 0), time.monotonic() + 0.5)
