"""install_all puts every patch in place, once, and keeps what it replaced."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.producer.message_accumulator import MessageAccumulator
from faust import topics as faust_topics
from faust.serializers import codecs
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from mode.utils.queues import FlowControlEvent

from stream_processors import patches
from stream_processors.patches import (
    ack,
    changelog_delivery,
    consumer_fetch,
    consumer_seek,
    drain_messages,
    flow_resume,
    json_codec,
    new_offset,
    perform_seek,
    producer_buffer_flush,
    producer_drain,
    seek_to_committed,
)

# Every attribute a patch replaces, and what replaces it.
REPLACED = {
    (AIOKafkaConsumerThread, "seek_to_committed"): seek_to_committed.seek_to_committed,
    (Consumer, "perform_seek"): perform_seek.perform_seek,
    (Consumer, "seek"): consumer_seek.seek,
    (Consumer, "_drain_messages"): drain_messages.drain_messages,
    (Consumer, "_new_offset"): new_offset.new_offset,
    (Consumer, "ack"): ack.ack,
    (FlowControlEvent, "resume"): flow_resume.flow_resume,
    (MessageAccumulator, "drain_by_nodes"): producer_drain.drain_by_nodes,
    (AIOKafkaConsumerThread, "_create_consumer"): consumer_fetch.create_consumer,
    (faust_topics.Topic, "_on_published"): changelog_delivery.on_published,
    (faust_topics.Topic, "publish_message"): changelog_delivery.publish_message,
    (ProducerBuffer, "_send_pending"): producer_buffer_flush.send_pending,
    (ProducerBuffer, "flush"): producer_buffer_flush.flush,
}


def test_install_all_is_idempotent_and_remembers_the_upstream_functions() -> None:
    patches.install_all()
    patches.install_all()
    for (owner, attr), ours in REPLACED.items():
        assert vars(owner)[attr] is ours, (owner, attr)
        original = patches.ORIGINALS[patches.qualified_name(owner, attr)]
        assert original is not ours and original.__module__.split(".")[0] in {
            "faust", "mode", "aiokafka"}, (owner, attr, original)
    assert isinstance(codecs.get_codec("json"), json_codec.TableJson)
    # Every patch module is installed by install_all and names what it touches upstream.
    assert {m.__name__.rsplit(".", 1)[1] for m in (
        ack, changelog_delivery, consumer_fetch, consumer_seek, drain_messages, flow_resume,
        json_codec, new_offset, perform_seek, producer_buffer_flush, producer_drain,
        seek_to_committed)} == set(patches.PATCHES)


def test_the_fetch_settings_reach_the_consumer_faust_creates(monkeypatch: Any) -> None:
    patches.install_all()
    created = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=1500)
    name = patches.qualified_name(AIOKafkaConsumerThread, "_create_consumer")
    monkeypatch.setitem(patches.ORIGINALS, name, lambda thread, loop: created)
    thread = SimpleNamespace(app=SimpleNamespace(
        settle_fetch=consumer_fetch.FetchSettings(65536, 250)))
    assert AIOKafkaConsumerThread._create_consumer(thread, None) is created  # type: ignore
    assert (created._fetch_min_bytes, created._fetch_max_wait_ms) == (65536, 250)
    # An app without the setting keeps faust's consumer as it is.
    plain = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=1500)
    assert consumer_fetch.apply(plain, None) is plain and plain._fetch_min_bytes == 1
