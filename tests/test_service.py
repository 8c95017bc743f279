"""The BentoML service at the first two levels: the class called directly, and its ASGI app through
starlette's TestClient (the real `bentoml serve` process is tests/test_http.py).

The shop is tiny and its answers known: 8 items in two categories, item i0 the most bought; user
u2 bought i0..i3 (so i4.. come first for them); nobody bought i6/i7. The bundle is built by the
real chain (features build -> popular model -> training.bundle.write_bundle).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

API_KEY = "test-key-123"


def build_tiny_bundle(root: Path, model: str = "popular") -> Path:
    """Raw tables -> features -> `model` -> bundle at root/bundle-<model>; returns the bundle dir."""
    from features.build import build_features
    from features.config import FeatureConfig
    from features.workspace import Workspace
    from training.bundle import write_bundle
    from training.data import load_train_data
    from training.models import get_model_class

    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace.at(root)
    if not ws.feature("profiles").exists():
        now = pd.Timestamp("2026-11-01", tz="UTC")
        rows = []
        for u in range(8):
            for i in range(6 - (u % 3)):
                rows.append(
                    dict(
                        user_id=f"u{u}", item_id=f"i{i}", event_type="purchase", quantity=1, order_id=f"o{u}",
                        timestamp=now - pd.Timedelta(days=10 + u + i),
                    )
                )  # fmt: skip
        pd.DataFrame(rows).to_parquet(root / "events.parquet")
        pd.DataFrame(
            dict(
                item_id=[f"i{i}" for i in range(8)],
                title=[f"Item {i}" for i in range(8)],
                category=["home/lamps"] * 4 + ["home/desks"] * 4,
                brand=[f"b{i}" for i in range(8)],
                price=[10.0 + i for i in range(8)],
                gender=[None] * 8,
                created_at=[now] * 8,
            )
        ).to_parquet(root / "catalog.parquet")
        build_features(ws, FeatureConfig())
    model_obj = get_model_class(model)().fit(load_train_data(ws))
    return write_bundle(model_obj, ws, root / f"bundle-{model}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("shop"))


def _config(bundle: Path, data: Path | None = None, **kw):
    """Serve the local `bundle` over the shop state of `data` (default: the workspace it lies in)."""
    from serving.loader import ServeConfig

    return ServeConfig(bundle=bundle, data=data or bundle.parent, poll_seconds=0, api_key=API_KEY, **kw)


# -- level 1: the class ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(bundle: Path):
    from serving.service import ShopRec

    svc = ShopRec.inner(config=_config(bundle))
    yield svc
    svc.holder.stop()


def _run(coro):
    """The single-block endpoints are async (they run on BentoML's event loop)."""
    return asyncio.run(coro)


def _ctx():
    import bentoml

    return bentoml.Context()


def test_class_recommend_skips_what_the_user_bought(service) -> None:
    from serving.schemas import RequestContext

    out = _run(service.recommend("u2", 3, RequestContext(), _ctx()))
    ids = [i.item_id for i in out.items]
    assert len(ids) == 3
    assert not {"i0", "i1", "i2", "i3"} & set(ids), "u2 bought i0..i3; a lamp is not re-bought here"
    assert out.variant == "champion" and out.model_version.startswith("popular-")
    assert len(out.recommendation_id) == 32


def test_class_unknown_user_gets_popular_items(service) -> None:
    from serving.schemas import RequestContext

    out = _run(service.recommend("never-seen", 2, RequestContext(), _ctx()))
    assert [i.item_id for i in out.items] == ["i0", "i1"]  # the two most bought items


def test_class_purchase_event_changes_the_next_answer(service) -> None:
    from serving.schemas import Event, RequestContext

    before = [i.item_id for i in _run(service.recommend("u5", 3, RequestContext(), _ctx())).items]
    top = before[0]
    got = service.events([Event(user_id="u5", item_id=top, event_type="purchase")], _ctx())
    assert got.accepted == 1
    after = [i.item_id for i in _run(service.recommend("u5", 3, RequestContext(), _ctx())).items]
    assert top not in after and len(after) == 3


def test_class_batch_keeps_request_order_and_agrees_with_single(service) -> None:
    from serving.schemas import RequestContext

    out = service.recommend_batch(["u1", "nobody", "u1"], 2, RequestContext(), _ctx())
    assert [b.user_id for b in out.results] == ["u1", "nobody", "u1"]
    single = _run(service.recommend("u1", 2, RequestContext(), _ctx()))
    assert [i.item_id for i in out.results[0].items] == [i.item_id for i in single.items]


def test_class_hot_swap_keeps_answering(tmp_path: Path, bundle: Path) -> None:
    """A local bundle replaced behind a symlink is picked up by refresh(); the version changes."""
    from serving.service import ShopRec

    link = tmp_path / "current"
    link.symlink_to(bundle)
    svc = ShopRec.inner(config=_config(link, data=bundle.parent))
    v1 = svc.holder.models.champion_version
    other = build_tiny_bundle(bundle.parent, model="itemknn")
    link.unlink()
    link.symlink_to(other)
    assert svc.holder.refresh() is True
    assert svc.holder.models.champion_version != v1 and svc.holder.models.champion_version.startswith(
        "itemknn-"
    )
    assert svc.holder.swaps == 1
    from serving.schemas import RequestContext

    assert _run(svc.recommend("u2", 2, RequestContext(), _ctx())).model_version.startswith("itemknn-")
    svc.holder.stop()


def test_registry_hot_swap_removes_the_swapped_out_download(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion from a real (SQLite) MLflow registry is downloaded to a temporary directory; when
    a newly promoted champion replaces it, the old download is removed, and the last one at stop."""
    from mlflow import MlflowClient

    from features.workspace import Workspace
    from serving.loader import ModelHolder, RegistrySource, default_engine_factory
    from serving.state import ShopState
    from serving.store import InMemoryStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("serving-test", artifact_location=str(tmp_path / "artifacts"))
    client.create_registered_model("shoprec")

    def register(bundle_dir: Path) -> str:
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(bundle_dir), "bundle")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version("shoprec", f"{run.info.artifact_uri}/bundle", run.info.run_id)
        client.set_registered_model_alias("shoprec", "champion", mv.version)
        return str(mv.version)

    v1 = register(bundle)
    source = RegistrySource(uri, "shoprec")
    state = ShopState.from_workspace(Workspace.at(bundle.parent))
    holder = ModelHolder(source, default_engine_factory(state, InMemoryStore()), poll_seconds=0)
    holder.load()
    first = source._downloads[v1]
    assert holder.models.champion_version == v1 and all((d / "bundle.json").exists() for d in first)
    v2 = register(build_tiny_bundle(tmp_path / "other", model="itemknn"))
    assert holder.refresh() is True and holder.models.champion_version == v2
    assert not any(d.exists() for d in first), "the swapped-out champion's download must be removed"
    second = source._downloads[v2]
    assert all(d.exists() for d in second)
    assert holder.models.champion.recommend("u2", 2)  # the new engine answers
    holder.stop()
    assert not any(d.exists() for d in second)


# -- level 2: the ASGI app -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(bundle: Path):
    from starlette.testclient import TestClient

    from serving.service import ShopRec

    env = {
        "SHOPREC_BUNDLE": str(bundle),
        "SHOPREC_DATA": str(bundle.parent),
        "SHOPREC_API_KEY": API_KEY,
        "SHOPREC_POLL_SECONDS": "0",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with TestClient(ShopRec.to_asgi(), raise_server_exceptions=False) as c:
            yield c
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_asgi_recommend_shape(client) -> None:
    r = client.post("/recommend", json={"user_id": "u2", "k": 3, "context": {"channel": "web"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "model_version", "variant", "recommendation_id"}
    assert len(body["items"]) == 3 and {"item_id", "score", "reason"} == set(body["items"][0])


def test_asgi_direct_route_answers_exactly_as_bentoml_dispatch(client) -> None:
    """The read endpoints are answered by the guard's direct route (serving.service.answer_direct);
    with it off, BentoML's own dispatch must give the same JSON (bar the recommendation id)."""
    from serving.service import _LIVE

    svc = _LIVE["service"]
    bodies = {
        "/recommend": {"user_id": "u2", "k": 4, "context": {"channel": "web", "cart": ["i1"]}},
        "/bought_together": {"item_ids": ["i1", "i2"], "k": 3, "user_id": "u3"},
        "/similar_items": {"item_id": "i2", "k": 3, "context": {"max_price": 1000}},
        "/popular": {"k": 5, "segment": "vip"},
        "/rerank": {"user_id": "u2", "item_ids": ["i5", "i1", "nope", "i7"], "context": {"weather": "rain"}},
    }
    taken: list[str] = []
    routes = dict(svc._direct)
    assert set(routes) == set(bodies)

    def counting(path: str):
        model, answer = routes[path]
        return model, lambda req: (taken.append(path), answer(req))[1]

    svc._direct = {path: counting(path) for path in routes}
    try:
        direct = {path: client.post(path, json=body) for path, body in bodies.items()}
        svc._direct = {}
        dispatched = {path: client.post(path, json=body) for path, body in bodies.items()}
    finally:
        svc._direct = routes
    assert taken == list(bodies)  # every read endpoint went the direct way, once
    for path in bodies:
        assert direct[path].status_code == dispatched[path].status_code == 200, path
        a, b = direct[path].json(), dispatched[path].json()
        assert a.pop("recommendation_id") != b.pop("recommendation_id")
        assert a == b and a["items"], path


def test_asgi_purchase_event_changes_next_answer(client) -> None:
    first = client.post("/recommend", json={"user_id": "u4", "k": 3}).json()["items"][0]["item_id"]
    r = client.post(
        "/events",
        json={"events": [{"user_id": "u4", "item_id": first, "event_type": "purchase"}]},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json() == {"accepted": 1}
    after = [i["item_id"] for i in client.post("/recommend", json={"user_id": "u4", "k": 3}).json()["items"]]
    assert first not in after


def test_asgi_explain_returns_the_removed_items_with_their_rule(client) -> None:
    plain = client.post("/recommend", json={"user_id": "u2", "k": 3}).json()
    assert "removed" not in plain  # the shape a shop's site parses is unchanged
    r = client.post("/recommend", json={"user_id": "u2", "k": 3, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    rules = {x["item_id"]: x["rule"] for x in body["removed"]}
    # u2 bought i0..i3: the most popular items are kept out by the re-buy policy (never re-bought)
    assert rules["i0"] == "bought: not due again (re-buy policy)"
    assert not set(rules) & {i["item_id"] for i in body["items"]}


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic abc"}, 401), (AUTH, 200)],
)
def test_asgi_write_endpoints_need_the_key(client, headers: dict, status: int) -> None:
    r = client.post("/forget", json={"user_id": "u7"}, headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert "key" in r.json()["error"].lower() or "bearer" in r.json()["error"].lower()


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/recommend", {"user_id": "u1", "k": 1000}, "k"),
        ("/recommend", {"user_id": "u1", "k": 0}, "k"),
        ("/recommend", {"userid": "u1"}, "user_id"),
        ("/recommend", {"user_id": ""}, "user_id"),
        ("/recommend", {"user_id": "u1", "context": {"channel": "fax"}}, "channel"),
        ("/bought_together", {"item_ids": []}, "item_ids"),
        ("/bought_together", {"item_ids": [f"i{n}" for n in range(101)]}, "item_ids"),
        ("/recommend_batch", {"user_ids": [f"u{n}" for n in range(501)]}, "user_ids"),
        ("/popular", {"segment": "gold"}, "segment"),
    ],
)
def test_asgi_bad_input_is_a_400_naming_the_field(client, path: str, body: dict, needle: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.text


def test_asgi_malformed_and_oversized_bodies(client) -> None:
    r = client.post("/recommend", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/recommend", content=b"[1,2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    big = json.dumps({"user_id": "u1", "pad": "x" * (2 << 20)})
    r = client.post("/recommend", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_asgi_bad_event_type_is_a_400(client) -> None:
    r = client.post(
        "/events",
        json={"events": [{"user_id": "u1", "item_id": "i1", "event_type": "teleport"}]},
        headers=AUTH,
    )
    assert r.status_code == 400 and "teleport" in r.text


def test_asgi_readyz_detail_and_openapi(client) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    detail = r.json()
    assert detail["ready"] is True and detail["model_version"].startswith("popular-")
    assert "memory" in detail["store"]
    spec = client.get("/docs.json").json()
    for route in (
        "/recommend",
        "/bought_together",
        "/similar_items",
        "/popular",
        "/recommend_batch",
        "/events",
        "/forget",
    ):
        assert route in spec["paths"]
    assert client.get("/livez").status_code == 200 and client.get("/healthz").status_code == 200


def test_asgi_unknown_item_is_a_fallback_not_an_error(client) -> None:
    r = client.post("/similar_items", json={"item_id": "no-such-item", "k": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2
    r = client.post("/bought_together", json={"item_ids": ["no-such-item"], "k": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2


def test_no_key_configured_refuses_writes(bundle: Path) -> None:
    from serving.app import check_bearer

    assert check_bearer(f"Bearer {API_KEY}", None)[0] == 403
    assert check_bearer(f"Bearer {API_KEY}", API_KEY) is None


# -- configuration and A/B routing ----------------------------------------------------------------


def test_parse_shares_normalises_and_rejects_nonsense() -> None:
    from serving.loader import ConfigError, parse_shares

    assert parse_shares("champion=8,control=2") == {"champion": 0.8, "control": 0.2}
    assert parse_shares("champion=1,challenger=0") == {"champion": 1.0}
    for bad in ("champion", "winner=1", "champion=-1", "champion=x", "champion=0"):
        with pytest.raises(ConfigError, match="SHOPREC_AB_SHARES"):
            parse_shares(bad)


def test_config_from_env_says_what_is_wrong(tmp_path: Path) -> None:
    from serving.loader import ConfigError, ServeConfig

    with pytest.raises(ConfigError, match="not a bundle directory"):
        ServeConfig.from_env({"SHOPREC_BUNDLE": str(tmp_path)})
    with pytest.raises(ConfigError, match="SHOPREC_POLL_SECONDS"):
        ServeConfig.from_env({"SHOPREC_POLL_SECONDS": "soon"})
    cfg = ServeConfig.from_env(
        {"SHOPREC_DATA": str(tmp_path), "SHOPREC_API_KEY": " k ", "SHOPREC_POLL_SECONDS": "5"}
    )
    assert cfg.api_key == "k" and cfg.poll_seconds == 5.0 and cfg.registry_uri.startswith("sqlite:///")


def test_control_variant_gets_exactly_the_popular_block(bundle: Path, tmp_path: Path) -> None:
    from serving.schemas import RequestContext
    from serving.service import ShopRec

    log = tmp_path / "impressions.jsonl"
    os.environ["SHOPREC_IMPRESSIONS"] = str(log)
    try:
        svc = ShopRec.inner(config=_config(bundle, shares={"control": 1.0}))
    finally:
        os.environ.pop("SHOPREC_IMPRESSIONS", None)
    out = _run(svc.recommend("u2", 3, RequestContext(), _ctx()))
    popular = _run(svc.popular(3, None, None, RequestContext(), _ctx()))
    assert out.variant == "control"
    # u2 bought i0..i3, yet the control arm is the non-personal answer: i0, i1, i2
    assert [i.item_id for i in out.items] == [i.item_id for i in popular.items] == ["i0", "i1", "i2"]
    svc.impressions.flush()  # lines are buffered (written out at least every second)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["variant"] == "control" and records[0]["recommendation_id"] == out.recommendation_id
    assert "u2" not in log.read_text(), "the impression log holds a salted hash, never the id"
    svc.holder.stop()


def test_forget_blanks_the_customers_impressions_and_nothing_else(tmp_path: Path) -> None:
    from serving.ab import ImpressionLog, forget_impressions, read_impressions

    path = tmp_path / "impressions.jsonl"
    with ImpressionLog(path, salt="s", flush_seconds=0) as log:
        log.log("r1", "champion", "v1", "alice", ["a"])
        log.log("r2", "champion", "v1", "bob", ["b"])
        log.log("r3", "control", "v1", "alice", ["c"])
    size = path.stat().st_size
    assert forget_impressions(path, "alice", "s") == 2
    assert path.stat().st_size == size  # blanked in place: no line moved
    assert read_impressions(path)["recommendation_id"].tolist() == ["r2"]
    assert forget_impressions(path, "alice", "s") == 0
