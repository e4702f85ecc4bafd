"""One chaos run: an isolated pipeline, the flow, the faults injected on time, drained, audited."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.config import Settings
from producers.orders import Accounting
from producers.producer import AvroProducer
from settle.audit_books import BooksAudit, unbatched_matched
from settle.audit_ingest import (
    IngestAudit,
    RefundAudit,
    audit_case_actions,
    audit_disputes,
    audit_refunds,
    refund_body_identity,
)
from settle.case_flow import CaseFlowStats, resolve_all
from settle.chaos.plan import (
    KILL,
    REBALANCE,
    SERVICE_STOP,
    STOP_GRACE_S,
    STORM,
    WORKERS,
    Fault,
    Plan,
)
from settle.chaos.probe import Probe, watch_recovery
from settle.chaos.report import FaultOutcome, RunReport, offset_ranges
from settle.chaos.traffic import Publisher
from settle.e2e import IsolatedPipeline, audit_pipeline_ingest, isolated_pipeline, specs
from settle.processes import ProcessSpec
from settle.recompute import recompute
from settle.stack import ensure_stack_up, stack_service
from sinks.db import connect

log = logging.getLogger("settle.chaos")


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
        self._stop_operators = threading.Event()
        self.case_flow = CaseFlowStats()
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
        watcher = threading.Thread(target=watch_recovery, daemon=True,
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
            # Registered while the registry is up: the order systems' cached ids keep flowing
            # (payments pre-encoded with it; refunds through the producer's cached serializer).
            schema_id = producer.schema_id(pipeline.topics.requested)
            producer.schema_id(pipeline.topics.refunds_requested)
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
                        target=watch_recovery, daemon=True,
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
                # Operators resolve exception cases while the faults hit the pipeline.
                operators = threading.Thread(target=self._operators, name="chaos-operators",
                                             args=(pipeline,), daemon=True)
                operators.start()
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
                self._stop_operators.set()
                operators.join(60)
                books = self._drain(pipeline, publisher.expected["routed"], producer)
                for watcher in watchers:
                    watcher.join(130)
                ingest = audit_pipeline_ingest(pipeline)
                self._figures(pipeline, report, publisher.expected, ingest, books)
                self._refund_figures(pipeline, report, publisher.stats.refunds.count)
                self._case_figures(pipeline, report)
            finally:
                self._stop_monitor.set()
                producer.close(10)
        report.unexpected_exits = list(self.unexpected_exits)
        report.total_s = self.now_s()
        return report

    def _operators(self, pipeline: IsolatedPipeline) -> None:
        """Resolve the open cases every few seconds until told to stop; a fault that takes
        PostgreSQL or Kafka away only delays a round (its actions are sent again under the
        same ids, which the stage applies once)."""
        rounds = 0
        while not self._stop_operators.wait(3.0):
            rounds += 1
            ops = None
            try:
                # A client of their own: the publisher's is busy in its thread.
                ops = AvroProducer(pipeline.settings.kafka, pipeline.registry,
                                   client_id="chaos-operators")
                with connect(pipeline.settings.postgres, autocommit=True,
                             timeout_s=5) as conn:
                    stats = resolve_all(conn, ops, pipeline.topics.case_actions,
                                        run_id=f"chaos.{rounds}", timeout_s=10.0,
                                        max_rounds=1, min_age_s=1)
                self.case_flow.sent.update(stats.sent)
                self.case_flow.answers.update(stats.answers)
                self.case_flow.rounds += stats.rounds
            except Exception as exc:  # a fault: the next round tries again
                log.info("chaos operators: round %d failed: %s", rounds, exc)
            finally:
                if ops is not None:
                    try:
                        ops.close(10)
                    except Exception as exc:
                        log.info("chaos operators: round %d not flushed: %s", rounds, exc)

    def _cases_settled(self, pipeline: IsolatedPipeline, conn: Any,
                       producer: AvroProducer) -> bool:
        """Resolve what is still open (a round at a time); True once no case is open."""
        try:
            stats = resolve_all(conn, producer, pipeline.topics.case_actions,
                                run_id=f"chaos.final.{time.monotonic_ns()}", timeout_s=20.0,
                                max_rounds=1)
        except Exception as exc:
            log.info("chaos operators: final round failed: %s", exc)
            return False
        self.case_flow.sent.update(stats.sent)
        self.case_flow.answers.update(stats.answers)
        self.case_flow.rounds += stats.rounds
        row = conn.execute("SELECT COUNT(*) FROM exception_cases "
                           "WHERE status <> 'RESOLVED'").fetchone()
        return int(row[0] if row else 0) == 0

    def _drain(self, pipeline: IsolatedPipeline, routed: int,
               producer: AvroProducer) -> BooksAudit:
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
                if out_of_time or (decided >= routed and unbatched_matched(conn) == 0
                                   and self._refunds_decided(pipeline, conn)
                                   and self._cases_settled(pipeline, conn, producer)
                                   and unbatched_matched(conn) == 0
                                   and self._money_settled(pipeline, conn)):
                    books = audit_books(pipeline.settings, conn, decoder,
                                        results_topic=topics.results,
                                        batches_topic=topics.batches,
                                        routed_topics=topics.all_routed)
                    if books.ok or out_of_time:
                        return books
                time.sleep(2.0)

    def _money_settled(self, pipeline: IsolatedPipeline, conn: Any) -> bool:
        """The money recomputed from the topics equals the books (results the sinks have
        not posted yet, e.g. a dispute decided a moment ago, make it wait)."""
        from schemas.codec import AvroDeserializer

        topics = pipeline.topics
        return recompute(pipeline.settings, conn, AvroDeserializer(pipeline.registry),
                         topics.results, topics.refund_results, topics.batches).ok

    def _case_figures(self, pipeline: IsolatedPipeline, report: RunReport) -> None:
        from schemas.codec import AvroDeserializer

        topics = pipeline.topics
        decode = AvroDeserializer(pipeline.registry).decode
        report.dispute_ingest_balanced = audit_disputes(
            pipeline.settings.kafka, topics.disputes, topics.dispute_results, topics.dlq,
            decode).balanced
        report.case_ingest_balanced = audit_case_actions(
            pipeline.settings.kafka, topics.case_actions, topics.case_events, topics.dlq,
            decode).balanced
        with connect(pipeline.settings.postgres, autocommit=True) as conn:
            report.dispute_events = {k: int(v) for k, v in conn.execute(
                "SELECT state, COUNT(*) FROM disputes GROUP BY 1").fetchall()}
            report.cases_by_status = {k: int(v) for k, v in conn.execute(
                "SELECT status, COUNT(*) FROM exception_cases GROUP BY 1").fetchall()}
            report.case_resolutions = {str(k): int(v) for k, v in conn.execute(
                "SELECT resolution, COUNT(*) FROM exception_cases WHERE status = 'RESOLVED' "
                "GROUP BY 1").fetchall()}
            row = conn.execute("""
                SELECT COUNT(*) FROM (SELECT case_id FROM case_events WHERE kind = 'RESOLVED'
                                       GROUP BY 1 HAVING COUNT(*) > 1) t""").fetchone()
            report.cases_resolved_twice = int(row[0] if row else 0)
            row = conn.execute(
                "SELECT COUNT(*) FROM payments WHERE state = 'MATCHED_MANUAL'").fetchone()
            report.matched_manual = int(row[0] if row else 0)
        report.case_flow = self.case_flow.as_dict()

    def _refund_audit(self, pipeline: IsolatedPipeline) -> RefundAudit:
        from schemas.codec import AvroDeserializer

        topics = pipeline.topics
        return audit_refunds(
            pipeline.settings.kafka, topics.refunds_requested, topics.refunds_routed,
            topics.refunds_rejected, topics.dlq,
            identity=refund_body_identity(AvroDeserializer(pipeline.registry).decode))

    def _refunds_decided(self, pipeline: IsolatedPipeline, conn: Any) -> bool:
        """Every refund the reconcile stage routed has its terminal state in PostgreSQL."""
        row = conn.execute("SELECT COUNT(*) FROM refunds").fetchone()
        return int(row[0] if row else 0) >= self._refund_audit(pipeline).routed

    def _refund_figures(self, pipeline: IsolatedPipeline, report: RunReport, sent: int) -> None:
        from schemas.codec import AvroDeserializer

        audit = self._refund_audit(pipeline)
        report.refunds_sent = sent
        report.refund_ingest = {"read": audit.read, "routed": audit.routed,
                                "rejected": audit.rejected, "dead_lettered": audit.dead_lettered,
                                "duplicates": audit.duplicates,
                                "replayed_outputs": audit.replayed_outputs,
                                "unaccounted": len(audit.unaccounted),
                                "in_several_places": len(audit.in_several_places)}
        if audit.unaccounted or audit.in_several_places:
            log.warning("refund requests unaccounted for: %s; answered in several places: %s",
                        audit.unaccounted[:10], audit.in_several_places[:10])
        # Every request sent was read (a stall-watch re-send may add an identical copy).
        report.refund_ingest_balanced = audit.balanced and audit.read >= sent
        topics = pipeline.topics
        with connect(pipeline.settings.postgres, autocommit=True) as conn:
            money = recompute(pipeline.settings, conn, AvroDeserializer(pipeline.registry),
                              topics.results, topics.refund_results, topics.batches)
        report.refund_outcomes = dict(money.refund_outcomes)
        report.money_ok = money.ok
        report.money_mismatches = [f"{m}/{c}: {', '.join(bad)}" for (m, c), bad in
                                   sorted(money.mismatches().items())[:10]]

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
            # A payment its channel took back after its MATCHED was settled (and netted out).
            report.matched = one("SELECT COUNT(*) FROM payments "
                                 "WHERE state IN ('MATCHED', 'MATCHED_MANUAL', 'REVERSED')")
            report.batched = one("SELECT COUNT(*) FROM settlement_batch_items "
                                 "WHERE kind = 'PAYMENT'")
            dup = {
                "payments_twice": one("SELECT COUNT(*) - COUNT(DISTINCT payment_id) FROM payments"),
                "journals_twice": one(
                    "SELECT COUNT(*) - COUNT(DISTINCT (kind, source_id)) FROM ledger_journals"),
                "items_twice": one("SELECT COUNT(*) - COUNT(DISTINCT (kind, item_id)) "
                                   "FROM settlement_batch_items"),
                "journals_of_unmatched": one(
                    "SELECT COUNT(*) FROM ledger_journals j JOIN payments p USING (payment_id) "
                    "WHERE j.kind = 'PAYMENT' "
                    "AND p.state NOT IN ('MATCHED', 'MATCHED_MANUAL', 'REVERSED')"),
                "refunds_above_capture": one(
                    "SELECT COUNT(*) FROM (SELECT r.payment_id FROM ledger_journals r "
                    "JOIN ledger_journals p ON p.kind = 'PAYMENT' AND p.source_id = r.payment_id "
                    "WHERE r.kind = 'REFUND' GROUP BY r.payment_id, p.gross_minor "
                    "HAVING SUM(r.gross_minor) > p.gross_minor) x"),
                "ingest_in_several_places": len(ingest.in_several_places),
                "ingest_conflicting_resends": len(ingest.bad_duplicates),
            }
            lost = {
                "routed_without_state": max(0, expected["routed"] - report.payments_settled),
                "matched_unbatched": unbatched_matched(conn),
                "matched_without_journal": one(
                    "SELECT COUNT(*) FROM payments p "
                    "WHERE state IN ('MATCHED', 'MATCHED_MANUAL', 'REVERSED') "
                    "AND NOT EXISTS "
                    "(SELECT 1 FROM ledger_journals j WHERE j.kind = 'PAYMENT' "
                    "AND j.source_id = p.payment_id)"),
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
