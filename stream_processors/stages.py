"""The reconcile and settle faust apps: thin agents around their processors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import faust

from infra.config import Settings
from infra.processor_settings import ProcessorSettings
from schemas.codec import RegistryPrefetch
from schemas.errors import RegistryUnavailable
from schemas.topics import TopicNames
from settlement.disputes import DISPUTE_REASON_CODES
from settlement.model import CHANNELS
from stream_processors import metrics
from stream_processors.app import (
    REGISTRY_BACKOFF_MAX_S,
    base_app,
    install_keyring_reload,
    install_readiness,
    registry_off_loop,
    signature_mode,
)
from stream_processors.delivery import DeliveryGuard
from stream_processors.outputs import Output, now_ms
from stream_processors.placement import PLACED_RETENTION, stage_placement
from stream_processors.reconcile import STAGE as RECONCILE_STAGE
from stream_processors.reconcile import (
    WAITING_CONFIRMATION,
    WAITING_ROUTED,
    ReconcileProcessor,
    ReconDecision,
)
from stream_processors.settle_stage import (
    ADDED,
    DUPLICATE,
    TICKED,
    SettleDecision,
    SettleProcessor,
    batch_amounts,
)
from stream_processors.settle_stage import STAGE as SETTLE_STAGE
from stream_processors.ticks import (
    TICK_RETENTION,
    install_tick_timer,
    owned_topic,
    stage_channel,
    tick_topic_name,
)
from stream_processors.transient import is_transient

log = logging.getLogger(__name__)

WAITING = (WAITING_CONFIRMATION, WAITING_ROUTED)

# Items wait here between the two settle agents; a week covers any outage worth surviving.
ITEMS_RETENTION = timedelta(days=7)
GAUGE_INTERVAL_S = 5.0

D = TypeVar("D")


def _table(app: faust.App, name: str, partitions: int) -> Any:
    return app.Table(
        name,
        default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=partitions,
    )


def make_reconcile_app(settings: Settings, ps: ProcessorSettings, registry: Any) -> faust.App:
    """reconcile: payments.routed.* + channel.confirmations -> reconciliation.results | dlq;
    refunds.requested + channel.refund_confirmations -> refunds.*; channel.disputes ->
    disputes.results; cases.actions -> cases.events (and MATCHED_MANUAL results)."""
    topics = TopicNames(ps.topic_prefix)
    n = settings.kafka.partitions
    app = base_app(f"{ps.topic_prefix}settle-reconcile", settings, ps)
    app.settle_delivery_guard = DeliveryGuard(RECONCILE_STAGE)  # type: ignore[attr-defined]
    metrics.init_stage(RECONCILE_STAGE)
    install_readiness(app, RECONCILE_STAGE, settings)
    ticks = owned_topic(app, tick_topic_name(app.conf.id), n, TICK_RETENTION)
    placement = stage_placement(app, topics, n)
    placed = owned_topic(app, placement.topic, n, PLACED_RETENTION)
    source = stage_channel(
        app,
        [*topics.all_routed, topics.confirmations, topics.refunds_requested,
         topics.refund_confirmations, topics.disputes, topics.case_actions],
        [ticks, placed], n, settings.kafka,
    )
    table = _table(app, "recon-state", n)
    # Refund requests are signed by the merchant's key like payment requests.
    watcher, mode_line = signature_mode(settings)
    processor = ReconcileProcessor(
        registry, table, ps.recon, ps.fees, topics, tick_topic_name(app.conf.id),
        placement=placement, refund_policy=ps.refunds,
        keyring=watcher.keyring if watcher is not None else None, case_policy=ps.cases,
    )
    (log.info if watcher is not None else log.warning)("reconcile: refund %s", mode_line)
    install_keyring_reload(app, watcher, processor.refunds)
    install_tick_timer(app, tick_topic_name(app.conf.id), ps.tick_interval_s)
    _forget_on_rebalance(app, processor.forget_partitions)
    for channel in sorted(CHANNELS):
        metrics.RECON_SLA.labels(channel).set(ps.recon.sla_ms_for(channel) / 1000)
        # At 0 from the start: the page alert's increase() then sees the first attempt.
        metrics.REFUND_OVER_CAPTURE.labels(channel)
    # Every reason at 0 from the start too: no rejection yet reads 0, not no data.
    for reason in sorted(DISPUTE_REASON_CODES):
        metrics.DISPUTE_REJECTIONS.labels(reason)

    @app.agent(source)
    async def reconcile(stream: Any) -> None:
        await registry_off_loop(processor.prefetch, None)  # output schemas before any record
        async for event in stream.events():
            decision = await _with_registry_retry(processor.process, event, RECONCILE_STAGE,
                                                  processor.prefetch, with_headers=True)
            await _send(app, decision.outputs)
            _count_recon(decision, event.message.topic == processor.tick_topic)

    @app.timer(interval=GAUGE_INTERVAL_S)
    async def gauges() -> None:
        # Deadline entries, not len(table): one per state of the assigned partitions, and
        # O(1) where a rocksdb table's len() would scan every key.
        metrics.RECON_STATES.set(len(processor.deadlines))
        # Every channel shows a value, 0 when nothing waits, so "no backlog" is visible.
        backlog = processor.backlog(now_ms())
        for key in set(backlog) | {(c, w) for c in CHANNELS for w in WAITING}:
            count, oldest_s = backlog.get(key, (0, 0.0))
            metrics.RECON_UNMATCHED.labels(*key).set(count)
            metrics.RECON_UNMATCHED_OLDEST_AGE.labels(*key).set(oldest_s)

    app.settle_processor = processor  # type: ignore[attr-defined]
    return app


def make_settle_app(settings: Settings, ps: ProcessorSettings, registry: Any) -> faust.App:
    """settle: reconciliation.results (MATCHED, MATCHED_MANUAL), refunds.results (MATCHED)
    and disputes.results (held, released, fees) -> items by merchant|currency -> batches
    netting refunds and disputes against payments."""
    topics = TopicNames(ps.topic_prefix)
    n = settings.kafka.partitions
    app = base_app(f"{ps.topic_prefix}settle-settle", settings, ps)
    app.settle_delivery_guard = DeliveryGuard(SETTLE_STAGE)  # type: ignore[attr-defined]
    metrics.init_stage(SETTLE_STAGE)
    install_readiness(app, SETTLE_STAGE, settings)
    items_name = f"{app.conf.id}-items"
    items = owned_topic(app, items_name, n, ITEMS_RETENTION)
    ticks = owned_topic(app, tick_topic_name(app.conf.id), n, TICK_RETENTION)
    results = app.topic(topics.results, topics.refund_results, topics.dispute_results,
                        key_serializer="raw", value_serializer="raw")
    batching_source = stage_channel(app, [], [items, ticks], n, settings.kafka)
    table = _table(app, "settle-batches", n)
    processor = SettleProcessor(
        registry, table, ps.windows, ps.fees, topics, items_name, tick_topic_name(app.conf.id),
        ids_windows=ps.batched_ids_windows, ids_max=ps.batched_ids_max,
        idle_evict_ms=ps.settle_idle_evict_ms,
        max_batch_bytes=app.conf.producer_max_request_size,
    )
    install_tick_timer(app, tick_topic_name(app.conf.id), ps.tick_interval_s)
    _forget_on_rebalance(app, processor.forget_partitions)

    @app.agent(results)
    async def itemize(stream: Any) -> None:
        # Re-keys MATCHED payment and refund results and dispute results by merchant|currency
        # through the internal items topic, so one merchant+currency's batches (its entry, its
        # carried balance and one table key per batched item) live in exactly one partition of
        # the table.
        await registry_off_loop(processor.prefetch, None)  # output schemas before any record
        async for event in stream.events():
            decision = await _with_registry_retry(processor.on_result, event, SETTLE_STAGE,
                                                  processor.prefetch)
            await _send(app, decision.outputs)
            _count_settle(decision)

    @app.agent(batching_source)
    async def batch(stream: Any) -> None:
        async for event in stream.events():
            decision = await _with_registry_retry(processor.process, event, SETTLE_STAGE,
                                                  processor.prefetch)
            await _send(app, decision.outputs)
            _count_settle(decision)

    @app.timer(interval=GAUGE_INTERVAL_S)
    async def gauges() -> None:
        metrics.OPEN_BATCHES.set(processor.open_batches())

    app.settle_processor = processor  # type: ignore[attr-defined]
    return app


def _forget_on_rebalance(app: faust.App, forget: Callable[[], None]) -> None:
    # Another worker may have changed a partition while it was away: rebuild its deadlines
    # from the (recovered) table on its next event rather than trust the old in-memory heap.
    @app.on_partitions_assigned.connect
    async def on_assigned(
        sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        forget()


async def _with_registry_retry(
    fun: Callable[..., D], event: Any, stage: str, prefetch: RegistryPrefetch,
    with_headers: bool = False,
) -> D:
    """Call a processor on one event, retrying with backoff while the registry is away.

    Registry lookups the event needs are done in a thread first (see RegistryPrefetch).
    `with_headers` passes the record's headers too (the placement topic's origin).
    """
    msg = event.message
    key = msg.key if isinstance(msg.key, bytes) or msg.key is None else bytes(msg.key)
    extra = (msg.headers,) if with_headers else ()
    backoff_s = 0.5
    while True:
        await registry_off_loop(prefetch, msg.value)
        try:
            return fun(key, msg.value, msg.topic, msg.partition, msg.offset, *extra)
        except RegistryUnavailable as exc:
            metrics.REGISTRY_RETRIES.labels(stage).inc()
            log.warning("registry unavailable, retrying %s/%s@%s in %.1fs: %s",
                        msg.topic, msg.partition, msg.offset, backoff_s, exc)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, REGISTRY_BACKOFF_MAX_S)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("%s: transient table error, retrying %s/%s@%s in %.1fs: %s", stage,
                        msg.topic, msg.partition, msg.offset, backoff_s, exc)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, REGISTRY_BACKOFF_MAX_S)


async def _send(app: faust.App, outputs: Iterable[Output]) -> None:
    guard: DeliveryGuard = app.settle_delivery_guard  # type: ignore[attr-defined]
    await guard.send_all(app.producer, ((o.topic, o.key, o.value, list(o.headers), o.partition)
                                        for o in outputs))


def _count_recon(decision: ReconDecision, tick: bool) -> None:
    if not tick:  # ticks are timers, not records
        metrics.RECORDS.labels(RECONCILE_STAGE, decision.outcome).inc()
    if decision.error_type:
        metrics.DEAD_LETTERS.labels(RECONCILE_STAGE, decision.error_type).inc()
    for result in decision.results:
        metrics.RECON_OUTCOMES.labels(result.channel or "unknown", result.outcome).inc()
    for _channel, seconds in decision.matched_after_s:
        metrics.RECON_TIME_TO_MATCH.observe(seconds)
    for refund in decision.refunds:
        if refund.request is not None:
            metrics.REFUND_REQUESTS.labels(refund.request).inc()
        for reason in refund.reasons:
            metrics.REFUND_REJECTIONS.labels(reason).inc()
        for channel, outcome in refund.results:
            metrics.REFUND_OUTCOMES.labels(channel.lower(), outcome).inc()
        if refund.over_capture:
            channel = refund.results[0][0].lower() if refund.results else "unknown"
            metrics.REFUND_OVER_CAPTURE.labels(channel).inc(refund.over_capture)
    for dispute in decision.disputes:
        for channel, event in dispute.results:
            metrics.DISPUTE_RESULTS.labels(channel.lower(), event).inc()
        for reason in dispute.reasons:
            metrics.DISPUTE_REJECTIONS.labels(reason).inc()
    for kind, outcome in decision.cases:
        metrics.CASE_EVENTS.labels(kind, outcome).inc()
    if decision.tick_errors:
        metrics.TICK_ERRORS.labels(RECONCILE_STAGE).inc(decision.tick_errors)


def _count_settle(decision: SettleDecision) -> None:
    if decision.outcome != TICKED:  # ticks are timers, not records
        metrics.RECORDS.labels(SETTLE_STAGE, decision.outcome).inc()
    if decision.outcome in (ADDED, DUPLICATE):
        metrics.BATCH_ITEMS.labels(decision.outcome).inc()
    if decision.error_type:
        metrics.DEAD_LETTERS.labels(SETTLE_STAGE, decision.error_type).inc()
    for batch in decision.closed:
        metrics.BATCHES_CLOSED.labels(batch.currency).inc()
        # Counters only go up: payments' sums (gross, fee, net), refunds', reversals' and
        # disputes' sums as positive amounts (refund_*, payment_reversal_*, refund_reversal_*,
        # dispute_hold_*, dispute_release_*, dispute_fee_*), what
        # was paid out and what was carried into the next batch (carried_out, positive).
        amounts = metrics.BATCH_AMOUNTS_CLOSED
        for kind, value in batch_amounts(batch).items():
            amounts.labels(batch.currency, kind).inc(value)
    if decision.tick_errors:
        metrics.TICK_ERRORS.labels(SETTLE_STAGE).inc(decision.tick_errors)
