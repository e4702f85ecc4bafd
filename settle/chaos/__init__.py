"""Fault injection on the real stack: scenarios and seeded random schedules, audited.

A run starts an isolated copy of the pipeline (own topics, database and pid files: see
settle.e2e), publishes a steady flow of simulated payments (with the simulator's usual bad
input and channel faults) and injects faults at chosen moments: SIGKILL of a worker or a sink
and its restart, a Kafka broker restart, a PostgreSQL stop, a registry outage (at start or
mid-run), a stop/start of one of two workers of a stage (rebalance) and a storm of bad input.
Then it drains the pipeline (bounded), runs both audits and reports, per run: payments in,
payments settled, duplicates, lost, and the recovery time of every fault.

Service faults go through `deploy/stack.sh stop|start SERVICE`, so they act on the stack
named by the SETTLE_* environment (never run them against a stack others are using).

Modules: plan (scenarios, seeded schedules, fault kinds), report (figures, verdict, summary),
stack (the services, for faults and before a run), traffic (the publisher), probe (recovery),
runner (one run, run_plan).
"""

from settle.chaos.plan import (
    KILL,
    KINDS,
    REBALANCE,
    SERVICE_RESTART,
    SERVICE_STOP,
    SINKS,
    STORM,
    WORKERS,
    Fault,
    Plan,
    random_plan,
    scenarios,
)
from settle.chaos.report import FaultOutcome, RunReport, offset_ranges, summary_lines
from settle.chaos.runner import Runner, keep_logs, run_plan
from settle.stack import down_services, ensure_stack_up, stack_service, stack_status

__all__ = [
    "KILL",
    "KINDS",
    "REBALANCE",
    "SERVICE_RESTART",
    "SERVICE_STOP",
    "SINKS",
    "STORM",
    "WORKERS",
    "Fault",
    "FaultOutcome",
    "Plan",
    "RunReport",
    "Runner",
    "down_services",
    "ensure_stack_up",
    "keep_logs",
    "offset_ranges",
    "random_plan",
    "run_plan",
    "scenarios",
    "stack_service",
    "stack_status",
    "summary_lines",
]
