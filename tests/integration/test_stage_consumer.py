"""A faust stage's consumer, built by faust's own driver, fetches with the settings asked for.

faust has no setting for the fetch minimum and wait (stream_processors.patches.consumer_fetch sets
them on the aiokafka consumer before it starts); this checks, on the real broker, that the
started consumer's fetcher uses them, so an aiokafka upgrade that keeps them elsewhere fails
here rather than silently putting one record per fetch back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import pytest

from infra import config
from infra.processor_settings import ProcessorSettings
from stream_processors.app import base_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _fetcher_settings(settings: config.Settings, tmp_path: Path) -> tuple[int, int]:
    app = base_app(f"t-fetch-{uuid.uuid4().hex[:8]}", settings,
                   ProcessorSettings(data_dir=tmp_path))

    async def run() -> tuple[int, int]:
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        await consumer.start()
        try:
            fetcher = consumer._fetcher
            return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(run(), 60))


def test_the_started_stage_consumer_fetches_with_the_configured_minimum_and_wait(
    stack: config.Settings, tmp_path: Path
) -> None:
    kafka = dataclasses.replace(stack.kafka, stage_fetch_min_bytes=12_345,
                                stage_fetch_max_wait_ms=7)
    assert _fetcher_settings(dataclasses.replace(stack, kafka=kafka), tmp_path) == (12_345, 7)


def test_the_defaults_hold_a_fetch_for_64_kib_or_25_ms(
    stack: config.Settings, tmp_path: Path
) -> None:
    assert (stack.kafka.stage_fetch_min_bytes, stack.kafka.stage_fetch_max_wait_ms) == (
        65_536, 25)
    assert _fetcher_settings(stack, tmp_path) == (65_536, 25)
