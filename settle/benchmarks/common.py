"""What every benchmark needs: an isolated prefix and database, offsets, a timed child process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from infra.admin import create_topics
from infra.config import Settings
from infra.kafka import make_consumer
from producers.clients import delete_isolated_run
from schemas.topics import TopicNames
from settle.audit_ingest import end_offsets
from settle.benchmarks.measure import (
    GcTotals,
    descendants,
    parse_gc_totals,
    per_1000,
    stat_cpu_ticks,
    status_kib,
)
from sinks.db import connect, drop_database
from sinks.migrate import migrate

CLK_TCK = os.sysconf("SC_CLK_TCK")
Say = Callable[[str], None]


# -- processes -------------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # the process ended between listing and reading
        return ""


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            text = _read(f"/proc/{name}/stat")
            if text:
                parents[int(name)] = stat_cpu_ticks(text)[0]
    return descendants(parents, root)


def tree_cpu_s(root: int, tree: Sequence[int] | None = None) -> float:
    """User + system CPU seconds of a process and its live descendants (or of `tree`)."""
    ticks = 0
    for pid in tree if tree is not None else process_tree(root):
        text = _read(f"/proc/{pid}/stat")
        if text:
            ticks += stat_cpu_ticks(text)[1]
    return ticks / CLK_TCK


def tree_peak_rss_mib(root: int) -> float:
    """The largest VmHWM (peak resident set) among a process and its descendants."""
    peaks = [status_kib(_read(f"/proc/{pid}/status"), "VmHWM") for pid in process_tree(root)]
    return round(max(peaks, default=0) / 1024, 1)


@dataclass(frozen=True, slots=True)
class ProcRun:
    """A stage process timed from its first progress to its target."""

    name: str
    records: int
    steady_s: float
    records_per_s: float
    cpu_s: float
    cpu_s_per_1000: float
    rss_mib_peak: float
    startup_s: float
    # From the last poll that saw no progress: all the work, plus up to one poll of start-up.
    cpu_s_from_idle: float = 0.0
    # A faust worker's garbage collector over the timed span (from its /metrics), if served.
    gc_pause_s: float | None = None
    gc_collections: tuple[int, int, int] | None = None


def run_measured(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    progress: Callable[[], int],
    target: int,
    records: int,
    log_path: Path,
    timeout_s: float = 600.0,
    after: Callable[[], None] | None = None,
    poll_s: float = 0.1,
    metrics_port: int = 0,
) -> ProcRun:
    """Start argv, time from its first progress to progress >= target, then stop it.

    `progress` counts outputs (end offsets, committed offsets or SQL rows); the records/s
    figure scales `records` by the share of progress made inside the timed span, so the
    start-up (connecting, joining the group, loading merchants) is excluded. CPU seconds
    are the process tree's over the same span. `after` runs before the process is stopped
    (e.g. to let a window close so the next stage has input). With `metrics_port`, the
    process serves /metrics there and a faust worker's GC pauses over the span are read from it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the child
    started = time.monotonic()
    if metrics_port:
        env = {**env, "SETTLE_METRICS_PORT": str(metrics_port)}
    proc = subprocess.Popen(list(argv), env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    first_t: float | None = None
    gc_first: GcTotals | None = None
    cpu_first = 0.0
    first_done = 0
    zero_t, zero_cpu = started, 0.0
    # Listing every process costs the bench CPU the measured process could use: the tree is
    # re-read every couple of seconds, not at every poll.
    tree: list[int] = []
    tree_at = 0.0
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log {log_path}")
            if time.monotonic() - tree_at > 2.0:
                tree, tree_at = process_tree(proc.pid), time.monotonic()
            cpu_now = tree_cpu_s(proc.pid, tree)
            done = progress()
            now = time.monotonic()
            if done <= 0:
                zero_t, zero_cpu = now, cpu_now
            elif first_t is None:
                first_t, cpu_first, first_done = now, cpu_now, done
                gc_first = scrape_gc(metrics_port)
            if done >= target and first_t is not None:
                cpu_end = tree_cpu_s(proc.pid, tree)
                rss = tree_peak_rss_mib(proc.pid)
                if done > first_done and now - first_t >= 1.0:
                    # Long enough to time between two progress samples: the share of the
                    # work done after the first sample over the time it took.
                    steady = now - first_t
                    measured = records * (done - first_done) / max(done, 1)
                    cpu = cpu_end - cpu_first
                else:
                    # Too quick for that (all in one or two polls): from the last sample that
                    # saw nothing, a bound that errs on the slow side by up to one poll.
                    steady = max(now - zero_t, 1e-3)
                    measured = float(records)
                    cpu = cpu_end - zero_cpu
                gc_end = scrape_gc(metrics_port)
                gc_span = gc_end.since(gc_first) if gc_end and gc_first else None
                if after is not None:
                    after()
                return ProcRun(
                    name=name, records=records, steady_s=round(steady, 3),
                    records_per_s=round(measured / steady, 1), cpu_s=round(cpu, 3),
                    cpu_s_per_1000=per_1000(cpu, measured), rss_mib_peak=rss,
                    startup_s=round(first_t - started, 2),
                    cpu_s_from_idle=round(cpu_end - zero_cpu, 3),
                    gc_pause_s=round(gc_span.pause_s, 3) if gc_span else None,
                    gc_collections=gc_span.collections if gc_span else None,
                )
            time.sleep(poll_s)
        raise TimeoutError(f"{name}: progress {progress()} of {target} after {timeout_s}s; "
                           f"log {log_path}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def scrape_gc(port: int) -> GcTotals | None:
    """A worker's GC pause totals from its /metrics on 127.0.0.1:port (None: no answer)."""
    if not port:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as r:
            return parse_gc_totals(r.read().decode())
    except OSError:
        return None


def settle_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "settle.cli", *args]


# -- Kafka -----------------------------------------------------------------------------------

class Offsets:
    """End and committed offsets through long-lived consumers (cheap to poll)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: Consumer = make_consumer(settings.kafka,
                                                 group_id=f"bench-offsets-{uuid.uuid4()}")
        self._probes: dict[str, Consumer] = {}
        self._last: dict[tuple[str, ...], int] = {}

    def end(self, topics: Sequence[str]) -> int:
        key = tuple(topics)
        # A topic just created may have no leader yet: keep the last answer then.
        with contextlib.suppress(KafkaException):
            self._last[key] = sum(sum(end_offsets(self._consumer, t).values()) for t in topics)
        return self._last.get(key, 0)

    def committed(self, group: str, topics: Sequence[str], partitions: int) -> int:
        """Σ committed offsets of a group on topics (what the group has surely consumed)."""
        # committed() answers for the consumer's own group; the probe never subscribes, so
        # it never joins (or rebalances) the stage's group. One request for every topic.
        probe = self._probes.get(group)
        if probe is None:
            probe = self._probes[group] = make_consumer(self._settings.kafka, group_id=group)
        tps = probe.committed([TopicPartition(topic, p) for topic in topics
                               for p in range(partitions)], timeout=15)
        return sum(max(tp.offset, 0) for tp in tps)

    def close(self) -> None:
        for probe in self._probes.values():
            probe.close()
        self._consumer.close()


class Isolated:
    """A prefixed copy of the contract's topics and a migrated database of its own."""

    def __init__(self, settings: Settings, tag: str, with_db: bool = True) -> None:
        self.base = settings
        self.prefix = f"bench{tag}{uuid.uuid4().hex[:6]}."
        self.topics = TopicNames(self.prefix)
        self.dbname = f"{settings.postgres.dbname}_{self.prefix.rstrip('.')}" if with_db else ""
        self.settings = settings
        if with_db:
            self.settings = replace(settings, postgres=replace(settings.postgres,
                                                               dbname=self.dbname))
        self.extra_dbs: list[str] = []

    def __enter__(self) -> Isolated:
        from infra.config import REPO_ROOT
        from settle.bench import use_run_keyring

        # Signed requests, like production traffic (producers and workers read the env).
        use_run_keyring(self.base, REPO_ROOT / ".bench")
        create_topics(self.base.kafka, name_prefix=self.prefix)
        if self.dbname:
            self.create_db(self.dbname)
        return self

    def create_db(self, dbname: str) -> Settings:
        with connect(self.base.postgres, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        if dbname != self.dbname:
            self.extra_dbs.append(dbname)
        s = replace(self.base, postgres=replace(self.base.postgres, dbname=dbname))
        with connect(s.postgres) as conn:
            migrate(conn)
        return s

    def env(self, **extra: str) -> dict[str, str]:
        env = {"SETTLE_TOPIC_PREFIX": self.prefix, "SETTLE_METRICS_PORT": "0", **extra}
        if self.dbname:
            env["SETTLE_PG_DB"] = self.dbname
        return env

    def __exit__(self, *exc: object) -> None:
        delete_isolated_run(self.base, self.prefix)
        with connect(self.base.postgres, autocommit=True) as conn:
            for db in [self.dbname, *self.extra_dbs]:
                if db:
                    drop_database(conn, db)
