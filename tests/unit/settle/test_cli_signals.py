"""A SIGTERM to a bench or chaos run stops the processes it started (no orphans left)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

# A run in miniature: a child in a session of its own (as the pipeline's processes are), stopped
# by the run's `finally`, the way IsolatedPipeline.close stops them.
RUN = textwrap.dedent("""
    import subprocess, sys, time
    from settle.cli.common import unwind_on_sigterm
    unwind_on_sigterm()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        # Printed inside the try: the test signals as soon as it reads the pid, and a SIGTERM
        # that landed between a print before the try and the try itself skipped the finally
        # (CI under load saw "stopped" missing once).
        print(child.pid, flush=True)
        time.sleep(120)
    finally:
        child.terminate()
        child.wait(timeout=10)
        print("stopped", flush=True)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def test_sigterm_runs_finally_and_stops_the_child() -> None:
    run = subprocess.Popen([sys.executable, "-c", RUN], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None
    child = int(run.stdout.readline())
    try:
        assert _alive(child)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 128 + signal.SIGTERM
        assert "stopped" in out
        assert "terminated" in err
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        run.kill()


def test_without_it_sigterm_leaves_the_child_running() -> None:
    """The behaviour this fixes: Python's default SIGTERM skips `finally`."""
    plain = RUN.replace("unwind_on_sigterm()\n", "")
    run = subprocess.Popen([sys.executable, "-c", plain], stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    child = int(run.stdout.readline())
    try:
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=30)
        assert run.returncode == -signal.SIGTERM
        assert "stopped" not in out
        assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)
