"""The PostgreSQL sinks on the real stack: exactly-once rows, replays, dead letters, retries."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from confluent_kafka import TopicPartition

from infra.admin import create_topics, delete_topics
from infra.config import Settings
from infra.kafka import make_consumer, make_producer
from infra.registry import registry_client
from schemas.codec import AvroDeserializer
from schemas.registry import RegistryClient
from schemas.topics import (
    DAY_MS,
    PAYMENTS_DLQ,
    RECONCILIATION_RESULTS,
    REFUND_RESULTS,
    SETTLEMENTS_BATCHES,
    TopicSpec,
)
from sinks.base import DeadRecord, SourceRecord, WriteResult
from sinks.db import connect
from sinks.dead_letters import DeadLetterPublisher
from sinks.errors import DeadLetterFailed
from sinks.ledger_rows import LedgerRows
from sinks.ledger_sink import LedgerWriter
from sinks.migrate import migrate
from sinks.offsets_consumer import OffsetsConsumer
from sinks.options import SinkOptions
from sinks.settlement_sink import SettlementWriter
from tests.support.sinks import (
    FEES,
    Topics,
    batch,
    publish,
    refund_result,
    result,
    run_sink,
)

pytestmark = pytest.mark.integration

@pytest.fixture()
def topics(stack: Settings) -> Iterator[Topics]:
    prefix = f"t-sinks-{uuid.uuid4().hex[:8]}-"
    specs = [
        TopicSpec(RECONCILIATION_RESULTS, retention_ms=DAY_MS),
        TopicSpec(SETTLEMENTS_BATCHES, retention_ms=DAY_MS, copartitioned=False),
        TopicSpec(PAYMENTS_DLQ, retention_ms=DAY_MS),
    ]
    create_topics(stack.kafka, specs=specs, name_prefix=prefix)
    yield Topics(prefix + RECONCILIATION_RESULTS, prefix + SETTLEMENTS_BATCHES,
                 prefix + PAYMENTS_DLQ)
    delete_topics(stack.kafka, [prefix + s.name for s in specs])


@pytest.fixture()
def registry(stack: Settings) -> Iterator[RegistryClient]:
    with registry_client(stack) as client:
        yield client


@pytest.fixture()
def db(stack: Settings) -> Iterator[psycopg.Connection]:
    with connect(stack.postgres) as conn:
        migrate(conn)
        conn.autocommit = True
        yield conn


def end_offsets(stack: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(stack.kafka, f"t-watermarks-{uuid.uuid4()}")
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}
    finally:
        consumer.close()


def stored_offsets(db: psycopg.Connection, group: str, topic: str) -> dict[int, int]:
    rows = db.execute("SELECT partition, next_offset FROM sink_offsets"
                      " WHERE consumer_group = %s AND topic = %s", (group, topic)).fetchall()
    return dict(rows)


def assert_offsets_at_end(stack: Settings, db: psycopg.Connection, group: str,
                          topic: str) -> None:
    ends = {p: o for p, o in end_offsets(stack, topic).items() if o > 0}
    assert stored_offsets(db, group, topic) == ends


def dead_letters(stack: Settings, registry: RegistryClient, dlq: str) -> list[dict[str, Any]]:
    """Every DeadLetter on a (test) DLQ topic."""
    ends = end_offsets(stack, dlq)
    consumer = make_consumer(stack.kafka, f"t-dlq-{uuid.uuid4()}")
    decoder = AvroDeserializer(registry)
    out: list[dict[str, Any]] = []
    try:
        consumer.assign([TopicPartition(dlq, p, 0) for p, end in ends.items() if end > 0])
        while len(out) < sum(ends.values()):
            msg = consumer.poll(10)
            assert msg is not None, f"only {len(out)} of {sum(ends.values())} dead letters read"
            assert msg.error() is None
            out.append(decoder.decode(msg.value()))
    finally:
        consumer.close()
    return out


def _ids() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {name: f"p-{run}-{name}" for name in (
        "matched", "split", "declined", "late", "still_missing", "dup", "orphan", "conflict",
        "bad_amount", "garbage", "mismatch",
    )}


def ledger_state(db: psycopg.Connection, pids: Sequence[str]) -> dict[str, Any]:
    q = db.execute
    return {
        "payments": dict(q("SELECT payment_id, state FROM payments WHERE payment_id = ANY(%s)",
                           (list(pids),)).fetchall()),
        "journals": q("SELECT payment_id, gross_minor, fee_minor, net_minor FROM ledger_journals"
                      " WHERE payment_id = ANY(%s) ORDER BY 1", (list(pids),)).fetchall(),
        "entries": q("SELECT payment_id, account, side, amount_minor FROM ledger_entries"
                     " WHERE payment_id = ANY(%s) ORDER BY 1, 2, 3", (list(pids),)).fetchall(),
        "exceptions": sorted(q("SELECT result_id FROM reconciliation_exceptions"
                               " WHERE payment_id = ANY(%s)", (list(pids),)).fetchall()),
        "imbalances": q("SELECT journal_id FROM ledger_entries WHERE payment_id = ANY(%s)"
                        " GROUP BY journal_id HAVING sum(CASE WHEN side = 'DEBIT'"
                        " THEN amount_minor ELSE -amount_minor END) <> 0",
                        (list(pids),)).fetchall(),
    }


def test_ledger_sink_exactly_once_with_replay_and_dead_letters(
    stack: Settings, topics: Topics, registry: RegistryClient, db: psycopg.Connection
) -> None:
    p = _ids()
    group = f"t-ledger-{uuid.uuid4()}"
    first = [
        result(p["matched"], "MATCHED"),
        result(p["split"], "MATCHED", channel="CARD", amount=5_000, split=(90, 4_910)),
        result(p["declined"], "DECLINED", confirmed=0),
        result(p["late"], "MISSING_CONFIRMATION", conf=None),
        result(p["still_missing"], "MISSING_CONFIRMATION", conf=None),
        result(p["dup"], "MATCHED", channel="WECHAT_PAY"),
        result(p["orphan"], "ORPHAN_CONFIRMATION", merchant=None, amount=None),
        result(p["conflict"], "DECLINED"),
        result(p["mismatch"], "AMOUNT_MISMATCH", confirmed=9_999),
        (p["garbage"], b"definitely not avro"),
        result(p["bad_amount"], "MATCHED", confirmed=1),  # MATCHED with unequal amounts
    ]
    publish(stack, registry, topics.results, first)
    stats = run_sink(stack, registry, LedgerWriter(FEES), topics.results, topics.dlq, group)
    assert stats.records == len(first)
    assert stats.dead_letters == 2
    assert_offsets_at_end(stack, db, group, topics.results)

    second = [
        result(p["late"], "MATCHED", conf="c9", late=True, minutes=30),
        result(p["late"], "MATCHED", conf="c10", late=True, minutes=31),  # only once
        result(p["still_missing"], "LATE_CONFIRMATION", conf="c2", late=True, confirmed=1),
        result(p["dup"], "DUPLICATE_CONFIRMATION", channel="WECHAT_PAY", conf="c2"),
        result(p["conflict"], "MATCHED", conf="c3"),  # a second verdict: refused
    ]
    publish(stack, registry, topics.results, second)
    stats = run_sink(stack, registry, LedgerWriter(FEES), topics.results, topics.dlq, group)
    assert stats.records == len(second)  # resumed from sink_offsets, not from the beginning
    assert_offsets_at_end(stack, db, group, topics.results)

    state = ledger_state(db, list(p.values()))
    assert state["payments"] == {
        p["matched"]: "MATCHED", p["split"]: "MATCHED", p["declined"]: "DECLINED",
        p["late"]: "MATCHED", p["still_missing"]: "MISSING_CONFIRMATION", p["dup"]: "MATCHED",
        p["conflict"]: "DECLINED", p["mismatch"]: "AMOUNT_MISMATCH",
    }
    assert state["journals"] == sorted([
        (p["matched"], 10_000, 60, 9_940),
        (p["split"], 5_000, 90, 4_910),  # the record's fee, not the schedule's 180 bps
        (p["late"], 10_000, 60, 9_940),
        (p["dup"], 10_000, 60, 9_940),
    ])
    assert state["imbalances"] == []
    assert len(state["entries"]) == 12
    assert (p["split"], "fee_revenue:card", "CREDIT", 90) in state["entries"]
    assert (p["matched"], "payable:m-1", "CREDIT", 9_940) in state["entries"]
    assert [r[0] for r in state["exceptions"]] == sorted([
        f"{p['declined']}:DECLINED:c1", f"{p['late']}:MISSING_CONFIRMATION:-",
        f"{p['still_missing']}:MISSING_CONFIRMATION:-", f"{p['orphan']}:ORPHAN_CONFIRMATION:c1",
        f"{p['conflict']}:DECLINED:c1", f"{p['mismatch']}:AMOUNT_MISMATCH:c1",
        f"{p['still_missing']}:LATE_CONFIRMATION:c2", f"{p['dup']}:DUPLICATE_CONFIRMATION:c2",
    ])
    row = db.execute("SELECT late, result_id FROM payments WHERE payment_id = %s",
                     (p["late"],)).fetchone()
    assert row == (True, f"{p['late']}:MATCHED:c9")

    letters = dead_letters(stack, registry, topics.dlq)
    by_key = {letter["original_key"].decode(): letter for letter in letters}
    assert set(by_key) == {p["garbage"], p["bad_amount"], p["late"], p["conflict"]}
    assert by_key[p["garbage"]]["error_type"] == "BadMagicByte"
    assert by_key[p["garbage"]]["original_value"] == b"definitely not avro"
    assert by_key[p["garbage"]]["source_topic"] == topics.results
    assert by_key[p["bad_amount"]]["error_type"] == "InvalidRecord"
    assert by_key[p["conflict"]]["error_type"] == "TerminalStateConflict"
    assert by_key[p["late"]]["error_type"] == "TerminalStateConflict"  # the second late match
    assert {letter["stage"] for letter in letters} == {"ledger-sink"}

    # Replay everything from offset 0: nothing doubles, nothing changes.
    db.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (group,))
    replay = run_sink(stack, registry, LedgerWriter(FEES), topics.results, topics.dlq, group,
                      batch_rows_max=3)
    assert replay.records == len(first) + len(second)
    assert replay.rows_written == 0
    assert ledger_state(db, list(p.values())) == state
    assert_offsets_at_end(stack, db, group, topics.results)


def settlement_state(db: psycopg.Connection, merchant: str) -> dict[str, Any]:
    return {
        "batches": db.execute("SELECT batch_id, payment_count, gross_minor, fee_minor, net_minor"
                              " FROM settlement_batches WHERE merchant_id = %s ORDER BY 1",
                              (merchant,)).fetchall(),
        "items": db.execute("SELECT i.batch_id, i.payment_id, i.net_minor FROM"
                            " settlement_batch_items i JOIN settlement_batches b USING (batch_id)"
                            " WHERE b.merchant_id = %s ORDER BY 2", (merchant,)).fetchall(),
    }


def test_settlement_sink_exactly_once_with_replay_and_dead_letters(
    stack: Settings, topics: Topics, registry: RegistryClient, db: psycopg.Connection
) -> None:
    m = f"m-{uuid.uuid4().hex[:10]}"
    group = f"t-settle-{uuid.uuid4()}"
    pa, pb, pc, pd, pe = (f"{m}-p{i}" for i in range(5))
    b1 = batch(m, 0, [(pa, 10_000, 60), (pb, 5_000, 30)])
    b2 = batch(m, 1, [(pc, 2_000, 12)])
    first = [
        b1,
        b2,
        batch(m, 0, [(pa, 10_000, 60), (pb, 5_000, 30)], closed_minutes=5),  # re-closed: same
        batch(m, 2, [(pd, 1_000, 6)], gross=999),  # totals differ from the items
        ("garbage", b"\x00\x7f\xff\xff\xf0 no such schema id"),
    ]
    publish(stack, registry, topics.batches, first)
    stats = run_sink(stack, registry, SettlementWriter(), topics.batches, topics.dlq, group)
    assert (stats.records, stats.dead_letters, stats.duplicates) == (len(first), 2, 1)
    assert stats.rows_written == 5
    assert_offsets_at_end(stack, db, group, topics.batches)

    # Batches land on partitions by batch_id, so a payment in two batches is published in a
    # second round to make "which batch came first" deterministic.
    b5 = batch(m, 5, [(pd, 1_000, 6)])
    second = [batch(m, 3, [(pe, 700, 4), (pc, 2_000, 12)]), b5]  # pc is settled in b2
    publish(stack, registry, topics.batches, second)
    stats = run_sink(stack, registry, SettlementWriter(), topics.batches, topics.dlq, group)
    assert (stats.records, stats.dead_letters, stats.rows_written) == (2, 1, 2)

    state = settlement_state(db, m)
    assert state["batches"] == [(b1[0], 2, 15_000, 90, 14_910), (b2[0], 1, 2_000, 12, 1_988),
                                (b5[0], 1, 1_000, 6, 994)]
    assert state["items"] == [(b1[0], pa, 9_940), (b1[0], pb, 4_970), (b2[0], pc, 1_988),
                              (b5[0], pd, 994)]
    letters = dead_letters(stack, registry, topics.dlq)
    kinds = sorted(letter["error_type"] for letter in letters)
    assert kinds == ["BatchInvariantError", "PaymentInAnotherBatch", "UnknownSchemaId"]
    assert {letter["stage"] for letter in letters} == {"settlement-sink"}

    db.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (group,))
    replay = run_sink(stack, registry, SettlementWriter(), topics.batches, topics.dlq, group)
    assert replay.records == len(first) + len(second)
    assert replay.rows_written == 0
    assert settlement_state(db, m) == state
    assert_offsets_at_end(stack, db, group, topics.batches)


class FlakyLedgerWriter(LedgerWriter):
    """Fails the first attempt like a lost connection would, and refuses one record by data."""

    def __init__(self, poison: str) -> None:
        super().__init__(FEES)
        self.poison = poison
        self.calls = 0

    def write(self, conn: psycopg.Connection, records: Sequence[SourceRecord],
              rows: LedgerRows | None = None) -> WriteResult:
        self.calls += 1
        if self.calls == 1:
            raise psycopg.errors.SerializationFailure("injected: could not serialize access")
        out = super().write(conn, records, rows)
        if any((r.record or {}).get("payment_id") == self.poison for r in records):
            conn.execute("SELECT 1 / 0")  # a DataError caused by this record only
        return out


def test_retry_then_isolate_a_record_the_database_refuses(
    stack: Settings, topics: Topics, registry: RegistryClient, db: psycopg.Connection
) -> None:
    p = _ids()
    group = f"t-flaky-{uuid.uuid4()}"
    records = [result(p["matched"], "MATCHED"), result(p["declined"], "DECLINED"),
               result(p["dup"], "MATCHED")]
    publish(stack, registry, topics.results, records)
    writer = FlakyLedgerWriter(poison=p["declined"])
    stats = run_sink(stack, registry, writer, topics.results, topics.dlq, group,
                     retry_backoff_s=0.05)
    assert stats.retries == 1
    assert (stats.records, stats.dead_letters) == (3, 1)
    state = ledger_state(db, list(p.values()))
    assert state["payments"] == {p["matched"]: "MATCHED", p["dup"]: "MATCHED"}
    assert len(state["journals"]) == 2
    letters = dead_letters(stack, registry, topics.dlq)
    assert [(x["original_key"], x["error_type"]) for x in letters] == [
        (p["declined"].encode(), "DivisionByZero")
    ]
    assert_offsets_at_end(stack, db, group, topics.results)


class FailOnceLedgerWriter(LedgerWriter):
    """Fails its `fail_on`-th call like a lost connection would (a read-ahead is then pending)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__(FEES)
        self.fail_on = fail_on
        self.calls = 0
        self.prebuilt = 0

    def write(self, conn: psycopg.Connection, records: Sequence[SourceRecord],
              rows: LedgerRows | None = None) -> WriteResult:
        self.calls += 1
        if self.calls == self.fail_on:
            raise psycopg.errors.SerializationFailure("injected: could not serialize access")
        self.prebuilt += rows is not None
        return super().write(conn, records, rows)


def test_backlog_is_read_ahead_and_written_exactly_once(
    stack: Settings, topics: Topics, registry: RegistryClient, db: psycopg.Connection
) -> None:
    """A backlog of many batches: each next batch is decoded and built while one is written.

    The second write fails once (retried with the third batch already read ahead), and bad
    records are spread over the batches: every good record is written once, in order of
    its batch, every bad one dead-lettered, and the offsets end at the end.
    """
    run = uuid.uuid4().hex[:8]
    records: list[tuple[str, Any]] = []
    for i in range(64):
        pid = f"p-{run}-ahead-{i:03d}"
        if i % 16 == 5:
            records.append((pid, b"not avro at all"))
        elif i % 16 == 11:
            records.append(result(pid, "MATCHED", confirmed=1))  # unequal amounts: refused
        else:
            records.append(result(pid, "MATCHED", amount=1_000 + i))
    # Two results for one payment in different batches: the first decides, the replay of
    # the same verdict is no second posting.
    dup = f"p-{run}-ahead-000"
    records.append(result(dup, "MATCHED", amount=1_000))
    publish(stack, registry, topics.results, records)
    group = f"t-ahead-{uuid.uuid4()}"
    writer = FailOnceLedgerWriter(fail_on=2)
    stats = run_sink(stack, registry, writer, topics.results, topics.dlq, group,
                     batch_rows_max=8)
    assert stats.records == len(records)
    assert stats.retries == 1
    assert stats.read_ahead >= 3 and writer.prebuilt >= 3
    assert stats.dead_letters == 8
    assert_offsets_at_end(stack, db, group, topics.results)
    good = [pid for pid, rec in records[:64] if not isinstance(rec, bytes)
            and rec["confirmed_amount_minor"] == rec["expected_amount_minor"]]
    state = ledger_state(db, [pid for pid, _ in records])
    assert sorted(state["payments"]) == sorted(good)
    assert [j[0] for j in state["journals"]] == sorted(good)
    assert len(state["entries"]) == 3 * len(good)
    assert state["imbalances"] == []
    letters = dead_letters(stack, registry, topics.dlq)
    assert len(letters) == 8


class SlowLedgerWriter(LedgerWriter):
    """Takes 50 ms more per batch until `done()`, so a backlog outlasts a group join."""

    def __init__(self, done: Callable[[], bool]) -> None:
        super().__init__(FEES)
        self.done = done

    def write(self, conn: psycopg.Connection, records: Sequence[SourceRecord],
              rows: LedgerRows | None = None) -> WriteResult:
        if not self.done():
            time.sleep(0.05)
        return super().write(conn, records, rows)


def test_a_rebalance_during_the_read_ahead_loses_and_doubles_nothing(
    stack: Settings, topics: Topics, registry: RegistryClient, db: psycopg.Connection
) -> None:
    """A second sink joins the group while the first reads ahead through a backlog.

    In a backlog the first sink's only poll is the read-ahead's, so the revocation lands
    there, between a batch's preparation and its SQL: the batch must be re-cut to the
    partitions still owned, never written for a partition the other sink now reads.
    """
    run = uuid.uuid4().hex[:8]
    # 2,000 records in batches of 10 at >= 50 ms each: at least 10 s of backlog for the
    # first sink alone, against a join of a few seconds (heartbeats every 3 s).
    records = [result(f"p-{run}-rb-{i:04d}", "MATCHED", amount=1_000 + i) for i in range(2_000)]
    publish(stack, registry, topics.results, records)
    group = f"t-rebalance-{uuid.uuid4()}"
    opts = SinkOptions(group_id=group, topic=topics.results, dlq_topic=topics.dlq,
                       batch_rows_max=10, batch_wait_ms=100, idle_exit_s=5.0)
    sinks: list[OffsetsConsumer] = []

    def second_is_writing() -> bool:
        return len(sinks) == 2 and sinks[1].stats.batches > 0

    first = OffsetsConsumer(stack, registry, SlowLedgerWriter(second_is_writing), opts)
    second = OffsetsConsumer(stack, registry, SlowLedgerWriter(lambda: True), opts)
    sinks.extend([first, second])
    threads = [threading.Thread(target=c.run, kwargs={"install_signal_handlers": False})
               for c in (first, second)]
    threads[0].start()
    deadline = time.monotonic() + 60
    while first.stats.batches < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.stats.batches >= 5, "the first sink never got going"
    threads[1].start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert first._revocations >= 1  # the rebalance happened while it had work in hand
    assert first.stats.read_ahead > 0
    assert first.stats.records < len(records) and second.stats.records > 0
    # Records either sink had in hand but did not commit are read again by the owner; a
    # record committed twice would be a replay (a duplicate, no second posting).
    assert first.stats.records + second.stats.records >= len(records)
    assert first.stats.dead_letters == second.stats.dead_letters == 0
    assert_offsets_at_end(stack, db, group, topics.results)
    state = ledger_state(db, [pid for pid, _ in records])
    assert len(state["payments"]) == len(records)
    assert len(state["journals"]) == len(records)
    assert len(state["entries"]) == 3 * len(records)
    assert state["imbalances"] == []


def test_max_records_stops_after_a_commit_and_the_next_run_resumes(
    stack: Settings, topics: Topics, registry: RegistryClient, db: psycopg.Connection
) -> None:
    run = uuid.uuid4().hex[:8]
    group = f"t-max-{uuid.uuid4()}"
    records = [result(f"p-{run}-{i}", "DECLINED") for i in range(5)]
    publish(stack, registry, topics.results, records)
    first = run_sink(stack, registry, LedgerWriter(FEES), topics.results, topics.dlq, group,
                     max_records=2)
    assert first.records == 2
    assert sum(stored_offsets(db, group, topics.results).values()) == 2
    rest = run_sink(stack, registry, LedgerWriter(FEES), topics.results, topics.dlq, group)
    assert rest.records == 3
    assert_offsets_at_end(stack, db, group, topics.results)
    count = db.execute("SELECT count(*) FROM payments WHERE payment_id LIKE %s",
                       (f"p-{run}-%",)).fetchone()
    assert count == (5,)


def test_dead_letter_publisher_replaces_a_client_that_cannot_deliver(
    stack: Settings, registry: RegistryClient, topics: Topics
) -> None:
    """A client whose letters stay queued (here: it points at a closed port, as a client
    stuck on a leaderless partition would behave) is swapped for a fresh one, and the
    sink's retry of the batch delivers every letter on the real broker."""
    stuck = make_producer(stack.kafka, "t-dlq-stuck", **{"bootstrap.servers": "127.0.0.1:9"})
    made: list[Any] = []

    def fresh() -> Any:
        made.append(make_producer(stack.kafka, "t-dlq-fresh"))
        return made[-1]

    publisher = DeadLetterPublisher(stuck, registry, topics.dlq, "ledger-sink",
                                    producer_factory=fresh)
    dead = [DeadRecord(SourceRecord(topics.results, 0, n, f"p-{n}".encode(), b"\x00junk"),
                       "DecodeError", "not Avro") for n in range(3)]
    with pytest.raises(DeadLetterFailed, match="3 undelivered"):
        publisher.publish(dead, timeout_s=1.0)
    assert publisher.replacements == 1 and publisher.producer is made[0]

    publisher.publish(dead, timeout_s=30.0)  # the retry, on the new client
    assert publisher.replacements == 1
    letters = dead_letters(stack, registry, topics.dlq)
    assert sorted(letter["source_offset"] for letter in letters) == [0, 1, 2]
    assert {letter["original_key"] for letter in letters} == {b"p-0", b"p-1", b"p-2"}


@pytest.fixture()
def refund_topics(stack: Settings) -> Iterator[tuple[Topics, str]]:
    prefix = f"t-refsink-{uuid.uuid4().hex[:8]}-"
    specs = [
        TopicSpec(RECONCILIATION_RESULTS, retention_ms=DAY_MS),
        TopicSpec(REFUND_RESULTS, retention_ms=DAY_MS),
        TopicSpec(SETTLEMENTS_BATCHES, retention_ms=DAY_MS, copartitioned=False),
        TopicSpec(PAYMENTS_DLQ, retention_ms=DAY_MS),
    ]
    create_topics(stack.kafka, specs=specs, name_prefix=prefix)
    yield (Topics(prefix + RECONCILIATION_RESULTS, prefix + SETTLEMENTS_BATCHES,
                  prefix + PAYMENTS_DLQ), prefix + REFUND_RESULTS)
    delete_topics(stack.kafka, [prefix + s.name for s in specs])


def test_refunds_and_payouts_post_once_through_both_sinks(
    stack: Settings, refund_topics: tuple[Topics, str], registry: RegistryClient,
    db: psycopg.Connection,
) -> None:
    topics, refunds_topic = refund_topics
    run = uuid.uuid4().hex[:8]
    p1, p2 = f"p-{run}-1", f"p-{run}-2"
    merchant = f"m-{run}"
    publish(stack, registry, topics.results, [
        result(p1, "MATCHED", merchant=merchant, split=(60, 9_940)),
        result(p2, "MATCHED", merchant=merchant, split=(60, 9_940)),
    ])
    bad_split = refund_result(p1, "r9", "MATCHED", split=(18, 2_000), merchant=merchant)
    publish(stack, registry, refunds_topic, [
        refund_result(p1, "r1", "MATCHED", merchant=merchant),
        refund_result(p1, "r1", "MATCHED", merchant=merchant),  # replayed result
        refund_result(p1, "r2", "DECLINED", merchant=merchant),
        refund_result(p2, "r3", "MISSING_CONFIRMATION", conf=None, merchant=merchant),
        refund_result(p2, "r3", "MATCHED", conf="rc7", late=True, merchant=merchant,
                      amount=10_000, split=(60, 9_940)),
        bad_split,  # R != net + f: dead-lettered, never posted
        (p1, b"\x00\x00\x00\x00\x01not avro"),  # undecodable
    ])
    writer = LedgerWriter(FEES, refund_topic=refunds_topic)
    group = f"t-ledger-{run}"
    for _ in range(2):  # the second run replays everything from the start: nothing changes
        stats = run_sink(stack, registry, writer, topics.results, topics.dlq, group)
        assert stats.records == 9
        db.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (group,))
    stats = run_sink(stack, registry, writer, topics.results, topics.dlq, group)
    assert_offsets_at_end(stack, db, group, topics.results)
    assert_offsets_at_end(stack, db, group, refunds_topic)

    assert db.execute("SELECT refund_id, state, late, fee_returned_minor, net_minor, order_id"
                      " FROM refunds WHERE payment_id = ANY(%s) ORDER BY 1", ([p1, p2],)
                      ).fetchall() == [("r1", "MATCHED", False, 18, 2_982, f"o-{p1}"),
                                       ("r2", "DECLINED", False, None, None, f"o-{p1}"),
                                       ("r3", "MATCHED", True, 60, 9_940, f"o-{p2}")]
    assert db.execute("SELECT journal_id, kind, gross_minor, fee_minor, net_minor"
                      " FROM ledger_journals WHERE payment_id = ANY(%s) ORDER BY 1",
                      ([p1, p2],)).fetchall() == [
        (f"J:{p1}", "PAYMENT", 10_000, 60, 9_940), (f"J:{p2}", "PAYMENT", 10_000, 60, 9_940),
        (f"RF:{p1}/r1", "REFUND", 3_000, 18, 2_982), (f"RF:{p2}/r3", "REFUND", 10_000, 60, 9_940)]
    assert db.execute("SELECT account, side, amount_minor FROM ledger_entries"
                      " WHERE journal_id = %s ORDER BY 1", (f"RF:{p1}/r1",)).fetchall() == [
        ("clearing:alipay", "CREDIT", 3_000), ("fee_revenue:alipay", "DEBIT", 18),
        (f"payable:{merchant}", "DEBIT", 2_982)]
    assert sorted(r[0] for r in db.execute(
        "SELECT outcome FROM refund_exceptions WHERE payment_id = ANY(%s)", ([p1, p2],))) == [
        "DECLINED", "MISSING_CONFIRMATION"]
    letters = dead_letters(stack, registry, topics.dlq)
    assert len(letters) == 6  # two per run (the bad split and the garbage), three runs
    assert {(d["stage"], d["source_topic"]) for d in letters} == {("ledger-sink", refunds_topic)}

    # The batch nets both refunds against p2's payment (p1 was settled before): it pays 0
    # and carries the rest; a second batch pays out p1 with the carry taken off.
    items2 = [("PAYMENT", p2, p2, 10_000, 60), ("REFUND", f"{p1}/r1", p1, -3_000, -18),
              ("REFUND", f"{p2}/r3", p2, -10_000, -60)]
    first = netted_batch(merchant, 0, 0, items2)
    second = netted_batch(merchant, 1, first[1]["carried_out_minor"],
                          [("PAYMENT", p1, p1, 10_000, 60)])
    assert (first[1]["payout_minor"], first[1]["carried_out_minor"]) == (0, -2_982)
    assert second[1]["payout_minor"] == 9_940 - 2_982
    publish(stack, registry, topics.batches, [first, second, first])
    sgroup = f"t-settle-{run}"
    for _ in range(2):
        run_sink(stack, registry, SettlementWriter(), topics.batches, topics.dlq, sgroup)
        db.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (sgroup,))
    assert db.execute("SELECT kind, source_id, gross_minor FROM ledger_journals"
                      " WHERE kind = 'PAYOUT' AND source_id = ANY(%s)",
                      ([first[0], second[0]],)).fetchall() == [("PAYOUT", second[0], 6_958)]
    assert db.execute("SELECT account, side, amount_minor FROM ledger_entries"
                      " WHERE journal_id = %s ORDER BY 1", (f"P:{second[0]}",)).fetchall() == [
        (f"payable:{merchant}", "DEBIT", 6_958), (f"payout_due:{merchant}", "CREDIT", 6_958)]
    payable = db.execute("SELECT credit_balance_minor FROM account_balances"
                         " WHERE account = %s", (f"payable:{merchant}",)).fetchone()
    assert payable == (0,)  # everything batched, the last batch carried nothing


def netted_batch(merchant: str, window: int, carried_in: int,
                 items: Sequence[tuple[str, str, str, int, int]]) -> tuple[str, dict[str, Any]]:
    """A SettlementBatch with kinds, signed items and its carry (items: kind, id, pid, g, f)."""
    key, record = batch(merchant, window, [(pid, g, f) for _, _, pid, g, f in items])
    net = record["net_minor"]
    record.update(
        payment_count=sum(k == "PAYMENT" for k, *_ in items),
        refund_count=sum(k == "REFUND" for k, *_ in items),
        carried_in_minor=carried_in, payout_minor=max(net + carried_in, 0),
        carried_out_minor=min(net + carried_in, 0))
    for item, (kind, item_id, *_rest) in zip(record["items"], items, strict=True):
        item.update(kind=kind, item_id=item_id)
    return key, record


def test_reversals_post_their_mirror_once_and_a_wrong_mirror_is_dead_lettered(
    stack: Settings, refund_topics: tuple[Topics, str], registry: RegistryClient,
    db: psycopg.Connection,
) -> None:
    topics, refunds_topic = refund_topics
    run = uuid.uuid4().hex[:8]
    p1, p2, p3, p4 = (f"p-{run}-{n}" for n in range(1, 5))
    merchant = f"m-{run}"
    split = (60, 9_940)
    publish(stack, registry, topics.results, [
        *(result(p, "MATCHED", merchant=merchant, split=split) for p in (p1, p2, p3)),
        result(p2, "PAYMENT_REVERSED", merchant=merchant, split=split, conf="v1", minutes=5),
        result(p2, "PAYMENT_REVERSED", merchant=merchant, split=split, conf="v1", minutes=5),
        # a second reversal of a reversed payment: never posted
        result(p2, "PAYMENT_REVERSED", merchant=merchant, split=split, conf="v2", minutes=6),
        # a fee that is not the payment's: not the mirror
        result(p3, "PAYMENT_REVERSED", merchant=merchant, split=(61, 9_939), conf="v3"),
        # a payment with no PAYMENT journal
        result(p4, "PAYMENT_REVERSED", merchant=merchant, split=split, conf="v4"),
        result(p1, "REVERSAL_EXCEPTION", merchant=merchant, conf="v5"),
    ])
    publish(stack, registry, refunds_topic, [
        refund_result(p1, "r1", "MATCHED", merchant=merchant),
        refund_result(p1, "r2", "MATCHED", merchant=merchant),
        refund_result(p1, "r1", "REFUND_REVERSED", merchant=merchant, conf="rv1", minutes=9),
        refund_result(p1, "r1", "REFUND_REVERSED", merchant=merchant, conf="rv1", minutes=9),
        refund_result(p1, "r2", "REFUND_REVERSED", merchant=merchant, conf="rv2",
                      split=(19, 2_981)),  # not the REFUND journal's split
        refund_result(p1, "r3", "REVERSAL_EXCEPTION", merchant=merchant, conf="rv3"),
    ])
    writer = LedgerWriter(FEES, refund_topic=refunds_topic)
    group = f"t-ledger-rev-{run}"
    for _ in range(2):  # the later runs replay everything from the start: nothing changes
        stats = run_sink(stack, registry, writer, topics.results, topics.dlq, group)
        assert stats.records == 15
        db.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (group,))
    run_sink(stack, registry, writer, topics.results, topics.dlq, group)
    assert_offsets_at_end(stack, db, group, topics.results)
    assert_offsets_at_end(stack, db, group, refunds_topic)

    pids = [p1, p2, p3, p4]
    assert db.execute("SELECT payment_id, state, reversal_result_id FROM payments"
                      " WHERE payment_id = ANY(%s) ORDER BY 1", (pids,)).fetchall() == [
        (p1, "MATCHED", None), (p2, "REVERSED", f"{p2}:PAYMENT_REVERSED:v1"),
        (p3, "MATCHED", None)]
    assert db.execute("SELECT refund_id, state, reversal_result_id, fee_returned_minor,"
                      " net_minor FROM refunds WHERE payment_id = %s ORDER BY 1", (p1,)
                      ).fetchall() == [
        ("r1", "REVERSED", f"{p1}/r1:REFUND_REVERSED:rv1", 18, 2_982),
        ("r2", "MATCHED", None, 18, 2_982)]
    journals = db.execute("SELECT journal_id, kind, source_id, gross_minor, fee_minor, net_minor"
                          " FROM ledger_journals WHERE payment_id = ANY(%s)"
                          " AND kind LIKE '%%REVERSAL' ORDER BY 1", (pids,)).fetchall()
    assert journals == [(f"PR:{p2}", "PAYMENT_REVERSAL", p2, 10_000, 60, 9_940),
                        (f"RR:{p1}/r1", "REFUND_REVERSAL", f"{p1}/r1", 3_000, 18, 2_982)]
    # Each mirror and its original leave every account where it was.
    assert db.execute("SELECT account, SUM(CASE WHEN side = 'DEBIT' THEN amount_minor"
                      " ELSE -amount_minor END) FROM ledger_entries"
                      " WHERE journal_id = ANY(%s) GROUP BY 1 HAVING SUM(CASE WHEN side ="
                      " 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0",
                      ([f"J:{p2}", f"PR:{p2}", f"RF:{p1}/r1", f"RR:{p1}/r1"],)
                      ).fetchall() == []
    assert db.execute("SELECT account, side, amount_minor FROM ledger_entries"
                      " WHERE journal_id = %s ORDER BY 1", (f"PR:{p2}",)).fetchall() == [
        ("clearing:alipay", "CREDIT", 10_000), ("fee_revenue:alipay", "DEBIT", 60),
        (f"payable:{merchant}", "DEBIT", 9_940)]
    assert db.execute("SELECT outcome FROM reconciliation_exceptions WHERE payment_id = ANY(%s)",
                      (pids,)).fetchall() == [("REVERSAL_EXCEPTION",)]
    assert db.execute("SELECT refund_id, outcome FROM refund_exceptions"
                      " WHERE payment_id = %s", (p1,)).fetchall() == [("r3", "REVERSAL_EXCEPTION")]
    letters = dead_letters(stack, registry, topics.dlq)
    assert len(letters) == 12  # four per run, three runs
    assert {(d["reason"], d["source_topic"]) for d in letters} == {
        ("REVERSAL_MISMATCH", refunds_topic), ("REVERSAL_MISMATCH", topics.results),
        ("REVERSAL_STATE_CONFLICT", topics.results)}
    assert all("differ from the original" in d["error_message"] for d in letters
               if d["reason"] == "REVERSAL_MISMATCH")

    # The settlement sink nets the reversal items with their signs: all is paid out of payable.
    items = [("PAYMENT", p, p, 10_000, 60) for p in (p1, p2, p3)] + [
        ("PAYMENT_REVERSAL", p2, p2, -10_000, -60),
        ("REFUND", f"{p1}/r1", p1, -3_000, -18), ("REFUND", f"{p1}/r2", p1, -3_000, -18),
        ("REFUND_REVERSAL", f"{p1}/r1", p1, 3_000, 18)]
    netted = netted_batch(merchant, 0, 0, items)
    assert (netted[1]["payment_count"], netted[1]["refund_count"]) == (3, 2)
    only_reversals = netted_batch(f"{merchant}-x", 0, 0,
                                  [("PAYMENT_REVERSAL", p4, p4, -100, 0)])
    publish(stack, registry, topics.batches, [netted, only_reversals])
    run_sink(stack, registry, SettlementWriter(), topics.batches, topics.dlq, f"t-s-{run}")
    assert db.execute("SELECT kind, COUNT(*) FROM settlement_batch_items WHERE batch_id = ANY(%s)"
                      " GROUP BY 1 ORDER BY 1", ([netted[0], only_reversals[0]],)).fetchall() == [
        ("PAYMENT", 3), ("PAYMENT_REVERSAL", 2), ("REFUND", 2), ("REFUND_REVERSAL", 1)]
    assert db.execute("SELECT payout_minor, carried_out_minor FROM settlement_batches"
                      " WHERE batch_id = ANY(%s) ORDER BY merchant_id",
                      ([netted[0], only_reversals[0]],)).fetchall() == [
        (2 * 9_940 - 2_982, 0), (0, -100)]
    payable = db.execute("SELECT credit_balance_minor FROM account_balances"
                         " WHERE account = %s", (f"payable:{merchant}",)).fetchone()
    assert payable == (0,)
