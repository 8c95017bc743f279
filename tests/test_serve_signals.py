"""`shoprec serve` under a supervisor: SIGTERM stops the whole service gracefully.

Regression test: SIGTERM used to end `shoprec serve` alone and leave the BentoML server (arbiter
and workers, which run in sessions of their own) running and answering, with no parent. Here a
real `shoprec serve` process gets SIGTERM while requests are in flight (BentoML's own
`request_in_progress` gauge says they are inside the service): every request is answered, the
service's `@bentoml.on_shutdown` hook runs, and afterwards nothing listens on the port and no
process of the server is alive. A SIGKILL to `shoprec serve` (which cannot be caught) still ends
in the graceful stop of the server, through the parent-death signal.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil
import pytest

from serving.devserver import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SHOPREC = Path(sys.executable).with_name("shoprec")


class Served(NamedTuple):
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    tree: list[psutil.Process]  # the server's processes (arbiter, workers) once it is ready
    log: Path
    tmp: Path


@contextlib.contextmanager
def shoprec_serve(shop, where: Path) -> Iterator[Served]:  # noqa: ANN001 - conftest.Shop
    """A real `shoprec serve --bundle` on a free port, in its own session; whatever the test does,
    every process it started is gone afterwards."""
    port = free_port()
    tmp = where / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log = where / "serve.log"
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "BENTOML_DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    cmd = [str(SHOPREC), "serve", "--bundle", str(shop.bundle), "--data", str(shop.ws.root)]
    cmd += ["--port", str(port), "--poll-seconds", "0"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"shoprec serve exited early; see {log}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready after 120 s; see {log}"
            time.sleep(0.5)
        tree = psutil.Process(proc.pid).children(recursive=True)
        yield Served(proc, url, port, tree, log, tmp)
    finally:
        everything = [*tree, *_safe_children(proc.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        for p in everything:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(timeout=10)


def _safe_children(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _alive(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


def _listening(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)
        return True
    return False


def _in_progress(url: str, endpoint: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    m = re.search(
        r'bentoml_service_request_in_progress\{endpoint="' + re.escape(endpoint) + r'"[^}]*\} ([0-9.]+)', text
    )
    return float(m.group(1)) if m else 0.0


def _users(shop) -> list[str]:  # noqa: ANN001 - conftest.Shop
    return (shop.user_ids + [f"new-{i}" for i in range(500)])[:500]


def test_sigterm_answers_requests_in_flight_then_leaves_no_process(
    als_shop,
    tmp_path: Path,  # noqa: ANN001 - conftest.Shop
) -> None:
    users = _users(als_shop)
    n = 4
    results: list[tuple[int | str, int, float]] = []

    with shoprec_serve(als_shop, tmp_path) as served:
        assert len(served.tree) >= 2  # the arbiter and at least one worker

        def call() -> None:
            try:
                with httpx.Client(timeout=180) as c:
                    r = c.post(f"{served.url}/recommend_batch", json={"user_ids": users, "k": 100})
                    results.append((r.status_code, len(r.json()["results"]), time.monotonic()))
            except Exception as e:  # a dropped request: recorded, and the test fails below
                results.append((repr(e), 0, time.monotonic()))

        threads = [threading.Thread(target=call) for _ in range(n)]
        for t in threads:
            t.start()
        # Every request inside the service before the signal: that is what "in flight" means.
        deadline = time.monotonic() + 60
        while _in_progress(served.url, "/recommend_batch") < n:
            assert time.monotonic() < deadline, "the requests never were all in progress"
            time.sleep(0.05)
        sent_at = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=180)
        rc = served.proc.wait(timeout=90)

        assert [r[:2] for r in results] == [(200, len(users))] * n
        assert sum(r[2] > sent_at for r in results) >= n - 1  # answered after the signal
        assert rc == 0
        assert not _listening(served.port)
        assert _alive(served.tree) == []
        log = served.log.read_text()
        assert "Completed cleanup hook: shutdown" in log  # the service's on_shutdown hook ran
        assert not any(served.tmp.glob("bentoml-*"))  # the arbiter cleaned up after itself


def test_sigkill_to_shoprec_serve_still_stops_the_server(als_shop, tmp_path: Path) -> None:  # noqa: ANN001
    with shoprec_serve(als_shop, tmp_path) as served:
        served.proc.send_signal(signal.SIGKILL)  # cannot be caught: the kernel's parent-death signal acts
        served.proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while _alive(served.tree) or _listening(served.port):
            assert time.monotonic() < deadline, f"left running: {_alive(served.tree)}"
            time.sleep(0.5)
        assert "Completed cleanup hook: shutdown" in served.log.read_text()
