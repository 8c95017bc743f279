"""Social proof, `/rerank` and `/merge` over real HTTP: a `bentoml serve` process on the tiny shop of
tests/test_rerank.py with `popular` trained and promoted through the CLI, hit the way a shop does.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.test_http_live import AUTH, _cli, server
from tests.test_rerank import GIVEN, make_rerank_shop

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = make_rerank_shop(tmp_path_factory.mktemp("rerank-live") / "shop")
    _cli("train", "--data", str(root), "--model", "popular")
    _cli("promote", "--data", str(root))
    with server(root) as running:
        yield running


def _post(url: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=10, **kw)


def _proof(url: str) -> dict[str, dict]:
    r = _post(url, "/popular", {"k": 11})
    assert r.status_code == 200, r.text
    return {i["item_id"]: i.get("social_proof") for i in r.json()["items"]}


def test_social_proof_from_five_customers_on_counting_events_posted_a_moment_ago(url: str) -> None:
    r = _post(url, "/popular", {"k": 11})
    items = {i["item_id"]: i for i in r.json()["items"]}
    assert items["l0"]["social_proof"] == {"purchases_7d": 5}  # five buyers two days ago
    assert "social_proof" not in items["m0"]  # four: the key is absent, not null
    assert "social_proof" not in items["j2"]  # six buyers, a month ago
    again = _post(url, "/events", {"events": [{"user_id": "u1", "item_id": "m0", "event_type": "purchase"}]},
                  headers=AUTH)  # fmt: skip
    assert again.status_code == 200
    assert _proof(url)["m0"] is None  # u1 had bought it already: still four customers
    new = _post(url, "/events", {"events": [{"user_id": "u6", "item_id": "m0", "event_type": "purchase", "device": "mobile", "weather": "rain"}]},
                headers=AUTH)  # fmt: skip
    assert new.status_code == 200
    assert _proof(url)["m0"] == {"purchases_7d": 5}  # the very next answer
    docs = httpx.get(f"{url}/docs.json", timeout=10).text
    assert "social_proof" in docs and "/rerank" in docs


def test_rerank_over_http(url: str) -> None:
    r = _post(url, "/rerank", {"user_id": "fan", "item_ids": GIVEN, "context": {"size": "M"}})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [i["item_id"] for i in body["items"]]
    assert sorted(ids) == sorted(set(GIVEN))
    assert ids[0] == "j0" and ids[3:] == ["nope-42", "j3", "j1"]
    assert body["variant"] == "champion" and body["recommendation_id"] and body["model_version"]
    private = _post(url, "/rerank", {"user_id": "private", "item_ids": GIVEN, "context": {"size": "M"}})
    assert [i["item_id"] for i in private.json()["items"]][:3] == ["j2", "j4", "j0"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "fan", "item_ids": []}, "item_ids"),
        ({"user_id": "fan"}, "item_ids"),
        ({"item_ids": ["j0"]}, "user_id"),
        ({"user_id": "fan", "item_ids": ["j0"] * 501}, "item_ids"),
        ({"user_id": "fan", "item_ids": [""]}, "item_ids"),
        ({"user_id": "fan", "item_ids": ["j0"], "context": {"size": 3}}, "size"),
        ({"user_id": "fan", "itemids": ["j0"]}, "itemids"),
    ],
)
def test_rerank_bad_input_is_a_400_naming_the_field(url: str, body: dict, field: str) -> None:
    r = _post(url, "/rerank", body)
    assert r.status_code == 400, r.text
    assert field in r.text


def test_merge_makes_the_anonymous_session_part_of_the_customers_history(url: str) -> None:
    """An anonymous visitor buys l0 and views the Acme tops, then logs in as u3: u3's next answer
    leaves l0 out (bought a moment ago) and reacts to the views; before the merge it had l0."""

    def block(user: str) -> list[dict]:
        r = _post(url, "/recommend", {"user_id": user, "k": 5})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    before = block("u3")
    # The first item of u3's block (one they may buy): bought in the session, it must leave.
    first = before[0]["item_id"]
    session = [
        {"user_id": "anon-7", "item_id": "t0", "event_type": "view"},
        {"user_id": "anon-7", "item_id": first, "event_type": "purchase"},
    ]
    assert _post(url, "/events", {"events": session}, headers=AUTH).status_code == 200
    refused = _post(url, "/merge", {"anonymous_id": "anon-7", "user_id": "u3"})
    assert refused.status_code in (401, 403)
    r = _post(url, "/merge", {"anonymous_id": "anon-7", "user_id": "u3"}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"merged": 2}
    after = block("u3")
    assert first not in {i["item_id"] for i in after}  # bought in the session: out of the next block
    assert any(i["reason"] == "because you viewed Acme top 0" for i in after), after
    assert _post(url, "/merge", {"anonymous_id": "anon-7", "user_id": "u3"}, headers=AUTH).json() == {
        "merged": 0
    }
