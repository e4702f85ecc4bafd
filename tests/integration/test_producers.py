"""The producer commands on the real stack: merchants, simulated orders, the channel simulator."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import TopicPartition

from infra.admin import create_topics, delete_topics
from infra.config import Settings
from infra.kafka import make_consumer
from infra.keyring import configured_keyring
from infra.registry import registry_client
from producers.channels import (
    ChannelSimConfig,
    decide,
    plan_confirmations,
    plan_refund_confirmations,
)
from producers.cli import merchants, simulate
from producers.clients import read_at, read_to_end, wall_clock_ms
from producers.merchants import (
    MerchantEntry,
    fold_merchant_records,
    load_merchants,
    publish_merchants,
    sample_merchants_path,
)
from producers.order_faults import SIGNATURE_KINDS
from producers.order_flow import KIND_HEADER, publish_order
from producers.orders import INJECTED_KINDS, OrderMix, SimulatedOrder, generate_orders
from producers.producer import AvroProducer, DeliveryReport
from producers.refunds import make_spec
from producers.signing import RequestSigner, refund_request_from_record
from schemas.codec import AvroDeserializer, to_epoch_ms
from schemas.contract import schema_str_for
from schemas.registry import RegistryClient
from schemas.topics import (
    CHANNEL_CONFIRMATIONS,
    CONTRACT,
    MERCHANTS,
    PAYMENTS_REQUESTED,
    REFUND_CONFIRMATIONS,
    REFUNDS_REQUESTED,
    REFUNDS_ROUTED,
    ROUTED_TOPICS,
    value_subject,
)
from settlement.model import PaymentRequest
from settlement.signing import Keyring, SigningKey, verify, verify_refund

pytestmark = pytest.mark.integration


@pytest.fixture()
def registry(stack: Settings) -> Iterator[RegistryClient]:
    with registry_client(stack) as client:
        yield client


def unique_seed() -> int:
    # payment_ids are pay-<seed>-<n>: a fresh seed keeps reruns from colliding on the topic.
    return uuid.uuid4().int % 10**12


# -- merchants --------------------------------------------------------------------------------


def test_sample_merchants_load_and_read_back(stack: Settings, registry: RegistryClient) -> None:
    entries = load_merchants(sample_merchants_path())
    updated_at_ms = wall_clock_ms()
    with AvroProducer(stack.kafka, registry, client_id="test-merchants") as producer:
        publish_merchants(producer, entries, updated_at_ms, MERCHANTS)
    states, undecodable = fold_merchant_records(read_to_end(stack.kafka, MERCHANTS), registry)
    assert undecodable == 0
    for entry in entries:
        state = states[entry.merchant_id]
        assert state.entry == entry
        assert state.updated_at_ms >= updated_at_ms


def test_merchants_cli_load_upsert_list(stack: Settings, registry: RegistryClient) -> None:
    runner = CliRunner()
    loaded = runner.invoke(merchants, ["load"])
    assert loaded.exit_code == 0, loaded.output
    assert "published 20 merchants" in loaded.output
    merchant_id = f"m-test-{uuid.uuid4().hex[:8]}"
    try:
        for status in ("ACTIVE", "SUSPENDED"):
            upsert = runner.invoke(merchants, ["upsert", "--id", merchant_id, "--name", "Test Shop",
                                               "--status", status, "--currency", "KWD"])
            assert upsert.exit_code == 0, upsert.output
        states, _ = fold_merchant_records(read_to_end(stack.kafka, MERCHANTS), registry)
        assert states[merchant_id].entry == MerchantEntry(merchant_id, "Test Shop", "SUSPENDED",
                                                          "KWD")
        listed = CliRunner().invoke(merchants, ["list"], terminal_width=200)
        assert listed.exit_code == 0, listed.output
        assert "m-0001" in listed.output and merchant_id in listed.output
    finally:
        # A tombstone, so the test merchant leaves the directory (and, compacted, the topic).
        with AvroProducer(stack.kafka, registry, client_id="test-merchants") as producer:
            producer.send_raw(MERCHANTS, merchant_id.encode(), None)
    states, _ = fold_merchant_records(read_to_end(stack.kafka, MERCHANTS), registry)
    assert merchant_id not in states


def test_invalid_merchants_file_is_refused_by_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("merchant_id,name,status,settlement_currency\nm-1,Shop,OPEN,CNY\n")
    result = CliRunner().invoke(merchants, ["load", str(path)])
    assert result.exit_code != 0
    assert "line 2: status 'OPEN'" in str(result.exception)


# -- simulated orders -------------------------------------------------------------------------


def test_simulated_orders_read_back_by_offset(stack: Settings, registry: RegistryClient) -> None:
    schema_id = registry.register(
        value_subject(PAYMENTS_REQUESTED), schema_str_for("PaymentRequested")
    )
    keyring = configured_keyring(stack)  # the session's (tests/conftest.py)
    assert keyring is not None
    mix = OrderMix(bad_ratio=0.4, duplicate_ratio=0.1, conflict_ratio=0.05, schema_id=schema_id,
                   keyring=keyring)
    orders = list(generate_orders(unique_seed(), 80, load_merchants(sample_merchants_path()), mix))
    assert {o.kind for o in orders} >= set(INJECTED_KINDS) - {"bad-merchant-suspended"}
    reports: list[DeliveryReport] = []
    placed: list[tuple[SimulatedOrder, DeliveryReport]] = []
    with AvroProducer(stack.kafka, registry, client_id="test-orders",
                      on_delivery=reports.append) as producer:
        for order in orders:
            publish_order(producer, PAYMENTS_REQUESTED, order)
            producer.flush()  # one at a time, so each report belongs to this order
            placed.append((order, reports[-1]))
    assert all(report.ok for _, report in placed)
    found = read_at(stack.kafka, PAYMENTS_REQUESTED,
                    [(r.partition, r.offset) for _, r in placed])
    decoder = AvroDeserializer(registry)
    for order, report in placed:
        msg = found[(report.partition, report.offset)]
        assert msg.key() == order.payment_id.encode()
        assert dict(msg.headers() or [])[KIND_HEADER] == order.kind.encode()
        if order.record is not None:
            decoded = decoder.decode(msg.value())
            decoded["created_at"] = to_epoch_ms(decoded["created_at"])
            # The library signed on send unless the order carried its own (bad) signature.
            assert decoded == {**decoded, **order.record}
            failure = verify(PaymentRequest.from_record(decoded), keyring)
            if order.kind in SIGNATURE_KINDS or order.kind == "bad-merchant-unknown":
                assert failure is not None
                assert failure.code == (order.reason if order.kind in SIGNATURE_KINDS
                                        else "SIGNATURE_MISSING"), order
            else:
                assert failure is None, (order, failure)
        else:
            assert (msg.value() or b"") == order.raw


def test_simulate_orders_cli_publishes_and_reports(stack: Settings, tmp_path: Path) -> None:
    report_path = tmp_path / "orders.json"
    result = CliRunner().invoke(simulate, [
        "orders", "--count", "40", "--rate", "0", "--seed", str(unique_seed()),
        "--bad-ratio", "0.2", "--report", str(report_path), "--refund-ratio", "0",
    ], terminal_width=160)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["sent"] == report["delivered"] == 40 and report["failed"] == 0
    expected = report["expected"]
    outcomes = ("routed", "rejected", "dead_lettered", "deduplicated")
    assert sum(expected[o] for o in outcomes) == 40


# -- the channel simulator (on its own copies of the topics) ----------------------------------


@pytest.fixture()
def prefix(stack: Settings) -> Iterator[str]:
    p = f"t{uuid.uuid4().hex[:8]}."
    names = (*ROUTED_TOPICS, CHANNEL_CONFIRMATIONS, REFUNDS_REQUESTED, REFUNDS_ROUTED,
             REFUND_CONFIRMATIONS)
    create_topics(stack.kafka, [s for s in CONTRACT if s.name in names], name_prefix=p)
    yield p
    delete_topics(stack.kafka, [p + n for n in names])


def routed_record(
    payment_id: str, channel: str, amount_minor: int, currency: str
) -> dict[str, Any]:
    now = wall_clock_ms()
    return {
        "payment_id": payment_id, "merchant_id": "m-0001", "order_id": f"o-{payment_id}",
        "payer_id": "payer-1", "amount_minor": amount_minor, "currency": currency,
        "method": channel, "interface": "APP", "region": "CN", "created_at": now,
        "metadata": {}, "channel": channel, "rule_id": "test", "routed_at": now,
    }


def test_channel_simulator_answers_routed_payments(
    stack: Settings, registry: RegistryClient, prefix: str
) -> None:
    run = uuid.uuid4().hex[:8]
    routed = [
        routed_record(f"pay-chan-{run}-{i:03d}", channel, 1000 + i, currency)
        for i, (channel, currency) in enumerate(
            [("ALIPAY", "CNY"), ("CARD", "JPY"), ("WECHAT_PAY", "HKD"), ("UNIONPAY", "KWD")] * 6
        )
    ]
    with AvroProducer(stack.kafka, registry, client_id="test-routed") as producer:
        for record in routed:
            producer.send(f"{prefix}payments.routed.{record['channel'].lower()}",
                          record["payment_id"], record)
    seed, group = 7, f"test-channel-sim-{run}"
    args = ["channels", "--seed", str(seed), "--latency-ms", "20", "--fault-rate", "0.5",
            "--decline-rate", "0.2", "--late-ms", "1500", "--max-records", str(len(routed)),
            "--group", group, "--topic-prefix", prefix]
    result = CliRunner().invoke(simulate, args, terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "max-records reached" in result.output

    config = ChannelSimConfig(seed=seed, latency_ms=20, fault_rate=0.5, decline_rate=0.2,
                              late_ms=1500)
    planned = [p for r in routed for p in plan_confirmations(r, 0, config)]
    assert {p.fault for p in planned} - {"none"}, "the seed should inject some faults"

    def shape(record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record[k] for k in ("payment_id", "confirmation_id", "channel", "status",
                                         "amount_minor", "currency", "decline_code"))

    decoder = AvroDeserializer(registry)
    messages = read_to_end(stack.kafka, prefix + CHANNEL_CONFIRMATIONS)
    got = []
    for msg in messages:
        record = decoder.decode(msg.value())
        assert msg.key() == record["payment_id"].encode()
        got.append(shape(record))
    assert Counter(got) == Counter(shape(p.record) for p in planned)

    # Every consumed record was answered before its offset was committed.
    consumer = make_consumer(stack.kafka, group)
    try:
        partitions = [TopicPartition(prefix + t, p) for t in ROUTED_TOPICS
                      for p in range(stack.kafka.partitions)]
        committed = consumer.committed(partitions, timeout=15)
        assert sum(tp.offset > 0 for tp in committed) >= 4
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=15)[1]
                for tp in partitions}
        for tp in committed:
            if ends[(tp.topic, tp.partition)] > 0:
                assert tp.offset == ends[(tp.topic, tp.partition)], tp
    finally:
        consumer.close()


def test_channel_simulator_reverses_a_routed_payment_after_answering_it(
    stack: Settings, registry: RegistryClient, prefix: str
) -> None:
    run = uuid.uuid4().hex[:8]
    routed = [routed_record(f"pay-rev-{run}-{i}", channel, 4_000 + i, currency)
              for i, (channel, currency) in enumerate([("ALIPAY", "CNY"), ("CARD", "USD")])]
    with AvroProducer(stack.kafka, registry, client_id="test-routed-reversal") as producer:
        for record in routed:
            producer.send(f"{prefix}payments.routed.{record['channel'].lower()}",
                          record["payment_id"], record)
    seed, group = 5, f"test-channel-sim-reversal-{run}"
    args = ["channels", "--seed", str(seed), "--latency-ms", "20", "--fault-rate", "0",
            "--decline-rate", "0", "--reversal-rate", "1.0", "--reversal-delay-ms", "1500",
            "--max-records", str(len(routed)), "--group", group, "--topic-prefix", prefix]
    result = CliRunner().invoke(simulate, args, terminal_width=160)
    assert result.exit_code == 0, result.output

    config = ChannelSimConfig(seed=seed, latency_ms=20, fault_rate=0.0, decline_rate=0.0,
                              reversal_rate=1.0, reversal_delay_ms=1500)
    decoder = AvroDeserializer(registry)
    by_payment: dict[str, list[dict[str, Any]]] = {}
    for msg in read_to_end(stack.kafka, prefix + CHANNEL_CONFIRMATIONS):
        record = decoder.decode(msg.value())
        assert msg.key() == record["payment_id"].encode()
        by_payment.setdefault(record["payment_id"], []).append(record)
    assert set(by_payment) == {r["payment_id"] for r in routed}
    for payment in routed:
        assert decide(payment["payment_id"], config).reversed
        answer, reversal = by_payment[payment["payment_id"]]  # in this order: same key
        assert (answer["status"], reversal["status"]) == ("SUCCEEDED", "REVERSED")
        assert reversal["amount_minor"] == answer["amount_minor"] == payment["amount_minor"]
        assert reversal["currency"] == payment["currency"]
        assert reversal["confirmation_id"] != answer["confirmation_id"]
        gap = to_epoch_ms(reversal["confirmed_at"]) - to_epoch_ms(answer["confirmed_at"])
        assert gap == 1500
        planned = plan_confirmations(payment, 0, config)
        assert [p.record["confirmation_id"] for p in planned] == [
            answer["confirmation_id"], reversal["confirmation_id"]]


# -- refunds --------------------------------------------------------------------------------


def test_signed_refund_is_published_keyed_by_payment_and_reads_back(
    stack: Settings, registry: RegistryClient, prefix: str
) -> None:
    keyring = Keyring([SigningKey("m-0001.kt", "m-0001", bytes(range(32)), "active", 0)])
    run = uuid.uuid4().hex[:8]
    spec = make_spec(f"pay-refund-{run}", "m-0001", 2_500, "CNY", f"rf-{run}", "size")
    record = {**spec.to_record(wall_clock_ms()), "metadata": {"note": "尺码小"}}
    with AvroProducer(stack.kafka, registry, client_id="test-refunds",
                      signer=RequestSigner(keyring)) as producer:
        producer.send_refund(record, topic=prefix + REFUNDS_REQUESTED)
    # The module's topics are shared (other tests' simulated orders send refunds too), and a
    # just-created topic's end offsets may lag on a busy broker: wait for this refund's record.
    deadline = time.monotonic() + 30
    mine: list[Any] = []
    while not mine and time.monotonic() < deadline:
        mine = [m for m in read_to_end(stack.kafka, prefix + REFUNDS_REQUESTED)
                if m.key() == spec.payment_id.encode()]
        if not mine:
            time.sleep(0.5)
    [msg] = mine
    assert msg.key() == spec.payment_id.encode()
    decoded = AvroDeserializer(registry).decode(msg.value())
    assert decoded["refund_id"] == spec.refund_id and decoded["reason"] == "size"
    assert decoded["signature_key_id"] == "m-0001.kt"
    request = refund_request_from_record(decoded)
    assert request.requested_at_ms == record["requested_at"]
    assert verify_refund(request, keyring) is None


def test_channel_simulator_answers_routed_refunds(
    stack: Settings, registry: RegistryClient, prefix: str
) -> None:
    run = uuid.uuid4().hex[:8]
    now = wall_clock_ms()
    routed: list[dict[str, Any]] = [
        {"refund_id": f"rf-{i}", "payment_id": f"pay-rf-{run}-{i:03d}", "merchant_id": "m-0001",
         "order_id": None, "channel": channel, "channel_txn_id": None, "amount_minor": 500 + i,
         "currency": currency, "reason": None, "requested_at": now, "routed_at": now}
        for i, (channel, currency) in enumerate([("ALIPAY", "CNY"), ("CARD", "USD")] * 10)
    ]
    with AvroProducer(stack.kafka, registry, client_id="test-routed-refunds") as producer:
        for record in routed:
            producer.send(prefix + REFUNDS_ROUTED, record["payment_id"], record)
    seed, group = 11, f"test-channel-sim-refunds-{run}"
    args = ["channels", "--seed", str(seed), "--latency-ms", "20", "--refund-fault-rate", "0.5",
            "--refund-decline-rate", "0.2", "--late-ms", "1500", "--max-records",
            str(len(routed)), "--group", group, "--topic-prefix", prefix]
    result = CliRunner().invoke(simulate, args, terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "refunds per channel" in result.output

    config = ChannelSimConfig(seed=seed, latency_ms=20, refund_fault_rate=0.5,
                              refund_decline_rate=0.2, late_ms=1500)
    planned = [p for r in routed for p in plan_refund_confirmations(r, 0, config)]
    assert {p.fault for p in planned} - {"none"}, "the seed should inject some faults"

    def shape(record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record[k] for k in ("payment_id", "refund_id", "confirmation_id",
                                         "channel", "status", "amount_minor", "currency",
                                         "decline_code"))

    decoder = AvroDeserializer(registry)
    got = []
    for msg in read_to_end(stack.kafka, prefix + REFUND_CONFIRMATIONS):
        record = decoder.decode(msg.value())
        assert msg.key() == record["payment_id"].encode()
        got.append(shape(record))
    assert Counter(got) == Counter(shape(p.record) for p in planned)
    assert read_to_end(stack.kafka, prefix + CHANNEL_CONFIRMATIONS) == []


# -- the stall watch (librdkafka can keep a partition leaderless after a broker restart) -----


def _send_plain(producer: AvroProducer, topic: str, keys: list[str]) -> None:
    for key in keys:
        producer.send_raw(topic, key.encode(), f"value-of-{key}".encode())


def _keys_by_partition(stack: Settings, topic: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for msg in read_to_end(stack.kafka, topic):
        out.setdefault(msg.partition() or 0, []).append((msg.key() or b"").decode())
    return out


def test_replaced_client_sends_queued_records_again_once_and_in_order(
    stack: Settings, registry: RegistryClient, prefix: str
) -> None:
    topic = prefix + CHANNEL_CONFIRMATIONS
    keys = [f"stall-{i:03d}" for i in range(200)]
    # A long linger keeps every record in the local queue, as a stuck partition does.
    with AvroProducer(stack.kafka, registry, client_id="test-stall", **{"linger.ms": 5000}
                      ) as producer:
        _send_plain(producer, topic, keys)
        taken = producer.replace_client("test: records held in the queue")
        producer.flush(30)
    assert taken == 200
    assert (producer.replacements, producer.resent, producer.delivered) == (1, 200, 200)
    by_partition = _keys_by_partition(stack, topic)
    got = [k for ks in by_partition.values() for k in ks]
    assert sorted(got) == keys  # every record once: none lost, none duplicated
    for ks in by_partition.values():
        assert ks == sorted(ks)  # the order of the queue is kept in each partition


def test_stall_watch_replaces_a_producer_whose_record_waits_too_long(
    stack: Settings, registry: RegistryClient, prefix: str
) -> None:
    topic = prefix + CHANNEL_CONFIRMATIONS
    kafka = dataclasses.replace(stack.kafka, producer_stall_s=1.0)
    keys = [f"held-{i:02d}" for i in range(20)]
    # The first client holds its records for 20 s (a stand-in for a stuck partition); the
    # watch sees them wait past 1 s while every partition has a leader and replaces it.
    producer = AvroProducer(kafka, registry, client_id="test-stall-watch",
                            **{"linger.ms": 20000})
    producer._overrides = {}  # the replacement is an ordinary client
    _send_plain(producer, topic, keys)
    # poll, not flush: librdkafka's flush sends lingering records at once.
    deadline = time.monotonic() + 12
    while producer.delivered < 20 and time.monotonic() < deadline:
        producer.poll(0.2)
    assert producer.delivered == 20  # within 12 s, not the 20 s linger: the watch stepped in
    producer.flush(10)
    assert producer.replacements == 1
    assert producer.resent == 20 and producer.delivered == 20
    assert sorted(k for ks in _keys_by_partition(stack, topic).values() for k in ks) == keys
