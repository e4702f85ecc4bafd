"""The Quix Streams peer of validate+route: its own virtualenv, the same preloaded requests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from infra.admin import create_topics
from producers.merchants import load_merchants, sample_merchants_path
from schemas.topics import CONTRACT, TopicSpec
from settle.benchmarks.common import Isolated, Offsets, ProcRun, Say, run_measured
from settle.benchmarks.limits import Preloaded

SCRIPT = Path(__file__).with_name("quix_validate.py")
# Quix Streams pins confluent-kafka<2.13: it must never share the project's environment.
QUIX_REQUIREMENTS = ("quixstreams", "fastavro", "httpx")


def quix_python(venv: Path, say: Say) -> Path:
    """The peer venv's interpreter, creating the venv with `python -m venv` + pip if needed."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        say(f"creating {venv} with {', '.join(QUIX_REQUIREMENTS)} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *QUIX_REQUIREMENTS],
                       check=True)
        stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return python


def run_peer(iso: Isolated, pre: Preloaded, venv: Path, out_dir: Path, say: Say) -> ProcRun:
    """Drain the preloaded requests through the Quix Streams validate+route into quix.* topics."""
    python = quix_python(venv, say)
    out_prefix = iso.prefix + "quix."
    names = [spec.name for spec in CONTRACT
             if spec.name.startswith(("payments.routed.", "payments.rejected", "payments.dlq"))]
    create_topics(iso.settings.kafka,
                  [TopicSpec(name, retention_ms=3600_000) for name in names],
                  name_prefix=out_prefix)
    merchants = out_dir / "merchants.json"
    merchants.parent.mkdir(parents=True, exist_ok=True)
    merchants.write_text(json.dumps(
        [e.to_record(time.time_ns() // 1_000_000) for e in load_merchants(
            sample_merchants_path())]))
    exp = pre.expected
    offsets = Offsets(iso.settings)
    try:
        say(f"Quix Streams peer draining {pre.count:,} requests")
        return run_measured(
            "quix-validate", [str(python), str(SCRIPT), str(merchants)],
            iso.env(QUIX_STATE_DIR=str(out_dir / "quix-state")),
            lambda: offsets.end([out_prefix + n for n in names]),
            exp["routed"] + exp["rejected"] + exp["dead_lettered"], pre.count,
            out_dir / "quix-validate.log")
    finally:
        offsets.close()
