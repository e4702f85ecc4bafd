"""One dead-letter shape: the same bad input gives the same DeadLetter from every stage and sink.

Each stage (validate, reconcile, settle) and each sink (ledger, settlement) is driven without
a broker or a database: the stages' processors as the workers call them, the sinks' decode and
row-building path with the dead-letter publisher on a capturing producer. Every letter is read
back through the DeadLetter schema and compared: the same fields, `error_type` the error's
class name, `reason` its stable code, the source coordinates and bytes as they came.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.codec import AvroDeserializer, AvroSerializer, to_epoch_ms
from schemas.contract import schema_for
from schemas.dead_letters import Failure, code_of_name, dead_letter, reason_code
from schemas.errors import BadMagicByte, UnknownSchemaId
from schemas.registry import InMemoryRegistry
from schemas.topics import TopicNames
from settlement.fees import FeeSchedule
from settlement.model import Merchant
from settlement.reconciliation import ReconPolicy
from settlement.routing import DEFAULT_RULES, RoutingTable
from settlement.validation import ValidationPolicy
from settlement.windows import WindowPolicy
from sinks.base import DeadRecord, SourceRecord, dead_from_rejections
from sinks.dead_letters import DeadLetterPublisher, dead_letter_record
from sinks.ledger_sink import LedgerWriter
from sinks.read_ahead import prepare
from sinks.settlement_sink import SettlementWriter
from stream_processors.errors import NotCopartitioned
from stream_processors.ingest import IngestProcessor, SeenIndex
from stream_processors.reconcile import ReconcileProcessor
from stream_processors.settle_stage import IGNORED, SettleProcessor

NOW_MS = 1_764_000_000_000
NOW = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=NOW_MS)
TOPICS = TopicNames()
FEES = FeeSchedule.from_spec("alipay=60,wechat_pay=60,unionpay=45,card=180")
FIELDS = {f["name"] for f in schema_for("DeadLetter")["fields"]}
CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
CODE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")

# The same kinds of bad bytes, for every consumer of Avro records.
NOT_AVRO = b"\x01definitely not avro"
UNKNOWN_ID = b"\x00\x00\x0f\x42\x3f\x02"


class CapturingProducer:
    """Stands in for the sinks' confluent-kafka producer: keeps what is produced, acks all."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self._reports: list[Callable[[Any, Any], None]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"",
                on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        self.sent.append((topic, key, value))
        if on_delivery is not None:
            self._reports.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float | None = None) -> int:
        for report in self._reports:
            report(None, None)
        self._reports.clear()
        return 0


class FakeMessage:
    """A consumed record as confluent-kafka hands it to a sink."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None) -> None:
        self._coords = (topic, partition, offset)
        self._key, self._value = key, value

    def topic(self) -> str:
        return self._coords[0]

    def partition(self) -> int:
        return self._coords[1]

    def offset(self) -> int:
        return self._coords[2]

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


@dataclass
class Input:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int = 3
    offset: int = 41


class Pipeline:
    """Every stage and sink on one in-memory registry; each returns the letters it wrote."""

    def __init__(self) -> None:
        self.registry = InMemoryRegistry()
        self.letters = AvroDeserializer(self.registry, reader_schema="DeadLetter")
        merchants = {"m-1": Merchant("m-1", "Shop", "ACTIVE", "CNY", NOW_MS)}
        self.validate = IngestProcessor(
            self.registry, merchants.get, SeenIndex({}, 60_000), RoutingTable(DEFAULT_RULES),
            ValidationPolicy(), TOPICS, clock=lambda: NOW_MS)
        self.reconcile = ReconcileProcessor(
            self.registry, {}, ReconPolicy({}, 30_000, 20_000, 60_000), FEES, TOPICS,
            "t-reconcile-ticks", clock=lambda: NOW_MS)
        self.settle = SettleProcessor(
            self.registry, {}, WindowPolicy(10, 5, 0), FEES, TOPICS, "t-settle-items",
            "t-settle-ticks", clock=lambda: NOW_MS)

    def encode(self, topic: str, record_name: str, record: dict[str, Any]) -> bytes:
        return AvroSerializer(self.registry, topic, record_name).encode(record)

    def _stage(self, outputs: list[Any]) -> list[dict[str, Any]]:
        return [self.letters.decode(o.value) for o in outputs if o.topic == TOPICS.dlq]

    def via_validate(self, i: Input) -> list[dict[str, Any]]:
        return self._stage(self.validate.process(i.key, i.value, i.topic, i.partition,
                                                 i.offset).outputs)

    def via_reconcile(self, i: Input) -> list[dict[str, Any]]:
        return self._stage(self.reconcile.process(i.key, i.value, i.topic, i.partition,
                                                  i.offset).outputs)

    def via_settle(self, i: Input) -> list[dict[str, Any]]:
        if i.topic == self.settle.items_topic:
            d = self.settle.process(i.key, i.value, i.topic, i.partition, i.offset)
        else:
            d = self.settle.on_result(i.key, i.value, i.topic, i.partition, i.offset)
        return self._stage(d.outputs)

    def _sink(self, writer: LedgerWriter | SettlementWriter, i: Input) -> list[dict[str, Any]]:
        """The sink's path up to the database: decode, build rows, dead-letter the refused."""
        decoder = AvroDeserializer(self.registry, reader_schema=writer.record_name)
        ready = prepare(decoder, writer, [FakeMessage(i.topic, i.partition, i.offset, i.key,
                                                      i.value)], build=True)
        dead = list(ready.dead)
        if ready.decoded:
            rows = writer.build(ready.decoded)
            dead.extend(dead_from_rejections(ready.decoded, rows.rejected))
        producer = CapturingProducer()
        publisher = DeadLetterPublisher(producer, self.registry, TOPICS.dlq,  # type: ignore[arg-type]
                                        writer.stage)
        publisher.publish(dead)
        assert all(topic == TOPICS.dlq and key == i.key for topic, key, _v in producer.sent)
        return [self.letters.decode(value) for _t, _k, value in producer.sent]

    def via_ledger_sink(self, i: Input) -> list[dict[str, Any]]:
        return self._sink(LedgerWriter(FEES), i)

    def via_settlement_sink(self, i: Input) -> list[dict[str, Any]]:
        return self._sink(SettlementWriter(), i)


# (consumer, stage name it writes, the topic it reads Avro records from)
CONSUMERS = [
    ("via_validate", "validate", TOPICS.requested),
    ("via_reconcile", "reconcile", TOPICS.confirmations),
    ("via_reconcile", "reconcile", TOPICS.routed("card")),
    ("via_settle", "settle", TOPICS.results),
    ("via_ledger_sink", "ledger-sink", TOPICS.results),
    ("via_settlement_sink", "settlement-sink", TOPICS.batches),
]


def the_letter(letters: list[dict[str, Any]], i: Input, stage: str) -> dict[str, Any]:
    """The one letter an input produced, checked for the shape every writer must give it."""
    assert len(letters) == 1, letters
    [letter] = letters
    assert set(letter) == FIELDS
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        i.topic, i.partition, i.offset)
    assert (letter["original_key"], letter["original_value"]) == (i.key, i.value)
    assert letter["stage"] == stage
    assert CLASS_NAME.fullmatch(letter["error_type"]), letter["error_type"]
    assert CODE.fullmatch(letter["reason"]), letter["reason"]
    assert letter["error_message"] and len(letter["error_message"]) <= 2000
    assert isinstance(letter["failed_at"], datetime) and letter["failed_at"].tzinfo is not None
    if stage in ("validate", "reconcile", "settle"):
        assert to_epoch_ms(letter["failed_at"]) == NOW_MS  # the stage's clock
    return letter


@pytest.mark.parametrize(("value", "error_type", "reason"), [
    (NOT_AVRO, BadMagicByte.__name__, BadMagicByte.reason),
    (UNKNOWN_ID, UnknownSchemaId.__name__, UnknownSchemaId.reason),
])
@pytest.mark.parametrize(("consumer", "stage", "topic"), CONSUMERS)
def test_undecodable_bytes_give_the_same_letter_everywhere(
    consumer: str, stage: str, topic: str, value: bytes, error_type: str, reason: str
) -> None:
    p = Pipeline()
    i = Input(b"p-1", value, topic)
    letter = the_letter(getattr(p, consumer)(i), i, stage)
    assert (letter["error_type"], letter["reason"]) == (error_type, reason)


def merchant_record(p: Pipeline) -> bytes:
    """Valid Avro, registered, of a type none of these consumers reads."""
    return p.encode(TOPICS.merchants, "Merchant", {
        "merchant_id": "m-1", "name": "Shop", "status": "ACTIVE", "settlement_currency": "CNY",
        "updated_at": NOW_MS})


@pytest.mark.parametrize(("consumer", "stage", "topic", "error_type", "reason"), [
    # A reader schema that the writer's cannot be resolved to: the decoder says so.
    ("via_validate", "validate", TOPICS.requested, "SchemaMismatch", "SCHEMA_MISMATCH"),
    ("via_ledger_sink", "ledger-sink", TOPICS.results, "SchemaMismatch", "SCHEMA_MISMATCH"),
    ("via_settlement_sink", "settlement-sink", TOPICS.batches, "SchemaMismatch",
     "SCHEMA_MISMATCH"),
    # Reconcile reads two record types with the writer's schema: a field is missing.
    ("via_reconcile", "reconcile", TOPICS.confirmations, "KeyError", "KEY_ERROR"),
    ("via_reconcile", "reconcile", TOPICS.routed("card"), "KeyError", "KEY_ERROR"),
])
def test_a_record_of_the_wrong_type_gives_the_same_shape(
    consumer: str, stage: str, topic: str, error_type: str, reason: str
) -> None:
    p = Pipeline()
    i = Input(b"m-1", merchant_record(p), topic)
    letter = the_letter(getattr(p, consumer)(i), i, stage)
    assert (letter["error_type"], letter["reason"]) == (error_type, reason)


def test_settle_ignores_a_record_that_is_not_a_matched_result() -> None:
    """Settle reads only terminal MATCHED results; any other record is nothing to settle."""
    p = Pipeline()
    d = p.settle.on_result(b"m-1", merchant_record(p), TOPICS.results, 0, 1)
    assert d.outcome == IGNORED and d.outputs == []


def result(**over: Any) -> dict[str, Any]:
    record = {
        "result_id": "p-1:MATCHED:c-1", "payment_id": "p-1", "merchant_id": "m-1",
        "channel": "ALIPAY", "outcome": "MATCHED", "terminal": True, "late": False,
        "expected_amount_minor": 1000, "expected_currency": "CNY",
        "confirmed_amount_minor": 1000, "confirmed_currency": "CNY",
        "confirmation_id": "c-1", "channel_txn_id": "t-1", "created_at": NOW - timedelta(1),
        "decided_at": NOW, "detail": "", "fee_minor": 6, "net_minor": 994,
    }
    record.update(over)
    return record


def routed(channel: str = "ALIPAY", **over: Any) -> dict[str, Any]:
    record = {
        "payment_id": "p-1", "merchant_id": "m-1", "order_id": "o-1", "payer_id": "u-1",
        "amount_minor": 1000, "currency": "CNY", "method": "ALIPAY", "interface": "APP",
        "region": "CN", "created_at": NOW_MS - 500, "metadata": {}, "channel": channel,
        "rule_id": "r-1", "routed_at": NOW_MS,
    }
    record.update(over)
    return record


def batch(gross_minor: int) -> dict[str, Any]:
    start = NOW - timedelta(days=1)
    return {
        "batch_id": "B:m-1:CNY:1", "merchant_id": "m-1", "currency": "CNY",
        "window_start": start, "window_end": NOW, "payment_count": 1,
        "gross_minor": gross_minor, "fee_minor": 6, "net_minor": 994, "closed_at": NOW,
        "items": [{"payment_id": "p-1", "gross_minor": 1000, "fee_minor": 6, "net_minor": 994,
                   "matched_at": start}],
    }


# A record of the right type that the stage or sink refuses, and the error it names.
INVALID: list[tuple[str, str, Callable[[Pipeline], Input], str, str]] = [
    ("via_reconcile", "reconcile", lambda p: Input(b"p-1", p.encode(
        TOPICS.routed("card"), "RoutedPayment", routed("ALIPAY")), TOPICS.routed("card")),
     "ChannelTopicMismatch", "CHANNEL_TOPIC_MISMATCH"),
    ("via_reconcile", "reconcile", lambda p: Input(b"another-key", p.encode(
        TOPICS.routed("alipay"), "RoutedPayment", routed()), TOPICS.routed("alipay")),
     NotCopartitioned.__name__, NotCopartitioned.reason),
    ("via_settle", "settle", lambda p: Input(b"p-1", p.encode(
        TOPICS.results, "ReconciliationResult", result(merchant_id=None)), TOPICS.results),
     "BadItem", "BAD_ITEM"),
    ("via_settle", "settle", lambda p: Input(b"p-1", p.encode(
        TOPICS.results, "ReconciliationResult", result(fee_minor=7)), TOPICS.results),
     "BatchError", "BATCH_ERROR"),
    ("via_settle", "settle", lambda p: Input(b"m-1|CNY", NOT_AVRO, p.settle.items_topic),
     "JSONDecodeError", "JSON_DECODE_ERROR"),
    ("via_ledger_sink", "ledger-sink", lambda p: Input(b"p-1", p.encode(
        TOPICS.results, "ReconciliationResult", result(confirmed_amount_minor=1)),
        TOPICS.results), "InvalidRecord", "INVALID_RECORD"),
    ("via_settlement_sink", "settlement-sink", lambda p: Input(b"B:m-1:CNY:1", p.encode(
        TOPICS.batches, "SettlementBatch", batch(gross_minor=999)), TOPICS.batches),
     "BatchInvariantError", "BATCH_INVARIANT_ERROR"),
]


@pytest.mark.parametrize(("consumer", "stage", "make", "error_type", "reason"), INVALID)
def test_a_record_invalid_for_the_stage_gives_the_same_shape(
    consumer: str, stage: str, make: Callable[[Pipeline], Input], error_type: str, reason: str
) -> None:
    p = Pipeline()
    i = make(p)
    letter = the_letter(getattr(p, consumer)(i), i, stage)
    assert (letter["error_type"], letter["reason"]) == (error_type, reason)


def test_reason_is_the_errors_own_code_else_its_class_name_as_a_code() -> None:
    class TerminalStateConflict(Exception):
        pass

    class HTTPError(Exception):
        pass

    assert reason_code(BadMagicByte("x")) == "BAD_MAGIC_BYTE"
    assert reason_code(NotCopartitioned) == "NOT_COPARTITIONED"
    assert reason_code(TerminalStateConflict()) == "TERMINAL_STATE_CONFLICT"
    assert reason_code(HTTPError()) == "HTTP_ERROR"
    assert code_of_name("DivisionByZero") == "DIVISION_BY_ZERO"
    # Free text under the name `reason` is not a code.
    bad_utf8 = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert reason_code(bad_utf8) == "UNICODE_DECODE_ERROR"


def test_an_exception_and_its_failure_give_the_same_letter() -> None:
    """A sink that keeps only the error's name and text writes what a stage writes."""
    exc = BadMagicByte("first byte 0x01 is not the magic byte 0")
    kwargs: dict[str, Any] = dict(key=b"k", value=b"\x01", topic="t", partition=1, offset=2,
                                  stage="s", failed_at_ms=NOW_MS)
    from_exception = dead_letter(error=exc, **kwargs)
    assert from_exception == dead_letter(error=Failure.of(exc), **kwargs)
    assert from_exception == dead_letter(error=Failure("BadMagicByte", str(exc)), **kwargs) == {
        **from_exception, "reason": "BAD_MAGIC_BYTE"}
    dead = DeadRecord.of(SourceRecord("t", 1, 2, b"k", b"\x01"), exc)
    assert dead_letter_record(dead, "s", NOW_MS) == from_exception
