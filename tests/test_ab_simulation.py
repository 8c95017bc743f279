"""The A/B report recovers a planted effect from the live service: a real `bentoml serve` process on
a synthetic shop with a champion and a challenger (popular and item-kNN, promoted), customers split
champion / challenger / control by the service, who then buy a shown item with a known probability
(serving.ab_sim): twice as likely in the champion variant (planted), as likely in the challenger as
in control (a planted zero). `shoprec ab report` on the served workspace must hold the planted
uplift inside its 95% interval and call it significant, leave the challenger unflagged, find no
sample-ratio mismatch, and attribute exactly the purchases of shown items (half by recommendation
id, half by the window) and none of the others.

Sizes: 1,200 customers, two visits each (2,400 blocks). The planted uplift of customer conversion
is 1 - 0.8^2 over 1 - 0.9^2 minus one = +89.5%, about five standard errors with ~400 customers per
variant, so the test does not hang on luck; the seed and the split are fixed, so it answers the
same every time. 22 s on the shared 2-core machine at load average ~3 (shop and models 11 s, server,
simulation and report 10 s), 59 s at load average ~10.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest

from serving.ab_sim import HttpShop, Plan, simulate
from serving.devserver import bentoml_serve, serve_process

pytestmark = [pytest.mark.server, pytest.mark.slow]

API_KEY = "ab-key"
SHARES = "champion=0.34,challenger=0.33,control=0.33"
SALT = "ab-simulation-test"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    """The synthetic shop, popular and item-kNN trained (no plots) and promoted: champion and
    challenger in the shop's own MLflow store."""
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace
    from training.demo import use_own_store
    from training.promote import promote
    from training.train import TrainConfig, train

    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so use_own_store's change is undone
    try:
        ws = Workspace.at(tmp_path_factory.mktemp("ab-sim") / "shop")
        generate(ws.root, customers=1200, items=150, days=30, seed=3, progress=False)
        build_features(ws, FeatureConfig())
        use_own_store(ws)
        for model in ("popular", "itemknn"):
            train(ws, TrainConfig(model=model, plots=False, ks=(10,)))
        promote(ws)
        yield ws
    finally:
        mp.undo()


def test_the_report_recovers_a_planted_uplift_served_over_http(shop) -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    plan = Plan(p_buy=0.10, uplift=1.0, treated="champion", visits=2, seed=2026)
    users = pd.read_parquet(shop.raw("customers"), columns=["user_id"])["user_id"].astype(str).tolist()
    catalog = pd.read_parquet(shop.validated("catalog"), columns=["item_id", "price"])
    env = {"SHOPREC_DATA": str(shop.root), "SHOPREC_API_KEY": API_KEY, "SHOPREC_POLL_SECONDS": "0",
           "SHOPREC_AB_SHARES": SHARES, "SHOPREC_AB_SALT": SALT}  # fmt: skip
    with serve_process(
        bentoml_serve("serving.service:ShopRec"),
        env=env,
        log_path=shop.root / f"server-{uuid.uuid4().hex[:6]}.log",
        timeout_s=120,
    ) as running:
        client = HttpShop(running.url, API_KEY)
        try:
            counts = simulate(client, users, plan, catalog)
        finally:
            client.close()
    # the server has stopped: its impression log is flushed

    res = CliRunner().invoke(
        app, ["ab", "report", "--data", str(shop.root)],
        env={"SHOPREC_AB_SHARES": SHARES, "SHOPREC_AB_SALT": SALT},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    variants = {r["variant"]: r for r in report["variants"]}
    assert set(variants) == {"champion", "challenger", "control"}
    assert sum(r["users"] for r in variants.values()) == len(users)
    assert sum(r["impressions"] for r in variants.values()) == counts["blocks"] == 2 * len(users)

    up = {(u["variant"], u["metric"]): u for u in report["uplift"]}
    planted = up[("champion", "conversion")]
    assert planted["uplift_low"] <= plan.true_uplift() <= planted["uplift_high"], planted
    assert planted["significant"] and planted["p_value"] < 0.05
    zero = up[("challenger", "conversion")]
    assert not zero["significant"] and zero["uplift_low"] <= 0 <= zero["uplift_high"], zero
    assert not report["srm"]["flagged"], report["srm"]

    # every purchase of a shown item found, by id or by the window; every other purchase left out
    a = report["attribution"]
    assert a["by_id"] + a["by_window"] == counts["bought_shown"]
    assert a["by_id"] > 0 and a["by_window"] > 0
    assert a["not_attributed"] == counts["bought_other"] > 0
    assert sum(r["purchases"] for r in variants.values()) == counts["bought_shown"]
    assert (Path(shop.root) / "reports" / "ab_report.png").exists()
