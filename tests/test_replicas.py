"""Two replicas sharing Redis give the same answer to the same request (issue: replicas that share
their state). Two real `bentoml serve` processes of one ALS bundle (conftest's als_shop), each on a
workspace of its own, so that Redis is the only thing they share: the online store of recent
events, the forget list and the change stream. A/B assignment is a salted hash, the same on both.

tests/test_http_live.py checks a stock update and a forget across two replicas, and
tests/test_redis_restart.py a Redis restart mid-load; this module checks the answers themselves,
and a purchase. benchmarks/bench_replicas.py measures the same on the 5k-item shop, under load.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.devserver import bentoml_serve, serve_process

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.services]

REDIS_URL = "redis://127.0.0.1:6379/0"
API_KEY = "replica-key"


def _redis_or_skip() -> None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
    except Exception as e:
        pytest.skip(f"no Redis at 127.0.0.1:6379 to share between the replicas ({type(e).__name__}: {e})")


@contextlib.contextmanager
def two_replicas(shop, root: Path, prefix: str) -> Iterator[tuple[str, str]]:
    """Replicas a and b of the shop's bundle, each on a copy of the shop's workspace, one Redis
    prefix, 30% of customers in the control group of an A/B test."""
    env = {
        "SHOPREC_BUNDLE": str(shop.bundle),
        "SHOPREC_API_KEY": API_KEY,
        "SHOPREC_POLL_SECONDS": "0",
        "REDIS_URL": REDIS_URL,
        "SHOPREC_REDIS_PREFIX": prefix,
        "SHOPREC_AB_SHARES": "champion=0.7,control=0.3",
        "SHOPREC_AB_SALT": "replica-test",
    }
    with contextlib.ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            ws = root / name
            shutil.copytree(shop.ws.root, ws)
            running = serve_process(
                bentoml_serve("serving.service:ShopRec"),
                env={**env, "SHOPREC_DATA": str(ws)},
                log_path=root / f"server-{name}.log",
                timeout_s=120,
            )
            urls.append(stack.enter_context(running).url)
        yield urls[0], urls[1]


def _requests(shop) -> list[dict]:
    """Customers (with and without consent, and two nobody knows) on the pages a shop has: none,
    an item page, a category page, a cart, the e-mail channel."""
    items = pd.read_parquet(shop.ws.feature("items"), columns=["item_id", "category"])
    users = shop.user_ids[:50] + ["someone-new", "another-new"]
    out = []
    for j, user in enumerate(users):
        item = items.iloc[(j * 37) % len(items)]
        context = [
            {},
            {"current_item": item["item_id"]},
            {"page_category": item["category"].rsplit("/", 1)[0]},
            {"cart": [item["item_id"]]},
            {"channel": "email"},
        ][j % 5]
        out.append({"user_id": user, "k": 8, "context": context})
    return out


def _answer(c: httpx.Client, url: str, body: dict) -> dict:
    r = c.post(f"{url}/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _items(answer: dict) -> list[str]:
    return [i["item_id"] for i in answer["items"]]


def test_two_replicas_sharing_redis_give_the_same_answer_and_see_a_purchase_within_a_second(
    als_shop, tmp_path: Path
) -> None:
    _redis_or_skip()
    prefix = f"shoprec-test-{uuid.uuid4().hex[:10]}"
    try:
        with two_replicas(als_shop, tmp_path, prefix) as (a, b), httpx.Client(timeout=30) as c:
            variants: dict[str, str] = {}
            lists = set()
            for body in _requests(als_shop):
                on_a, on_b = _answer(c, a, body), _answer(c, b, body)
                assert _items(on_a) == _items(on_b), f"replicas differ for {body}"
                assert on_a["variant"] == on_b["variant"] and on_a["model_version"] == on_b["model_version"]
                assert [i["reason"] for i in on_a["items"]] == [i["reason"] for i in on_b["items"]]
                variants[body["user_id"]] = on_a["variant"]
                lists.add(tuple(_items(on_a)))
            # the comparison means something: both variants served, and answers that vary
            assert set(variants.values()) == {"champion", "control"}
            assert len(lists) > 20

            customers = pd.read_parquet(als_shop.ws.validated("customers"))
            consenting = set(customers.loc[customers["consent_personalisation"], "user_id"].astype(str))
            user = next(u for u, v in variants.items() if v == "champion" and u in consenting)
            top = _items(_answer(c, b, {"user_id": user, "k": 8}))[0]
            bought = {"events": [{"user_id": user, "item_id": top, "event_type": "purchase", "quantity": 1}]}
            start = time.monotonic()
            r = c.post(f"{a}/events", json=bought, headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.status_code == 200, r.text
            assert top not in _items(_answer(c, a, {"user_id": user, "k": 8}))  # at once where it was posted
            while top in _items(_answer(c, b, {"user_id": user, "k": 8})) and time.monotonic() - start < 5:
                time.sleep(0.02)
            waited = time.monotonic() - start
            assert top not in _items(_answer(c, b, {"user_id": user, "k": 8})), (
                "replica b never saw the purchase"
            )
            assert waited < 1.0, f"replica b saw the purchase on replica a after {waited:.2f} s"
            # and the two agree again afterwards
            assert _items(_answer(c, a, {"user_id": user, "k": 8})) == _items(
                _answer(c, b, {"user_id": user, "k": 8})
            )
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_social_proof_counts_a_purchase_posted_to_the_other_replica(als_shop, tmp_path: Path) -> None:
    """ "N customers bought this this week" is the same on every replica: six customers buy the most
    popular item through replica a; replica b's answer shows 6 within a second (a count under 5 is
    never shown)."""
    _redis_or_skip()
    prefix = f"shoprec-test-{uuid.uuid4().hex[:10]}"
    try:
        with two_replicas(als_shop, tmp_path, prefix) as (a, b), httpx.Client(timeout=30) as c:

            def proof(url: str, item: str) -> dict | None:
                r = c.post(f"{url}/popular", json={"k": 20})
                assert r.status_code == 200, r.text
                return next(i.get("social_proof") for i in r.json()["items"] if i["item_id"] == item)

            r = c.post(f"{b}/popular", json={"k": 20})
            item = r.json()["items"][0]["item_id"]
            before = (proof(b, item) or {}).get("purchases_7d", 0)
            buyers = als_shop.user_ids[:6]
            posted = {"events": [{"user_id": u, "item_id": item, "event_type": "purchase"} for u in buyers]}
            start = time.monotonic()
            r = c.post(f"{a}/events", json=posted, headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.status_code == 200, r.text
            want = {"purchases_7d": before + 6}
            assert proof(a, item) == want  # where it was posted, at once
            while proof(b, item) != want and time.monotonic() - start < 5:
                time.sleep(0.02)
            waited = time.monotonic() - start
            assert proof(b, item) == want, f"replica b shows {proof(b, item)}, replica a {want}"
            assert waited < 1.0, f"replica b counted the purchases on replica a after {waited:.2f} s"
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
