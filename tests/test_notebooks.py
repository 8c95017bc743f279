"""The notebooks run, top to bottom, in a real Jupyter kernel, exactly as `make notebooks` runs them
(notebooks/execute.py), and show what they say: each test appends one cell that reads the
notebook's own variables and checks them against what the synthetic shop is known to hold.
A notebook never writes into a user's workspace.

Time (measured on the shared 2-core development machine at load average 20-25): 01 37 s, 02 106 s
(five models trained), 03 102 s (a 12-trial study), 04 74 s; 05 96 s (at load average ~10: a simulated
A/B experiment and twenty more seeds), 06 33 s (at load average ~10); about 8 minutes for the file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _executor():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, check: str) -> tuple[dict, list]:
    """Execute notebook `name` with a last cell that prints `json.dumps(<check>)`; returns
    (that dict, the executed cells)."""
    nb, _ = _executor().execute(
        NOTEBOOKS / f"{name}.py",
        timeout=600,
        write=False,
        extra_cells=[f"import json\nprint(json.dumps({check}))"],
    )
    out = [o for o in nb.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"]
    return json.loads(out[-1].text.strip().splitlines()[-1]), nb.cells


def images(cells: list) -> int:
    """Inline PNG outputs (plots shown in the notebook, not only saved)."""
    return sum("image/png" in o.get("data", {}) for c in cells if c.cell_type == "code" for o in c.outputs)


def errors_or_warnings(cells: list) -> list[str]:
    """stderr output a reader would take for a problem (progress bars excepted)."""
    bad = []
    for c in cells:
        for o in c.get("outputs", []):
            if o.output_type == "stream" and o.name == "stderr":
                text = "\n".join(
                    line
                    for line in o.text.splitlines()
                    if line.strip() and "it/s" not in line and "s/it" not in line
                )
                if "Warning" in text or "Error" in text:
                    bad.append(text)
    return bad


@pytest.fixture(autouse=True)
def _own_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither variable set during a test, and whatever a test (or the code) sets is undone."""
    for var in ("SHOPREC_NOTEBOOK_DATA", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(var, "")  # recorded, so the original value comes back afterwards
        monkeypatch.delenv(var)


def test_the_notebooks_are_the_six_described_in_the_readme() -> None:
    names = [p.stem for p in _executor().notebooks()]
    assert names == [
        "01_explore_shop", "02_compare_models", "03_tune", "04_inspect_customer", "05_ab_report",
        "06_segments_campaigns",
    ]  # fmt: skip


@pytest.mark.slow
def test_01_explore_shop() -> None:
    got, cells = run(
        "01_explore_shop",
        "{'n_events': len(events), 'mix_total': int(mix.sum()), 'segments': int(segments.sum()),"
        " 'profiles': len(profiles), 'density': density, 'head': head, 'n_items': n_items, 'gini': gini,"
        " 'rebuyable': sorted(rebuy[rebuy['rebuyable']]['category']), 'is_demo': is_demo}",
    )
    assert got["is_demo"]
    assert got["mix_total"] == got["n_events"] > 0
    assert got["segments"] == got["profiles"] > 0
    assert 0 < got["density"] < 1 and 1 <= got["head"] <= got["n_items"] and 0 < got["gini"] < 1
    # the synthetic shop plants re-buying only in its consumable categories (features/synthetic.py)
    from features.synthetic import LEAVES

    consumables = {leaf.path for leaf in LEAVES if leaf.kind == "consumable"}
    assert got["rebuyable"] and set(got["rebuyable"]) <= consumables
    assert images(cells) >= 5
    assert not errors_or_warnings(cells)


@pytest.mark.slow
def test_02_compare_models() -> None:
    got, cells = run(
        "02_compare_models",
        "{'models': sorted(leaderboard.index), 'ndcg': leaderboard['ndcg@10'].tolist(),"
        " 'champion': leaderboard.index[leaderboard['alias'] == 'champion'].tolist(),"
        " 'best': leaderboard['ndcg@10'].idxmax(), 'segments': list(per_segment.index),"
        " 'segment_models': list(per_segment.columns), 'card': card}",
    )
    assert got["models"] == sorted(["popular", "itemknn", "ease", "als", "sasrec"])
    assert all(0 <= v <= 1 for v in got["ndcg"]) and max(got["ndcg"]) > 0
    # promote made the best run on this evaluation champion (every run is fresh here)
    assert got["champion"] == [got["best"]]
    assert "cold start (<5 items)" in got["segments"] and len(got["segment_models"]) == 5
    for section in (
        "## Data",
        "## Split and evaluation",
        "## Metrics per customer segment",
        "## Configuration",
        "## Compared with",
    ):
        assert section in got["card"]
    assert images(cells) >= 4  # recall curves, segment bars, coverage/novelty, SASRec's learning curve
    assert not errors_or_warnings(cells)


@pytest.mark.slow
def test_03_tune() -> None:
    got, cells = run(
        "03_tune",
        "{'n': len(study.trials), 'complete': result.n_complete, 'pruned': result.n_pruned,"
        " 'best': result.best_value, 'values': [t.value for t in study.trials if t.state.name == 'COMPLETE'],"
        " 'runs': len(trial_runs), 'tuned': compare['ndcg@10'].tolist()}",
    )
    assert got["n"] == 12 == got["runs"]
    assert got["complete"] + got["pruned"] == 12 and got["complete"] >= 3
    assert got["best"] == max(got["values"])
    assert all(0 <= v <= 1 for v in got["tuned"])
    assert images(cells) >= 4  # history, intermediate values, importances, slices
    assert not errors_or_warnings(cells)


@pytest.mark.slow
def test_04_inspect_customer() -> None:
    got, cells = run(
        "04_inspect_customer",
        "{'customer': CUSTOMER, 'history': len(history), 'events': int((events['user_id'] == CUSTOMER).sum()),"
        " 'blocks': blocks.groupby(['model', 'channel']).size().to_dict().__repr__(),"
        " 'reasons': bool(blocks['reason'].str.len().gt(0).all()), 'unknown': int(blocks['title'].isna().sum()),"
        " 'champion': champion_label, 'together': [r.item_id for r in together], 'last': last,"
        " 'removed': removed.to_dict('records'), 'shown': [r.item_id for r in web_block]}",
    )
    assert got["history"] == got["events"] > 0
    blocks = eval(got["blocks"])  # {(model, channel): rows}
    assert len(blocks) == 3 * 2 and set(blocks.values()) == {10}
    assert got["reasons"] and got["unknown"] == 0  # every item has a reason and is in the catalogue
    assert "(champion)" in got["champion"]
    assert len(got["together"]) == 5 and got["last"] not in got["together"]
    # the rules' removals: never an item the block shows, each with a rule a marketer reads
    assert got["removed"] and not {r["item_id"] for r in got["removed"]} & set(got["shown"])
    assert all(r["rule"] for r in got["removed"])
    assert images(cells) >= 1
    assert not errors_or_warnings(cells)


@pytest.mark.slow
def test_05_ab_report() -> None:
    got, cells = run(
        "05_ab_report",
        "{'variants': sorted(variants.index), 'planted': planted, 'zero': zero, 'counts': counts,"
        " 'attribution': report['attribution'], 'srm': report['srm']['flagged'], 'is_demo': is_demo,"
        " 'covered': covered, 'repeats': len(repeats), 'users': int(variants['users'].sum()),"
        " 'customers': len(customers)}",
    )
    assert got["is_demo"] and got["variants"] == ["challenger", "champion", "control"]
    assert got["users"] == got["customers"]
    # the planted uplift found (about 8 standard errors); the planted zero not flagged (a seeded run)
    assert got["planted"]["planted"] == pytest.approx((1 - 0.8**2) / (1 - 0.9**2) - 1)
    assert got["planted"]["flagged"]
    assert not got["zero"]["significant"]
    assert not got["srm"]
    a = got["attribution"]
    assert a["by_id"] + a["by_window"] == got["counts"]["bought_shown"]
    assert a["not_attributed"] == got["counts"]["bought_other"]
    # 20 seeds of a 95% interval: 16 or fewer covering has probability < 2%
    assert got["repeats"] == 20 and got["covered"] >= 17
    assert images(cells) >= 2  # the report's plot and the twenty intervals
    assert not errors_or_warnings(cells)


@pytest.mark.slow
def test_06_segments_campaigns() -> None:
    got, cells = run(
        "06_segments_campaigns",
        "{'sizes': sizes.to_dict(), 'customers': len(segments), 'funnel': funnel.to_dict('index'),"
        " 'campaigns': sorted(feeds['campaign'].unique()), 'consent': feeds['user_id'].map("
        "lambda u: engine.state.customer(u).consent_email).all().item(), 'again': len(first_pairs & again_pairs),"
        " 'held': again.capped_items, 'is_demo': is_demo}",
    )
    assert got["is_demo"] and sum(got["sizes"].values()) == got["customers"] > 0
    for name, f in got["funnel"].items():  # every selected customer is accounted for once
        left_out = f["erased"] + f["no_consent_email"] + f["no_consent_personalisation"] + f["nothing_left"]
        assert f["selected"] == left_out + f["mailed"], name
    # the synthetic shop has lapsed customers, carts left behind and cat food that runs out
    assert {"abandoned-cart", "reactivation", "replenishment"} <= set(got["campaigns"])
    assert got["funnel"]["reactivation"]["no_consent_email"] > 0 and got["consent"]
    assert got["again"] == 0 and got["held"] > 0  # the frequency cap held the first run's items back
    assert images(cells) >= 2
    assert not errors_or_warnings(cells)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_notebook_only_reads_a_users_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace

    ws = Workspace.at(tmp_path / "mine")
    generate(ws.root, customers=150, items=80, days=60, seed=3, progress=False)
    build_features(ws, FeatureConfig())
    before = _digest(ws.root)
    monkeypatch.setenv("SHOPREC_NOTEBOOK_DATA", str(ws.root))
    got, _ = run("01_explore_shop", "{'root': str(ws.root), 'is_demo': is_demo, 'n': len(events)}")
    assert got == {"root": str(ws.root), "is_demo": False, "n": got["n"]} and got["n"] > 0
    assert _digest(ws.root) == before


def test_scratch_copy_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuning works on a copy; a workspace without features is refused, never built into; a demo
    workspace is always a new directory."""
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace
    from training.demo import demo_workspace, notebook_workspace, scratch_copy

    ws = Workspace.at(tmp_path / "mine")
    generate(ws.root, customers=60, items=50, days=30, seed=3, progress=False)
    monkeypatch.setenv("SHOPREC_NOTEBOOK_DATA", str(ws.root))
    with pytest.raises(FileNotFoundError, match="features build"):
        notebook_workspace()
    assert not ws.features_dir.exists()
    build_features(ws, FeatureConfig())
    before = _digest(ws.root)
    copy = scratch_copy(ws)
    assert copy.root != ws.root and (copy.features_dir / "summary.json").exists()
    assert os.environ["MLFLOW_TRACKING_URI"] == copy.mlflow_uri  # runs go to the copy's own store
    assert _digest(ws.root) == before
    with pytest.raises(FileExistsError):
        demo_workspace(ws.root)
