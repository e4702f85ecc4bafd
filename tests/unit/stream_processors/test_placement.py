"""Third parties' misplaced records: moved to their payment_id's partition, never dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from infra.partitioning import murmur2, partition_for
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from schemas.topics import CONTRACT, EXTERNAL_TOPICS, TopicNames
from settlement.fees import FeeSchedule
from settlement.reconciliation import ReconPolicy
from stream_processors.ingest import (
    DEAD_LETTERED,
    DEDUPLICATED,
    MOVED,
    REJECTED,
    ROUTED,
    SOURCE_HEADER,
    IngestProcessor,
    SeenIndex,
)
from stream_processors.placement import ORIGIN_HEADER, Origin, Placement, PlacementError
from stream_processors.reconcile import APPLIED, ReconcileProcessor
from tests.support.ingest import KEYRING, MERCHANTS, NOW_MS, request

TOPICS = TopicNames()
N = 4
PLACED_V = "settle-validate-placed"
PLACED_R = "settle-reconcile-placed"


def wrong_partition(payment_id: str) -> int:
    return (partition_for(payment_id.encode(), N) + 1) % N


# -- the partitioner ---------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF


@pytest.mark.parametrize(("key", "partition"), [
    (b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742),
])
def test_partitions_of_the_java_client(key: bytes, partition: int) -> None:
    # Kafka's Java DefaultPartitioner over 1,000 partitions (the values kafka-python checks).
    assert partition_for(key, 1000) == partition


def test_the_contract_names_its_third_party_topics() -> None:
    assert set(EXTERNAL_TOPICS) == {"payments.requested", "channel.confirmations", "merchants",
                                    "refunds.requested", "channel.refund_confirmations",
                                    "channel.disputes", "cases.actions"}
    assert all(s.copartitioned for s in CONTRACT if s.name in EXTERNAL_TOPICS)
    assert set(TopicNames("x.").external) == {f"x.{t}" for t in EXTERNAL_TOPICS}


# -- Placement ---------------------------------------------------------------------------------


def test_placement_moves_only_misplaced_third_party_records() -> None:
    pl = Placement(PLACED_V, N, frozenset(TOPICS.external))
    right = pl.target("p-1")
    assert pl.misplaced(TOPICS.requested, right, "p-1") is None
    assert pl.misplaced(TOPICS.requested, wrong_partition("p-1"), "p-1") == right
    # The pipeline's own topics are placed by its own clients: never checked.
    assert pl.misplaced(TOPICS.routed("alipay"), wrong_partition("p-1"), "p-1") is None
    out = pl.move("p-1", b"body", Origin(TOPICS.requested, 3, 17), right)
    assert (out.topic, out.key, out.value, out.partition) == (PLACED_V, b"p-1", b"body", right)
    assert pl.origin_of(list(out.headers)) == Origin(TOPICS.requested, 3, 17)
    assert pl.origin_of({ORIGIN_HEADER: b"a.b/c/1/2"}) == Origin("a.b/c", 1, 2)


@pytest.mark.parametrize("headers", [None, [], [(ORIGIN_HEADER, b"nonsense")],
                                     [(ORIGIN_HEADER, b"t/x/1")], [("other", b"t/1/2")]])
def test_an_unreadable_origin_is_a_placement_error(headers: Any) -> None:
    with pytest.raises(PlacementError):
        Placement.origin_of(headers)


# -- validate ----------------------------------------------------------------------------------


class Validate:
    def __init__(self) -> None:
        from producers.signing import RequestSigner
        from settlement.routing import DEFAULT_RULES, RoutingTable
        from settlement.validation import ValidationPolicy

        self.registry = InMemoryRegistry()
        self.store: dict[str, Any] = {}
        self.seen = SeenIndex(self.store, retention_ms=10_000)
        self.placement = Placement(PLACED_V, N, frozenset(TOPICS.external))
        self.proc = IngestProcessor(
            self.registry, MERCHANTS.get, self.seen, RoutingTable(DEFAULT_RULES),
            ValidationPolicy(), TOPICS, clock=lambda: NOW_MS, keyring=KEYRING,
            placement=self.placement,
        )
        self.signer = RequestSigner(KEYRING)
        self.encoder = AvroSerializer(self.registry, TOPICS.requested, "PaymentRequested")
        self.decoder = AvroDeserializer(self.registry)
        self.offsets = dict.fromkeys(range(N), 0)
        self.placed_offsets = dict.fromkeys(range(N), 0)

    def value(self, **over: Any) -> bytes:
        return self.encoder.encode(self.signer.sign_record(request(**over)))

    def feed(self, value: bytes, partition: int, key: bytes | None = b"p-1") -> Any:
        self.offsets[partition] += 1
        return self.proc.process(key, value, TOPICS.requested, partition,
                                 self.offsets[partition])

    def read_back(self, moved: Any) -> Any:
        """The moved record as the stage reads it from its placement topic."""
        [out] = moved.outputs
        self.placed_offsets[out.partition] += 1
        return self.proc.process(out.key, out.value, out.topic, out.partition,
                                 self.placed_offsets[out.partition], list(out.headers))


def test_a_misplaced_request_is_moved_then_routed_under_its_original_coordinates() -> None:
    v = Validate()
    wrong = wrong_partition("p-1")
    moved = v.feed(v.value(), wrong)
    assert moved.outcome == MOVED and moved.reasons == () and moved.error_type is None
    assert v.store == {}  # nothing decided before the move
    [out] = moved.outputs
    assert out.partition == v.placement.target("p-1") and out.topic == PLACED_V
    routed = v.read_back(moved)
    assert routed.outcome == ROUTED
    assert dict(routed.outputs[0].headers)[SOURCE_HEADER] == (
        f"payments.requested/{wrong}/1".encode())
    # The dedup entry lives in the payment's partition, and knows the original coordinates.
    assert v.store["p-1"][2] == v.placement.target("p-1")
    assert v.seen.accepted_at("p-1") == (wrong, 1)


def test_a_request_on_its_own_partition_is_not_moved() -> None:
    v = Validate()
    d = v.feed(v.value(), v.placement.target("p-1"))
    assert d.outcome == ROUTED
    # Placement is by the payment_id in the body: another key is tolerated, not re-placed.
    assert v.feed(v.value(payment_id="p-2"), v.placement.target("p-2"), key=None).outcome == ROUTED


@pytest.mark.parametrize("direct_first", [True, False])
def test_dedup_across_partitioners(direct_first: bool) -> None:
    # Two order systems publish the same payment, one with murmur2, one with CRC32.
    v = Validate()
    body = v.value()

    def direct() -> Any:
        return v.feed(body, v.placement.target("p-1"))

    def via_move() -> Any:
        return v.read_back(v.feed(body, wrong_partition("p-1")))

    first, second = (direct(), via_move()) if direct_first else (via_move(), direct())
    assert (first.outcome, second.outcome) == (ROUTED, DEDUPLICATED)
    conflict = v.read_back(v.feed(v.value(amount_minor=999), wrong_partition("p-1")))
    assert conflict.outcome == REJECTED and conflict.reasons == ("DUPLICATE_CONFLICT",)


def test_a_moved_request_read_twice_is_a_replay_not_a_duplicate() -> None:
    # The move is at least once: a crash after it re-moves the record; its second copy has
    # the same origin and is routed again (one placement for the ingest audit).
    v = Validate()
    moved = v.feed(v.value(), wrong_partition("p-1"))
    first = v.read_back(moved)
    again = v.read_back(moved)
    assert (first.outcome, again.outcome) == (ROUTED, ROUTED)
    assert first.outputs[0].headers == again.outputs[0].headers


def test_undecodable_and_origin_less_records_are_dead_lettered_where_they_are() -> None:
    v = Validate()
    bad = v.feed(b"\x00garbage", wrong_partition("p-1"))
    assert bad.outcome == DEAD_LETTERED  # nothing to place it by
    letter = v.decoder.decode(bad.outputs[0].value)
    assert letter["source_topic"] == "payments.requested"
    lost = v.proc.process(b"p-1", v.value(), PLACED_V, 0, 5, [("x", b"y")])
    assert lost.outcome == DEAD_LETTERED and lost.error_type == "PLACEMENT_ORIGIN_MISSING"
    assert v.decoder.decode(lost.outputs[0].value)["source_topic"] == PLACED_V


def test_a_moved_invalid_request_is_rejected_under_its_original_coordinates() -> None:
    v = Validate()
    moved = v.feed(v.value(merchant_id="m-off"), wrong_partition("p-1"))
    rejected = v.read_back(moved)
    assert rejected.outcome == REJECTED
    src = dict(rejected.outputs[0].headers)[SOURCE_HEADER].decode()
    assert src == f"payments.requested/{wrong_partition('p-1')}/1"


# -- reconcile ---------------------------------------------------------------------------------


class Reconcile:
    def __init__(self) -> None:
        self.now = 1_764_000_000_000
        self.registry = InMemoryRegistry()
        self.store: dict[str, Any] = {}
        self.placement = Placement(PLACED_R, N, frozenset(TOPICS.external))
        self.proc = ReconcileProcessor(
            self.registry, self.store, ReconPolicy({}, 30_000, 20_000, 60_000),
            FeeSchedule.from_spec("alipay=60"), TOPICS, "ticks", clock=lambda: self.now,
            placement=self.placement,
        )
        self.routed_ser = AvroSerializer(self.registry, TOPICS.routed("alipay"), "RoutedPayment")
        self.conf_ser = AvroSerializer(self.registry, TOPICS.confirmations,
                                       "ChannelConfirmation")
        self.decoder = AvroDeserializer(self.registry)
        self.offset = 0

    def routed(self, pid: str) -> Any:
        rec = {
            "payment_id": pid, "merchant_id": "m-1", "order_id": "o-1", "payer_id": "u-1",
            "amount_minor": 1000, "currency": "CNY", "method": "ALIPAY", "interface": "APP",
            "region": "CN", "created_at": self.now - 500, "metadata": {},
            "channel": "ALIPAY", "rule_id": "r-1", "routed_at": self.now,
        }
        self.offset += 1
        return self.proc.process(pid.encode(), self.routed_ser.encode(rec),
                                 TOPICS.routed("alipay"), self.placement.target(pid), self.offset)

    def confirm(self, cid: str, pid: str, partition: int, key: bytes | None = None) -> Any:
        rec = {
            "confirmation_id": cid, "channel": "ALIPAY", "channel_txn_id": f"t-{cid}",
            "payment_id": pid, "status": "SUCCEEDED", "amount_minor": 1000, "currency": "CNY",
            "confirmed_at": self.now, "decline_code": None,
        }
        self.offset += 1
        return self.proc.process(key if key is not None else pid.encode(),
                                 self.conf_ser.encode(rec), TOPICS.confirmations, partition,
                                 self.offset)

    def read_back(self, moved: Any) -> Any:
        [out] = moved.outputs
        self.offset += 1
        return self.proc.process(out.key, out.value, out.topic, out.partition, self.offset,
                                 list(out.headers))


def test_an_early_misplaced_confirmation_never_makes_the_routed_payment_a_dead_letter() -> None:
    r = Reconcile()
    moved = r.confirm("c-1", "p-1", wrong_partition("p-1"))
    assert moved.outcome == MOVED and r.store == {}
    assert r.read_back(moved).outcome == APPLIED  # kept as pending, on the right partition
    assert r.store["p-1"]["partition"] == r.placement.target("p-1")
    d = r.routed("p-1")
    assert d.outcome == APPLIED and d.error_type is None
    [res] = [r.decoder.decode(o.value) for o in d.outputs]
    assert res["outcome"] == "MATCHED"


def test_a_late_misplaced_confirmation_matches_and_names_its_origin() -> None:
    r = Reconcile()
    assert r.routed("p-1").outputs == []
    wrong = wrong_partition("p-1")
    d = r.read_back(r.confirm("c-1", "p-1", wrong))
    [out] = d.outputs
    assert r.decoder.decode(out.value)["outcome"] == "MATCHED"
    assert dict(out.headers)[SOURCE_HEADER].decode().startswith(
        f"channel.confirmations/{wrong}/")


def test_a_confirmation_with_another_key_on_the_right_partition_is_applied() -> None:
    r = Reconcile()
    r.routed("p-1")
    d = r.confirm("c-1", "p-1", r.placement.target("p-1"), key=b"order-77")
    assert d.outcome == APPLIED and d.error_type is None


def test_a_moved_confirmation_read_twice_is_replayed_not_applied_twice() -> None:
    r = Reconcile()
    r.routed("p-1")
    moved = r.confirm("c-1", "p-1", wrong_partition("p-1"))
    first = r.read_back(moved)
    again = r.read_back(moved)
    assert first.outcome == APPLIED and again.outcome == "replayed"
    assert [o.value for o in again.outputs] == [o.value for o in first.outputs]


# -- merchants ---------------------------------------------------------------------------------


def test_merchant_updates_from_several_partitions_newest_wins_and_tombstones_hold() -> None:
    from infra.config import KafkaSettings
    from settlement.model import Merchant
    from stream_processors.merchants import MerchantDirectory

    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, TOPICS.merchants, "Merchant")
    d = MerchantDirectory(KafkaSettings(), registry, topic=TOPICS.merchants)

    def upsert(status: str, updated_at_ms: int) -> None:
        m = Merchant("m-1", "Shop", status, "CNY", updated_at_ms).to_record()
        m["updated_at"] = m.pop("updated_at_ms")
        d.apply(b"m-1", ser.encode(m), updated_at_ms)

    # Partition 2 (a CRC32 client) is read after partition 0 (murmur2) held the newer state.
    upsert("SUSPENDED", 2_000)
    upsert("ACTIVE", 1_000)
    assert d.get("m-1") is not None and d.get("m-1").status == "SUSPENDED"  # type: ignore[union-attr]
    # A tombstone at 3,000 on one partition; an older update read later from another.
    d.apply(b"m-1", None, 3_000)
    upsert("ACTIVE", 2_500)
    assert d.get("m-1") is None
    upsert("ACTIVE", 4_000)  # re-created after its removal
    assert d.get("m-1") is not None
    # A tombstone older than the merchant's newest update does not remove it.
    d.apply(b"m-1", None, 3_500)
    assert d.get("m-1") is not None
