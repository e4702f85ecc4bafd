"""A faust stage's consumer waits for a fuller fetch: fewer fetches, less CPU per record.

faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and aiokafka's default
``fetch_min_bytes=1``, and offers no setting for either. With a minimum of one byte the
broker answers a fetch as soon as any record is there. When records trickle in (end to end,
a stage gets a few per partition and millisecond), every fetch carries one or two records,
and the stage pays per fetch: the request and its response, the faust consumer thread's
hand-off to the agent (a method queue, a cross-thread wake-up and the GIL hand-back after
each system call) and faust's per-batch bookkeeping. End to end at 125 payments/s the
validate worker spent 2.6 ms of CPU per record, against 0.56 ms draining a backlog.

Here the broker holds a fetch until ``fetch_min_bytes`` are there or ``fetch_max_wait_ms``
has passed, whichever comes first. With a backlog the minimum is met at once and nothing
changes; at a trickle each fetch waits up to the maximum and carries what came meanwhile.
Measured end to end (docs/performance.md, 2026-12-03): at 250 payments/s p50 went from
3.5-6.4 s to about 0.4 s and p99 from 4.7-10.5 s to 0.73-0.76 s in two runs of three (1.44 s
in one).

The values come from ``KafkaSettings`` (``SETTLE_STAGE_FETCH_MIN_BYTES``,
``SETTLE_STAGE_FETCH_MAX_WAIT_MS``), set on the app as ``settle_fetch``; an app without it
keeps faust's consumer as it is.

Upstream: faust's ``AIOKafkaConsumerThread._create_consumer`` (wrapped) and
``_create_worker_consumer`` (which builds the consumer without a fetch minimum); aiokafka's
``AIOKafkaConsumer`` keeps both values in attributes that ``start()`` hands to its Fetcher.
No upstream issue: faust has no setting for them.

Proved by tests/integration/test_stage_consumer.py
(test_the_started_stage_consumer_fetches_with_the_configured_minimum_and_wait: the started
stage's Fetcher holds the configured values).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_processors.patches import ORIGINALS, qualified_name, replace

UPSTREAM: Final = (
    # wrapped:
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_consumer",
    # what faust passes (fetch_max_wait_ms=1500, no fetch_min_bytes):
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer",
    # where aiokafka keeps the two values, and where it hands them to its Fetcher:
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start",
)
_CREATE: Final = qualified_name(faust_aiokafka.AIOKafkaConsumerThread, "_create_consumer")


class FetchSettings(NamedTuple):
    min_bytes: int
    max_wait_ms: int


def apply(consumer: Any, fetch: FetchSettings | None) -> Any:
    """Set an aiokafka consumer's fetch minimum and wait (before it starts)."""
    if fetch is not None:
        # AIOKafkaConsumer keeps them here and hands them to its Fetcher in start().
        consumer._fetch_min_bytes = fetch.min_bytes
        consumer._fetch_max_wait_ms = fetch.max_wait_ms
    return consumer


def create_consumer(self: Any, loop: Any) -> Any:
    """faust's AIOKafkaConsumerThread._create_consumer, then the app's ``settle_fetch``."""
    create = ORIGINALS[_CREATE]
    return apply(create(self, loop), getattr(self.app, "settle_fetch", None))


def install() -> None:
    """Make faust's aiokafka consumers use the app's ``settle_fetch`` (idempotent)."""
    replace(faust_aiokafka.AIOKafkaConsumerThread, "_create_consumer", create_consumer)
