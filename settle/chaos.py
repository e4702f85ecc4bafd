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
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from confluent_kafka import ConsumerGroupTopicPartitions

from infra.admin import admin_client
from infra.config import REPO_ROOT, Settings
from infra.config import load as load_settings
from infra.kafka import make_consumer
from producers.order_faults import INJECTED_KINDS
from producers.order_flow import publish_order
from producers.orders import Accounting, OrderMix, SimulatedOrder, generate_orders
from producers.producer import AvroProducer
from settle.audit_books import BooksAudit, unbatched_matched
from settle.audit_ingest import IngestAudit, end_offsets
from settle.e2e import IsolatedPipeline, audit_pipeline_ingest, isolated_pipeline, specs
from settle.processes import ProcessSpec
from sinks.db import connect

log = logging.getLogger("settle.chaos")

WORKERS: Final = ("validate", "reconcile", "settle")
SINKS: Final = ("ledger-sink", "settlement-sink")
SINK_GROUPS: Final = {"ledger-sink": "settle-ledger-sink",
                      "settlement-sink": "settle-settlement-sink"}

# Fault kinds: what `target` names for each.
KILL: Final = "sigkill"              # a worker or sink process; restarted after hold_s
SERVICE_RESTART: Final = "restart"   # a stack service (kafka): stopped, started after hold_s
SERVICE_STOP: Final = "stop"         # a stack service (postgres, registry) down for hold_s
REBALANCE: Final = "rebalance"       # one of two workers of a stage: SIGTERM, start after hold_s
STORM: Final = "storm"               # `target` bad records mixed into the flow (no heal)
KINDS: Final = (KILL, SERVICE_RESTART, SERVICE_STOP, REBALANCE, STORM)
# How long a SIGTERMed worker may take to leave its group before it is killed.
STOP_GRACE_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault, `at_s` seconds after the first payment is published."""

    at_s: float
    kind: str
    target: str
    hold_s: float = 2.0
    size: int = 0  # STORM: bad records to mix in

    def describe(self) -> str:
        if self.kind == KILL:
            return f"SIGKILL {self.target}, restart after {self.hold_s:g}s"
        if self.kind == SERVICE_RESTART:
            return f"restart {self.target} (down {self.hold_s:g}s)"
        if self.kind == SERVICE_STOP:
            return f"stop {self.target} for {self.hold_s:g}s"
        if self.kind == REBALANCE:
            return f"stop 1 of 2 {self.target} workers, start after {self.hold_s:g}s"
        return f"storm of {self.size} bad records"


@dataclass(frozen=True, slots=True)
class Plan:
    """A run: the flow, the faults and whether the registry is down when the pipeline starts."""

    name: str
    count: int = 3000
    rate_per_s: float = 120.0
    seed: int = 1
    bad_ratio: float = 0.02
    faults: tuple[Fault, ...] = ()
    registry_down_at_start_s: float = 0.0  # >0: processes start with the registry stopped
    drain_timeout_s: float = 150.0

    @property
    def two_workers_per_stage(self) -> bool:
        return any(f.kind == REBALANCE for f in self.faults)


@dataclass(slots=True)
class FaultOutcome:
    fault: str
    kind: str
    target: str
    planned_at_s: float
    at_s: float = 0.0
    healed_at_s: float | None = None
    progress_while_down: int | None = None
    recovery_s: float | None = None
    note: str = ""


@dataclass(slots=True)
class RunReport:
    """Per-run figures: the lead quotes them; the tests assert on them."""

    name: str
    seed: int
    payments_in: int = 0
    routed_expected: int = 0
    payments_settled: int = 0
    matched: int = 0
    batched: int = 0
    duplicates: int = 0
    lost: int = 0
    in_equals_out: bool = False
    ingest_balanced: bool = False
    ingest: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    books_ok: bool = False
    failed_checks: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    faults: list[FaultOutcome] = field(default_factory=list)
    publish_s: float = 0.0
    total_s: float = 0.0
    # What the publisher's stall watch did (producers.producer.AvroProducer).
    publisher_client_replacements: int = 0
    publisher_resent: int = 0
    publisher_extra_copies: int = 0  # requests read twice because of those re-sends
    duplicate_detail: dict[str, int] = field(default_factory=dict)
    lost_detail: dict[str, int] = field(default_factory=dict)
    # Where the requests without any validate output sit: "topic/partition" -> offset ranges.
    unaccounted_ranges: dict[str, list[list[int]]] = field(default_factory=dict)
    # Services found dead before the run and started again (see ensure_stack_up).
    stack_repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.books_ok and self.ingest_balanced and self.in_equals_out
                and self.duplicates == 0 and self.lost == 0 and not self.unexpected_exits
                and all(f.kind == STORM or f.recovery_s is not None for f in self.faults))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


# ----------------------------------------------------------------------------- scenarios

def scenarios(seed: int = 11) -> dict[str, Plan]:
    """The fault-injection test suite: one plan per scenario, each about a minute."""
    return {
        "kill-workers": Plan("kill-workers", seed=seed, faults=(
            Fault(5, KILL, "validate"), Fault(12, KILL, "reconcile"), Fault(19, KILL, "settle"))),
        "kill-sinks": Plan("kill-sinks", seed=seed + 1, faults=(
            Fault(7, KILL, "ledger-sink", hold_s=1), Fault(16, KILL, "settlement-sink", hold_s=1))),
        "restart-kafka": Plan("restart-kafka", seed=seed + 2, faults=(
            Fault(10, SERVICE_RESTART, "kafka", hold_s=3),)),
        # The broker away longer than the consumer groups' session timeouts (45 s for the
        # sinks and the channel simulator, counting its restart), then a rebalance at once:
        # what seed 1 of `settle chaos` does at 136 s.
        "kafka-down-long": Plan("kafka-down-long", count=4000, seed=seed + 8, faults=(
            Fault(8, SERVICE_RESTART, "kafka", hold_s=40),
            Fault(9, REBALANCE, "validate", hold_s=5))),
        "stop-postgres": Plan("stop-postgres", seed=seed + 3, faults=(
            Fault(10, SERVICE_STOP, "postgres", hold_s=8),)),
        "registry-down-at-start": Plan("registry-down-at-start", seed=seed + 4,
                                       registry_down_at_start_s=12.0),
        # Two validate workers that start while the registry is down, then a rebalance: what
        # seed 1 of `settle chaos` does first (its validate partitions are sought back to the
        # beginning after records were already fetched; see faust_fixes, "Seventh").
        "registry-down-at-start-two-workers": Plan(
            "registry-down-at-start-two-workers", seed=seed + 9, registry_down_at_start_s=12.0,
            faults=(Fault(6, REBALANCE, "validate", hold_s=3),)),
        "registry-down-mid-run": Plan("registry-down-mid-run", seed=seed + 5, faults=(
            Fault(8, SERVICE_STOP, "registry", hold_s=10),)),
        "rebalance": Plan("rebalance", seed=seed + 6, faults=(
            Fault(6, REBALANCE, "validate", hold_s=4), Fault(12, REBALANCE, "reconcile", hold_s=4),
            Fault(18, REBALANCE, "settle", hold_s=4))),
        "bad-input-storm": Plan("bad-input-storm", seed=seed + 7, faults=(
            Fault(8, STORM, "payments.requested", size=1500),)),
    }


def random_plan(seed: int, duration_s: float, rate_per_s: float) -> Plan:
    """A seeded schedule of the faults above over `duration_s` of traffic (same seed, same plan).

    Faults are spaced 12-25 s apart so each one heals before the next (a fault whose time
    has passed waits for the previous one to heal); the first comes after 8 s of traffic,
    the last starts at least 10 s before the traffic ends. Every kind comes once, in a
    random order, before any comes twice.
    """
    rng = random.Random(seed)
    menu: list[Callable[[float], Fault]] = [
        *(lambda t, w=w: Fault(t, KILL, w, hold_s=round(rng.uniform(1, 4), 1)) for w in WORKERS),
        *(lambda t, s=s: Fault(t, KILL, s, hold_s=round(rng.uniform(0.5, 3), 1)) for s in SINKS),
        lambda t: Fault(t, SERVICE_RESTART, "kafka", hold_s=round(rng.uniform(1, 5), 1)),
        lambda t: Fault(t, SERVICE_STOP, "postgres", hold_s=round(rng.uniform(3, 10), 1)),
        lambda t: Fault(t, SERVICE_STOP, "registry", hold_s=round(rng.uniform(3, 10), 1)),
        *(lambda t, w=w: Fault(t, REBALANCE, w, hold_s=round(rng.uniform(2, 6), 1))
          for w in WORKERS),
        lambda t: Fault(t, STORM, "payments.requested", size=rng.randrange(300, 2000)),
    ]
    faults = []
    deck: list[Callable[[float], Fault]] = []
    t = 8.0
    while t < duration_s - 10:
        if not deck:  # every kind of fault once (in a random order) before any repeats
            deck = list(menu)
            rng.shuffle(deck)
        faults.append(deck.pop()(round(t, 1)))
        t += rng.uniform(12, 25)
    at_start = round(rng.uniform(5, 12), 1) if rng.random() < 0.5 else 0.0
    return Plan(f"chaos-seed-{seed}", count=int(duration_s * rate_per_s), rate_per_s=rate_per_s,
                seed=seed, faults=tuple(faults), registry_down_at_start_s=at_start,
                drain_timeout_s=240.0)


# ----------------------------------------------------------------------------- services

def _stack_sh(*args: str, env: Mapping[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """`deploy/stack.sh ARGS` on the stack named by this process's SETTLE_* environment."""
    return subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), *args],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})


def stack_service(action: str, service: str) -> None:
    """`deploy/stack.sh stop|start SERVICE`; raises with its output when it fails."""
    proc = _stack_sh(action, service)
    if proc.returncode != 0:
        raise RuntimeError(f"stack.sh {action} {service} failed:\n{proc.stdout}{proc.stderr}")


STACK_SERVICES: Final = ("kafka", "registry", "postgres")   # what a scenario needs up


def down_services(status_table: str,
                  services: Iterable[str] = STACK_SERVICES) -> list[str]:
    """The `services` that `stack.sh status` shows as down or unhealthy."""
    wanted = set(services)
    found = []
    for line in status_table.splitlines():
        cells = line.split()
        if len(cells) >= 2 and cells[0] in wanted and cells[1] in ("down", "unhealthy"):
            found.append(cells[0])
    return found


def stack_status(lines: int = 25, env: Mapping[str, str] | None = None
                 ) -> tuple[int, str, dict[str, str]]:
    """`stack.sh status`'s exit code and table, and the last lines of each service not up
    (with any JVM crash file, hs_err_pid*.log, beside its log). `env` overrides settings:
    PostgreSQL's check logs in to SETTLE_PG_DB, which must exist."""
    status = _stack_sh("status", env=env)
    tails: dict[str, str] = {}
    if status.returncode != 0:
        for service in down_services(status.stdout, (*STACK_SERVICES, "prometheus")):
            tail = _stack_sh("logs", service, "-n", str(lines))
            tails[service] = (tail.stdout + tail.stderr).rstrip()
        crash_files = sorted(load_settings().run_dir.glob("*/logs/hs_err_pid*.log"),
                             key=lambda p: p.stat().st_mtime)
        for crash in crash_files[-2:]:
            tails[crash.name] = "\n".join(crash.read_text(errors="replace").splitlines()[:15])
    return status.returncode, status.stdout + status.stderr, tails


def ensure_stack_up(say: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Start any service a scenario needs that is not running; one line per service started.

    A scenario stops and starts services itself and must begin from a whole stack: a service
    that died before it (CI once lost the registry before the first scenario, and every
    scenario after it failed on "connection refused") is started again here, and the end of
    its log is kept in the line so the death can be explained.
    """
    code, table, tails = stack_status(lines=25)
    if code == 0:
        return []
    repairs = []
    for service in down_services(table):
        tail = tails.get(service, "")
        say(f"STACK: {service} was not up before the scenario; starting it if it is down. "
            f"The end of its log:\n{tail}")
        stack_service("start", service)   # waits until ready; "already running" if unhealthy
        repairs.append(f"{service} was not up before the scenario; "
                       f"its log ended: {tail.splitlines()[-1] if tail else '(empty)'}")
    # An unhealthy service (alive, not answering yet) gets a minute to become healthy; a
    # scenario that starts on a stack still broken after that fails on its own, loudly.
    deadline = time.monotonic() + 60
    while repairs and _stack_sh("status").returncode != 0 and time.monotonic() < deadline:
        time.sleep(1.0)
    return repairs


# ----------------------------------------------------------------------------- traffic

class Publisher(threading.Thread):
    """Publishes the flow at a steady rate; a storm mixes bad records in (2 per valid one)."""

    def __init__(self, pipeline: IsolatedPipeline, producer: AvroProducer, plan: Plan,
                 schema_id: int) -> None:
        super().__init__(name="chaos-publisher", daemon=True)
        self.pipeline, self.producer, self.plan = pipeline, producer, plan
        mix = OrderMix(bad_ratio=plan.bad_ratio, duplicate_ratio=0.01, conflict_ratio=0.002,
                       schema_id=schema_id)
        self.orders = generate_orders(plan.seed, plan.count, pipeline.merchants, mix)
        # Storm records: every kind of bad input, ids of their own (another seed's namespace).
        storm_mix = OrderMix(bad_ratio=1.0, bad_kinds=INJECTED_KINDS, schema_id=schema_id)
        storm_total = sum(f.size for f in plan.faults if f.kind == STORM)
        self.storm_orders = generate_orders(plan.seed + 1_000_003, storm_total,
                                            pipeline.merchants, storm_mix)
        self.expected = Accounting()
        self.sent = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self.error: BaseException | None = None
        self._storm_left = 0
        self._lock = threading.Lock()

    def storm(self, size: int) -> None:
        with self._lock:
            self._storm_left += size

    def _send(self, order: SimulatedOrder) -> None:
        publish_order(self.producer, self.pipeline.topics.requested, order)
        self.expected.add(order)
        self.sent += 1

    def run(self) -> None:
        try:
            self.started_at = time.monotonic()
            for n, order in enumerate(self.orders):
                delay = self.started_at + n / self.plan.rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._send(order)
                for _ in range(2):
                    with self._lock:
                        if self._storm_left <= 0:
                            break
                        self._storm_left -= 1
                    self._send(next(self.storm_orders))
                self.producer.poll(0)
            # A storm asked for after the last valid record still goes out.
            with self._lock:
                left, self._storm_left = self._storm_left, 0
            for _ in range(left):
                self._send(next(self.storm_orders))
            self.producer.flush(120)
        except BaseException as exc:  # reported by the runner, never swallowed
            self.error = exc
        finally:
            self.finished_at = time.monotonic()


# ----------------------------------------------------------------------------- progress

class Probe:
    """A number that grows while a part of the pipeline makes progress (None: can't tell now)."""

    def __init__(self, pipeline: IsolatedPipeline, target: str) -> None:
        topics = pipeline.topics
        self.pipeline = pipeline
        self.sql: str | None = None
        self.topics: tuple[str, ...] = ()
        # What the stage reads and as which group: "nothing left to do" counts as recovered,
        # since a fault healed after the traffic ended has no new progress to show.
        self.group = f"{pipeline.prefix}settle-{target}"
        self.inputs: tuple[str, ...] = ()
        if target == "validate":
            self.topics = (*topics.all_routed, topics.rejected, topics.dlq)
            self.inputs = (topics.requested,)
        elif target == "reconcile":
            self.topics = (topics.results,)
            self.inputs = (*topics.all_routed, topics.confirmations)
        elif target == "settle":
            self.topics = (topics.batches,)
            self.inputs = (topics.results,)
        else:
            # Sinks (and services, whose outage shows at the end of the pipeline): committed
            # sink offsets in PostgreSQL.
            group = SINK_GROUPS.get(target, "settle-ledger-sink")
            self.group = f"{pipeline.prefix}{group}"
            self.inputs = (topics.batches,) if target == "settlement-sink" else (topics.results,)
            self.sql = ("SELECT COALESCE(SUM(next_offset), 0) FROM sink_offsets "
                        f"WHERE consumer_group = '{self.group}'")
        self._consumer: Any = None

    def read(self) -> int | None:
        try:
            if self.sql is not None:
                with connect(self.pipeline.settings.postgres, autocommit=True,
                             timeout_s=2) as conn:
                    row = conn.execute(self.sql).fetchone()
                    return int(row[0]) if row else 0
            if self._consumer is None:
                self._consumer = make_consumer(self.pipeline.settings.kafka,
                                               group_id=f"settle-chaos-{uuid.uuid4()}")
            return sum(sum(end_offsets(self._consumer, t).values()) for t in self.topics)
        except Exception:  # the service may be the one that is down
            return None

    def caught_up(self) -> bool:
        """True when the stage's group has handled every record of its inputs (False: can't
        tell now)."""
        try:
            if self._consumer is None:
                self._consumer = make_consumer(self.pipeline.settings.kafka,
                                               group_id=f"settle-chaos-{uuid.uuid4()}")
            ends = sum(sum(end_offsets(self._consumer, t).values()) for t in self.inputs)
            if self.sql is not None:
                done = self.read()
            else:
                done = _group_committed(self.pipeline, self.group, self.inputs)
            return done is not None and ends > 0 and done >= ends
        except Exception:  # the broker or database may be the part that is down
            return False

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _group_committed(pipeline: IsolatedPipeline, group: str, topics: tuple[str, ...]
                     ) -> int | None:
    """Sum of a consumer group's committed offsets on `topics` (from the broker)."""
    admin = admin_client(pipeline.settings.kafka)
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)])[group].result(timeout=10)
    return sum(tp.offset for tp in result.topic_partitions or []
               if tp.topic in topics and tp.offset >= 0)


def _watch_recovery(probe: Probe, outcome: FaultOutcome, t0: float, reference: int | None,
                    timeout_s: float) -> None:
    """Record the time from the fault until the probe passes its value at the heal, or the
    stage has nothing left to do (the traffic may have ended before the heal)."""
    deadline = time.monotonic() + timeout_s
    polls = 0
    try:
        while time.monotonic() < deadline:
            value = probe.read()
            progressed = reference is not None and value is not None and value > reference
            if reference is None:
                reference = value
            # The lag check costs broker round trips: every 2 s is plenty.
            idle = not progressed and polls % 8 == 0 and probe.caught_up()
            polls += 1
            if progressed or idle:
                outcome.recovery_s = round(time.monotonic() - t0, 2)
                log.warning("RECOVERED %s: %s %.1fs after the fault", outcome.fault,
                            "progress resumed" if progressed else "caught up",
                            outcome.recovery_s)
                return
            time.sleep(0.25)
        outcome.note = f"no progress within {timeout_s:.0f}s of the heal"
        log.error("NOT RECOVERED %s: %s", outcome.fault, outcome.note)
    finally:
        probe.close()


# ----------------------------------------------------------------------------- the runner

class Runner:
    def __init__(self, settings: Settings, run_dir: Path, plan: Plan,
                 say: Callable[[str], None]) -> None:
        self.settings, self.run_dir, self.plan, self.say = settings, run_dir, plan, say
        procs = specs(plan.seed)
        if plan.two_workers_per_stage:
            by_name = {s.name: s for s in procs}
            procs += [ProcessSpec(f"{w}-2", by_name[w].args, 0, "") for w in WORKERS]
        self.procs = procs
        self.expected_down: set[str] = set()
        self.unexpected_exits: list[str] = []
        self._stop_monitor = threading.Event()
        self.t0 = 0.0

    def now_s(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def _monitor(self, pipeline: IsolatedPipeline) -> None:
        """A process that exits on its own is a crash (a sink in a PG outage, say): record it,
        restart it so the run can still drain, and fail the run."""
        while not self._stop_monitor.wait(0.5):
            for name in pipeline.procs:
                if name in self.expected_down or pipeline.pid(name) is not None:
                    continue
                tail = pipeline.log_tail(name, 1500)
                self.unexpected_exits.append(f"{name} at {self.now_s()}s: {tail[-600:]}")
                log.error("CRASH %s exited on its own at %.1fs; restarting it; log ends:\n%s",
                          name, self.now_s(), tail)
                pipeline.start(name)

    def _inject(self, pipeline: IsolatedPipeline, publisher: Publisher,
                fault: Fault) -> tuple[FaultOutcome, threading.Thread | None]:
        outcome = FaultOutcome(fault.describe(), fault.kind, fault.target, fault.at_s)
        outcome.at_s = self.now_s()
        if fault.kind == STORM:
            self.say(f"FAULT at {outcome.at_s}s: {fault.describe()}")
            publisher.storm(fault.size)
            return outcome, None
        probe = Probe(pipeline, fault.target)
        before = probe.read()
        started = time.monotonic()
        if fault.kind in (KILL, REBALANCE):
            name = fault.target if fault.kind == KILL else f"{fault.target}-2"
            pid = pipeline.pid(name)
            self.expected_down.add(name)
            sig = signal.SIGKILL if fault.kind == KILL else signal.SIGTERM
            self.say(f"FAULT at {outcome.at_s}s: {fault.describe()} (pid {pid}, {sig.name})")
            if pid is not None:
                os.kill(pid, sig)
                for _ in range(int(STOP_GRACE_S * 10)):
                    if pipeline.pid(name) is None:
                        break
                    time.sleep(0.1)
                else:
                    # A worker stuck in a graceful stop is what an operator's supervisor
                    # kills too; the fault stays "one worker leaves, then comes back".
                    outcome.note = f"no exit {STOP_GRACE_S:g}s after SIGTERM: SIGKILL"
                    log.warning("%s: %s", name, outcome.note)
                    os.kill(pid, signal.SIGKILL)
                    for _ in range(100):
                        if pipeline.pid(name) is None:
                            break
                        time.sleep(0.1)
            time.sleep(fault.hold_s)
            after = probe.read()
            pipeline.start(name)
            self.expected_down.discard(name)
        else:
            self.say(f"FAULT at {outcome.at_s}s: {fault.describe()}")
            stack_service("stop", fault.target)
            time.sleep(fault.hold_s)
            after = probe.read()
            stack_service("start", fault.target)
        outcome.healed_at_s = self.now_s()
        if before is not None and after is not None:
            outcome.progress_while_down = after - before
        reference = probe.read()
        self.say(f"HEALED at {outcome.healed_at_s}s: {fault.describe()}")
        watcher = threading.Thread(target=_watch_recovery, daemon=True,
                                   args=(probe, outcome, started, reference, 120.0))
        watcher.start()
        return outcome, watcher

    def run(self) -> RunReport:
        plan = self.plan
        report = RunReport(plan.name, plan.seed)
        report.stack_repairs = ensure_stack_up(self.say)
        self.t0 = time.monotonic()
        self.say(f"{plan.name}: {plan.count:,} payments at {plan.rate_per_s:g}/s, seed "
                 f"{plan.seed}; faults: " + ("; ".join(
                     f"{f.at_s:g}s {f.describe()}" for f in plan.faults) or "none")
                 + (f"; registry down at start for {plan.registry_down_at_start_s:g}s"
                    if plan.registry_down_at_start_s else ""))
        with isolated_pipeline(self.settings, self.run_dir, self.procs, tag="chaos") as pipeline:
            pipeline.setup()
            producer = AvroProducer(pipeline.settings.kafka, pipeline.registry,
                                    client_id="chaos")
            # Registered while the registry is up: the order systems' cached id keeps flowing.
            schema_id = producer.schema_id(pipeline.topics.requested)
            publisher = Publisher(pipeline, producer, plan, schema_id)
            monitor = threading.Thread(target=self._monitor, args=(pipeline,), daemon=True)
            watchers: list[threading.Thread] = []
            try:
                if plan.registry_down_at_start_s:
                    outcome = FaultOutcome(
                        f"registry down at start for {plan.registry_down_at_start_s:g}s",
                        SERVICE_STOP, "registry", 0.0, at_s=self.now_s())
                    self.say(f"FAULT at {outcome.at_s}s: {outcome.fault}; starting the pipeline")
                    stack_service("stop", "registry")
                    started = time.monotonic()
                    pipeline.start_all()
                    monitor.start()
                    publisher.start()
                    time.sleep(plan.registry_down_at_start_s)
                    probe = Probe(pipeline, "ledger-sink")
                    outcome.progress_while_down = probe.read()
                    stack_service("start", "registry")
                    outcome.healed_at_s = self.now_s()
                    self.say(f"HEALED at {outcome.healed_at_s}s: registry started")
                    watcher = threading.Thread(
                        target=_watch_recovery, daemon=True,
                        args=(probe, outcome, started, outcome.progress_while_down, 120.0))
                    watcher.start()
                    watchers.append(watcher)
                    report.faults.append(outcome)
                else:
                    pipeline.start_all()
                    monitor.start()
                    # The faults are mid-stream: start the traffic (and the fault clock) once
                    # the workers are up. A faust worker that starts during a broker outage
                    # exits (faust raises on topic creation) and only a restart helps; on a
                    # loaded machine start-up could reach the first fault (kafka-down-long
                    # in CI: both settle workers died at 11.7 s, broker down from 9.6 s).
                    waited, missing = pipeline.wait_workers_joined(120.0)
                    self.say(f"workers joined their groups after {waited:.1f}s"
                             + (f" (not joined: {', '.join(missing)})" if missing else ""))
                    publisher.start()
                while publisher.started_at == 0.0 and publisher.is_alive():
                    time.sleep(0.05)
                for fault in plan.faults:
                    wait = publisher.started_at + fault.at_s - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    outcome, maybe = self._inject(pipeline, publisher, fault)
                    report.faults.append(outcome)
                    if maybe is not None:
                        watchers.append(maybe)
                publisher.join(plan.count / plan.rate_per_s + 300)
                if publisher.error is not None:
                    raise RuntimeError(f"publishing failed: {publisher.error!r}")
                report.publish_s = round(publisher.finished_at - publisher.started_at, 1)
                report.publisher_client_replacements = producer.replacements
                report.publisher_resent = producer.resent
                self.say(f"published {publisher.sent:,} records in {report.publish_s}s; "
                         "draining")
                books = self._drain(pipeline, publisher.expected["routed"])
                for watcher in watchers:
                    watcher.join(130)
                ingest = audit_pipeline_ingest(pipeline)
                self._figures(pipeline, report, publisher.expected, ingest, books)
            finally:
                self._stop_monitor.set()
                producer.close(10)
        report.unexpected_exits = list(self.unexpected_exits)
        report.total_s = self.now_s()
        return report

    def _drain(self, pipeline: IsolatedPipeline, routed: int) -> BooksAudit:
        from schemas.codec import AvroDeserializer
        from settle.audit_books import audit_books

        decoder = AvroDeserializer(pipeline.registry)
        topics = pipeline.topics
        deadline = time.monotonic() + self.plan.drain_timeout_s
        last = -1
        with connect(pipeline.settings.postgres, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT COUNT(*) FROM payments").fetchone()
                decided = int(row[0]) if row else 0
                if decided != last:
                    self.say(f"{decided:,} of {routed:,} payments decided")
                    last = decided
                out_of_time = time.monotonic() >= deadline
                if out_of_time or (decided >= routed and unbatched_matched(conn) == 0):
                    books = audit_books(pipeline.settings, conn, decoder,
                                        results_topic=topics.results,
                                        batches_topic=topics.batches,
                                        routed_topics=topics.all_routed)
                    if books.ok or out_of_time:
                        return books
                time.sleep(2.0)

    def _figures(self, pipeline: IsolatedPipeline, report: RunReport, expected: Accounting,
                 ingest: IngestAudit, books: BooksAudit) -> None:
        report.payments_in = expected.count
        report.routed_expected = expected["routed"]
        report.expected = {k: expected[k] for k in
                           ("routed", "rejected", "dead_lettered", "deduplicated")}
        report.ingest = {"read": ingest.read, "routed": ingest.routed,
                         "rejected": ingest.rejected, "dead_lettered": ingest.dead_lettered,
                         "deduplicated": ingest.deduplicated,
                         "replayed_outputs": ingest.replayed_outputs}
        report.ingest_balanced = ingest.balanced
        report.books_ok = books.ok
        report.failed_checks = [f"{c.name}: {c.detail}" for c in books.checks if not c.ok]
        with connect(pipeline.settings.postgres, autocommit=True) as conn:
            def one(sql: str) -> int:
                row = conn.execute(sql).fetchone()
                return int(row[0]) if row and row[0] is not None else 0
            report.payments_settled = one("SELECT COUNT(*) FROM payments")
            report.matched = one("SELECT COUNT(*) FROM payments WHERE state = 'MATCHED'")
            report.batched = one("SELECT COUNT(*) FROM settlement_batch_items")
            dup = {
                "payments_twice": one("SELECT COUNT(*) - COUNT(DISTINCT payment_id) FROM payments"),
                "journals_twice": one(
                    "SELECT COUNT(*) - COUNT(DISTINCT payment_id) FROM ledger_journals"),
                "items_twice": one("SELECT COUNT(*) - COUNT(DISTINCT payment_id) "
                                   "FROM settlement_batch_items"),
                "journals_of_unmatched": one(
                    "SELECT COUNT(*) FROM ledger_journals j JOIN payments p USING (payment_id) "
                    "WHERE p.state <> 'MATCHED'"),
                "ingest_in_several_places": len(ingest.in_several_places),
                "ingest_conflicting_resends": len(ingest.bad_duplicates),
            }
            lost = {
                "routed_without_state": max(0, expected["routed"] - report.payments_settled),
                "matched_unbatched": unbatched_matched(conn),
                "matched_without_journal": one(
                    "SELECT COUNT(*) FROM payments p WHERE state = 'MATCHED' AND NOT EXISTS "
                    "(SELECT 1 FROM ledger_journals j WHERE j.payment_id = p.payment_id)"),
                "requests_unaccounted": len(ingest.unaccounted),
            }
        report.duplicate_detail, report.lost_detail = dup, lost
        report.unaccounted_ranges = offset_ranges(ingest.unaccounted)
        report.duplicates = sum(dup.values())
        report.lost = sum(lost.values())
        # A request the publisher's stall watch sent again may land twice (it was a retry of
        # a request whose answer was lost): each extra copy must be read and deduplicated,
        # and there can be no more of them than records re-sent.
        extra = ingest.read - expected.count
        report.publisher_extra_copies = extra
        report.in_equals_out = (
            0 <= extra <= report.publisher_resent
            and ingest.deduplicated - expected["deduplicated"] == extra
            and all(report.ingest[k] == report.expected[k] for k in report.expected
                    if k != "deduplicated")
            and report.payments_settled == expected["routed"]
            and report.batched == report.matched)


def offset_ranges(refs: Iterable[str]) -> dict[str, list[list[int]]]:
    """["t/0/5", "t/0/6", "t/0/9"] -> {"t/0": [[5, 6], [9, 9]]}: where records went missing."""
    by_tp: dict[str, list[int]] = {}
    for ref in refs:
        tp, _, offset = ref.rpartition("/")
        by_tp.setdefault(tp, []).append(int(offset))
    out: dict[str, list[list[int]]] = {}
    for tp, offsets in sorted(by_tp.items()):
        ranges: list[list[int]] = []
        for o in sorted(offsets):
            if ranges and o == ranges[-1][1] + 1:
                ranges[-1][1] = o
            else:
                ranges.append([o, o])
        out[tp] = ranges
    return out


def keep_logs(src: Path, dest: Path) -> Path | None:
    """Copy every ``*.log`` of src into dest (emptied first); None when src has none."""
    logs = sorted(src.glob("*.log")) if src.is_dir() else []
    if not logs or src.resolve() == dest.resolve():
        return None
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in logs:
        shutil.copy2(path, dest / path.name)
    return dest


def run_plan(settings: Settings, run_dir: Path, plan: Plan,
             say: Callable[[str], None] = lambda _m: None,
             report_dir: Path | None = None) -> RunReport:
    """Run one plan; write its figures to <report_dir or run_dir>/chaos-<name>.json.

    The processes' logs are copied to <report_dir>/chaos-<name>-logs/ whatever the outcome:
    run_dir is often a temporary folder, and a crash is only explained by its log."""
    out_dir = report_dir or run_dir
    try:
        report = Runner(settings, run_dir, plan, say).run()
    finally:
        kept = keep_logs(run_dir / "logs", out_dir / f"chaos-{plan.name}-logs")
        if kept is not None:
            say(f"process logs in {kept}")
    out = out_dir / f"chaos-{plan.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2))
    say(f"figures in {out}")
    return report


def summary_lines(report: RunReport) -> Iterator[str]:
    yield (f"{report.name}: in {report.payments_in:,}, settled {report.payments_settled:,} "
           f"(of {report.routed_expected:,} routed), duplicates {report.duplicates}, "
           f"lost {report.lost}, in=out {report.in_equals_out}, books "
           f"{'ok' if report.books_ok else 'FAILED'}, ingest "
           f"{'balanced' if report.ingest_balanced else 'UNBALANCED'}")
    for f in report.faults:
        rec = f"{f.recovery_s:.1f}s" if f.recovery_s is not None else (
            "n/a" if f.kind == STORM else "NOT RECOVERED")
        yield f"  {f.at_s:6.1f}s  {f.fault:<45} recovery {rec}"
    if report.publisher_client_replacements:
        yield (f"  publisher: stuck producer client replaced "
               f"{report.publisher_client_replacements}x, {report.publisher_resent:,} queued "
               f"records sent again, {report.publisher_extra_copies:,} of them landed twice "
               "(deduplicated)")
    for repair in report.stack_repairs:
        yield f"  STACK {repair}"
    for exit_ in report.unexpected_exits:
        yield f"  CRASH {exit_.splitlines()[0]}"
    for check in report.failed_checks:
        yield f"  FAILED {check}"
