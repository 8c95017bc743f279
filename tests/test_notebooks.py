"""Notebooks are executed by the tests, so the code they show keeps working (cookiecutter-data-science)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPREC_NOTEBOOK_DATA", str(tmp_path / "shop"))
    from features.synthetic import generate

    generate(tmp_path / "shop", customers=400, items=200, days=90, seed=11, progress=False)
    namespace = runpy.run_path(str(notebook), run_name="__main__")
    # The comparison table has one row per model with a real NDCG, and the plot exists.
    results = namespace["results"]
    assert list(results.index) == ["popular", "itemknn", "ease"]
    assert ((results["ndcg@10"] >= 0) & (results["ndcg@10"] <= 1)).all()
    assert results["ndcg@10"].max() > 0
    assert (tmp_path / "shop" / "notebook_ndcg.png").stat().st_size > 0
