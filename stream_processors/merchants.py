"""The merchant directory: every worker's full copy of the compacted `merchants` topic."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infra.config import KafkaSettings
from infra.kafka import make_consumer
from schemas.codec import AvroDeserializer
from schemas.errors import DecodeError, RegistryUnavailable
from settlement.errors import SettleError
from settlement.model import Merchant, RecordError

log = logging.getLogger(__name__)


class MerchantDirectoryError(SettleError):
    """The merchant directory could not load the merchants topic."""


class MerchantDirectory:
    """Follows the `merchants` topic from the beginning into a dict, on a background thread.

    Why not a faust table: merchants are keyed by merchant_id, payments by payment_id, so
    every worker needs every merchant, and validation must not start before the directory
    has read everything that was in the topic at start-up, or a restart would reject valid
    payments as MERCHANT_UNKNOWN. ``wait_loaded`` gives exactly that barrier.
    A record that cannot be decoded is logged and counted, never applied.

    Any partitioner: a merchant system may write one merchant's updates to several
    partitions (another client, another partitioner), which are read in no common order. So
    the newest ``updated_at`` wins, whatever partition it came from, and a tombstone removes
    the merchant for good unless an update newer than the tombstone's record time arrives.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: Any,
        topic: str = "merchants",
        on_bad_record: Callable[[str], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._decoder = AvroDeserializer(registry)
        self._merchants: dict[str, Merchant] = {}
        # merchant_id -> record time (ms) of its newest tombstone, against older upserts read
        # later from another partition.
        self._removed_at: dict[str, int] = {}
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._on_bad_record = on_bad_record
        self.bad_records = 0

    def get(self, merchant_id: str) -> Merchant | None:
        return self._merchants.get(merchant_id)

    def snapshot(self) -> Mapping[str, Merchant]:
        return dict(self._merchants)

    def __len__(self) -> int:
        return len(self._merchants)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="merchant-directory",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_loaded(self, timeout_s: float = 60.0) -> bool:
        """Block until everything present at start-up has been read (True) or time runs out."""
        ok = self._loaded.wait(timeout_s)
        if self._error is not None:
            raise MerchantDirectoryError(f"merchant directory failed: {self._error}")
        return ok

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def apply(self, key: bytes | None, value: bytes | None,
              timestamp_ms: int | None = None) -> None:
        """Apply one record of the topic: an upsert, or a tombstone that removes the merchant
        (``timestamp_ms``: the record's time, which orders a tombstone against upserts read
        from other partitions; None: the tombstone removes whatever is there)."""
        if value is None:
            if key is not None:
                merchant_id = key.decode("utf-8", "replace")
                current = self._merchants.get(merchant_id)
                if timestamp_ms is None:
                    self._merchants.pop(merchant_id, None)
                elif current is None or current.updated_at_ms <= timestamp_ms:
                    self._merchants.pop(merchant_id, None)
                    self._removed_at[merchant_id] = max(
                        timestamp_ms, self._removed_at.get(merchant_id, 0))
            return
        try:
            merchant = Merchant.from_record(self._decoder.decode(value))
        except (DecodeError, RecordError) as exc:
            self.bad_records += 1
            log.warning("merchants: ignoring undecodable record key=%r: %s", key, exc)
            if self._on_bad_record is not None:
                self._on_bad_record(type(exc).__name__)
            return
        current = self._merchants.get(merchant.merchant_id)
        removed_at = self._removed_at.get(merchant.merchant_id)
        if removed_at is not None and merchant.updated_at_ms <= removed_at:
            return  # an update older than the merchant's removal (another partition)
        # The newest by updated_at: one merchant's records may sit on several partitions.
        if current is None or merchant.updated_at_ms >= current.updated_at_ms:
            self._merchants[merchant.merchant_id] = merchant

    def _apply_when_registry_answers(self, key: bytes | None, value: bytes | None,
                                     timestamp_ms: int | None = None) -> None:
        """Apply a record, waiting out a registry outage (at start-up nothing is cached yet):
        giving up would leave validation without merchants for good."""
        delay_s = 0.5
        while True:
            try:
                self.apply(key, value, timestamp_ms)
                return
            except RegistryUnavailable as exc:
                if self._stop.is_set():
                    raise
                log.warning("merchants: waiting for the schema registry to decode the "
                            "merchant directory (validation waits for it); retry in %.1fs: %s",
                            delay_s, exc)
                self._stop.wait(delay_s)
                delay_s = min(delay_s * 2, 10.0)

    def _run(self) -> None:
        consumer: Consumer | None = None
        try:
            consumer = make_consumer(self._kafka, group_id=f"merchant-directory-{uuid.uuid4()}")
            meta = consumer.list_topics(self._topic, timeout=30)
            topic_meta = meta.topics.get(self._topic)
            if topic_meta is None or topic_meta.error is not None:
                raise MerchantDirectoryError(f"topic {self._topic} not found")
            parts = sorted(topic_meta.partitions)
            targets: dict[int, int] = {}
            for p in parts:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, p), timeout=30
                )
                if high > 0:
                    targets[p] = high
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in parts])
            if not targets:
                self._loaded.set()
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    log.warning("merchants: consumer error %s", msg.error())
                    continue
                _kind, timestamp_ms = msg.timestamp()
                self._apply_when_registry_answers(
                    msg.key(), msg.value(), timestamp_ms if timestamp_ms >= 0 else None)
                part, off = msg.partition(), msg.offset()
                if part in targets and off is not None and off + 1 >= targets[part]:
                    del targets[part]
                    if not targets:
                        log.info("merchant directory loaded: %d merchants", len(self._merchants))
                        self._loaded.set()
        except BaseException as exc:  # the barrier must never hang silently
            self._error = exc
            self._loaded.set()
            log.exception("merchant directory stopped")
        finally:
            if consumer is not None:
                consumer.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (for tests and start-up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()
