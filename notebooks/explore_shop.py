# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring a shop with shoprec
#
# A tour of one workspace: what the feature build learned (segments, re-buy windows, sizes) and
# how a few models compare on the leave-last-out split. The notebook only calls the package; run it
# as a notebook (`jupytext --to ipynb notebooks/explore_shop.py`) or as a script. Set
# `SHOPREC_NOTEBOOK_DATA` to explore your own workspace; by default it builds a small synthetic shop.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from features.build import FeatureConfig, build_features
from features.synthetic import generate
from features.workspace import Workspace
from training.data import load_split
from training.evaluate import evaluate
from training.models import get_model_class

data_dir = os.environ.get("SHOPREC_NOTEBOOK_DATA")
if data_dir is None:
    data_dir = str(Path(tempfile.mkdtemp(prefix="shoprec-notebook-")) / "shop")
    generate(Path(data_dir), customers=600, items=300, days=120, seed=7, progress=False)
ws = Workspace.at(data_dir)
summary = build_features(ws, FeatureConfig())
print({table: counts for table, counts in summary.items() if table != "features"})

# %% [markdown]
# ## Who are the customers? Lifecycle segments from RFM scores

# %%
profiles = pd.read_parquet(ws.feature("profiles"))
segments = profiles["segment"].value_counts()
print(segments)
assert segments.sum() == len(profiles)

# %% [markdown]
# ## What do people buy again, and when? (learned per category, never hard-coded)

# %%
rebuy = pd.read_parquet(ws.feature("category_rebuy")).sort_values("rebuy_rate", ascending=False)
print(rebuy.head(10).to_string(index=False))

# %% [markdown]
# ## How do models compare on the leave-last-out split? (full ranking over the catalogue)

# %%
split = load_split(ws, "loo")
rows = []
for name in ("popular", "itemknn", "ease"):
    model = get_model_class(name)().fit(split.train)
    metrics = evaluate(model, split, on="test", ks=(5, 10, 20))
    rows.append({"model": name, **{m: metrics[m] for m in ("recall@10", "ndcg@10", "coverage@10")}})
results = pd.DataFrame(rows).set_index("model")
print(results)

fig, ax = plt.subplots(figsize=(6, 3))
results["ndcg@10"].plot.barh(ax=ax)
ax.set_xlabel("NDCG@10 (leave-last-out)")
fig.tight_layout()
out = Path(data_dir) / "notebook_ndcg.png"
fig.savefig(out)
print(f"plot written to {out}")
