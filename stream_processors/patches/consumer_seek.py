"""A seek to an offset sets the read offset to "last offset read", as perform_seek does.

Upstream: faust's ``Consumer.seek`` (faust/transport/consumer.py) stores the offset sought
(the next offset to read; None for 0) as the read offset, which faust's fetch loop keeps as
the last offset handed over. With the read offset meaning "last offset read" everywhere
(patches.perform_seek, patches.drain_messages) the seek stores ``offset - 1``, so the patched
fetch loop sees the record at the offset sought as the next one and anything past it as a
jump. Related report: faust-streaming/faust#596.

Proved by tests/unit/stream_processors/test_patch_offsets.py (test_read_offset_means_last_read, the
rule it
stores) and on the real broker by tests/integration/test_delivery_failure.py and tests/chaos.
"""

from __future__ import annotations

from typing import Any, Final

from faust.transport import consumer as faust_consumer

from stream_processors.patches import replace
from stream_processors.patches.perform_seek import last_read_before

UPSTREAM: Final = (
    "faust.transport.consumer:Consumer.seek",
)


async def seek(self: Any, partition: Any, offset: int) -> None:
    """faust's Consumer.seek, with the same read-offset meaning as perform_seek."""
    await self._seek(partition, offset)
    self._read_offset[faust_consumer.ensure_TP(partition)] = last_read_before(offset)


def install() -> None:
    replace(faust_consumer.Consumer, "seek", seek)
