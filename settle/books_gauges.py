"""Dispute and case gauges `settle monitor` derives from PostgreSQL with each books check.

What an operator acts on: open disputes (by channel and stage, and by how long is left until
their respond-by deadline), the funds they hold per currency, open exception cases (by outcome
and age) and cases waiting for a second operator's approval. Labels are bounded: channel,
stage, currency, outcome and fixed buckets, never a payment, dispute or case id.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from prometheus_client.core import GaugeMetricFamily

from schemas.topics import CHANNELS
from settlement.cases import CASE_OUTCOMES

# Days to a dispute's respond_by: (label, upper bound in days); past it is "overdue", no
# deadline "none".
DEADLINE_BUCKETS: tuple[tuple[str, int], ...] = (("0-2d", 2), ("2-7d", 7), ("7-30d", 30))
DEADLINE_OVERDUE, DEADLINE_LATER, DEADLINE_NONE = "overdue", "30d+", "none"
# Age of an open case: (label, upper bound in days); older is "7d+".
AGE_BUCKETS: tuple[tuple[str, int], ...] = (("0-1d", 1), ("1-3d", 3), ("3-7d", 7))
AGE_OLDER = "7d+"


def _bucket_sql(expr: str, buckets: tuple[tuple[str, int], ...], above: str) -> str:
    whens = " ".join(f"WHEN {expr} < interval '{days} days' THEN '{label}'"
                     for label, days in buckets)
    return f"CASE {whens} ELSE '{above}' END"


OPEN_DISPUTES = """
    SELECT lower(channel), stage, COUNT(*) FROM disputes WHERE state = 'OPEN' GROUP BY 1, 2"""
OPEN_DISPUTES_BY_DEADLINE = f"""
    SELECT lower(channel),
           CASE WHEN respond_by IS NULL THEN '{DEADLINE_NONE}'
                WHEN respond_by < now() THEN '{DEADLINE_OVERDUE}'
                ELSE {_bucket_sql("respond_by - now()", DEADLINE_BUCKETS, DEADLINE_LATER)} END,
           COUNT(*)
      FROM disputes WHERE state = 'OPEN' GROUP BY 1, 2"""
SOONEST_RESPOND_BY = """
    SELECT lower(channel), EXTRACT(EPOCH FROM MIN(respond_by) - now())::float8
      FROM disputes WHERE state = 'OPEN' AND respond_by IS NOT NULL GROUP BY 1"""
# Every currency that ever had a dispute: 0 once nothing of it is held.
HELD = """
    SELECT currency, COALESCE(SUM(amount_minor) FILTER (WHERE state = 'OPEN'), 0)
      FROM disputes GROUP BY 1"""
# Series that read 0 (or +Inf: no deadline ahead) when nothing is open, so a panel or an
# alert sees "none" rather than no data.
STAGES: tuple[str, ...] = ("PRE_DISPUTE", "DISPUTE", "PRE_ARBITRATION")
# Every outcome that opens a case, and every age bucket: 0 (no age) when none is open.
CASE_OUTCOME_LABELS: tuple[str, ...] = tuple(sorted(set().union(*CASE_OUTCOMES.values())))
AGE_LABELS: tuple[str, ...] = (*(b for b, _ in AGE_BUCKETS), AGE_OLDER)
DEADLINE_LABELS: tuple[str, ...] = (DEADLINE_OVERDUE, *(b for b, _ in DEADLINE_BUCKETS),
                                    DEADLINE_LATER, DEADLINE_NONE)
# A case row whose OPENED event is not read yet (a later one created it) counts from that one.
_OPENED_AT = "COALESCE(opened_at, last_event_at)"
OPEN_CASES = f"""
    SELECT outcome, {_bucket_sql(f"now() - {_OPENED_AT}", AGE_BUCKETS, AGE_OLDER)}, COUNT(*)
      FROM exception_cases WHERE status <> 'RESOLVED' GROUP BY 1, 2"""
OLDEST_OPEN_CASE = f"""
    SELECT outcome, EXTRACT(EPOCH FROM now() - MIN({_OPENED_AT}))::float8
      FROM exception_cases WHERE status <> 'RESOLVED' GROUP BY 1"""
# Waiting since the case's last PROPOSED event (a rejected proposal reopens the case; a new
# one waits again).
AWAITING_APPROVAL = """
    SELECT c.outcome, COUNT(*), EXTRACT(EPOCH FROM now() - MIN(p.proposed_at))::float8
      FROM exception_cases c
      CROSS JOIN LATERAL (SELECT MAX(e.occurred_at) AS proposed_at FROM case_events e
                           WHERE e.case_id = c.case_id AND e.kind = 'PROPOSED') p
     WHERE c.status = 'AWAITING_APPROVAL' GROUP BY 1"""


@dataclass(slots=True)
class CaseGauges:
    """One reading of the dispute and case figures (what the last books check saw)."""

    disputes_open: dict[tuple[str, str], int] = field(default_factory=dict)  # channel, stage
    disputes_by_deadline: dict[tuple[str, str], int] = field(default_factory=dict)
    soonest_respond_by_s: dict[str, float] = field(default_factory=dict)  # per channel
    held_minor: dict[str, int] = field(default_factory=dict)  # per currency
    cases_open: dict[tuple[str, str], int] = field(default_factory=dict)  # outcome, age
    oldest_case_age_s: dict[str, float] = field(default_factory=dict)  # per outcome
    awaiting_approval: dict[str, int] = field(default_factory=dict)  # per outcome
    oldest_awaiting_s: dict[str, float] = field(default_factory=dict)  # per outcome


def read_gauges(conn: psycopg.Connection) -> CaseGauges:
    """Every figure, from the tables the ledger sink keeps."""
    g = CaseGauges()
    g.disputes_open = {(ch, st): 0 for ch in CHANNELS for st in STAGES}
    g.disputes_open.update({(ch, st): int(n) for ch, st, n in conn.execute(OPEN_DISPUTES)})
    g.disputes_by_deadline = {(ch, b): 0 for ch in CHANNELS for b in DEADLINE_LABELS}
    g.disputes_by_deadline.update({(ch, b): int(n)
                                   for ch, b, n in conn.execute(OPEN_DISPUTES_BY_DEADLINE)})
    g.soonest_respond_by_s = {ch: math.inf for ch in CHANNELS}
    g.soonest_respond_by_s.update({ch: float(s) for ch, s in conn.execute(SOONEST_RESPOND_BY)})
    g.held_minor = {c.strip(): int(v) for c, v in conn.execute(HELD)}
    g.cases_open = {(o, age): 0 for o in CASE_OUTCOME_LABELS for age in AGE_LABELS}
    g.cases_open.update({(o, age): int(n) for o, age, n in conn.execute(OPEN_CASES)})
    g.oldest_case_age_s = {o: 0.0 for o in CASE_OUTCOME_LABELS}
    g.oldest_case_age_s.update({o: float(s) for o, s in conn.execute(OLDEST_OPEN_CASE)})
    g.awaiting_approval = {o: 0 for o in CASE_OUTCOME_LABELS}
    g.oldest_awaiting_s = {o: 0.0 for o in CASE_OUTCOME_LABELS}
    for outcome, n, waited in conn.execute(AWAITING_APPROVAL):
        g.awaiting_approval[outcome] = int(n)
        if waited is not None:
            g.oldest_awaiting_s[outcome] = float(waited)
    return g


# name, help, labels, the CaseGauges field it reads.
_FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("settle_disputes_open", "Disputes open (funds held), per channel and stage",
     ("channel", "stage"), "disputes_open"),
    ("settle_disputes_open_by_deadline",
     "Open disputes by time left until their respond-by deadline: overdue, 0-2d, 2-7d, "
     "7-30d, 30d+, none (no deadline given)", ("channel", "due_in"), "disputes_by_deadline"),
    ("settle_disputes_respond_by_soonest_seconds",
     "Seconds until the earliest respond-by deadline among the channel's open disputes "
     "(negative: passed; +Inf: none open)", ("channel",), "soonest_respond_by_s"),
    ("settle_disputes_held_minor",
     "Funds held by open disputes, in the currency's minor units (compare within a "
     "currency only)", ("currency",), "held_minor"),
    ("settle_cases_open",
     "Exception cases not resolved (open or awaiting approval), per outcome and age since "
     "opened: 0-1d, 1-3d, 3-7d, 7d+", ("outcome", "age"), "cases_open"),
    ("settle_cases_open_oldest_age_seconds",
     "Age of the oldest unresolved exception case, per outcome", ("outcome",),
     "oldest_case_age_s"),
    ("settle_cases_awaiting_approval",
     "Exception cases whose resolution waits for a second operator, per outcome",
     ("outcome",), "awaiting_approval"),
    ("settle_cases_awaiting_approval_oldest_age_seconds",
     "How long the longest-waiting proposed resolution has waited for approval, per "
     "outcome", ("outcome",), "oldest_awaiting_s"),
)


def families(g: CaseGauges) -> Iterator[GaugeMetricFamily]:
    """The gauges as Prometheus metric families."""
    for name, help_text, labels, attr in _FAMILIES:
        fam = GaugeMetricFamily(name, help_text, labels=list(labels))
        for key, value in sorted(getattr(g, attr).items()):
            fam.add_metric(list(key) if isinstance(key, tuple) else [key], value)
        yield fam
