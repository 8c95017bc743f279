"""Run a server process for the HTTP tests and the serving benchmark: on a free loopback port,
wait until it answers, and always stop its whole process group afterwards.

    with serve_process(bentoml_serve("serving.service:ShopRec"), env={...}) as (url, pid):
        httpx.get(f"{url}/readyz")

tests/test_http.py and benchmarks/bench_serving.py both start servers this way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Running(NamedTuple):
    url: str
    pid: int  # the server's top process; BentoML's workers are its children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bentoml_serve(target: str) -> Callable[[int], list[str]]:
    """The `bentoml serve TARGET` command line for a port (the venv's own bentoml)."""
    exe = str(Path(sys.executable).with_name("bentoml"))
    return lambda port: [exe, "serve", target, "--host", "127.0.0.1", "--port", str(port)]


def _get_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2).status_code == 200


@contextlib.contextmanager
def serve_process(
    command: Callable[[int], list[str]],
    *,
    env: dict[str, str] | None = None,
    ready: Callable[[str], bool] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 90.0,
    cwd: Path = ROOT,
) -> Iterator[Running]:
    """Start `command(port)` with `env` added to this process's environment (one BLAS thread
    unless set), wait until `ready(url)` (default: GET /readyz answers 200), yield its URL and
    pid; on exit SIGTERM, then SIGKILL, the whole process group, whatever happened. Output goes to
    `log_path` (default: nowhere)."""
    import httpx

    port = free_port()
    full = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        **(env or {}),
    }
    url = f"http://127.0.0.1:{port}"
    probe = ready or (lambda u: _get_ok(f"{u}/readyz"))
    with open(log_path or os.devnull, "w") as log:
        proc = subprocess.Popen(
            command(port), cwd=cwd, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    where = f"; see {log_path}" if log_path else ""
                    raise RuntimeError(f"server exited with {proc.returncode} before it was ready{where}")
                try:
                    if probe(url):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready after {timeout_s} s")
                time.sleep(0.5)
            yield Running(url, proc.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
