"""Start, find and stop the pipeline's own background processes (workers, sinks, simulators)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One pipeline process: its name, `settle` arguments and Prometheus port."""

    name: str
    args: tuple[str, ...]
    metrics_port: int
    job: str


def pid_file(run_dir: Path, name: str) -> Path:
    # `deploy/stack.sh down` stops every proc-*.pid before the services.
    return run_dir / "pids" / f"proc-{name}.pid"


def running_pid(run_dir: Path, name: str) -> int | None:
    path = pid_file(run_dir, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    # A child of this process that was killed stays a zombie (and answers kill 0) until it
    # is reaped: reap it here. Not our child: ChildProcessError, nothing to reap.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    return pid


def start(run_dir: Path, spec: ProcessSpec, env: dict[str, str]) -> tuple[int, bool]:
    """Start ``settle <args>`` detached with its log under run_dir/logs; idempotent.

    Returns (pid, started_now).
    """
    pid = running_pid(run_dir, spec.name)
    if pid is not None:
        return pid, False
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pid_file(run_dir, spec.name).parent.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by the child
    # The log is appended to across starts: a header dates each start's lines.
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    log.write(f"=== {started}: settle {' '.join(spec.args)} ===\n".encode())
    log.flush()
    proc = subprocess.Popen(
        [sys.executable, "-m", "settle.cli", *spec.args],
        env={**os.environ, **env, "SETTLE_METRICS_PORT": str(spec.metrics_port)},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the demo command; `make down` stops it
    )
    log.close()
    pid_file(run_dir, spec.name).write_text(str(proc.pid))
    return proc.pid, True


def stop(run_dir: Path, name: str, timeout_s: float = 30.0) -> None:
    pid = running_pid(run_dir, name)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file(run_dir, name).unlink(missing_ok=True)


def stop_all(run_dir: Path, names: list[str], timeout_s: float = 30.0) -> None:
    """SIGTERM every process at once, then wait; SIGKILL what is left after the timeout."""
    pids = {n: p for n in names if (p := running_pid(run_dir, n)) is not None}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        for name, pid in list(pids.items()):
            try:
                os.kill(pid, 0)
            except OSError:
                del pids[name]
                pid_file(run_dir, name).unlink(missing_ok=True)
        time.sleep(0.2)
    for name, pid in pids.items():
        os.kill(pid, signal.SIGKILL)
        pid_file(run_dir, name).unlink(missing_ok=True)


def metrics_up(port: int, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def metric_value(port: int, sample: str, timeout_s: float = 2.0) -> float | None:
    """The value of one sample (``name{labels}`` exactly as exposed) on a /metrics page."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def write_prometheus_targets(run_dir: Path, specs: list[ProcessSpec], path: Path | None = None,
                             labels: dict[str, str] | None = None) -> Path:
    """File-based service discovery for Prometheus: job `settle`, one `process` label each."""
    targets = [
        {"targets": [f"127.0.0.1:{s.metrics_port}"],
         "labels": {**(labels or {}), "process": s.name}}
        for s in specs if s.metrics_port
    ]
    path = path or run_dir / "prometheus" / "targets" / "pipeline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets, indent=2))
    tmp.replace(path)  # atomic: Prometheus never reads half a file
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
