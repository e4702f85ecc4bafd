"""Operators at work, simulated: resolve every open exception case of a run through
`cases.actions`, as two operators would with `settle cases`, and say what became of them.

Used by the end-to-end run, the fault scenarios and the demo. The policy is deterministic
(a hash of the case id picks among the allowed resolutions) and covers every path of the
workflow: force-match and mark-received (money, `MATCHED_MANUAL`), close-no-funds and ignore,
a resolution above the approval limit approved by the second operator, or rejected and then
closed. Each round reads the cases from PostgreSQL, publishes one action per case that needs
one, and waits for the stage's answers; action ids derive from the run id, the round and the
case, so a round sent again acts on nothing twice.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg

from settle.cases_tool import (
    APPROVE,
    AWAITING_APPROVAL,
    CLOSE_NO_FUNDS,
    FORCE_MATCH,
    IGNORE,
    MARK_RECEIVED,
    OPEN,
    REJECT,
    RESOLVE,
    CaseFilter,
    CaseRow,
    PlannedAction,
    action_id_for,
    allowed_resolutions,
    case_action,
    fetch_cases,
    publish_actions,
    wait_for_answers,
)

OPERATOR: Final = "ops-alice"
APPROVER: Final = "ops-bob"
# One in this many resolutions waiting for approval is rejected (then closed next round).
REJECT_ONE_IN: Final = 4


def _pick(case_id: str, salt: str, n: int) -> int:
    return int(hashlib.sha256(f"{salt}\x1f{case_id}".encode()).hexdigest()[:8], 16) % n


def choose(case: CaseRow, rejected_before: bool) -> str:
    """The resolution for an open case: money where the outcome allows it (mostly), else a
    closing one; a case whose proposal was rejected is closed without funds."""
    allowed = allowed_resolutions(case.subject, case.outcome)
    if rejected_before:
        return CLOSE_NO_FUNDS
    money = [r for r in allowed if r in (FORCE_MATCH, MARK_RECEIVED)]
    if money and _pick(case.case_id, "money", 4) != 0:
        return money[0]
    closing = [r for r in allowed if r in (CLOSE_NO_FUNDS, IGNORE)]
    return closing[_pick(case.case_id, "closing", len(closing))]


@dataclass(slots=True)
class CaseFlowStats:
    """What the simulated operators sent and what the stage answered."""

    rounds: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # RESOLVE:FORCE_MATCH, APPROVE, ...
    answers: Counter[str] = field(default_factory=Counter)  # RESOLVED, PROPOSED, REFUSED:...
    unanswered: int = 0
    left_open: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "sent": dict(sorted(self.sent.items())),
                "answers": dict(sorted(self.answers.items())), "unanswered": self.unanswered,
                "left_open": self.left_open}


def resolve_all(conn: psycopg.Connection, sender: Any, topic: str, run_id: str,
                timeout_s: float = 120.0, max_rounds: int = 6,
                say: Callable[[str], None] = lambda _m: None,
                min_age_s: int = 0) -> CaseFlowStats:
    """Resolve every case OPEN or AWAITING_APPROVAL (older than `min_age_s`), round by round,
    until none is left or `max_rounds` rounds or `timeout_s` have passed. `sender` has
    `send(topic, key, record)` and `flush()` (producers.producer.AvroProducer)."""
    stats = CaseFlowStats()
    deadline = time.monotonic() + timeout_s
    while stats.rounds < max_rounds and time.monotonic() < deadline:
        cases = fetch_cases(conn, CaseFilter(statuses=(OPEN, AWAITING_APPROVAL),
                                             older_than_s=min_age_s or None))
        if not cases:
            break
        stats.rounds += 1
        # A second operator rejects a case's proposal at most once (its history says so,
        # whichever run rejected it); the case is then closed without funds.
        rejected = {row[0] for row in conn.execute(
            "SELECT DISTINCT case_id FROM case_events WHERE kind = 'REJECTED'").fetchall()}
        now_ms = time.time_ns() // 1_000_000
        planned: list[PlannedAction] = []
        for case in cases:
            round_id = f"{run_id}.r{stats.rounds}"
            if case.status == AWAITING_APPROVAL:
                kind = REJECT if _pick(case.case_id, "reject", REJECT_ONE_IN) == 0 \
                    and case.case_id not in rejected else APPROVE
                resolution = None
                remark = "checked against the channel's bill" if kind == APPROVE \
                    else "the bill does not show it; close it instead"
                operator = APPROVER
            else:
                kind, resolution = RESOLVE, choose(case, case.case_id in rejected)
                remark = f"{resolution.lower().replace('_', ' ')} after review"
                operator = OPERATOR
            action_id = action_id_for(round_id, case.case_id, kind, resolution)
            planned.append(PlannedAction(case, case_action(
                case, kind, resolution, operator, remark, action_id, now_ms)))
            stats.sent[f"{kind}:{resolution}" if resolution else kind] += 1
        publish_actions(sender, topic, planned)
        sender.flush()
        say(f"round {stats.rounds}: {len(planned)} case actions sent")
        answers = wait_for_answers(conn, [p.action_id for p in planned],
                                   max(1.0, deadline - time.monotonic()))
        for event in answers.values():
            stats.answers[f"{event.kind}:{event.reason}" if event.reason else event.kind] += 1
        stats.unanswered += len(planned) - len(answers)
    stats.left_open = len(fetch_cases(conn, CaseFilter(statuses=(OPEN, AWAITING_APPROVAL))))
    return stats

