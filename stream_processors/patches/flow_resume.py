"""Resuming the flow empties the stream queues only when it ends a suspension.

Upstream: mode-streaming's ``FlowControlEvent.resume`` (mode/utils/queues.py) empties every
stream queue, also when the flow was not suspended. After table recovery faust resumes the
flow once to read the changelogs, seeks the inputs to their committed offsets, and resumes it
again: that second resume threw away the input records delivered in between (kill-workers
lost 2 to 58 records of one partition in about one run in four). Related reports:
faust-streaming/faust#596 (queues cleared after recovery leave gaps) and #216/#217 (the
order of resume and seek in recovery).

Queues are now emptied only by a resume that ends a suspension (their records predate the
rebalance and are fetched again from the committed offset) and by ``perform_seek`` itself
(patches.perform_seek), in the same step as the read-offset reset.

Proved by tests/unit/stream_processors/test_patch_offsets.py
(test_resume_keeps_queued_records_unless_it_ends
_a_suspension) and on the real broker by tests/chaos (kill-workers).
"""

from __future__ import annotations

from typing import Any, Final

from mode.utils import queues as mode_queues

from stream_processors.patches import replace

UPSTREAM: Final = (
    "mode.utils.queues:FlowControlEvent.resume",
)


def flow_resume(self: Any) -> None:
    """mode's FlowControlEvent.resume, emptying the queues only after a suspension."""
    was_suspended = self._suspend.is_set()
    self._suspend.clear()
    self._resume.set()
    if was_suspended:
        self.clear()


def install() -> None:
    replace(mode_queues.FlowControlEvent, "resume", flow_resume)
