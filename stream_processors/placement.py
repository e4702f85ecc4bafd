"""Third parties' records moved to the partition their payment_id maps to, inside the stage.

The stages keep per-payment state (validate's dedup entry, reconcile's join state) in the
partition a payment_id maps to under Kafka's default partitioner (murmur2), which is where the
pipeline's own clients and faust put every payment-keyed record. A client outside the pipeline
(an order system, a channel adapter) may use another partitioner: every librdkafka-based client
defaults to CRC32 (`consistent_random`). Rather than dead-letter such a record, the stage
re-produces its original bytes, keyed by payment_id and on the right partition, to an internal
topic of its own that it also consumes, with the original coordinates in a header; read back
from there, the record is processed as if it had arrived on the right partition, and every
output and dead letter names the original coordinates. One client's records for one key are on
one source partition, are moved in order and land on one target partition, so the order the
source gave is kept. A record already on the right partition costs one murmur2 hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from infra.partitioning import partition_for
from stream_processors.outputs import Output, source_ref

# The header that carries a moved record's original coordinates ("topic/partition/offset").
ORIGIN_HEADER: Final = "settle-origin"
# Moved records wait here for their stage; a week covers any outage worth surviving.
PLACED_RETENTION: Final = timedelta(days=7)


class PlacementError(ValueError):
    """A record of the internal placement topic without readable origin coordinates."""

    reason = "PLACEMENT_ORIGIN_MISSING"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a third party's record was first written."""

    topic: str
    partition: int
    offset: int

    @property
    def ref(self) -> str:
        return source_ref(self.topic, self.partition, self.offset)


def placed_topic_name(app_id: str) -> str:
    return f"{app_id}-placed"


def stage_placement(app: Any, topics: Any, partitions: int) -> Placement:
    """The placement of a stage (a faust app): its own topic, the contract's external topics."""
    return Placement(placed_topic_name(app.conf.id), partitions, frozenset(topics.external))


@dataclass(frozen=True, slots=True)
class Placement:
    """Which inputs are written by third parties, and where each payment_id belongs.

    `external` are the topics clients outside the pipeline write (schemas.topics marks them);
    `topic` is the stage's internal topic for moved records; `partitions` the payment-keyed
    partition count, the same for every co-partitioned topic.
    """

    topic: str
    partitions: int
    external: frozenset[str]

    def target(self, payment_id: str) -> int:
        return partition_for(payment_id.encode(), self.partitions)

    def misplaced(self, topic: str, partition: int, payment_id: str) -> int | None:
        """The partition a third party's record must move to, or None where it is right."""
        if topic not in self.external:
            return None  # the pipeline's own records are placed by its own clients
        target = self.target(payment_id)
        return None if target == partition else target

    def move(self, payment_id: str, value: bytes, origin: Origin, target: int) -> Output:
        """The original bytes, keyed by payment_id, to `target` of the placement topic."""
        return Output(self.topic, payment_id.encode(), value,
                      ((ORIGIN_HEADER, origin.ref.encode()),), partition=target)

    @staticmethod
    def origin_of(headers: object) -> Origin:
        """The original coordinates of a record read from the placement topic."""
        for name, value in _pairs(headers):
            if name == ORIGIN_HEADER and isinstance(value, bytes | bytearray):
                topic, sep1, rest = bytes(value).decode("utf-8", "replace").rpartition("/")
                source, sep2, partition = topic.rpartition("/")
                if sep1 and sep2 and source and partition.isdigit() and rest.isdigit():
                    return Origin(source, int(partition), int(rest))
        raise PlacementError(f"no readable {ORIGIN_HEADER} header")


def _pairs(headers: object) -> list[tuple[str, object]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(str(k), v) for k, v in headers]  # type: ignore[attr-defined]
