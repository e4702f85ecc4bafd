"""The main job: stack up, pipeline up, a simulated day of payments in seconds, books audited."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from infra.config import REPO_ROOT, Settings
from settle import processes
from settle.processes import ProcessSpec


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What the demo runs; the timings shrink a settlement day into seconds."""

    count: int = 5000
    rate_per_s: float = 500.0
    seed: int | None = None
    bad_ratio: float = 0.02
    window_seconds: int = 10
    window_grace_seconds: int = 5
    sla_ms: int = 8000
    orphan_grace_ms: int = 8000
    late_ms: int = 15000
    channel_latency_ms: int = 200
    decline_rate: float = 0.05
    fault_rate: float = 0.03
    drain_timeout_s: float = 240.0
    approval_above_minor: int = 50_000
    api_port: int = 18000  # `settle api serve` (SETTLE_API_PORT); its /metrics is there too

    def env(self) -> dict[str, str]:
        return {
            "SETTLE_WINDOW_SECONDS": str(self.window_seconds),
            "SETTLE_WINDOW_GRACE_SECONDS": str(self.window_grace_seconds),
            "SETTLE_RECON_SLA_MS": str(self.sla_ms),
            "SETTLE_ORPHAN_GRACE_MS": str(self.orphan_grace_ms),
            # Resolutions above 500.00 (2-decimal currencies) wait for a second operator.
            "SETTLE_CASE_APPROVAL_ABOVE_MINOR": str(self.approval_above_minor),
        }

    def refund_args(self) -> list[str]:
        """`simulate orders` options for refunds: the channel simulator's settings (so the
        expected outcome of every refund is exact), and late refunds sent once their
        payment's batch has closed, so they net into a later batch."""
        late_ms = (self.window_seconds + self.window_grace_seconds) * 1000 + 5000
        return ["--channel-seed", str(self.seed if self.seed is not None else 0),
                "--channel-decline-rate", str(self.decline_rate),
                "--channel-fault-rate", str(self.fault_rate),
                "--refund-late-delay-ms", str(late_ms)]

    def processes(self) -> list[ProcessSpec]:
        seed = str(self.seed if self.seed is not None else 0)
        return [
            ProcessSpec("validate", ("worker", "validate"), 19101, "settle-validate"),
            ProcessSpec("reconcile", ("worker", "reconcile"), 19102, "settle-reconcile"),
            ProcessSpec("settle", ("worker", "settle"), 19103, "settle-settle"),
            ProcessSpec("ledger-sink", ("sink", "ledger"), 19104, "settle-ledger-sink"),
            ProcessSpec("settlement-sink", ("sink", "settlement"), 19105,
                        "settle-settlement-sink"),
            ProcessSpec(
                "channels",
                ("simulate", "channels", "--seed", seed,
                 "--latency-ms", str(self.channel_latency_ms),
                 "--decline-rate", str(self.decline_rate),
                 "--fault-rate", str(self.fault_rate), "--late-ms", str(self.late_ms)),
                19106, "settle-channel-sim",
            ),
            # Lag from the broker's offsets and the books' invariants, as metrics; a MATCHED
            # payment is due in a batch two minutes after its decision at the demo's pace.
            ProcessSpec("monitor", ("monitor", "--interval", "5", "--books-interval", "10",
                                    "--settle-horizon", "120"), 19107, "settle-monitor"),
            # The read-only HTTP API over the books, scraped on its own port as process "api".
            ProcessSpec("api", ("api", "serve", "--port", str(self.api_port)), self.api_port,
                        "settle-api"),
        ]


def settle_cmd(*args: str, check: bool = True) -> int:
    """Run a `settle` subcommand in the foreground, sharing the terminal."""
    proc = subprocess.run([sys.executable, "-m", "settle.cli", *args], check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"`settle {' '.join(args)}` failed with exit code {proc.returncode}")
    return proc.returncode


def stack_up() -> None:
    proc = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "up"], check=False)
    if proc.returncode != 0:
        raise SystemExit("the local stack did not come up (see above); `make logs S=...`")


def start_pipeline(settings: Settings, plan: DemoPlan,
                   say: Callable[[str], None]) -> list[ProcessSpec]:
    specs = plan.processes()
    for spec in specs:
        pid, fresh = processes.start(settings.run_dir, spec, plan.env())
        say(f"{spec.name}: {'started' if fresh else 'already running'} (pid {pid}, "
            f"metrics :{spec.metrics_port}, log {settings.run_dir / 'logs' / spec.name}.log)")
    processes.write_prometheus_targets(settings.run_dir, specs)
    deadline = time.monotonic() + 90
    waiting = {s.name: s for s in specs if s.metrics_port}
    while waiting and time.monotonic() < deadline:
        for name, spec in list(waiting.items()):
            if processes.running_pid(settings.run_dir, name) is None:
                log = settings.run_dir / "logs" / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise SystemExit(f"{name} exited during start-up; its log ends:\n{tail}")
            if processes.metrics_up(spec.metrics_port):
                del waiting[name]
        time.sleep(0.5)
    if waiting:
        say(f"warning: no /metrics yet from {', '.join(waiting)}; going on")
    wait_workers_ready(specs, say)
    return specs


FAUST_STAGES = {"validate": "validate", "reconcile": "reconcile", "settle": "settle"}


def wait_workers_ready(specs: list[ProcessSpec], say: Callable[[str], None],
                       timeout_s: float = 600.0) -> None:
    """Wait until every faust worker has recovered its tables (settle_worker_ready = 1).

    Publishing before that is harmless, but the drain would then time the recovery, and a
    long history (a big changelog to restore) can take minutes.
    """
    pending = {s.name: s for s in specs if s.name in FAUST_STAGES and s.metrics_port}
    started = time.monotonic()
    shown = 0.0
    while pending and time.monotonic() - started < timeout_s:
        for name, spec in list(pending.items()):
            sample = f'settle_worker_ready{{stage="{FAUST_STAGES[name]}"}}'
            if processes.metric_value(spec.metrics_port, sample) == 1.0:
                del pending[name]
        if pending and time.monotonic() - shown >= 10:
            say(f"waiting for {', '.join(pending)} to recover their tables "
                f"({time.monotonic() - started:.0f}s)")
            shown = time.monotonic()
        time.sleep(0.5)
    if pending:
        say(f"warning: {', '.join(pending)} not ready after {timeout_s:.0f}s; going on")
    else:
        say(f"workers ready after {time.monotonic() - started:.0f}s")


def progress_counts(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute("""
        SELECT (SELECT COUNT(*) FROM payments),
               (SELECT COUNT(*) FROM ledger_journals),
               (SELECT COUNT(*) FROM reconciliation_exceptions),
               (SELECT COUNT(*) FROM settlement_batches),
               (SELECT COUNT(*) FROM settlement_batch_items),
               (SELECT COUNT(*) FROM refunds)""").fetchone()
    assert row is not None
    keys = ("payments", "journals", "exceptions", "batches", "batched", "refunds")
    return dict(zip(keys, (int(v) for v in row), strict=True))


def wait_for_books(settings: Settings, decoder: Any, timeout_s: float,
                   on_progress: Callable[[dict[str, int]], None], refunds: int = 0) -> Any:
    """Poll until `settle audit books` passes (the pipeline drained) or time runs out.

    The full audit re-reads whole topics, so it only runs once the cheap SQL counts have
    stopped moving, every MATCHED payment is in a batch and at least `refunds` refunds (the
    accepted ones the order flow expects) are decided (or at the deadline).
    """
    from schemas.topics import ROUTED_TOPICS
    from settle.audit_books import audit_books, unbatched_matched
    from sinks.db import connect

    deadline = time.monotonic() + timeout_s
    previous: dict[str, int] | None = None
    monitor = lag_monitor(settings)
    with connect(settings.postgres, autocommit=True) as conn:
        while True:
            counts = progress_counts(conn)
            on_progress(counts)
            out_of_time = time.monotonic() >= deadline
            if out_of_time or (counts == previous and unbatched_matched(conn) == 0
                               and counts["refunds"] >= refunds and not behind(monitor)):
                result = audit_books(settings, conn, decoder, routed_topics=ROUTED_TOPICS)
                if result.ok or out_of_time:
                    return result
            previous = counts
            time.sleep(3.0)


def wait_disputes_closed(settings: Settings, timeout_s: float) -> int:
    """Wait (up to timeout_s) until no dispute the simulator opened is still open; returns
    how many are still open (their decisions come seconds after the openings)."""
    from sinks.db import connect

    deadline = time.monotonic() + timeout_s
    with connect(settings.postgres, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT COUNT(*) FROM disputes WHERE state = 'OPEN'").fetchone()
            still_open = int(row[0]) if row else 0
            if still_open == 0 or time.monotonic() >= deadline:
                return still_open
            time.sleep(2.0)


def refunds_decided(settings: Settings) -> int:
    from sinks.db import connect

    with connect(settings.postgres, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM refunds").fetchone()
    return int(row[0]) if row else 0


def expected_refunds(report: Path) -> int:
    """Accepted refund requests of the order flow's report (0 when it has none)."""
    try:
        return int(json.loads(report.read_text())["refunds"]["accepted"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def lag_monitor(settings: Settings, prefix: str = "") -> Any:
    """A monitor of the pipeline's groups on the contract's topics (see `behind`)."""
    from schemas.topics import TOPIC_NAMES
    from settle.monitor import Monitor, MonitorOptions

    topics = tuple(prefix + name for name in TOPIC_NAMES)
    return Monitor(settings, MonitorOptions(topics=topics,
                                            groups=re.escape(prefix) + "settle-.*"))


def behind(monitor: Any) -> dict[tuple[str, str, int], int]:
    """Partitions of the contract's topics a pipeline group has not committed to the end.

    Counts that stopped moving are not enough to call the pipeline drained: a worker that
    is still recovering its tables has processed nothing yet, and nothing moves.
    """
    monitor.poll_offsets()
    topics = set(monitor.options.topics)
    return {k: v for k, v in monitor.snapshot.lag.items() if k[1] in topics and v > 0}


def signing_env(settings: Settings) -> dict[str, str]:
    """SETTLE_SIGNING_KEYRING for the demo's processes: the configured keyring, or one made
    (once, then reused) under the run folder for the sample merchants."""
    from infra.keyring import ensure_run_keyring
    from producers.merchants import load_merchants, sample_merchants_path

    merchant_ids = [e.merchant_id for e in load_merchants(sample_merchants_path())]
    path = ensure_run_keyring(settings.run_dir / "demo", merchant_ids, settings.signing)
    return {} if path is None else {"SETTLE_SIGNING_KEYRING": str(path)}


def expected_report_path(run_dir: Path) -> Path:
    return run_dir / "demo" / "orders.json"
