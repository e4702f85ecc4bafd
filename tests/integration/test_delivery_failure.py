"""A faust worker whose output or table update the broker refuses exits before committing
its input.

The routed topic's max.message.bytes is shrunk below any record batch, so the broker
refuses validate's output. The worker must exit (status 75) without committing the
request's offset; once the topic accepts records again, a restarted worker routes it.
The same for a table's changelog record (stream_processors.patches.changelog_delivery):
the changelog topic refuses every record, the worker exits 75 uncommitted, and a restarted
worker routes the request and writes its table update.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from infra.admin import admin_client, delete_topics
from infra.config import Settings
from infra.kafka import make_consumer
from infra.registry import registry_client
from producers.producer import AvroProducer
from schemas.topics import TopicNames
from settle.audit_ingest import read_topic
from stream_processors.delivery import EXIT_SEND_FAILED
from tests.support.stages import Publisher, _committed, now_ms, payment, start_worker, stop

pytestmark = pytest.mark.integration


def _set_max_message_bytes(stack: Settings, topic: str, value: int) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(value),
                    incremental_operation=AlterConfigOpType.SET)])
    admin = admin_client(stack.kafka)  # keep it alive until the futures resolve
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_refused_output_stops_the_worker_before_the_commit(
        stack: Settings, prefix: str, tmp_path) -> None:
    topics = TopicNames(prefix)
    pid = f"{uuid.uuid4().hex[:8]}-ali"
    _set_max_message_bytes(stack, topics.routed("alipay"), 16)
    registry = registry_client(stack)
    with AvroProducer(stack.kafka, registry, client_id="test-delivery") as producer:
        producer.send(topics.merchants, "m-ok", {
            "merchant_id": "m-ok", "name": "OK", "status": "ACTIVE",
            "settlement_currency": "CNY", "updated_at": now_ms()})
        producer.flush()
        producer.send(topics.requested, pid, payment(pid))

    log = tmp_path / "validate-1.log"
    proc = start_worker(prefix, str(log), merchants_wait_s=120)
    try:
        status = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail("the worker kept running although its output was refused:\n"
                    + log.read_text(errors="replace")[-3000:])
    text = log.read_text(errors="replace")
    assert status == EXIT_SEND_FAILED, text[-3000:]
    assert "could not be delivered" in text, text[-3000:]
    # The request's offset was not committed: the next worker reads it again.
    committed = _committed(stack, f"{prefix}settle-validate", topics.requested)
    assert sum(committed.values()) == 0, committed

    _set_max_message_bytes(stack, topics.routed("alipay"), 1_048_588)
    # A loaded machine can take long to read the merchants topic: never validate without it.
    proc = start_worker(prefix, str(tmp_path / "validate-2.log"), merchants_wait_s=120,
                        loglevel="info", SETTLE_METRICS_PORT="19391")
    try:
        consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
        deadline = time.monotonic() + 120
        routed: list[bytes | None] = []
        sources: set[str | None] = set()
        try:
            while time.monotonic() < deadline and pid.encode() not in routed:
                records = list(read_topic(consumer, topics.routed("alipay")))
                routed = [r.key for r in records]
                sources = {r.source for r in records}
                time.sleep(1)
        finally:
            consumer.close()
        if pid.encode() not in routed:
            import urllib.request
            page = urllib.request.urlopen("http://127.0.0.1:19391/metrics").read().decode()
            (tmp_path / "metrics.txt").write_text(page)
    finally:
        stop(proc)
    # Routed once; at-least-once allows one replay of the same input (the worker may take the
    # record before the seek to the committed offset fetches it again), never another one.
    assert 1 <= routed.count(pid.encode()) <= 2, (
        routed, (tmp_path / "validate-2.log").read_text(errors="replace")[-4000:])
    # Every copy names the one request (the only record of its partition: offset 0).
    assert len(sources) == 1, sources
    source = next(iter(sources))
    assert source is not None and source.startswith(topics.requested + "/"), source
    assert source.endswith("/0"), source


def _create_refusing_changelog(stack: Settings, topic: str) -> None:
    """The table's changelog as faust would create it, but refusing every record batch."""
    admin = admin_client(stack.kafka)
    futures = admin.create_topics([NewTopic(
        topic, num_partitions=stack.kafka.partitions,
        replication_factor=stack.kafka.replication_factor,
        config={"cleanup.policy": "compact,delete", "max.message.bytes": "16"})])
    for future in futures.values():
        future.result(timeout=30)


def _keys(stack: Settings, topic: str) -> list[bytes | None]:
    consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
    try:
        return [r.key for r in read_topic(consumer, topic)]
    finally:
        consumer.close()


def test_refused_changelog_record_stops_the_worker_before_the_commit(
        stack: Settings, prefix: str, tmp_path: Path) -> None:
    """faust only logs a warning when a changelog send fails, and commits the input anyway:
    the table update (validate's record that the payment was seen) would be lost for good.
    With the changelog under the delivery guard the worker exits first; the restart re-reads
    the request, routes it and writes the table update."""
    topics = TopicNames(prefix)
    pid = f"{uuid.uuid4().hex[:8]}-cl"
    group = f"{prefix}settle-validate"
    changelog = f"{group}-payments-seen-changelog"
    seen_key = json.dumps(pid).encode()  # the table's keys are written by faust's json codec
    _create_refusing_changelog(stack, changelog)
    try:
        registry = registry_client(stack)
        with AvroProducer(stack.kafka, registry, client_id="test-changelog") as producer:
            producer.send(topics.merchants, "m-ok", {
                "merchant_id": "m-ok", "name": "OK", "status": "ACTIVE",
                "settlement_currency": "CNY", "updated_at": now_ms()})
            producer.flush()
            producer.send(topics.requested, pid, payment(pid))

        log1 = tmp_path / "validate-1.log"
        proc = start_worker(prefix, str(log1), merchants_wait_s=120)
        try:
            status = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stop(proc)
            pytest.fail("the worker kept running although its changelog record was refused:\n"
                        + log1.read_text(errors="replace")[-3000:])
        text = log1.read_text(errors="replace")
        assert status == EXIT_SEND_FAILED, text[-3000:]
        assert f"a changelog record to {changelog} could not be delivered" in text, text[-3000:]
        # The request's offset was not committed, and no table update reached the changelog.
        committed = _committed(stack, group, topics.requested)
        assert sum(committed.values()) == 0, committed
        assert _keys(stack, changelog) == []

        _set_max_message_bytes(stack, changelog, 1_048_588)
        log2 = tmp_path / "validate-2.log"
        proc = start_worker(prefix, str(log2), merchants_wait_s=120, loglevel="info")
        try:
            deadline = time.monotonic() + 120
            routed: list[bytes | None] = []
            seen: list[bytes | None] = []
            committed = {}
            while time.monotonic() < deadline and not (
                    pid.encode() in routed and seen_key in seen and sum(committed.values())):
                time.sleep(1)
                routed = _keys(stack, topics.routed("alipay"))
                seen = _keys(stack, changelog)
                committed = _committed(stack, group, topics.requested)
        finally:
            stop(proc)
        tail = log2.read_text(errors="replace")[-4000:]
        # Routed (twice at most: the first run's output may have been delivered before the
        # changelog record was refused), its table update written, and the input committed.
        assert 1 <= routed.count(pid.encode()) <= 2, (routed, tail)
        assert 1 <= seen.count(seen_key) <= 2, (seen, tail)
        assert sum(committed.values()) == 1, (committed, tail)
    finally:
        delete_topics(stack.kafka, [changelog])


def _results(stack: Settings, topic: str) -> list[dict[str, object]]:
    from schemas.codec import AvroDeserializer

    decoder = AvroDeserializer(registry_client(stack))
    consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
    try:
        return [decoder.decode(r.value) for r in read_topic(consumer, topic)]
    finally:
        consumer.close()


def _reconcile_worker(prefix: str, log_path: str, sla_ms: int = 3000, sla_by_channel: str = ""
                      ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SETTLE_TOPIC_PREFIX": prefix, "SETTLE_RECON_SLA_MS": str(sla_ms),
           "SETTLE_RECON_SLA_BY_CHANNEL": sla_by_channel,
           "SETTLE_ORPHAN_GRACE_MS": "3000", "SETTLE_TICK_INTERVAL_MS": "500"}
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        [sys.executable, "-m", "settle.cli", "worker", "reconcile", "--loglevel", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT)


def _expect_exit(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        status = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail("reconcile kept running although its output was refused:\n"
                    + log.read_text(errors="replace")[-3000:])
    assert status == EXIT_SEND_FAILED, log.read_text(errors="replace")[-3000:]


def test_reconcile_resends_results_lost_with_a_crash_after_its_state_changed(
        stack: Settings, prefix: str, tmp_path: Path) -> None:
    """A decision kept in the table but never published is published after the restart.

    Phase 1: a routed payment without confirmation; the tick that decides it
    MISSING_CONFIRMATION cannot publish and the worker exits after the state change.
    Phase 2: a matched payment; the worker exits again on its first refused result.
    Phase 3: the topic accepts records; the restarted worker re-reads the inputs and ticks
    it had applied and publishes each decision exactly once.

    The hard exit can also lose the state change itself (faust's changelog buffer drains in
    the background, so its record may leave after the result, and the exit does not wait for
    it): then the re-read tick decides MISSING again. So the missing payment's channel keeps
    the short SLA in every phase, and either way it must be published once.
    """
    topics = TopicNames(prefix)
    run = uuid.uuid4().hex[:6]
    missing, matched = f"missing-{run}", f"matched-{run}"
    pub = Publisher(stack, registry_client(stack), topics)
    _set_max_message_bytes(stack, topics.results, 16)

    pub.routed(missing, "m-1", "alipay", 1000)
    pub.flush()
    log1 = tmp_path / "reconcile-1.log"
    _expect_exit(_reconcile_worker(prefix, str(log1)), log1)

    pub.routed(matched, "m-1", "card", 2500)
    pub.confirm(matched, f"c-{run}", "card", 2500)
    pub.flush()
    log2 = tmp_path / "reconcile-2.log"
    # A long SLA from here on: joining the group can take a minute (the dead worker's session
    # must expire), and the routed payment and its confirmation come from two topics, so a
    # short SLA could declare it MISSING before the confirmation is read (then a late MATCHED
    # follows: two correct verdicts, but not the case under test). The missing payment's
    # channel (alipay) keeps the short SLA.
    _expect_exit(_reconcile_worker(prefix, str(log2), sla_ms=600_000,
                                   sla_by_channel="alipay=3000"), log2)

    _set_max_message_bytes(stack, topics.results, 1_048_588)
    proc = _reconcile_worker(prefix, str(tmp_path / "reconcile-3.log"), sla_ms=600_000,
                             sla_by_channel="alipay=3000")
    try:
        deadline = time.monotonic() + 120
        decided: dict[str, set[str]] = {}
        while time.monotonic() < deadline and set(decided) != {missing, matched}:
            time.sleep(2)
            decided = {}
            for r in _results(stack, topics.results):
                if r["terminal"]:
                    decided.setdefault(str(r["payment_id"]), set()).add(str(r["result_id"]))
    finally:
        stop(proc)
    log3 = (tmp_path / "reconcile-3.log").read_text(errors="replace")[-3000:]
    assert set(decided) == {missing, matched}, (decided, log3)
    # One decision each (a re-sent result repeats its result_id; downstream dedupes on it).
    assert decided[missing] == {f"{missing}:MISSING_CONFIRMATION:-"}, decided
    assert decided[matched] == {f"{matched}:MATCHED:c-{run}"}, decided
