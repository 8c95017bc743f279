"""Two replicas sharing a Redis that dies mid-load and comes back (issue: replicas that share their
state). Real `bentoml serve` processes on workspaces of their own, a private `redis-server` with
an append-only file (what docs/deploy.md asks of a production Redis), killed with SIGKILL while a
client keeps asking both replicas, and while a purchase and a stock update arrive at replica a.

What must hold: no request is answered with an error; what replica a acknowledged while Redis was
away is in effect on a at once, in its change log for the next training, and reaches replica b
once Redis is back.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.services]

_spec = importlib.util.spec_from_file_location("_live_tests", Path(__file__).with_name("test_http_live.py"))
_live = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_live)
AUTH, server, popular, make_shop = _live.AUTH, _live.server, _live.popular, _live.make_shop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own (so killing it disturbs nobody), AOF fsynced always."""

    def __init__(self, root: Path) -> None:
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.skip("no redis-server binary on PATH (Debian package redis-server)")
        self.port = _free_port()
        self.dir = root
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path / "redis")
    r.dir.mkdir()
    r.start()
    try:
        yield r
    finally:
        r.kill()


def _block(url: str, user: str, k: int = 4) -> list[str]:
    r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": k}, timeout=10)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_a_redis_restart_mid_load_loses_no_acknowledged_write_and_answers_no_error(
    redis_server: PrivateRedis, tmp_path: Path
) -> None:
    shop = make_shop(tmp_path / "shop")
    a_ws, b_ws = tmp_path / "a", tmp_path / "b"
    shutil.copytree(shop, a_ws)
    shutil.copytree(shop, b_ws)
    env = {"REDIS_URL": redis_server.url, "SHOPREC_REDIS_PREFIX": "restart-test"}
    statuses: list[int] = []
    stop = threading.Event()

    def load(urls: list[str]) -> None:
        with httpx.Client(timeout=10) as c:
            n = 0
            while not stop.is_set():
                url = urls[n % 2]
                n += 1
                for path, body in (("/recommend", {"user_id": "u5", "k": 3}), ("/popular", {"k": 3})):
                    try:
                        statuses.append(c.post(f"{url}{path}", json=body).status_code)
                    except httpx.HTTPError as e:  # a dropped connection counts as a failure too
                        statuses.append(-1)
                        print(f"request failed: {e}")
                time.sleep(0.01)

    with server(a_ws, **env) as a, server(b_ws, **env) as b:
        # u2 bought i0-i3; with the popular champion i4, the most bought of the rest, comes first
        assert _block(b, "u2")[0] == "i4" and "i1" in popular(b)
        loader = threading.Thread(target=load, args=([a, b],), daemon=True)
        loader.start()
        time.sleep(1.0)
        redis_server.kill()
        time.sleep(0.5)
        bought = {"events": [{"user_id": "u2", "item_id": "i4", "event_type": "purchase", "quantity": 1}]}
        assert httpx.post(f"{a}/events", json=bought, headers=AUTH, timeout=10).status_code == 200
        sold_out = {"stock": [{"item_id": "i1", "quantity": 0}]}
        assert httpx.post(f"{a}/stock", json=sold_out, headers=AUTH, timeout=10).status_code == 200
        # acknowledged while Redis is away: in effect on the replica that took it, at once
        assert "i1" not in popular(a)
        time.sleep(1.0)
        redis_server.start()  # the same append-only file: what Redis had acknowledged survives
        start = time.monotonic()
        while time.monotonic() - start < 10 and ("i1" in popular(b) or "i4" in _block(b, "u2")):
            time.sleep(0.1)
        waited = time.monotonic() - start
        time.sleep(0.5)
        stop.set()
        loader.join(timeout=20)
        assert "i1" not in popular(b), (
            f"replica b still shows the sold-out item {waited:.1f} s after Redis came back"
        )
        assert "i4" not in _block(b, "u2"), "replica b never saw the purchase replica a acknowledged"
        assert "i4" not in _block(a, "u2")

    assert len(statuses) > 50, "the load generator barely ran"
    errors = [s for s in statuses if s != 200]
    assert not errors, (
        f"{len(errors)} of {len(statuses)} requests failed during the Redis restart: {set(errors)}"
    )
    from features import changelog
    from features.workspace import Workspace

    events, _ = changelog.read(Workspace.at(a_ws), "events")
    logged = [(r["user_id"], r["item_id"]) for r in events.to_pylist()]
    assert ("u2", "i4") in logged  # for the next training, whatever Redis did
