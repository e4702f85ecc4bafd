"""The faust apps, one per stage so each stage scales, restarts and is killed on its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from infra.config import Settings
from infra.kafka_auth import broker_credentials
from infra.keyring import KeyringError, KeyringWatcher, configured_keyring
from infra.processor_settings import ProcessorSettings
from schemas.codec import RegistryPrefetch
from schemas.errors import RegistryUnavailable
from schemas.topics import TopicNames
from stream_processors import loop_health, metrics
from stream_processors.delivery import DeliveryGuard, attach
from stream_processors.ingest import STAGE as VALIDATE_STAGE
from stream_processors.ingest import IngestProcessor, SeenIndex, now_ms
from stream_processors.merchants import MerchantDirectory
from stream_processors.patches import install_all as install_patches
from stream_processors.patches.consumer_fetch import FetchSettings
from stream_processors.placement import PLACED_RETENTION, stage_placement
from stream_processors.ticks import owned_topic, stage_channel
from stream_processors.transient import is_transient

log = logging.getLogger(__name__)

REGISTRY_BACKOFF_MAX_S = 30.0
KEYRING_POLL_INTERVAL_S = 5.0


def signature_mode(settings: Settings) -> tuple[KeyringWatcher | None, str]:
    """The validator's keyring (reloaded on change) and a line saying which mode it runs in.

    Required mode without a readable keyring raises KeyringError: the worker must not start
    and reject every request, nor start and route unauthenticated ones.
    """
    keyring = configured_keyring(settings)
    if keyring is None:
        return None, ("request signatures OFF (SETTLE_SIGNATURES=off): payment requests are "
                      "NOT authenticated")
    path = settings.signing.keyring_path
    assert path is not None
    watcher = KeyringWatcher(path, keyring)
    return watcher, (f"request signatures REQUIRED: keyring {path} "
                     f"({len(keyring)} keys, {len(keyring.merchants())} merchants)")


def install_keyring_reload(app: faust.App, watcher: KeyringWatcher | None, holder: Any) -> None:
    """Poll the keyring file and hand a changed keyring to `holder.keyring` (a bad file keeps
    the previous keyring)."""

    @app.timer(interval=KEYRING_POLL_INTERVAL_S)
    async def reload_keyring() -> None:
        if watcher is None:
            return
        try:
            fresh = watcher.poll()
        except KeyringError as exc:
            log.error("keyring changed but cannot be loaded, keeping the previous one: %s", exc)
            return
        if fresh is not None:
            holder.keyring = fresh
            log.info("keyring reloaded: %d keys, %d merchants", len(fresh),
                     len(fresh.merchants()))


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def base_app(app_id: str, settings: Settings, ps: ProcessorSettings) -> faust.App:
    """A faust app with every option that matters set on purpose.

    Raises UnverifiedUpstream (a SettleError: the worker exits 1 with its message) when the
    installed faust-streaming, mode-streaming or aiokafka is not a version the framework
    patches were verified against.
    """
    # Every framework patch (offsets, fetch loop, per-broker drain, fetch size, table JSON,
    # changelog delivery, the commit's flush), after checking the upstream versions:
    # stream_processors/patches.
    install_patches()
    kafka = settings.kafka
    (ps.data_dir / app_id).mkdir(parents=True, exist_ok=True)

    app = faust.App(
        app_id,
        broker=broker_urls(kafka.bootstrap_servers),
        # SASL and/or TLS exactly as the librdkafka clients get them (infra.kafka).
        broker_credentials=broker_credentials(kafka),
        store=ps.store,
        datadir=str(ps.data_dir / app_id),
        # Tables' changelogs get the same partition count as the payment-keyed topics.
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        table_standby_replicas=0,
        key_serializer="raw",
        value_serializer="raw",
        # At-least-once plus idempotent effects downstream; faust's exactly_once has open bugs.
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # aiokafka's default linger of 0 sends one produce request per record. With the
        # per-broker drain (patches.producer_drain) a linger batches every partition's records into
        # one request; 50 ms took a third of the CPU off each stage and the broker at
        # 125 payments/s end to end, for about 50 ms more latency per hop (README).
        producer_linger=kafka.stage_linger_ms / 1000,
        producer_max_batch_size=262144,
        producer_compression_type=(None if kafka.compression == "none" else kafka.compression),
        stream_buffer_maxsize=8192,
        broker_max_poll_records=2000,
        # A topic faust creates at startup (a table's changelog) can be missing from the
        # broker's metadata at the moment the consumer subscribes; aiokafka only notices it at
        # the next metadata refresh (5 minutes by default), and the table cannot be written
        # until then (PartitionsMismatch: a whole chaos run stalled on it). 15 s bounds that.
        consumer_metadata_max_age_ms=15_000,
        producer_metadata_max_age_ms=15_000,
        broker_commit_every=kafka.stage_commit_every,
        broker_commit_interval=1.0,
        broker_session_timeout=ps.session_timeout_s,
        # The heartbeat must come well inside the session timeout (a third is Kafka's advice).
        broker_heartbeat_interval=min(3.0, ps.session_timeout_s / 3),
        web_enabled=ps.web_port > 0,
        web_port=ps.web_port or 6066,
        web_host="127.0.0.1",
    )
    # faust has no setting for these; stream_processors.patches.consumer_fetch applies them.
    app.settle_fetch = FetchSettings(  # type: ignore[attr-defined]
        kafka.stage_fetch_min_bytes, kafka.stage_fetch_max_wait_ms)
    # A refused changelog record ends the worker like a refused output
    # (stream_processors.patches.changelog_delivery); each stage attaches its own guard.
    attach(app, DeliveryGuard(app_id))
    return app


def make_validate_app(settings: Settings, ps: ProcessorSettings, registry: Any) -> faust.App:
    """validate+route: payments.requested -> payments.routed.<channel> | rejected | dlq."""
    topics = TopicNames(ps.topic_prefix)
    app = base_app(f"{ps.topic_prefix}settle-validate", settings, ps)
    n = settings.kafka.partitions
    placement = stage_placement(app, topics, n)
    placed = owned_topic(app, placement.topic, n, PLACED_RETENTION)
    # payments.requested plus the stage's own placement topic (third parties' misplaced
    # requests, moved to their payment_id's partition: stream_processors.placement).
    source = stage_channel(app, [topics.requested], [placed], n, settings.kafka)
    seen_table = app.Table(
        "payments-seen",
        default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=settings.kafka.partitions,
        # Compact keeps the latest entry per payment_id; delete bounds it by the retention.
        extra_topic_configs={
            "cleanup.policy": "compact,delete",
            "retention.ms": str(ps.dedup_retention_ms + 24 * 3600 * 1000),
        },
    )
    directory = MerchantDirectory(settings.kafka, registry, topic=topics.merchants)
    seen = SeenIndex(seen_table, ps.dedup_retention_ms)
    watcher, mode_line = signature_mode(settings)
    processor = IngestProcessor(
        registry,
        directory.get,
        seen,
        ps.routing,
        ps.policy,
        topics,
        disabled_channels=ps.disabled_channels,
        keyring=watcher.keyring if watcher is not None else None,
        placement=placement,
    )

    @app.task
    async def start_directory() -> None:
        (log.info if watcher is not None else log.warning)("validate: %s", mode_line)
        directory.start()

    install_keyring_reload(app, watcher, processor)

    guard = attach(app, DeliveryGuard(VALIDATE_STAGE))  # outputs and changelog records
    metrics.init_stage(VALIDATE_STAGE, ticks=False)
    install_readiness(app, VALIDATE_STAGE, settings)

    @app.agent(source)
    async def validate_route(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(None, directory.wait_loaded, ps.merchants_wait_s)
        if not loaded:
            log.warning("merchant directory not loaded after %ss; validating anyway",
                        ps.merchants_wait_s)
        # Every output schema registered before the first record, not by the first record
        # of each kind (each a registry round trip the whole stream waits for).
        await registry_off_loop(processor.prefetch, None)
        async for event in stream.events():
            msg = event.message
            key = msg.key if isinstance(msg.key, bytes) or msg.key is None else bytes(msg.key)
            backoff_s = 0.5
            while True:
                await registry_off_loop(processor.prefetch, msg.value)
                try:
                    decision = processor.process(key, msg.value, msg.topic, msg.partition,
                                                 msg.offset, msg.headers)
                    break
                except RegistryUnavailable as exc:
                    metrics.REGISTRY_RETRIES.labels(VALIDATE_STAGE).inc()
                    log.warning("registry unavailable, retrying %s/%s@%s in %.1fs: %s",
                                msg.topic, msg.partition, msg.offset, backoff_s, exc)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, REGISTRY_BACKOFF_MAX_S)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("validate: transient table error, retrying %s/%s@%s in "
                                "%.1fs: %s", msg.topic, msg.partition, msg.offset, backoff_s,
                                exc)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, REGISTRY_BACKOFF_MAX_S)
            await guard.send_all(app.producer, ((o.topic, o.key, o.value, list(o.headers),
                                                 o.partition) for o in decision.outputs))
            _count(decision)
            seen.expire(now_ms(), msg.partition)
        # unreachable: the stream never ends while the worker runs

    @app.timer(interval=5.0)
    async def gauges() -> None:
        metrics.MERCHANTS_KNOWN.set(len(directory))
        metrics.DEDUP_ENTRIES.set(len(seen))

    app.settle_directory = directory  # type: ignore[attr-defined]
    app.settle_processor = processor  # type: ignore[attr-defined]
    app.settle_signature_mode = mode_line  # type: ignore[attr-defined]
    return app


async def registry_off_loop(prefetch: RegistryPrefetch, value: bytes | None) -> None:
    """Do the registry lookups a record needs in a thread, not on the worker's event loop."""
    if prefetch.needed(value):
        await asyncio.get_running_loop().run_in_executor(None, prefetch.fetch, value)


def install_readiness(app: faust.App, stage: str, settings: Settings) -> None:
    """settle_worker_ready{stage}: 1 once tables are recovered and no rebalance is running.

    Also starts the event-loop stall probe (stream_processors/loop_health.py).
    """
    loop_health.install(app, stage, settings.runtime.loop)

    @app.timer(interval=1.0)
    async def readiness() -> None:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        ready = (recovery.completed.is_set() and not app.rebalancing
                 and not app.in_recovery)
        metrics.WORKER_READY.labels(stage).set(1 if ready else 0)


def _count(decision: Any) -> None:
    metrics.RECORDS.labels(VALIDATE_STAGE, decision.outcome).inc()
    for reason in decision.reasons:
        metrics.REJECTIONS.labels(reason).inc()
    if decision.error_type:
        metrics.DEAD_LETTERS.labels(VALIDATE_STAGE, decision.error_type).inc()
    if decision.channel:
        metrics.ROUTED.labels(decision.channel, decision.rule_id or "").inc()
