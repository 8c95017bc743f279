"""What a person reads: `features build`, `train`, `promote` and `tune` print a short table and the
decision on stderr, and exactly one JSON line (unchanged) on stdout. The tests read the tables and
check them against the JSON the same command printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    from typer.testing import CliRunner

    from serving.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got {lines[:3]}"
    return json.loads(lines[0]), res.stderr


def is_line(stderr: str, text: str) -> bool:
    """`text` is a whole line of stderr (progress bars end their lines with carriage returns)."""
    return text in re.split(r"[\r\n]", stderr)


def row(stderr: str, label: str) -> list[str]:
    """The cells of the table row whose first cell is `label`."""
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{stderr}")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("tables") / "shop"
    generate(root, customers=200, items=100, days=60, seed=1, progress=False)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return root


def test_features_build_table_matches_the_json(shop: Path) -> None:
    import pandas as pd

    events = pd.read_parquet(shop / "events.parquet")
    events.loc[3, "quantity"] = -2  # one bad row: quarantined with a reason
    events.to_parquet(shop / "events.parquet")
    summary, table = invoke("features", "build", "--data", str(shop))
    assert set(summary) == {"events", "catalog", "stock", "customers", "features", "changes_folded"}
    # nothing was posted to the service: every table folds the change log up to position 0
    assert summary["changes_folded"] == {"events": 0, "catalog": 0, "stock": 0, "customers": 0}
    for name in ("events", "catalog", "stock", "customers"):
        c = summary[name]
        assert row(table, name) == [
            name,
            f"{c['input_rows']:,}",
            f"{c['accepted']:,}",
            f"{c['quarantined']:,}",
        ]
    assert summary["events"]["quarantined"] == 1
    assert "quarantine/{events}.parquet" in table  # where the bad row went, and only that table
    f = summary["features"]
    assert f"{f['users']:,} customers × {f['items']:,} items" in table
    assert "segments: " + " · ".join(f"{k} {v:,}" for k, v in f["segments"].items()) in table


def test_a_sampled_evaluation_says_so_and_promote_re_evaluates_it_under_another_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shop with more held-out customers than the cap is evaluated on a seeded sample: the table
    says of how many, the JSON carries both counts, and a version evaluated under another cap is
    not compared by its logged numbers (promote evaluates it again)."""
    import training.evaluate as ev
    from features.synthetic import generate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own store
    root = tmp_path / "shop"
    generate(root, customers=120, items=60, days=60, seed=2, progress=False)
    invoke("features", "build", "--data", str(root))
    monkeypatch.setattr(ev, "EVAL_CUSTOMERS", 40)
    run, table = invoke("train", "--data", str(root), "--model", "popular")
    m = run["metrics"]
    assert m["n_users"] == 40 and m["n_users_heldout"] > 40
    assert f"test part (a sample of 40 of {int(m['n_users_heldout']):,} customers)" in table
    decision, _ = invoke("promote", "--data", str(root))
    assert decision["promoted"] and decision["reevaluated"] == []  # the same cap: its numbers stand
    monkeypatch.setattr(ev, "EVAL_CUSTOMERS", 100_000)
    decision, _ = invoke("promote", "--data", str(root))
    assert decision["reevaluated"] == [run["version"]]  # evaluated on other customers: again, on all


def test_train_and_promote_tables(shop: Path) -> None:
    if not (shop / "features").exists():
        invoke("features", "build", "--data", str(shop))
    first, table = invoke("train", "--data", str(shop), "--model", "popular")
    assert set(first) == {"run_id", "model", "version", "metrics"}  # the scheduler's line, unchanged
    assert len(first["metrics"]) > 50  # every metric stays in the JSON line
    m = first["metrics"]
    assert is_line(table, "shoprec train: popular on the loo split")
    assert row(table, "ndcg@10") == ["ndcg@10", f"{m['ndcg@10']:.4f}"]
    assert row(table, "coverage@10") == ["coverage@10", f"{m['coverage@10']:.4f}"]
    n_new = int(m["n_users/new"])
    assert row(table, f"ndcg@10 · cold start (<5 items) ({n_new})")[1] == f"{m['ndcg@10/new']:.4f}"
    assert f"registered shoprec version {first['version']}" in table and first["run_id"] in table
    assert "decision: no champion yet" in table
    assert len(table.splitlines()) < 30  # short: a person reads it

    decision, table = invoke("promote", "--data", str(shop))
    assert decision["champion"] == first["version"] and decision["promoted"]
    assert is_line(table, "shoprec promote: ndcg@10 on the loo split")
    assert row(table, f"v{first['version']}")[1:] == ["popular", f"{m['ndcg@10']:.4f}", "champion (new)"]
    assert "PROMOTED: no champion yet" in table

    second, table = invoke("train", "--data", str(shop), "--model", "itemknn", "--set", "neighbours=20")
    s = second["metrics"]
    # the champion's numbers beside the new model's, from the champion's own run
    assert f"champion v{first['version']} (popular)" in table
    assert row(table, "ndcg@10") == ["ndcg@10", f"{s['ndcg@10']:.4f}", f"{m['ndcg@10']:.4f}"]
    verb = "beats" if s["ndcg@10"] > m["ndcg@10"] else "does not beat"
    assert f"decision: {verb} champion v{first['version']} (popular) on ndcg@10" in table

    decision, table = invoke("promote", "--data", str(shop))
    assert set(decision) == {
        "promoted", "metric", "split", "champion", "previous_champion", "candidate", "candidate_model",
        "candidate_score", "champion_score", "challenger", "reason", "reevaluated",
        "over_budget", "max_score_ms",  # the serving budget and the versions it left out
    }  # fmt: skip
    assert (decision["promoted"], decision["champion"]) == (
        (True, second["version"]) if s["ndcg@10"] > m["ndcg@10"] else (False, first["version"])
    )
    rows = {v: row(table, f"v{v}") for v in (first["version"], second["version"])}
    assert rows[decision["champion"]][3].startswith("champion")
    assert rows[decision["challenger"]][3] == "challenger"
    assert ("PROMOTED: " if decision["promoted"] else "KEPT: ") + decision["reason"] in table


def test_tune_table(shop: Path) -> None:
    if not (shop / "features").exists():
        invoke("features", "build", "--data", str(shop))
    result, table = invoke("tune", "--data", str(shop), "--model", "ease", "--trials", "2", "--seed", "1")
    assert set(result) == {
        "study", "storage", "model", "metric", "best_value", "best_params", "n_trials", "n_complete", "n_pruned",
    }  # fmt: skip
    assert is_line(table, "shoprec tune: ease")
    assert row(table, "ndcg@10 (validation)")[1] == f"{result['best_value']:.4f}"
    for k, v in result["best_params"].items():
        assert row(table, k)[1] == (f"{v:.4g}" if isinstance(v, float) else str(v))
    assert f"{result['n_trials']} in the study ({result['n_complete']} complete" in table
    assert f"--params-from-study {result['study']}" in table


def test_no_exit_time_leak_warnings_reach_the_terminal(tmp_path: Path) -> None:
    """DuckDB's nanobind prints leak warnings at interpreter exit while a daemon thread is alive
    (tqdm, MLflow and SQLAlchemy leave such threads); `quiet_exit` keeps them off the terminal
    while a command's own stderr lines stay."""
    script = (
        "import sys, threading, time, duckdb\n"
        "from features.console import quiet_exit\n"
        "if sys.argv[1] == 'quiet': quiet_exit()\n"
        "con = duckdb.connect(); rel = con.sql('select 1')\n"
        "def wait():\n    time.sleep(30)\n"
        "threading.Thread(target=wait, daemon=True).start()\n"
        "print('the command said this', file=sys.stderr)\n"
    )
    run = [sys.executable, "-c", script]
    loud = subprocess.run([*run, "loud"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    if "nanobind" not in loud.stderr:
        pytest.skip("this DuckDB build prints no exit-time leak warnings: nothing to silence")
    quiet = subprocess.run([*run, "quiet"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert quiet.returncode == 0
    assert "nanobind" not in quiet.stderr and "the command said this" in quiet.stderr
