"""Run the BentoML server as a child of `shoprec serve` and stop it as a whole.

`bentoml serve` is a circus arbiter whose workers run in sessions of their own, so a signal to
`shoprec serve` (or to its process group) never reaches them: before this module, a supervisor's
SIGTERM ended `shoprec serve` and left the server running and answering, with no parent.

`run(cmd, env)` starts the server in a new session and waits for it:
* SIGTERM, SIGINT (Ctrl-C) or SIGHUP to `shoprec serve` is forwarded once, as SIGTERM, to the
  arbiter. That is BentoML's graceful stop: each worker (uvicorn) stops accepting connections,
  answers the requests in flight, runs the service's `@bentoml.on_shutdown` hooks, and exits;
  then the arbiter removes its sockets and exits. A second signal means "now": SIGKILL to all.
* If the arbiter is still running `stop_timeout` seconds after the forwarded signal, the whole
  tree is killed.
* Whatever way the arbiter ends, any of its descendants still alive afterwards (a worker orphaned
  by a crashed arbiter) is sent SIGTERM, then SIGKILL: when `run` returns, no server process is left.
* The arbiter is started through `python -m serving.supervise --exec ...`, which asks the kernel
  to send it SIGTERM if `shoprec serve` itself dies (Linux `PR_SET_PDEATHSIG`), so even a SIGKILL
  to `shoprec serve` ends in the graceful stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import psutil

logger = logging.getLogger("shoprec.serving")

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# BentoML's workers get circus' graceful_timeout (30 s) to finish their requests before the
# arbiter kills them; the arbiter then needs a moment to clean up.
DEFAULT_STOP_TIMEOUT_S = 45.0
# How long orphans get between SIGTERM and SIGKILL.
ORPHAN_GRACE_S = 10.0
_POLL_S = 0.5


def exec_command(cmd: Sequence[str]) -> list[str]:
    """`cmd` wrapped so that the started process gets SIGTERM when its parent dies (Linux)."""
    return [sys.executable, "-m", "serving.supervise", "--exec", *cmd]


def run(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, *, stop_timeout: float = DEFAULT_STOP_TIMEOUT_S
) -> int:
    """Run `cmd` (the `bentoml serve ...` command line) until it exits; returns its exit code, or 0
    when it stopped because this process was asked to stop (see the module docstring)."""
    state = {"asked": 0.0, "count": 0}
    tree: dict[int, psutil.Process] = {}
    started: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        state["count"] += 1
        if state["count"] == 1:
            state["asked"] = time.monotonic()
            logger.info("%s: stopping the server gracefully", signal.Signals(signum).name)
            if started:
                _send(started[0].pid, signal.SIGTERM)
        elif started:  # asked twice: stop now
            _kill_all(started[0].pid, tree)

    # Handlers first, so a signal that arrives while the server starts is not lost.
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        proc = subprocess.Popen(
            exec_command(cmd), env=dict(env) if env is not None else None, start_new_session=True
        )
    except BaseException:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise
    started.append(proc)
    if state["count"]:
        _send(proc.pid, signal.SIGTERM)
    try:
        while True:
            _remember(proc.pid, tree)
            try:
                rc = proc.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if state["asked"] and time.monotonic() - state["asked"] > stop_timeout:
                logger.warning("the server did not stop within %.0f s: killing it", stop_timeout)
                _kill_all(proc.pid, tree)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # an exception here (never a normal path): take the server down too
            _kill_all(proc.pid, tree)
            proc.wait()
        _reap(tree)
    return 0 if state["count"] and rc in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else rc


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _remember(pid: int, tree: dict[int, psutil.Process]) -> None:
    """Add the current descendants of `pid` to `tree` (psutil handles remember their start time, so
    a recycled pid is never mistaken for one of them)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            tree.setdefault(child.pid, child)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def _kill_all(pid: int, tree: dict[int, psutil.Process]) -> None:
    _remember(pid, tree)
    _send(pid, signal.SIGKILL)
    for p in _alive(list(tree.values())):
        with contextlib.suppress(psutil.Error):
            p.kill()


def _reap(tree: dict[int, psutil.Process]) -> None:
    """SIGTERM, then after ORPHAN_GRACE_S SIGKILL, every remembered descendant still alive."""
    left = _alive(list(tree.values()))
    if not left:
        return
    logger.warning("%d server process(es) outlived the server: stopping them", len(left))
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(left, timeout=ORPHAN_GRACE_S)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(still, timeout=5)


def _exec_with_parent_death_signal(cmd: list[str]) -> None:
    """Replace this process with `cmd`, after asking Linux to send it SIGTERM when its parent
    exits (the setting survives exec). Elsewhere it just execs."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        if os.getppid() != parent:  # the parent died before the setting took effect
            sys.exit(0)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--exec":
        sys.exit("usage: python -m serving.supervise --exec COMMAND [ARGS...]")
    _exec_with_parent_death_signal(sys.argv[2:])
