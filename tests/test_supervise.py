"""serving.supervise without BentoML: a stand-in server (a Python script) shows each rule of the
stop. The script starts a "worker" in a session of its own (as circus does) and records the
signals it gets; the supervisor runs in its own process, as `shoprec serve` does."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

# The stand-in server: starts a worker in a new session, writes both pids, then on SIGTERM
# records it and either stops the worker and exits (graceful), exits leaving the worker behind
# (orphans), or ignores it (stuck).
SERVER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    out, mode = sys.argv[1], sys.argv[2]
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    def on_term(signum, frame):
        with open(out + ".signals", "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
        if mode == "graceful":
            worker.terminate(); worker.wait(); sys.exit(0)
        if mode == "orphans":
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    with open(out + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {worker.pid}")
    os.replace(out + ".tmp", out)
    while True:
        time.sleep(0.1)
    """
)


def _start(
    tmp_path: Path, mode: str, stop_timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], list[psutil.Process]]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    pids = tmp_path / "pids"
    code = (
        "import sys; from serving.supervise import run; "
        f"sys.exit(run([sys.executable, {str(script)!r}, {str(pids)!r}, {mode!r}], stop_timeout={stop_timeout}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not pids.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    # Handles taken now remember each process's start time: cleaning up never hits a reused pid.
    return proc, [psutil.Process(int(pid)) for pid in pids.read_text().split()]


def _gone(p: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    return True


def _cleanup(proc: subprocess.Popen[bytes], handles: list[psutil.Process]) -> None:
    """Kill what is left of this test's processes."""
    if proc.poll() is None:
        proc.kill()
    for p in handles:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_forwarded_once_as_sigterm_and_the_server_stops(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc, (server, worker) = _start(tmp_path, "graceful")
    try:
        time.sleep(1.0)  # the supervisor has seen the worker
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0  # a requested stop is a clean exit
        assert (tmp_path / "pids.signals").read_text() == "SIGTERM\n"
        assert _gone(server) and _gone(worker)
    finally:
        _cleanup(proc, [server, worker])


def test_a_worker_the_server_left_behind_is_stopped_too(tmp_path: Path) -> None:
    proc, (server, worker) = _start(tmp_path, "orphans")
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert _gone(server) and _gone(worker)  # the orphan in its own session was reaped
    finally:
        _cleanup(proc, [server, worker])


def test_a_stuck_server_is_killed_after_the_stop_timeout_or_on_a_second_signal(tmp_path: Path) -> None:
    proc, (server, worker) = _start(tmp_path, "stuck", stop_timeout=2.0)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - started >= 1.9
        assert _gone(server) and _gone(worker)
    finally:
        _cleanup(proc, [server, worker])

    (tmp_path / "pids").unlink()
    proc, (server, worker) = _start(tmp_path, "stuck", stop_timeout=600.0)
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert not _gone(server)  # still in its graceful stop
        proc.send_signal(signal.SIGINT)  # asked twice: now
        proc.wait(timeout=30)
        assert _gone(server) and _gone(worker)
    finally:
        _cleanup(proc, [server, worker])
