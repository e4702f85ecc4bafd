"""DeliveryGuard: a failed output delivery ends the worker before any later offset commit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_processors.delivery import EXIT_SEND_FAILED, DeliveryGuard


class FakeProducer:
    """Hands out one asyncio future per send, like faust's aiokafka producer."""

    def __init__(self, raise_on: str | None = None) -> None:
        self.futures: list[asyncio.Future[Any]] = []
        self.raise_on = raise_on

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any) -> Any:
        if topic == self.raise_on:
            raise RuntimeError("metadata for topic not available")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def _outputs(*topics: str) -> list[tuple[str, bytes | None, bytes, Any, int | None]]:
    return [(t, b"k", b"v", [], None) for t in topics]


def test_delivered_outputs_do_not_exit() -> None:
    exits: list[int] = []

    async def scenario() -> None:
        guard = DeliveryGuard("validate", exits.append)
        producer = FakeProducer()
        await guard.send_all(producer, _outputs("a", "b"))
        assert guard.pending == 2
        for f in producer.futures:
            f.set_result("metadata")
        await asyncio.sleep(0)
        assert guard.pending == 0

    asyncio.run(scenario())
    assert exits == []


def test_a_failed_delivery_exits_once_before_anything_else_runs() -> None:
    exits: list[int] = []
    order: list[str] = []

    async def scenario() -> None:
        guard = DeliveryGuard("reconcile", lambda status: (exits.append(status),
                                                           order.append("exit")))
        producer = FakeProducer()
        await guard.send_all(producer, _outputs("a", "b"))
        first, second = producer.futures
        first.set_exception(OSError("MessageSizeTooLarge"))
        second.set_exception(OSError("MessageSizeTooLarge"))
        # What a commit waiting on the batch would do: it resumes only after the callbacks.
        asyncio.get_running_loop().call_soon(order.append, "commit")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert isinstance(guard.failed, OSError)

    asyncio.run(scenario())
    assert exits == [EXIT_SEND_FAILED]
    assert order.index("exit") < order.index("commit")


def test_a_cancelled_delivery_exits() -> None:
    exits: list[int] = []

    async def scenario() -> None:
        guard = DeliveryGuard("settle", exits.append)
        producer = FakeProducer()
        await guard.send_all(producer, _outputs("a"))
        producer.futures[0].cancel()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert exits == [EXIT_SEND_FAILED]


def test_a_send_that_raises_exits_and_does_not_send_the_rest() -> None:
    exits: list[int] = []
    producer = FakeProducer(raise_on="b")

    async def scenario() -> None:
        guard = DeliveryGuard("validate", exits.append)
        with pytest.raises(RuntimeError):
            await guard.send_all(producer, _outputs("a", "b", "c"))

    asyncio.run(scenario())
    assert exits == [EXIT_SEND_FAILED]
    assert len(producer.futures) == 1  # "c" never sent after "b" failed
