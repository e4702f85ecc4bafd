"""Whether a part of the pipeline makes progress again after a fault, and how soon."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions

from infra.admin import admin_client
from infra.kafka import make_consumer
from settle.audit_ingest import end_offsets
from settle.chaos.plan import SINK_GROUPS
from settle.chaos.report import FaultOutcome
from settle.e2e import IsolatedPipeline
from sinks.db import connect

log = logging.getLogger("settle.chaos")


class Probe:
    """A number that grows while a part of the pipeline makes progress (None: can't tell now)."""

    def __init__(self, pipeline: IsolatedPipeline, target: str) -> None:
        topics = pipeline.topics
        self.pipeline = pipeline
        self.sql: str | None = None
        self.topics: tuple[str, ...] = ()
        # What the stage reads and as which group: "nothing left to do" counts as recovered,
        # since a fault healed after the traffic ended has no new progress to show.
        self.group = f"{pipeline.prefix}settle-{target}"
        self.inputs: tuple[str, ...] = ()
        if target == "validate":
            self.topics = (*topics.all_routed, topics.rejected, topics.dlq)
            self.inputs = (topics.requested,)
        elif target == "reconcile":
            self.topics = (topics.results,)
            self.inputs = (*topics.all_routed, topics.confirmations)
        elif target == "settle":
            self.topics = (topics.batches,)
            self.inputs = (topics.results,)
        else:
            # Sinks (and services, whose outage shows at the end of the pipeline): committed
            # sink offsets in PostgreSQL.
            group = SINK_GROUPS.get(target, "settle-ledger-sink")
            self.group = f"{pipeline.prefix}{group}"
            self.inputs = (topics.batches,) if target == "settlement-sink" else (topics.results,)
            self.sql = ("SELECT COALESCE(SUM(next_offset), 0) FROM sink_offsets "
                        f"WHERE consumer_group = '{self.group}'")
        self._consumer: Any = None

    def read(self) -> int | None:
        try:
            if self.sql is not None:
                with connect(self.pipeline.settings.postgres, autocommit=True,
                             timeout_s=2) as conn:
                    row = conn.execute(self.sql).fetchone()
                    return int(row[0]) if row else 0
            if self._consumer is None:
                self._consumer = make_consumer(self.pipeline.settings.kafka,
                                               group_id=f"settle-chaos-{uuid.uuid4()}")
            return sum(sum(end_offsets(self._consumer, t).values()) for t in self.topics)
        except Exception:  # the service may be the one that is down
            return None

    def caught_up(self) -> bool:
        """True when the stage's group has handled every record of its inputs (False: can't
        tell now)."""
        try:
            if self._consumer is None:
                self._consumer = make_consumer(self.pipeline.settings.kafka,
                                               group_id=f"settle-chaos-{uuid.uuid4()}")
            ends = sum(sum(end_offsets(self._consumer, t).values()) for t in self.inputs)
            if self.sql is not None:
                done = self.read()
            else:
                done = _group_committed(self.pipeline, self.group, self.inputs)
            return done is not None and ends > 0 and done >= ends
        except Exception:  # the broker or database may be the part that is down
            return False

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _group_committed(pipeline: IsolatedPipeline, group: str, topics: tuple[str, ...]
                     ) -> int | None:
    """Sum of a consumer group's committed offsets on `topics` (from the broker)."""
    admin = admin_client(pipeline.settings.kafka)
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)])[group].result(timeout=10)
    return sum(tp.offset for tp in result.topic_partitions or []
               if tp.topic in topics and tp.offset >= 0)


def watch_recovery(probe: Probe, outcome: FaultOutcome, t0: float, reference: int | None,
                    timeout_s: float) -> None:
    """Record the time from the fault until the probe passes its value at the heal, or the
    stage has nothing left to do (the traffic may have ended before the heal)."""
    deadline = time.monotonic() + timeout_s
    polls = 0
    try:
        while time.monotonic() < deadline:
            value = probe.read()
            progressed = reference is not None and value is not None and value > reference
            if reference is None:
                reference = value
            # The lag check costs broker round trips: every 2 s is plenty.
            idle = not progressed and polls % 8 == 0 and probe.caught_up()
            polls += 1
            if progressed or idle:
                outcome.recovery_s = round(time.monotonic() - t0, 2)
                log.warning("RECOVERED %s: %s %.1fs after the fault", outcome.fault,
                            "progress resumed" if progressed else "caught up",
                            outcome.recovery_s)
                return
            time.sleep(0.25)
        outcome.note = f"no progress within {timeout_s:.0f}s of the heal"
        log.error("NOT RECOVERED %s: %s", outcome.fault, outcome.note)
    finally:
        probe.close()
