"""Never commit past a record that was not acknowledged.

Upstream: faust's ``Consumer._new_offset`` (faust/transport/consumer.py) commits the first run
of consecutive acknowledged offsets, and only refuses when the lowest acknowledged offset is
more than one past the committed one (and never when 0 or nothing is committed). The
committed offset is the next offset to read, so a run starting one past it skips a record
that was never acknowledged: still in flight, or never handed over. Upstream reports:
faust-streaming/faust#606 (open: "Wrong offset commit in case of gaps"), #312 and #378 (the
earlier attempts at the rule), and the open pull request faust-streaming/faust#707 with the
same fix.

The wrapper refuses any run that does not start at the committed offset, and otherwise lets
faust compute the offset. Its floor where nothing or 0 is committed is set by
patches.perform_seek (a partition's first offset, or 0).

Proved by tests/unit/stream_processors/test_patch_offsets.py
(test_commits_the_run_that_starts_at_the
_committed_offset, test_never_commits_past_a_record_that_was_not_acknowledged,
test_stops_at_a_hole_inside_the_run, test_nothing_committed_yet_commits_the_first_run,
test_a_partition_read_from_its_beginning_commits_only_from_its_first_offset).
"""

from __future__ import annotations

from typing import Any, Final

from faust.transport import consumer as faust_consumer

from stream_processors.patches import replace

UPSTREAM: Final = (
    "faust.transport.consumer:Consumer._new_offset",
)

_faust_new_offset = faust_consumer.Consumer._new_offset


def new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp``: never past a record that was not acknowledged."""
    acked = self._acked[tp]
    committed = self._committed_offset[tp]
    if acked and committed is not None and not self._gap[tp] and min(acked) > committed:
        return None  # the record at `committed` is still in flight (or was never handed over)
    result: int | None = _faust_new_offset(self, tp)
    return result


def install() -> None:
    replace(faust_consumer.Consumer, "_new_offset", new_offset)
