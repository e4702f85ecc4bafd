"""The validate+route stage written in Quix Streams: the peer `settle bench peer` times.

Runs in its own virtualenv (.bench/quix-venv: Quix Streams pins an older confluent-kafka),
never in the project's. It puts the repository on sys.path and reuses the same pure pieces
as our faust worker (stream_processors.ingest.IngestProcessor: decode, validate, dedup,
route, encode), so the comparison is of the streaming frameworks around identical logic:
Quix's state store holds the payment_id index (RocksDB with a changelog topic) where
faust's table does.

usage: quix_validate.py MERCHANTS_JSON  (settings from SETTLE_* like every command;
outputs go to <SETTLE_TOPIC_PREFIX>quix.<contract topic>)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from quixstreams import Application, message_context
from quixstreams.models.serializers import Serializer

from infra import gc_tuning
from infra.config import load as load_settings
from schemas.registry import RegistryClient
from settlement.model import Merchant
from stream_processors.ingest import DEDUPLICATED, IngestProcessor, SeenIndex, now_ms

CHANNELS = ("alipay", "wechat_pay", "unionpay", "card")


class OutputTopics:
    """The names IngestProcessor writes to, under the peer's own prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channels = CHANNELS
        self.rejected = prefix + "payments.rejected"
        self.dlq = prefix + "payments.dlq"

    def routed(self, channel: str) -> str:
        return f"{self.prefix}payments.routed.{channel}"

    @property
    def all(self) -> list[str]:
        return [*(self.routed(c) for c in CHANNELS), self.rejected, self.dlq]


class StateStore(MutableMapping[str, Any]):
    """SeenIndex's mapping over Quix's per-key state of the message being processed."""

    state: Any = None

    def __getitem__(self, key: str) -> Any:
        value = self.state.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self.state.get(key)
        return default if value is None else value

    def __setitem__(self, key: str, value: Any) -> None:
        self.state.set(key, value)

    def __delitem__(self, key: str) -> None:
        self.state.delete(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())  # Quix state cannot be listed; expiry queues start empty

    def __len__(self) -> int:
        return 0


class PickValue(Serializer):
    """Output values are (topic, key, bytes, headers) dicts: write the bytes."""

    def __call__(self, value: Any, ctx: Any) -> bytes:
        return bytes(value["value"])


def main() -> None:
    merchants = {
        r["merchant_id"]: Merchant.from_record(r)
        for r in json.loads(Path(sys.argv[1]).read_text())
    }
    settings = load_settings()
    prefix = settings.runtime.topic_prefix
    ps = settings.processor
    registry = RegistryClient(settings.registry.url)
    out = OutputTopics(prefix + "quix.")
    store = StateStore()
    seen = SeenIndex(store, ps.dedup_retention_ms)
    # The same signature check as our worker (the bench sets SETTLE_SIGNING_KEYRING).
    keyring_path = settings.signing.keyring_path
    keyring = None
    if keyring_path and settings.signing.required:
        from infra.keyring import load_keyring

        keyring = load_keyring(keyring_path)
    processor = IngestProcessor(registry, merchants.get, seen, ps.routing, ps.policy, out,
                                disabled_channels=ps.disabled_channels, keyring=keyring)
    kafka = settings.kafka
    app = Application(
        broker_address=kafka.bootstrap_servers,
        consumer_group=prefix + "quix-validate",
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        commit_interval=1.0,
        state_dir=os.environ["QUIX_STATE_DIR"],  # the peer's own, set by the bench
        # The same client choices as our faust stage where they matter for throughput.
        producer_extra_config={"compression.type": kafka.compression,
                               "linger.ms": kafka.stage_linger_ms,
                               "partitioner": "murmur2_random"},
        loglevel="WARNING",
    )
    source = app.topic(prefix + "payments.requested", key_deserializer="bytes",
                       value_deserializer="bytes")
    targets = {name: app.topic(name, key_serializer="bytes", value_serializer=PickValue())
               for name in out.all}

    def step(value: bytes, key: bytes, _ts: int, _headers: Any, state: Any) -> Any:
        ctx = message_context()
        store.state = state
        decision = processor.process(key, value, ctx.topic, ctx.partition, ctx.offset)
        seen.expire(now_ms(), ctx.partition)
        if decision.outcome == DEDUPLICATED or not decision.outputs:
            return None
        o = decision.outputs[0]
        return {"topic": o.topic, "key": o.key, "value": o.value, "headers": list(o.headers)}

    sdf = app.dataframe(source)
    sdf = sdf.apply(step, stateful=True, metadata=True)
    sdf = sdf.filter(lambda d: d is not None)
    sdf = sdf.set_headers(lambda value, _k, _t, _h: value["headers"])
    sdf.to_topic(lambda value, _k, _t, _h: targets[value["topic"]], key=lambda d: d["key"])
    # The same garbage-collector settings as our workers (SETTLE_GC_*), so the ratio compares
    # the frameworks, not a tuned process with an untuned one.
    print(f"quix-validate: {gc_tuning.apply(settings.runtime.gc)}", file=sys.stderr, flush=True)
    app.run()


if __name__ == "__main__":
    main()
