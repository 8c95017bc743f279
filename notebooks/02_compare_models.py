# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Comparing models from MLflow
#
# Every `shoprec train` is an MLflow run: the model's config as params, every metric of the
# full-ranking evaluation (overall and per customer segment), plots and a model card. This
# notebook reads those runs back: a leaderboard, the metric per segment, the accuracy / coverage /
# novelty trade-off, and the champion's card.
#
# By default it trains five models on a small synthetic shop in a temporary workspace (about a
# minute); with `SHOPREC_NOTEBOOK_DATA=DIR` it reads your workspace's runs instead (read only).

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars print as text here

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display
from mlflow import MlflowClient

from training import tracking
from training.demo import notebook_workspace
from training.plots import segment_label

MODELS = ["popular", "itemknn", "ease", "als", "sasrec"]
ws, is_demo = notebook_workspace(models=MODELS, promote=True)
client = tracking.configure(ws)
print(f"workspace: {ws.root} ({'temporary demo shop' if is_demo else 'yours, read only'})")
print(f"MLflow store: {tracking.tracking_uri(ws)}")

# %% [markdown]
# ## The runs
#
# Only runs evaluated the same way are comparable: the same data snapshot (`data_hash`, a hash
# of the validated tables), the same split and the same rule for past items. The newest run per
# model on the current snapshot's `loo` split makes the leaderboard.

# %%
runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="pandas")
snapshot = tracking.data_hash(ws)
runs = runs[
    (runs["tags.data_hash"] == snapshot) & (runs["tags.split"] == "loo") & (runs["tags.task"] == "recommend")
]
latest = runs.sort_values("start_time").groupby("tags.model").tail(1).set_index("tags.model")

aliases = {v: a for a, v in client.get_registered_model(tracking.REGISTERED_MODEL).aliases.items()}
version_of = {
    mv.run_id: mv.version for mv in client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'")
}


def metric(name: str) -> pd.Series:
    """One metric (shoprec's name, e.g. `ndcg@10`) for every model's latest run."""
    col = "metrics." + tracking.to_mlflow_key(name)
    return latest[col] if col in latest else pd.Series(np.nan, index=latest.index)


HEADLINE = ["ndcg@10", "recall@10", "recall@20", "map@10", "coverage@10", "novelty@10"]
leaderboard = pd.DataFrame({m: metric(m) for m in HEADLINE})
leaderboard["version"] = [version_of.get(r) for r in latest["run_id"]]
leaderboard["alias"] = [aliases.get(v, "") for v in leaderboard["version"]]
leaderboard = leaderboard.sort_values("ndcg@10", ascending=False)
leaderboard.index.name = "model"
leaderboard.style.format({m: "{:.4f}" for m in HEADLINE}).background_gradient(
    subset=["ndcg@10"], cmap="Greens"
)

# %% [markdown]
# ## Ranking quality as the list grows (Recall@K)

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
ks = sorted(
    {int(c.split("_at_")[1]) for c in latest.columns if c.startswith("metrics.recall_at_") and "/" not in c}
)
for model in leaderboard.index:
    ax.plot(ks, [metric(f"recall@{k}")[model] for k in ks], marker="o", label=model)
ax.set_xscale("log")
ax.set_xticks(ks, [str(k) for k in ks])
ax.set_xlabel("K (list length)")
ax.set_ylabel("Recall@K (test)")
ax.set_title("Recall@K per model")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## Per customer segment
#
# A model that wins overall can lose the customers who matter most: cold-start customers (fewer
# than 5 items in training) or a lifecycle segment such as `vip` or `at_risk`.

# %%
seg_cols = [c for c in latest.columns if c.startswith("metrics.ndcg_at_10/")]
per_segment = latest[seg_cols].rename(columns=lambda c: c.split("/", 1)[1]).T
per_segment = per_segment.loc[
    sorted(per_segment.index, key=lambda s: (s.startswith("segment_"), s != "new", s))
]
per_segment.index = [segment_label(s) for s in per_segment.index]
per_segment = per_segment[leaderboard.index]
ax = per_segment.plot.bar(figsize=(9, 4), width=0.8)
ax.set_ylabel("NDCG@10 (test)")
ax.set_title("NDCG@10 per customer segment")
ax.legend(ncol=len(per_segment.columns), fontsize=8)
plt.xticks(rotation=20, ha="right")
plt.show()
per_segment.round(4)

# %% [markdown]
# ## Accuracy against coverage and novelty
#
# Coverage@10: the share of the catalogue that appears in anyone's top 10. Novelty@10: mean
# self-information of the recommended items (higher = less obvious). A popularity model is
# accurate-ish, covers a sliver of the catalogue and tells customers nothing new.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, other in zip(axes, ["coverage@10", "novelty@10"], strict=True):
    ax.scatter(leaderboard[other], leaderboard["ndcg@10"], s=60, color="#4c72b0")
    for model, row in leaderboard.iterrows():
        ax.annotate(model, (row[other], row["ndcg@10"]), xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(other)
    ax.set_ylabel("ndcg@10")
    ax.grid(alpha=0.3)
axes[0].set_title("accuracy vs catalogue coverage")
axes[1].set_title("accuracy vs novelty")
plt.show()

# %% [markdown]
# ## The champion's model card
#
# Every run carries one as its MLflow description (`make mlflow-ui` shows it on the run page) and
# as the `model_card.md` artifact: data, split, metrics per segment, config, and what it was
# compared with.

# %%
champion = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION)
card = client.get_run(champion.run_id).data.tags["mlflow.note.content"]
display(Markdown(card))

# %% [markdown]
# ## Plots logged with a run
#
# Each run logs its Recall@K curve, per-segment bars and popularity plot; models that train in
# epochs (SASRec) also log their learning curve, and per-epoch metrics MLflow draws as charts.

# %%
if "sasrec" in latest.index:
    run_id = latest.loc["sasrec", "run_id"]
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="plots/learning_curve.png")
    display(Image(filename=path))
    history = MlflowClient().get_metric_history(run_id, "valid_ndcg_at_10")
    print("validation NDCG@10 per epoch:", [round(m.value, 4) for m in sorted(history, key=lambda m: m.step)])
