"""Validate+route, one record at a time: decode, decide with the core, say where it goes."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import AvroDeserializer, AvroSerializer, RegistryPrefetch
from schemas.contract import schema_for
from schemas.errors import DecodeError, RegistryUnavailable
from settlement import idempotency, validation
from settlement.model import Merchant, PaymentRequest, RecordError
from settlement.routing import RoutingTable
from settlement.signing import Keyring
from settlement.validation import Rejection, ValidationPolicy
from stream_processors.dead_letters import DeadLetters, error_label
from stream_processors.outputs import SOURCE_HEADER, Output, now_ms
from stream_processors.placement import Origin, Placement, PlacementError
from stream_processors.transient import is_transient

log = logging.getLogger(__name__)

STAGE: Final = "validate"

ROUTED: Final = "routed"
REJECTED: Final = "rejected"
DEAD_LETTERED: Final = "dead_lettered"
DEDUPLICATED: Final = "deduplicated"
# A third party's record on another partition than its payment_id's: moved there first
# (stream_processors.placement); its outcome is counted when it is read back from there.
MOVED: Final = "moved"
OUTCOMES: Final = (ROUTED, REJECTED, DEAD_LETTERED, DEDUPLICATED, MOVED)

@dataclass(slots=True)
class Decision:
    """What became of one input record."""

    outcome: str
    outputs: list[Output] = field(default_factory=list)
    channel: str | None = None
    rule_id: str | None = None
    reasons: tuple[str, ...] = ()
    error_type: str | None = None  # a dead letter's metrics label (dead_letters.error_label)


class SeenIndex:
    """payment_id -> [fingerprint, first_seen_ms, partition] with bounded retention.

    The mapping is a faust table in the worker (changelogged, co-partitioned with the input),
    a dict in tests. Expiry walks one in-memory queue per partition in arrival order, so it
    costs O(1) per record instead of a scan. It only ever deletes keys of the partition whose
    event is being processed, because faust writes a table's tombstone to the changelog
    partition of the current event. The queues are rebuilt from the mapping after a restart.
    """

    def __init__(self, store: MutableMapping[str, Any], retention_ms: int) -> None:
        self._store = store
        self.retention_ms = retention_ms
        self._queues: dict[int, deque[tuple[int, str]]] = {}

    def get(self, payment_id: str) -> idempotency.SeenEntry | None:
        raw = self._store.get(payment_id)
        if raw is None:
            return None
        return idempotency.SeenEntry(fingerprint=raw[0], first_seen_ms=raw[1])

    def remember(self, payment_id: str, fingerprint: str, at_ms: int, partition: int,
                 offset: int = -1, source_partition: int | None = None) -> None:
        """`partition` holds the entry (expiry walks it); (`source_partition` or `partition`,
        `offset`) are the accepted input's original coordinates (a moved record's differ)."""
        # Re-assign (never mutate in place) so the faust changelog sees the write.
        entry = [fingerprint, at_ms, partition, offset]
        if source_partition is not None and source_partition != partition:
            entry.append(source_partition)
        self._store[payment_id] = entry
        self._queue(partition).append((at_ms, payment_id))

    def accepted_at(self, payment_id: str) -> tuple[int, int] | None:
        """(partition, offset) where the input accepted under this payment_id was written."""
        raw = self._store.get(payment_id)
        if raw is None or len(raw) < 4 or raw[3] < 0:
            return None  # entries written before offsets were kept
        return (raw[4] if len(raw) > 4 else raw[2]), raw[3]

    def _queue(self, partition: int) -> deque[tuple[int, str]]:
        queue = self._queues.get(partition)
        if queue is None:
            entries = sorted(
                (v[1], k) for k, v in list(self._store.items()) if v[2] == partition
            )
            queue = self._queues[partition] = deque(entries)
        return queue

    def expire(self, now_ms_: int, partition: int) -> int:
        """Forget this partition's entries older than the retention; returns how many."""
        queue = self._queue(partition)
        horizon = now_ms_ - self.retention_ms
        dropped = 0
        while queue and queue[0][0] < horizon:
            _at, pid = queue.popleft()
            raw = self._store.get(pid)
            if raw is not None and raw[1] < horizon:
                del self._store[pid]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._store)


class IngestProcessor:
    """The validate+route stage without faust: testable with dicts, used by the agent.

    Failure policy per record: undecodable -> dead letter (original bytes, error, source
    coordinates); decodable but invalid -> rejected with every failing reason; identical
    re-send of an accepted payment -> dropped and counted; same payment_id with a different
    body -> rejected DUPLICATE_CONFLICT; any unexpected error -> dead letter with the error,
    so no exception ever escapes to faust (which would skip the event silently).
    A RegistryUnavailable is the exception: it is raised so the caller retries the record
    rather than dead-lettering valid traffic during a registry outage.

    With a `keyring`, every request must carry a valid merchant signature (SIGNATURE_* reason
    codes otherwise); None turns the check off. `keyring` may be replaced while running (the
    worker reloads the file after a rotation).
    """

    def __init__(
        self,
        registry: Any,
        merchants: Callable[[str], Merchant | None],
        seen: SeenIndex,
        routing: RoutingTable,
        policy: ValidationPolicy,
        topics: Any,
        clock: Callable[[], int] = now_ms,
        disabled_channels: frozenset[str] = frozenset(),
        keyring: Keyring | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.disabled_channels = disabled_channels
        self._placement = placement
        self.keyring = keyring
        self._decoder = AvroDeserializer(registry, reader_schema=schema_for("PaymentRequested"))
        self._merchants = merchants
        self._seen = seen
        self._routing = routing
        self._policy = policy
        self._clock = clock
        self._topics = topics
        self._routed_ser = {
            ch: AvroSerializer(registry, topics.routed(ch), "RoutedPayment")
            for ch in topics.channels
        }
        # Per channel, once: (topic, Avro enum symbol, serializer) of its routed records.
        self._routed_to = {
            ch: (topics.routed(ch), ch.upper(), ser) for ch, ser in self._routed_ser.items()
        }
        self._rejected_ser = AvroSerializer(registry, topics.rejected, "PaymentRejected")
        self._dlq = DeadLetters(registry, topics.dlq, STAGE)
        self.prefetch = RegistryPrefetch(
            [self._decoder], [*self._routed_ser.values(), self._rejected_ser,
                              self._dlq.serializer])

    def process(
        self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
        headers: Any = None,
    ) -> Decision:
        """One record of payments.requested, or of the placement topic (`headers` then name
        the original coordinates, which every output and dead letter carries)."""
        src = Origin(topic, partition, offset)
        if self._placement is not None and topic == self._placement.topic:
            try:
                src = self._placement.origin_of(headers)
            except PlacementError as exc:
                return self._dead_letter(key, value, src, exc)
        ref = src.ref.encode()
        try:
            return self._process(key, value, src, partition, ref, moved=src.topic != topic)
        except RegistryUnavailable:
            raise
        except Exception as exc:  # per-event catch: the design's rule for faust agents
            if is_transient(exc):
                raise  # the agent retries the event (see stream_processors.transient)
            log.exception("validate: unexpected error at %s", ref.decode())
            return self._dead_letter(key, value, src, exc)

    def _process(
        self, key: bytes | None, value: bytes | None, src: Origin, partition: int, ref: bytes,
        moved: bool,
    ) -> Decision:
        try:
            # from_record reads the Avro name created_at (the model says created_at_ms).
            request = PaymentRequest.from_record(self._decoder.decode(value))
        except (DecodeError, RecordError) as exc:
            return self._dead_letter(key, value, src, exc)
        if (self._placement is not None and not moved and value is not None
                and isinstance(request.payment_id, str) and request.payment_id):
            # Dedup needs every copy of a payment_id in one partition, whatever partitioner
            # the order system used: a misplaced request is moved before anything is decided.
            target = self._placement.misplaced(src.topic, partition, request.payment_id)
            if target is not None:
                return Decision(MOVED, [self._placement.move(request.payment_id, value, src,
                                                             target)])

        now = self._clock()
        merchant = self._merchants(request.merchant_id) if isinstance(
            request.merchant_id, str) else None
        reasons = validation.validate(
            request, merchant, now, self._policy, self._routing.has_rule_for, self.keyring
        )
        if reasons:
            return self._reject(request, reasons, now, ref)

        fp = idempotency.fingerprint(request)
        verdict = idempotency.decide(
            self._seen.get(request.payment_id), fp, now, self._seen.retention_ms
        )
        replay = (verdict is idempotency.IdempotencyDecision.DUPLICATE
                  and self._seen.accepted_at(request.payment_id) == (src.partition, src.offset))
        if verdict is idempotency.IdempotencyDecision.DUPLICATE and not replay:
            return Decision(DEDUPLICATED)
        if verdict is idempotency.IdempotencyDecision.CONFLICT:
            return self._reject(
                request,
                [Rejection(validation.DUPLICATE_CONFLICT,
                           "payment_id already accepted with a different body")],
                now, ref,
            )

        route = self._routing.route(request, self.disabled_channels)
        if route.channel is None or route.rule_id is None:
            assert route.rejection is not None
            return self._reject(request, [route.rejection], now, ref)

        # A replay is the accepted input itself, read again after a crash: the table kept
        # its entry but the routed output may be lost, so it is routed again (downstream
        # dedupes by payment_id). Only a different input with the same body is a duplicate.
        if not replay:
            self._seen.remember(request.payment_id, fp, now, partition, src.offset,
                                source_partition=src.partition)
        topic, channel_symbol, serializer = self._routed_to[route.channel]
        # The signature stops here: channels get the authenticated business fields only.
        r = request
        routed = {
            "payment_id": r.payment_id,
            "merchant_id": r.merchant_id,
            "order_id": r.order_id,
            "payer_id": r.payer_id,
            "amount_minor": r.amount_minor,
            "currency": r.currency,
            "method": r.method,
            "interface": r.interface,
            "region": r.region,
            "created_at": r.created_at_ms,
            "metadata": dict(r.metadata),
            "channel": channel_symbol,
            "rule_id": route.rule_id,
            "routed_at": now,
        }
        out = Output(topic, r.payment_id.encode(), serializer.encode(routed),
                     ((SOURCE_HEADER, ref),))
        return Decision(ROUTED, [out], channel=route.channel, rule_id=route.rule_id)

    def _reject(
        self, request: PaymentRequest, reasons: list[Rejection], now: int, ref: bytes
    ) -> Decision:
        pid = request.payment_id if isinstance(request.payment_id, str) else ""
        rejected = {
            "payment_id": pid,
            "merchant_id": request.merchant_id if isinstance(request.merchant_id, str) else None,
            "reasons": [{"code": r.code, "detail": r.detail} for r in reasons],
            "request": _avro_request(request),
            "stage": STAGE,
            "rejected_at": now,
        }
        out = Output(self._topics.rejected, pid.encode() or None,
                      self._rejected_ser.encode(rejected), ((SOURCE_HEADER, ref),))
        return Decision(REJECTED, [out], reasons=tuple(r.code for r in reasons))

    def _dead_letter(
        self, key: bytes | None, value: bytes | None, src: Origin, exc: BaseException,
    ) -> Decision:
        out = self._dlq.letter(key, value, src.topic, src.partition, src.offset, exc,
                               self._clock())
        return Decision(DEAD_LETTERED, [out], error_type=error_label(exc))


def _avro_request(request: PaymentRequest) -> dict[str, Any]:
    """The request as a PaymentRequested record (signature included), for rejections."""
    rec = request.to_record()
    rec["created_at"] = rec.pop("created_at_ms", None)
    return rec
