"""The service as a real `bentoml serve` process over HTTP (level 3 of the service tests).

The server is started on a free port with a tiny bundle behind a symlink, waited for on /readyz
(with a timeout), and always killed. Champion hot-swap is shown under load: the symlink is pointed
at another model's bundle while a client keeps sending requests; every request must succeed and
the answers must change model version.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.devserver import bentoml_serve, serve_process

pytestmark = [pytest.mark.server, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("_svc_tests", Path(__file__).with_name("test_service.py"))
_svc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_svc)
build_tiny_bundle = _svc.build_tiny_bundle
API_KEY = _svc.API_KEY
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def bentoml_server(env: dict[str, str], timeout_s: float = 90.0) -> Iterator[str]:
    """Run `bentoml serve serving.service:ShopRec` with `env` added; yield its base URL once
    /readyz answers 200; kill the whole process group on exit, whatever happened
    (serving.devserver, shared with the serving benchmark)."""
    log = env.get("SHOPREC_TEST_LOG")
    with serve_process(
        bentoml_serve("serving.service:ShopRec"),
        env=env,
        log_path=Path(log) if log else None,
        timeout_s=timeout_s,
    ) as running:
        yield running.url


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shop")
    return build_tiny_bundle(root, "popular"), build_tiny_bundle(root, "itemknn")


@pytest.fixture(scope="module")
def server(
    bundles: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    link = tmp_path_factory.mktemp("live") / "current"
    link.symlink_to(bundles[0])
    env = {
        "SHOPREC_BUNDLE": str(link),
        "SHOPREC_DATA": str(bundles[0].parent),
        "SHOPREC_API_KEY": API_KEY,
        "SHOPREC_POLL_SECONDS": "0.5",
        "SHOPREC_IMPRESSIONS": str(link.parent / "impressions.jsonl"),
        "SHOPREC_TEST_LOG": str(link.parent / "server.log"),
    }
    with bentoml_server(env) as url:
        yield url, link


def test_http_recommend_and_purchase_event(server) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as c:
        first = c.post("/recommend", json={"user_id": "u2", "k": 3})
        # one JSON body with its length (serving.service._plain_json_output), not a chunked stream
        assert first.headers.get("content-length") == str(len(first.content))
        body = first.json()
        ids = [i["item_id"] for i in body["items"]]
        assert len(ids) == 3 and not {"i0", "i1", "i2", "i3"} & set(ids)
        assert body["variant"] == "champion"
        r = c.post(
            "/events",
            json={"events": [{"user_id": "u2", "item_id": ids[0], "event_type": "purchase"}]},
            headers=AUTH,
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1
        after = [i["item_id"] for i in c.post("/recommend", json={"user_id": "u2", "k": 3}).json()["items"]]
        assert ids[0] not in after
        assert c.post("/events", json={"events": []}).status_code == 401  # auth before validation
        assert c.post("/recommend", json={"user_id": "u2", "k": 101}).status_code == 400
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["model_version"].startswith("popular-")
        assert c.get("/metrics").status_code == 200


def test_http_access_log_has_no_customer_id(server) -> None:
    url, link = server
    secret = "customer-7f3a9e"
    httpx.post(f"{url}/recommend", json={"user_id": secret, "k": 2}, timeout=10)
    time.sleep(0.5)
    log = (link.parent / "server.log").read_text()
    assert "[access] POST /recommend 200" in log, "the access log should show the request"
    assert secret not in log


def test_http_hot_swap_under_load_has_no_failed_request(server, bundles) -> None:
    url, link = server
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/recommend", json={"user_id": "u1", "k": 3})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        versions.append(r.json()["model_version"])
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        tmp = link.parent / "next"
        tmp.symlink_to(bundles[1])
        tmp.replace(link)  # atomic rename: the poller sees the old or the new bundle, never none
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (versions and versions[-1].startswith("itemknn-")):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert not failures, failures[:3]
    assert versions[0].startswith("popular-") and versions[-1].startswith("itemknn-")
    assert len(versions) > 20
    assert httpx.get(f"{url}/readyz", timeout=5).json()["swaps"] >= 1


def _requests_counted(metrics: str, endpoint: str) -> float:
    """BentoML's request counter for `endpoint` (200s), summed over its label sets."""
    total = 0.0
    for line in metrics.splitlines():
        labels = line.startswith("bentoml_service_request_total{") and f'endpoint="{endpoint}"' in line
        if labels and 'http_response_code="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_http_metrics_count_the_direct_route(server) -> None:
    """The read endpoints are answered by the guard's direct route (SHOPREC_DIRECT, on by default),
    ahead of BentoML's dispatch; /metrics must still count every one of them."""
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as c:
        before = c.get("/metrics").text
        for _ in range(5):
            assert c.post("/recommend", json={"user_id": "u2", "k": 3}).status_code == 200
        for _ in range(3):
            assert c.post("/popular", json={"k": 2}).status_code == 200
        after = c.get("/metrics").text
    assert _requests_counted(after, "/recommend") - _requests_counted(before, "/recommend") == 5
    assert _requests_counted(after, "/popular") - _requests_counted(before, "/popular") == 3
