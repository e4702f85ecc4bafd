"""`settle audit ingest`: prove from the topics that every input ended in exactly one place:
payment requests (validate stage) and refund requests (reconcile stage); and that every
channel dispute and every case action was answered (reconcile stage)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from infra.config import KafkaSettings
from infra.kafka import make_consumer

SOURCE_HEADER = "settle-source"  # written by stream_processors.ingest on every output


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    source: str | None
    timestamp_ms: int = 0  # the record's Kafka timestamp (CreateTime: when it was produced)


@dataclass(slots=True)
class IngestAudit:
    """The ledger of the ingest stage: in = routed + rejected + dead-lettered + deduplicated."""

    read: int = 0
    routed: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    deduplicated: int = 0
    unaccounted: list[str] = field(default_factory=list)
    in_several_places: list[str] = field(default_factory=list)
    bad_duplicates: list[str] = field(default_factory=list)
    replayed_outputs: int = 0
    routed_by_topic: Counter[str] = field(default_factory=Counter)

    @property
    def balanced(self) -> bool:
        return (
            not self.unaccounted
            and not self.in_several_places
            and not self.bad_duplicates
            and self.read == self.routed + self.rejected + self.dead_lettered + self.deduplicated
        )


def read_topic(
    consumer: Consumer, topic: str, ends: dict[int, int] | None = None, timeout_s: float = 60.0
) -> Iterator[RawRecord]:
    """Every record of ``topic`` from the beginning up to ``ends`` (default: current ends)."""
    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        return
    if ends is None:
        ends = end_offsets(consumer, topic)
    targets = {p: end for p, end in ends.items() if end > 0}
    if not targets:
        return
    consumer.assign([TopicPartition(topic, p, 0) for p in targets])
    deadline = time.monotonic() + timeout_s
    while targets and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=5000, timeout=0.5)
        for msg in batch:
            if msg.error() is not None:
                continue
            part, off = msg.partition(), msg.offset()
            if part is None or off is None:
                continue
            end = targets.get(part)
            if end is None or off >= end:
                continue
            source = None
            for name, val in list(msg.headers() or []):
                if name == SOURCE_HEADER and isinstance(val, bytes):
                    source = val.decode("utf-8", "replace")
            yield RawRecord(topic, part, off, msg.key(), msg.value(), source,
                            msg.timestamp()[1])
            if off + 1 >= end:
                del targets[part]
        if batch:
            deadline = time.monotonic() + timeout_s
    consumer.unassign()


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None:
        return {}
    out = {}
    for p in meta.partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
        out[p] = high
    return out


def audit_ingest(
    kafka: KafkaSettings,
    requested: str,
    routed_topics: Iterable[str],
    rejected: str,
    dlq: str,
    decode_request: object = None,
    wait_s: float = 0.0,
) -> IngestAudit:
    """Join every input (by coordinates) with the outputs that name it in their header.

    An input with no output is a deduplicated re-send only if an earlier input with the same
    payment_id was routed and carried an identical body; otherwise it is unaccounted for.
    With ``wait_s`` the audit re-reads the outputs until everything is accounted for or the
    time is up (the pipeline may still be draining).
    """
    consumer = make_consumer(kafka, group_id=f"settle-audit-{uuid.uuid4()}")
    try:
        inputs = list(read_topic(consumer, requested))
        deadline = time.monotonic() + wait_s
        while True:
            result = _join(consumer, inputs, requested, routed_topics, rejected, dlq)
            if result.balanced or time.monotonic() >= deadline:
                return result
            time.sleep(2.0)
    finally:
        consumer.close()


def _join(
    consumer: Consumer,
    inputs: list[RawRecord],
    requested: str,
    routed_topics: Iterable[str],
    rejected: str,
    dlq: str,
) -> IngestAudit:
    audit = IngestAudit(read=len(inputs))
    placed: dict[str, set[str]] = {}
    for bucket, topics in (("routed", list(routed_topics)), ("rejected", [rejected]),
                           ("dlq", [dlq])):
        for topic in topics:
            seen_here: set[str] = set()
            for rec in read_topic(consumer, topic):
                if rec.source is None or not rec.source.startswith(requested + "/"):
                    continue
                if rec.source in seen_here:
                    # At-least-once: a replay after a crash may write the same output twice;
                    # it stays one placement (downstream dedupes by payment_id).
                    audit.replayed_outputs += 1
                    continue
                seen_here.add(rec.source)
                placed.setdefault(rec.source, set()).add(bucket)
                if bucket == "routed":
                    audit.routed_by_topic[topic] += 1
    # Every routed body first: with several partitioners one payment_id's copies sit on
    # several partitions, read in no common order, and the routed one may come last.
    routed_bodies: dict[bytes, set[bytes | None]] = {}
    for rec in inputs:
        if rec.key is not None and placed.get(
                f"{rec.topic}/{rec.partition}/{rec.offset}") == {"routed"}:
            routed_bodies.setdefault(rec.key, set()).add(rec.value)
    for rec in inputs:
        ref = f"{rec.topic}/{rec.partition}/{rec.offset}"
        buckets = placed.get(ref, set())
        if len(buckets) > 1:
            audit.in_several_places.append(ref)
            continue
        if buckets:
            bucket = next(iter(buckets))
            if bucket == "routed":
                audit.routed += 1
            elif bucket == "rejected":
                audit.rejected += 1
            else:
                audit.dead_lettered += 1
            continue
        # No output: only acceptable as an identical re-send of an earlier routed payment.
        if rec.key is not None and rec.key in routed_bodies:
            if rec.value in routed_bodies[rec.key]:
                audit.deduplicated += 1
            else:
                audit.bad_duplicates.append(ref)
        else:
            audit.unaccounted.append(ref)
    return audit


# -- refund requests ----------------------------------------------------------------------------


@dataclass(slots=True)
class RefundAudit:
    """The ledger of refund requests (reconcile stage):
    in = routed + rejected + dead-lettered + duplicates.

    A duplicate is an input with no output that repeats, body for body, an input that was
    routed (the stage drops an identical re-send of an accepted refund without output). An
    input with no output that repeats none is unaccounted for.
    """

    read: int = 0
    routed: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    unaccounted: list[str] = field(default_factory=list)
    in_several_places: list[str] = field(default_factory=list)
    replayed_outputs: int = 0

    @property
    def balanced(self) -> bool:
        return (
            not self.unaccounted
            and not self.in_several_places
            and self.read == self.routed + self.rejected + self.dead_lettered + self.duplicates
        )


Identity = Callable[[RawRecord], Hashable]


def raw_body(rec: RawRecord) -> Hashable:
    """Two inputs are the same request when their bytes are (the default identity)."""
    return rec.value


def refund_body_identity(decode: Callable[[bytes | None], dict[str, Any]]) -> Identity:
    """Two inputs are the same request when the stage would say so: same payment, refund id
    and digest of the signed fields (bytes may differ, e.g. an unsigned `reason`). An input
    that does not decode is only itself."""
    from settlement.refunds import body_digest
    from stream_processors.refund_decider import request_info

    def identity(rec: RawRecord) -> Hashable:
        try:
            request = request_info(decode(rec.value))
            return (request.payment_id, request.refund_id, body_digest(request))
        except Exception:  # undecodable: compared by its bytes alone
            return ("raw", rec.value)

    return identity


def audit_refunds(
    kafka: KafkaSettings,
    requested: str,
    routed: str,
    rejected: str,
    dlq: str,
    identity: Identity = raw_body,
    wait_s: float = 0.0,
) -> RefundAudit:
    """Join every refund request (by coordinates) with the reconcile stage's outputs that name
    it in their `settle-source` header: refunds.routed, refunds.rejected, payments.dlq.

    A request the stage moved to its `<app id>-placed` topic (written to another partition than
    its payment_id's) is decided from there, and its outputs name its original coordinates on
    `requested`: the placed topic is not read. With ``wait_s`` the audit re-reads the outputs
    until everything is accounted for or the time is up.
    """
    consumer = make_consumer(kafka, group_id=f"settle-audit-{uuid.uuid4()}")
    try:
        inputs = list(read_topic(consumer, requested))
        deadline = time.monotonic() + wait_s
        while True:
            placed, replayed = _placements(
                consumer, requested, (("routed", routed), ("rejected", rejected), ("dlq", dlq)))
            result = join_refunds(inputs, placed, identity)
            result.replayed_outputs = replayed
            if result.balanced or time.monotonic() >= deadline:
                return result
            time.sleep(2.0)
    finally:
        consumer.close()


def _placements(consumer: Consumer, requested: str, buckets: Iterable[tuple[str, str]],
                ) -> tuple[dict[str, set[str]], int]:
    """Input ref -> the buckets whose topics hold an output naming it; and how many outputs
    repeated one already seen on their topic (at-least-once replays)."""
    placed: dict[str, set[str]] = {}
    replayed = 0
    for bucket, topic in buckets:
        seen_here: set[str] = set()
        for rec in read_topic(consumer, topic):
            if rec.source is None or not rec.source.startswith(requested + "/"):
                continue
            if rec.source in seen_here:
                replayed += 1
                continue
            seen_here.add(rec.source)
            placed.setdefault(rec.source, set()).add(bucket)
    return placed, replayed


def join_refunds(inputs: list[RawRecord], placed: dict[str, set[str]],
                 identity: Identity = raw_body) -> RefundAudit:
    """The refund ledger from the inputs and where their outputs were found."""
    audit = RefundAudit(read=len(inputs))
    routed_ids = {identity(rec) for rec in inputs
                  if placed.get(f"{rec.topic}/{rec.partition}/{rec.offset}") == {"routed"}}
    for rec in inputs:
        ref = f"{rec.topic}/{rec.partition}/{rec.offset}"
        buckets = placed.get(ref, set())
        if len(buckets) > 1:
            audit.in_several_places.append(ref)
        elif buckets == {"routed"}:
            audit.routed += 1
        elif buckets == {"rejected"}:
            audit.rejected += 1
        elif buckets == {"dlq"}:
            audit.dead_lettered += 1
        elif identity(rec) in routed_ids:
            audit.duplicates += 1  # an identical re-send of a routed refund: no output
        else:
            audit.unaccounted.append(ref)
    return audit


# -- disputes and case actions ------------------------------------------------------------------


@dataclass(slots=True)
class AnswerAudit:
    """Inputs that must each be answered by at least one output naming them by id:
    read = answered + dead-lettered, nothing unanswered.

    A channel dispute is answered by the DisputeResults of its event (result_id ends with
    `:<event_id>`; a redelivered event is answered by the first delivery's results), a case
    action by the CaseEvents carrying its action id (an action repeated is answered by the
    first one's event). An input that does not decode is accounted for only by a dead letter
    naming its coordinates.
    """

    read: int = 0
    answered: int = 0
    dead_lettered: int = 0
    answers: int = 0  # outputs read (at-least-once replays of one id counted once)
    unanswered: list[str] = field(default_factory=list)
    orphan_answers: list[str] = field(default_factory=list)  # outputs no input asked for

    @property
    def balanced(self) -> bool:
        return not self.unanswered and self.read == self.answered + self.dead_lettered


AnswerKey = tuple[str, ...]


def dispute_key(record: dict[str, Any]) -> AnswerKey:
    """A ChannelDispute's identity: its payment, dispute and event."""
    return (record["payment_id"], record["dispute_id"], record["event_id"])


def dispute_result_key(result: dict[str, Any]) -> AnswerKey | None:
    """The event a DisputeResult answers, from its result_id
    `<payment_id>/<dispute_id>:<event>:<event_id>` (None when it has another shape)."""
    head = f"{result['payment_id']}/{result['dispute_id']}:{result['event']}:"
    rid = result["result_id"]
    if not rid.startswith(head) or len(rid) == len(head):
        return None
    return (result["payment_id"], result["dispute_id"], rid[len(head):])


def case_action_key(record: dict[str, Any]) -> AnswerKey:
    """A CaseAction's identity: its case and action id."""
    return (record["case_id"], record["action_id"])


def case_event_key(event: dict[str, Any]) -> AnswerKey | None:
    """The action a CaseEvent answers (None: an event no action caused, e.g. OPENED)."""
    action_id = event.get("action_id")
    return None if action_id is None else (event["case_id"], action_id)


def join_answers(inputs: list[tuple[str, AnswerKey | None]], answers: list[AnswerKey],
                 dead_lettered: set[str]) -> AnswerAudit:
    """The ledger of answered inputs: ``inputs`` are (coordinates, identity or None when the
    record did not decode), ``answers`` the identities the outputs name, ``dead_lettered`` the
    coordinates dead letters name."""
    audit = AnswerAudit(read=len(inputs), answers=len(answers))
    named = set(answers)
    asked = {k for _, k in inputs if k is not None}
    for ref, ident in inputs:
        if ident is not None and ident in named:
            audit.answered += 1
        elif ref in dead_lettered:
            audit.dead_lettered += 1
        else:
            audit.unanswered.append(ref)
    audit.orphan_answers = sorted("/".join(k) for k in named - asked)
    return audit


Decode = Callable[[bytes | None], dict[str, Any]]


def audit_answers(kafka: KafkaSettings, inputs_topic: str, outputs_topic: str, dlq: str,
                  decode: Decode, input_key: Callable[[dict[str, Any]], AnswerKey],
                  output_key: Callable[[dict[str, Any]], AnswerKey | None],
                  output_id: str, wait_s: float = 0.0) -> AnswerAudit:
    """Join every record of ``inputs_topic`` with the outputs on ``outputs_topic`` (deduped by
    their ``output_id`` field) and the dead letters on ``dlq`` that name it. With ``wait_s``
    the audit re-reads the outputs until every input is answered or the time is up."""
    consumer = make_consumer(kafka, group_id=f"settle-audit-{uuid.uuid4()}")
    try:
        inputs: list[tuple[str, AnswerKey | None]] = []
        for rec in read_topic(consumer, inputs_topic):
            ref = f"{rec.topic}/{rec.partition}/{rec.offset}"
            try:
                inputs.append((ref, input_key(decode(rec.value))))
            except Exception:  # undecodable or incomplete: only a dead letter explains it
                inputs.append((ref, None))
        deadline = time.monotonic() + wait_s
        while True:
            seen: set[str] = set()
            answers: list[AnswerKey] = []
            for rec in read_topic(consumer, outputs_topic):
                out = decode(rec.value)
                if out[output_id] in seen:
                    continue  # an at-least-once replay of the same output
                seen.add(out[output_id])
                if (ident := output_key(out)) is not None:
                    answers.append(ident)
            dead = {rec.source for rec in read_topic(consumer, dlq)
                    if rec.source is not None and rec.source.startswith(inputs_topic + "/")}
            result = join_answers(inputs, answers, dead)
            if result.balanced or time.monotonic() >= deadline:
                return result
            time.sleep(2.0)
    finally:
        consumer.close()


def audit_disputes(kafka: KafkaSettings, disputes: str, results: str, dlq: str,
                   decode: Decode, wait_s: float = 0.0) -> AnswerAudit:
    """channel.disputes: every record answered by >= 1 DisputeResult of its event."""
    return audit_answers(kafka, disputes, results, dlq, decode, dispute_key,
                         dispute_result_key, "result_id", wait_s)


def audit_case_actions(kafka: KafkaSettings, actions: str, events: str, dlq: str,
                       decode: Decode, wait_s: float = 0.0) -> AnswerAudit:
    """cases.actions: every record answered by >= 1 CaseEvent carrying its action id."""
    return audit_answers(kafka, actions, events, dlq, decode, case_action_key,
                         case_event_key, "event_id", wait_s)
