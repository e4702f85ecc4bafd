"""SETTLE_EVENT_LOOP: the faust workers' event loop choice."""

from __future__ import annotations

import asyncio

import click
import pytest

from settle.cli.workers import use_event_loop


def test_the_standard_loop_is_left_alone() -> None:
    before = asyncio.get_event_loop_policy()
    assert use_event_loop(" AsyncIO ") == "asyncio"
    assert use_event_loop("") == "asyncio"  # empty means the default
    assert asyncio.get_event_loop_policy() is before


def test_uvloop_installs_its_policy() -> None:
    before = asyncio.get_event_loop_policy()
    try:
        assert use_event_loop("uvloop") == "uvloop"
        assert type(asyncio.get_event_loop_policy()).__module__.startswith("uvloop")
    finally:
        asyncio.set_event_loop_policy(before)


def test_an_unknown_loop_is_refused_with_the_choices() -> None:
    with pytest.raises(click.BadParameter, match="uvloop, asyncio"):
        use_event_loop("trio")
