"""A table's changelog record the broker refuses ends the worker before any commit.

Upstream: faust's ``Topic._on_published`` (faust/topics.py), the callback of every record
faust sends itself, among them every table's changelog record (``Collection.send_changelog``
-> ``Topic.send_soon`` -> the producer buffer -> ``Topic.publish_message``). When the broker
refuses the record (after aiokafka's retries) it only sets the exception on the record's
future, which nobody awaits, and logs a warning; ``Collection._on_changelog_sent`` is never
called. The timer's commit then goes ahead, and the input whose table update was lost is
never read again: the update is gone from the changelog (a restarted worker recovers the
table without it) while the input counts as processed. A send that raises at once
(``publish_message``: metadata timeout, record too large for the client) escapes the producer
buffer's task and crashes the buffer service (mode's ``Service.crash``); nothing ties that to
the input's offset either. No upstream issue found for either.

Both now call the app's DeliveryGuard (stream_processors.delivery: ``attach``; every stage's
app has one), the policy the stages' outputs already have: ``fail`` logs the record's topic
and error and hard-exits with EXIT_SEND_FAILED (75) before any later commit can run (the
refused record's future callback runs before the flush that a commit awaits resumes). The
restarted worker re-reads from the last commit, re-applies the input and sends its changelog
record again. Only apps with a guard are affected: faust's own behaviour stays for any other
(faust's warning is still logged first). In the stages the tables' changelogs are the only
records faust sends itself; the outputs go through ``DeliveryGuard.send_all``.
patches.producer_buffer_flush makes the commit's flush wait until every changelog record put
before it has reached the producer, so its failure cannot come after the commit.

Proved by tests/unit/stream_processors/test_patch_changelog_delivery.py (faust's own Topic with a
refused,
a cancelled and a delivered record, and a send that raises) and on the real broker by
tests/integration/test_delivery_failure.py
(test_refused_changelog_record_stops_the_worker_before_the_commit: the changelog topic
refuses every record, the worker exits 75 with the input's offset uncommitted, and a restart
with the topic fixed routes the request and writes its changelog record).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from faust import topics as faust_topics

from stream_processors.delivery import guard_of
from stream_processors.patches import replace

UPSTREAM: Final = (
    # wrapped:
    "faust.topics:Topic._on_published",
    "faust.topics:Topic.publish_message",
    # the changelog path that reaches them:
    "faust.tables.base:Collection.send_changelog",
    "faust.tables.base:Collection._on_changelog_sent",
    "faust.transport.producer:ProducerBuffer._handle_pending",
)

_faust_on_published = faust_topics.Topic._on_published
_faust_publish_message = faust_topics.Topic.publish_message


def _topic_name(channel: Any) -> str:
    try:
        return str(channel.get_topic_name())
    except Exception:  # a channel without one name (a pattern): name it as faust would
        return repr(channel)


def _failure(fut: asyncio.Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError("delivery cancelled")
    return fut.exception()


def _fail(topic: Any, name: str, exc: BaseException) -> None:
    guard = guard_of(topic.app)
    if guard is None:
        return
    changelogs = getattr(getattr(topic.app, "tables", None), "changelog_topics", ())
    what = "a changelog record" if name in changelogs else "a record faust sent"
    guard.fail(name, exc, what=what)


def on_published(self: Any, fut: asyncio.Future[Any], message: Any, producer: Any,
                 state: Any) -> None:
    """faust's Topic._on_published, then the app's DeliveryGuard for a failed delivery."""
    try:
        _faust_on_published(self, fut, message=message, producer=producer, state=state)
    finally:
        if (exc := _failure(fut)) is not None:
            _fail(self, _topic_name(message.message.channel), exc)


async def publish_message(self: Any, fut: Any, wait: bool = False) -> Any:
    """faust's Topic.publish_message, calling the app's DeliveryGuard when the send raises."""
    try:
        return await _faust_publish_message(self, fut, wait=wait)
    except Exception as exc:
        _fail(self, _topic_name(fut.message.channel), exc)
        raise


def install() -> None:
    replace(faust_topics.Topic, "_on_published", on_published)
    replace(faust_topics.Topic, "publish_message", publish_message)
