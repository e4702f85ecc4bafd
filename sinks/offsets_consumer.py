"""Offsets-in-transaction consumer: a batch's rows and its consumed offsets commit together.

Each batch is one PostgreSQL transaction holding its rows and the sink_offsets upsert; on
assignment every partition resumes at its stored next_offset. Kafka's committed offsets are
written after the DB commit, for lag monitoring only, and never read back. A revoked
partition's uncommitted records are dropped: its next owner reads them from sink_offsets.

Failure policy:

- PostgreSQL unavailable, a serialization failure or deadlock, the registry unavailable,
  dead letters not acknowledged by Kafka, or a concurrent writer's conflict: roll back, log
  one clear line, and retry the *same* batch with capped exponential backoff, reconnecting
  as needed. Never skip, never crash. While waiting the consumer is paused but keeps
  polling, so it stays in its group.
- An undecodable record: dead letter (original bytes, coordinates, error) to payments.dlq;
  its offset advances with the batch. A record that would break an invariant (an unbalanced
  journal, a batch whose totals differ from its items, a payment settled twice): dead letter
  with the stage and the error, never written. Dead letters are produced and flushed BEFORE
  the commit of their batch, so a crash in between yields a duplicate dead letter, not a
  lost one.
- A batch the database refuses for its data (IntegrityError, DataError): rolled back and
  written again one record per savepoint; the records it still refuses are dead-lettered.
- Anything else (a missing table, a bug): roll back and stop with the error; nothing of the
  batch was committed, so a fixed sink resumes exactly there.
- SIGTERM/SIGINT: finish (commit) the current batch, then close; a second signal aborts it
  (uncommitted, so it is read again on restart).

With a backlog, the next batch is decoded and its rows built while PostgreSQL writes the
current one (sinks.read_ahead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from infra.config import Settings
from infra.kafka import make_consumer, make_producer
from schemas.codec import AvroDeserializer
from schemas.registry import SchemaRegistry
from sinks import metrics
from sinks.base import DeadRecord, SourceRecord, Writer, WriteResult
from sinks.batch_stats import count_committed
from sinks.db import connect
from sinks.dead_letters import DeadLetterPublisher
from sinks.failures import DATA_ERRORS, RETRY_CAUSES, RETRYABLE, cause, first_line
from sinks.offsets import load_offsets, save_offsets
from sinks.options import SinkOptions, SinkStats
from sinks.read_ahead import Prepared, ReadAhead, coords, prepare
from sinks.signals import stop_on_signals

log = logging.getLogger(__name__)

# The GIL switch interval a sink process runs with (`settle sink` sets it; Python's default
# is 5 ms): short, so the main thread gets the GIL back soon after PostgreSQL answers while
# the read-ahead thread decodes.
SWITCH_INTERVAL_S = 0.0005


def _next_offsets(batch: Sequence[Message]) -> dict[str, dict[int, int]]:
    """The next offset per topic and partition after the batch."""
    out: dict[str, dict[int, int]] = {}
    for msg in batch:
        topic, partition, offset = coords(msg)
        per_topic = out.setdefault(topic, {})
        per_topic[partition] = max(per_topic.get(partition, 0), offset + 1)
    return out


class _BatchChanged(Exception):
    """A rebalance revoked partitions while the batch in hand was being prepared."""


class OffsetsConsumer:
    """Consume a topic (and the writer's more_topics) in micro-batches and hand each batch to
    a writer, exactly once; every topic's offsets commit in the batch's transaction."""

    def __init__(
        self,
        settings: Settings,
        registry: SchemaRegistry,
        writer: Writer,
        options: SinkOptions,
        consumer: Consumer | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.options = options
        self.stats = SinkStats()
        group_conf = ({"session.timeout.ms": options.session_timeout_ms}
                      if options.session_timeout_ms else {})
        self._consumer = consumer or make_consumer(settings.kafka, options.group_id,
                                                   **group_conf)
        def dlq_producer() -> Producer:
            return make_producer(settings.kafka, f"{writer.stage}-dlq")

        self._dlq = DeadLetterPublisher(dlq_producer(), registry, options.dlq_topic,
                                        writer.stage, producer_factory=dlq_producer)
        # Each topic is decoded into its own contract record: the main topic into the
        # writer's record_name, the writer's more_topics (topic -> record name) into theirs.
        more: dict[str, str] = dict(getattr(writer, "more_topics", {}) or {})
        self._topics = [options.topic, *(t for t in more if t != options.topic)]
        self._decoders = {options.topic: AvroDeserializer(registry,
                                                          reader_schema=writer.record_name)}
        self._decoders.update((topic, AvroDeserializer(registry, reader_schema=record))
                              for topic, record in more.items() if topic != options.topic)
        self._conn: psycopg.Connection | None = None
        self._batch: list[Message] = []  # collected, not yet committed
        self._carry: list[Message] = []  # delivered while waiting to retry
        self._stopping = False
        self._last_activity = time.monotonic()
        self._revocations = 0  # counts _on_revoke calls: a batch in preparation may be stale
        self._ahead = ReadAhead(writer.name, writer.stage)
        for retry_cause in RETRY_CAUSES:  # every series exists from the start, so rate() works
            metrics.RETRIES.labels(writer.name, retry_cause)
        for outcome in ("written", "dead_lettered"):
            metrics.RECORDS.labels(writer.name, outcome)

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to commit the batch in hand and exit."""
        self._stopping = True

    def stopping(self) -> bool:
        return self._stopping

    def run(self, install_signal_handlers: bool = True) -> SinkStats:
        """Consume until stopped, idle for idle_exit_s, or max_records were committed."""
        with stop_on_signals(self.writer.stage, self.stop, self.stopping,
                             install_signal_handlers):
            self._consumer.subscribe(
                list(self._topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            self._last_activity = time.monotonic()
            try:
                while not self._should_exit():
                    self._collect()
                    if self._batch:
                        self._process()
            finally:
                self._close()
        return self.stats

    def _should_exit(self) -> bool:
        opts = self.options
        if self._stopping:
            return True
        if opts.max_records is not None and self.stats.records >= opts.max_records:
            return True
        idle_s = time.monotonic() - self._last_activity
        return opts.idle_exit_s is not None and idle_s >= opts.idle_exit_s

    def _close(self) -> None:
        self._ahead.close()
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: closing the consumer: %s", self.writer.stage, exc)
        self._dlq.flush(10)
        if self._conn is not None:
            self._conn.close()

    # -- consuming -------------------------------------------------------------------------

    def _batch_limit(self, uncommitted: int = 0) -> int:
        """Most records the next batch may hold: batch_rows_max, and what max_records leaves."""
        opts = self.options
        if opts.max_records is None:
            return opts.batch_rows_max
        return min(opts.batch_rows_max, opts.max_records - self.stats.records - uncommitted)

    def _collect(self) -> None:
        """Fill self._batch up to batch_rows_max records or batch_wait_ms."""
        opts = self.options
        limit = self._batch_limit()
        self._batch, self._carry = self._carry[:limit], self._carry[limit:]
        deadline = time.monotonic() + opts.batch_wait_ms / 1000
        while len(self._batch) < limit and not self._stopping:
            timeout_s = deadline - time.monotonic()
            if timeout_s <= 0:
                break
            for msg in self._consumer.consume(limit - len(self._batch), timeout_s):
                if self._usable(msg):
                    self._batch.append(msg)
        if self._batch:
            self._last_activity = time.monotonic()
            if self.stats.first_record_at is None:  # rates start with the first batch's wait
                self.stats.first_record_at = deadline - opts.batch_wait_ms / 1000

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("%s: consumer error: %s", self.writer.stage, err)
        return False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume each partition at its stored next_offset (absent: from the beginning)."""
        numbers: dict[str, list[int]] = {}
        for tp in partitions:
            numbers.setdefault(tp.topic, []).append(tp.partition)

        def load(conn: psycopg.Connection) -> dict[str, dict[int, int]]:
            return {topic: load_offsets(conn, self.options.group_id, topic, parts)
                    for topic, parts in numbers.items()}

        stored = self._retry_db("read sink_offsets", load)
        if stored is None:  # stopping while PostgreSQL is away: fetch nothing, exit soon
            consumer.assign([])
            return
        for tp in partitions:
            tp.offset = stored[tp.topic].get(tp.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self._last_activity = time.monotonic()
        log.info("%s: assigned %s", self.writer.stage, ", ".join(
            f"{tp.topic}[{tp.partition}]@{stored[tp.topic].get(tp.partition, 'beginning')}"
            for tp in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop uncommitted records of partitions we lose; their next owner re-reads them."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._revocations += 1
        self._batch = [m for m in self._batch if (m.topic(), m.partition()) not in gone]
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in gone]
        log.info("%s: revoked %s", self.writer.stage,
                 ", ".join(f"{t}[{p}]" for t, p in sorted(gone)))

    # -- writing ---------------------------------------------------------------------------

    def _process(self) -> None:
        """Commit self._batch, retrying transient failures until it is done (or stopping)."""
        attempt = 0
        while self._batch:
            try:
                self._attempt(list(self._batch))
                self._batch = []
                return
            except _BatchChanged:
                continue  # _on_revoke has filtered self._batch; prepare what is left
            except RETRYABLE as exc:
                self._rollback()
                attempt += 1
                self.stats.retries += 1
                metrics.RETRIES.labels(self.writer.name, cause(exc)).inc()
                delay_s = self.options.backoff_s(attempt)
                log.warning(
                    "%s: [%s] batch of %d record(s) rolled back: %s: %s; retrying the same "
                    "batch in %.1fs (attempt %d)", self.writer.stage, cause(exc),
                    len(self._batch), type(exc).__name__, first_line(exc), delay_s, attempt,
                )
                if self._stopping:
                    log.warning("%s: stopping with %d uncommitted record(s); they are read "
                                "again from sink_offsets on restart", self.writer.stage,
                                len(self._batch))
                    self._batch = []
                    return
                self._wait_serving(delay_s)
            except BaseException:
                self._rollback()
                raise

    def _attempt(self, batch: list[Message]) -> None:
        started = time.monotonic()
        ready = self._take_ahead(batch) or self._prepare(batch)
        # Fetch (and start decoding) the next batch before this one's SQL: a rebalance
        # callback that runs inside that poll then finds no transaction of ours open.
        revocations = self._revocations
        self._read_ahead()
        if self._revocations != revocations:
            raise _BatchChanged
        conn = self._connection()
        dead, decoded = ready.dead, ready.decoded
        try:
            result = self._write(conn, decoded, ready.built)
        except DATA_ERRORS as exc:
            conn.rollback()
            log.warning("%s: PostgreSQL refused the batch (%s: %s); writing it record by record",
                        self.writer.stage, type(exc).__name__, str(exc).strip())
            result = self._write_isolated(conn, decoded)
        dead.extend(result.dead)
        self._dlq.publish(dead)
        next_offsets = _next_offsets(batch)
        for topic, offsets in next_offsets.items():
            save_offsets(conn, self.options.group_id, topic, offsets)
        conn.commit()
        self._after_commit(batch, result, dead, next_offsets, time.monotonic() - started)

    def _prepare(self, batch: list[Message], build: bool = False) -> Prepared:
        """Decode a batch, and build its rows ahead if asked (pure: no database, no Kafka)."""
        return prepare(self._decoders, self.writer, batch, build)

    def _take_ahead(self, batch: list[Message]) -> Prepared | None:
        """The read-ahead of exactly this batch, if there is one; waits for the helper."""
        ready = self._ahead.take(batch)
        if ready is not None:
            self.stats.read_ahead += 1
        return ready

    def _read_ahead(self) -> None:
        """With a backlog, fetch the next full batch now and decode it in the helper thread."""
        if self._ahead.busy or self._carry or self._stopping:
            return
        limit = self._batch_limit(uncommitted=len(self._batch))
        if limit <= 0:
            return
        messages = [m for m in self._consumer.consume(limit, 0) if self._usable(m)]
        self._carry.extend(messages)
        if len(messages) < limit:
            return  # no backlog: the next batch is collected (and decoded) as usual
        self._ahead.start(messages, lambda batch: self._prepare(batch, True))

    def _write(self, conn: psycopg.Connection, records: list[SourceRecord],
               built: Any = None) -> WriteResult:
        if not records:
            result = WriteResult()
        elif built is not None:
            result = self.writer.write(conn, records, built)  # type: ignore[call-arg]
        else:
            result = self.writer.write(conn, records)
        # Run the deferred checks (journal balance) now, so a refusal is known before any
        # dead letter is sent, instead of at COMMIT.
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        return result

    def _write_isolated(
        self, conn: psycopg.Connection, records: list[SourceRecord]
    ) -> WriteResult:
        total = WriteResult()
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for src in records:
            conn.execute("SAVEPOINT sink_record")
            try:
                total.merge(self.writer.write(conn, [src]))
                conn.execute("RELEASE SAVEPOINT sink_record")
            except DATA_ERRORS as exc:
                conn.execute("ROLLBACK TO SAVEPOINT sink_record")
                total.dead.append(DeadRecord.of(src, exc, str(exc).strip()))
        return total

    def _after_commit(
        self,
        batch: list[Message],
        result: WriteResult,
        dead: list[DeadRecord],
        next_offsets: dict[str, dict[int, int]],
        commit_s: float,
    ) -> None:
        count_committed(self.stats, self.writer.name, len(batch), result, dead, commit_s)
        for item in dead:
            log.warning("%s: dead-lettered %s to %s: %s: %s", self.writer.stage,
                        item.source.ref, self.options.dlq_topic, item.error_type, item.message)
        offsets = [TopicPartition(topic, p, o) for topic, per_topic in next_offsets.items()
                   for p, o in per_topic.items()]
        try:  # only for lag monitoring: the sink resumes from sink_offsets, never from here
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.debug("%s: Kafka offset commit skipped: %s", self.writer.stage, exc)

    # -- connections and waiting -----------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = connect(self.settings.postgres.for_sinks())
            try:
                self.writer.prepare(conn)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return conn

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except psycopg.Error:
            self._conn.close()  # broken: the next attempt reconnects
            self._conn = None

    def _retry_db(self, what: str, work: Callable[[psycopg.Connection], Any]) -> Any:
        """Run a read in its own short transaction, retrying while PostgreSQL is away.

        Returns None, without the result, when the sink is asked to stop meanwhile.
        """
        attempt = 0
        while True:
            try:
                conn = self._connection()
                value = work(conn)
                conn.commit()
                return value
            except RETRYABLE as exc:
                self._rollback()
                attempt += 1
                delay_s = self.options.backoff_s(attempt)
                log.warning("%s: cannot %s (%s: %s); retry %d in %.1fs", self.writer.stage,
                            what, type(exc).__name__, first_line(exc), attempt, delay_s)
                deadline = time.monotonic() + delay_s
                while not self._stopping and time.monotonic() < deadline:
                    time.sleep(0.1)  # can't poll inside a rebalance callback; stay stoppable
                if self._stopping:
                    return None

    def _wait_serving(self, delay_s: float) -> None:
        """Sleep while still polling (paused), so the group keeps us and rebalances run."""
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        deadline = time.monotonic() + delay_s
        try:
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                for msg in self._consumer.consume(100, min(left, 1.0)):
                    if self._usable(msg):
                        self._carry.append(msg)  # a partition assigned meanwhile: keep it
        finally:
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.resume(assignment)
