"""A changelog record the broker refuses ends the worker like a refused output, and the flush
before a commit waits for every buffered changelog record.

faust's own Topic, Table and ProducerBuffer, in memory (no broker): the aiokafka delivery
future is made by hand. The real broker refusing a changelog record is
tests/integration/test_delivery_failure.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import FutureMessage, PendingMessage

from stream_processors.delivery import EXIT_SEND_FAILED, DeliveryGuard, attach, guard_of
from stream_processors.patches import changelog_delivery, producer_buffer_flush


@pytest.fixture(autouse=True)
def installed() -> None:
    changelog_delivery.install()
    producer_buffer_flush.install()


class Stage:
    """A faust app with one table, its changelog topic, and the exits its guard asked for."""

    def __init__(self, guarded: bool = True) -> None:
        self.app = faust.App("t-changelog-guard", broker="kafka://127.0.0.1:1",
                             store="memory://")
        self.table = self.app.Table("payments-seen", default=None, partitions=4)
        self.topic = self.table.changelog_topic
        self.exits: list[int] = []
        self.sent: list[Any] = []
        if guarded:
            attach(self.app, DeliveryGuard("validate", self.exits.append))

    def record(self) -> FutureMessage:
        return FutureMessage(PendingMessage(
            self.topic, b"pay-1", b"{}", 2, None, None, None, None, self.sent.append))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # faust's FutureMessage is an asyncio.Future of this loop
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def _delivery(loop: asyncio.AbstractEventLoop, exc: BaseException | None = None,
              cancel: bool = False) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = loop.create_future()
    if cancel:
        fut.cancel()
    elif exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(SimpleNamespace(topic_partition=None, offset=7))
    return fut


def test_a_refused_changelog_record_exits_with_the_delivery_status(
        loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    stage = Stage()
    record = stage.record()
    with caplog.at_level(logging.WARNING):
        stage.topic._on_published(_delivery(loop, MessageSizeTooLargeError()), message=record,
                                  producer=None, state=None)
    assert stage.exits == [EXIT_SEND_FAILED]
    assert isinstance(record.exception(), MessageSizeTooLargeError)  # faust's part, as before
    assert stage.sent == []  # faust's changelog callback never ran for it
    text = caplog.text
    assert "_on_published error" in text  # faust's warning still comes first
    assert ("validate: a changelog record to t-changelog-guard-payments-seen-changelog could "
            "not be delivered") in text


def test_a_cancelled_changelog_delivery_exits(loop: asyncio.AbstractEventLoop) -> None:
    stage = Stage()
    with pytest.raises(asyncio.CancelledError):  # faust's callback lets it escape, as before
        stage.topic._on_published(_delivery(loop, cancel=True), message=stage.record(),
                                  producer=None, state=None)
    assert stage.exits == [EXIT_SEND_FAILED]


def test_a_delivered_changelog_record_goes_on_as_in_faust(
        loop: asyncio.AbstractEventLoop) -> None:
    stage = Stage()
    record = stage.record()
    stage.topic._on_published(_delivery(loop), message=record, producer=None, state=None)
    assert stage.exits == []
    assert record.result().offset == 7 and stage.sent == [record]


def test_an_app_without_a_guard_keeps_faust_behaviour(loop: asyncio.AbstractEventLoop,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    stage = Stage(guarded=False)
    assert guard_of(stage.app) is None
    record = stage.record()
    with caplog.at_level(logging.WARNING):
        stage.topic._on_published(_delivery(loop, MessageSizeTooLargeError()),
                                  message=record, producer=None, state=None)
    assert "_on_published error" in caplog.text and "could not be delivered" not in caplog.text
    assert isinstance(record.exception(), MessageSizeTooLargeError)


def test_a_changelog_send_that_raises_exits_and_still_raises() -> None:
    stage = Stage()

    class Producer:
        async def send(self, *args: Any, **kwargs: Any) -> Any:
            raise KafkaTimeoutError("metadata for the changelog not available")

    async def producer() -> Producer:
        return Producer()

    async def publish() -> None:
        await stage.topic.publish_message(stage.record())

    stage.topic._get_producer = producer  # type: ignore[method-assign]
    with pytest.raises(KafkaTimeoutError):
        asyncio.run(publish())
    assert stage.exits == [EXIT_SEND_FAILED]


def test_a_record_faust_sends_to_another_topic_is_named_as_such(
        loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    stage = Stage()
    other = stage.app.topic("t-changelog-guard-repartition")
    record = FutureMessage(PendingMessage(other, b"k", b"v", 0, None, None, None, None, None))
    with caplog.at_level(logging.WARNING):
        other._on_published(_delivery(loop, MessageSizeTooLargeError()), message=record,
                            producer=None, state=None)
    assert stage.exits == [EXIT_SEND_FAILED]
    assert "a record faust sent to t-changelog-guard-repartition" in caplog.text
    assert isinstance(record.exception(), MessageSizeTooLargeError)


def _flush_during_a_slow_hand_over(flush: Any, hand_over_s: float = 0.4) -> tuple[int, float]:
    """Put one record whose hand-over to the producer takes `hand_over_s`, flush, and say how
    many records had been handed over when the flush returned, and after how long."""

    async def scenario() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        released = asyncio.Event()
        handed_over: list[Any] = []

        async def publish_message(fut: Any, wait: bool = False) -> None:
            await released.wait()  # aiokafka waiting for metadata or accumulator room
            handed_over.append(fut)

        await buffer.start()
        try:
            buffer.put(SimpleNamespace(message=SimpleNamespace(
                channel=SimpleNamespace(publish_message=publish_message))))
            loop.call_later(hand_over_s, released.set)
            started = loop.time()
            await flush(buffer)
            return len(handed_over), loop.time() - started
        finally:
            released.set()
            await buffer.stop()

    return asyncio.run(scenario())


def test_faust_flush_returns_before_a_slow_hand_over() -> None:
    """What the patch changes: faust's flush gives up after 0.1 s without a hand-over, so the
    commit that awaited it goes ahead while the changelog record is still in the buffer."""
    handed_over, _ = _flush_during_a_slow_hand_over(producer_buffer_flush._faust_flush)
    assert handed_over == 0


def test_flush_waits_for_a_slow_hand_over() -> None:
    handed_over, waited = _flush_during_a_slow_hand_over(ProducerBuffer.flush)
    assert ProducerBuffer.flush is producer_buffer_flush.flush
    assert handed_over == 1 and waited >= 0.35


def test_an_idle_buffer_flushes_at_once() -> None:
    async def scenario() -> None:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()
        try:
            await asyncio.wait_for(buffer.flush(), timeout=0.05)
            assert producer_buffer_flush.in_flight(buffer) == 0
        finally:
            await buffer.stop()

    asyncio.run(scenario())
