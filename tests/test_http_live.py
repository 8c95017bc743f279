"""The live shop state over real HTTP, the way a shop uses it: a real `bentoml serve` process on a
workspace with an MLflow registry, a stock update over `POST /stock`, restarts, `features build`,
a retrain that ties, and two replicas sharing Redis.

The shop is the tiny one of tests/test_service.py (8 items, i0 the most bought) with a stock table
and a customers table; the champion is `popular`, trained and promoted through the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.devserver import bentoml_serve, serve_process

pytestmark = [pytest.mark.server, pytest.mark.slow]

API_KEY = "live-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _cli(*args: str) -> dict:
    from typer.testing import CliRunner

    from serving.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_shop(root: Path) -> Path:
    """Raw tables -> features -> popular trained and promoted (the registry in the workspace)."""
    now = pd.Timestamp.now(tz="UTC").floor("s")
    rows = []
    for u in range(8):
        for i in range(6 - (u % 3)):
            rows.append(
                dict(user_id=f"u{u}", item_id=f"i{i}", event_type="purchase", quantity=1, order_id=f"o{u}",
                     timestamp=now - pd.Timedelta(days=10 + u + i))
            )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "events.parquet")
    pd.DataFrame(
        dict(
            item_id=[f"i{i}" for i in range(8)],
            title=[f"Item {i}" for i in range(8)],
            category=["home/lamps"] * 4 + ["home/desks"] * 4,
            brand=[f"b{i}" for i in range(8)],
            price=[10.0 + i for i in range(8)],
        )
    ).to_parquet(root / "catalog.parquet")
    pd.DataFrame(dict(item_id=[f"i{i}" for i in range(8)], size=[""] * 8, quantity=[5] * 8)).to_parquet(
        root / "stock.parquet"
    )
    pd.DataFrame(
        dict(
            user_id=[f"u{u}" for u in range(8)], consent_personalisation=[True] * 8, consent_email=[True] * 8
        )
    ).to_parquet(root / "customers.parquet")
    _cli("features", "build", "--data", str(root))
    _cli("train", "--data", str(root), "--model", "popular")
    _cli("promote", "--data", str(root))
    return root


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return make_shop(tmp_path_factory.mktemp("live") / "shop")


@contextlib.contextmanager
def server(data: Path, **env: str) -> Iterator[str]:
    with serve_process(
        bentoml_serve("serving.service:ShopRec"),
        env={"SHOPREC_DATA": str(data), "SHOPREC_API_KEY": API_KEY, "SHOPREC_POLL_SECONDS": "0", **env},
        log_path=data / f"server-{uuid.uuid4().hex[:6]}.log",
        timeout_s=120,
    ) as running:
        yield running.url


def popular(url: str, k: int = 8) -> list[str]:
    r = httpx.post(f"{url}/popular", json={"k": k}, timeout=10)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def batch(url: str, users: list[str]) -> set[str]:
    r = httpx.post(f"{url}/recommend_batch", json={"user_ids": users, "k": 8}, timeout=10)
    assert r.status_code == 200, r.text
    return {i["item_id"] for b in r.json()["results"] for i in b["items"]}


def test_http_stock_update_sells_out_at_once_and_is_still_sold_out_after_a_restart_and_a_build(
    shop: Path,
) -> None:
    with server(shop) as url:
        top = popular(url)[:2]
        assert top == ["i0", "i1"]
        r = httpx.post(
            f"{url}/stock", json={"stock": [{"item_id": t, "quantity": 0} for t in top]}, headers=AUTH
        )
        assert r.status_code == 200 and r.json() == {"accepted": 2}
        assert not set(top) & set(popular(url))  # the very next answer
        assert not set(top) & batch(url, ["u7", "someone-new"])  # and the e-mail renderer's
        refused = httpx.post(
            f"{url}/stock", json={"stock": [{"item_id": "i2", "quantity": -1}]}, headers=AUTH
        )
        assert refused.status_code == 400 and "quantity" in refused.text
    with server(shop) as url:  # a restart replays the change log
        assert not set(top) & set(popular(url))
    _cli("features", "build", "--data", str(shop))  # the build folds the log into the tables
    stock = pd.read_parquet(shop / "validated" / "stock.parquet").set_index("item_id")["quantity"]
    assert stock["i0"] == 0 and stock["i1"] == 0 and stock["i2"] == 5
    with server(shop) as url:
        assert not set(top) & set(popular(url))
        httpx.post(f"{url}/stock", json={"stock": [{"item_id": t, "quantity": 3} for t in top]}, headers=AUTH)
        assert popular(url)[:2] == top


def test_http_a_retrain_that_ties_still_serves_todays_tables(shop: Path, tmp_path: Path) -> None:
    ws = tmp_path / "tie"
    shutil.copytree(shop, ws)
    stock = pd.read_parquet(ws / "stock.parquet")
    stock.loc[stock["item_id"] == "i3", "quantity"] = 0  # sold out in the shop's own table
    stock.to_parquet(ws / "stock.parquet")
    before = _cli("promote", "--data", str(ws))
    _cli("features", "build", "--data", str(ws))
    _cli("train", "--data", str(ws), "--model", "popular")
    after = _cli("promote", "--data", str(ws))
    assert not after["promoted"] and after["champion"] == before["champion"]  # a tie: not promoted
    with server(ws) as url:
        assert "i3" not in popular(url)


def _redis_or_skip() -> str:
    url = "redis://127.0.0.1:6379/0"
    try:
        import redis

        redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
    except Exception as e:
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({type(e).__name__}: {e})")
    return url


@pytest.mark.services
def test_http_two_replicas_sharing_redis_see_a_stock_update_and_a_forget_within_a_second(
    shop: Path, tmp_path: Path
) -> None:
    redis_url = _redis_or_skip()
    prefix = f"shoprec-test-{uuid.uuid4().hex[:10]}"
    a_ws, b_ws = tmp_path / "a", tmp_path / "b"  # each replica with a workspace of its own
    shutil.copytree(shop, a_ws)
    shutil.copytree(shop, b_ws)
    env = {"REDIS_URL": redis_url, "SHOPREC_REDIS_PREFIX": prefix}
    try:
        with server(a_ws, **env) as a, server(b_ws, **env) as b:
            assert popular(a) == popular(b)
            personal = httpx.post(f"{b}/recommend", json={"user_id": "u1", "k": 3}).json()["items"]
            httpx.post(f"{a}/stock", json={"stock": [{"item_id": "i0", "quantity": 0}]}, headers=AUTH)
            httpx.post(f"{a}/forget", json={"user_id": "u1"}, headers=AUTH)
            start = time.monotonic()
            while "i0" in popular(b) and time.monotonic() - start < 5:
                time.sleep(0.05)
            seen_stock = time.monotonic() - start
            while time.monotonic() - start < 5:
                got = httpx.post(f"{b}/recommend", json={"user_id": "u1", "k": 3}).json()["items"]
                if got != personal:
                    break
                time.sleep(0.05)
            seen_forget = time.monotonic() - start
            assert seen_stock < 1.0, f"replica b saw the stock update after {seen_stock:.2f} s"
            assert seen_forget < 1.5, f"replica b stopped personalising after {seen_forget:.2f} s"
            assert "i0" not in popular(b)
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
