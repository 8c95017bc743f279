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
# # 03 · Tuning a model with Optuna
#
# `shoprec tune` runs an Optuna study over a model's search space: the objective is NDCG@10 on
# the split's *validation* part (the test part is only ever reported), iterative models report
# their validation score as they train so the median pruner stops hopeless trials early, and every
# trial is an MLflow run with its own card. This notebook runs a small study on ALS, draws Optuna's
# plots, and checks whether the validation winner also wins on the test part.
#
# It always tunes in a temporary workspace: the demo shop by default, or a copy of your
# workspace's features with `SHOPREC_NOTEBOOK_DATA=DIR` (your workspace is never written to).

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars print as text here

import matplotlib.pyplot as plt
import optuna
import optuna.visualization.matplotlib as ov
import pandas as pd

from training import tracking
from training.demo import notebook_workspace, scratch_copy
from training.train import TrainConfig, train
from training.tune import TuneConfig, open_storage, search_space, storage_url, tune

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # optuna's matplotlib plots

ws, is_demo = notebook_workspace()
if not is_demo:
    ws = scratch_copy(ws)
print(f"tuning in {ws.root}")

MODEL, TRIALS = "als", 12
print("search space:")
for p in search_space(MODEL):
    print(f"  {p.name}: {p.kind} {p.choices or (p.low, p.high)}{' (log)' if p.log else ''}")

# %%
result = tune(ws, TuneConfig(model=MODEL, trials=TRIALS, seed=0, eval_every=2))
study = optuna.load_study(study_name=result.study, storage=open_storage(storage_url(ws, None)))
print(
    f"best validation {result.metric}: {result.best_value:.4f} (trial {result.best_trial}); "
    f"{result.n_complete} complete, {result.n_pruned} pruned"
)
trials = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
trials.sort_values("value", ascending=False).head(8)

# %% [markdown]
# ## How the study went
#
# The optimisation history shows the best value so far; the intermediate values are each trial's
# validation NDCG@10 while ALS iterates (a pruned trial's line stops early).

# %%
ax = ov.plot_optimization_history(study)
ax.figure.set_size_inches(6, 4)
plt.show()
ax = ov.plot_intermediate_values(study)
ax.figure.set_size_inches(6, 4)
if ax.get_legend():
    ax.get_legend().remove()  # one entry per trial
plt.show()

# %% [markdown]
# ## Which parameters matter
#
# PED-ANOVA importances (no scikit-learn needed) and the objective against each parameter.

# %%
ax = ov.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
ax.figure.set_size_inches(6, 3)
plt.show()
axes = ov.plot_slice(study, params=["factors", "regularization", "alpha", "iterations"])
axes[0].figure.set_size_inches(14, 3.5)
plt.show()

# %% [markdown]
# ## Does the validation winner also win on test?
#
# `shoprec train --params-from-study` does the same: fit the best trial's parameters on the
# split's training part and report the test part, next to ALS with its defaults.

# %%
tuned = train(ws, TrainConfig(model=MODEL, params=result.best_params, register=False))
default = train(ws, TrainConfig(model=MODEL, register=False))
compare = pd.DataFrame(
    {
        "default": {m: default.metrics[m] for m in ("ndcg@10", "recall@10", "coverage@10")},
        f"tuned (trial {result.best_trial})": {
            m: tuned.metrics[m] for m in ("ndcg@10", "recall@10", "coverage@10")
        },
    }
).T
compare.round(4)

# %% [markdown]
# On a shop this small the validation part holds one purchase per customer for a few hundred
# customers, so the validation winner may well lose on test: the difference between trials is
# within the noise. On a real shop's data the same study is the way to pick settings (and
# `shoprec promote` still only moves `champion` for a version that wins on the test part).
#
# Every trial is also an MLflow run in the `shoprec-tune` experiment, with its parameters, its
# validation metrics per segment and a card; `make optuna-dashboard DATA=...` serves the study
# (`optuna.db` in the workspace) in a browser.

# %%
client = tracking.configure(ws)
experiment = client.get_experiment_by_name(tracking.TUNE_EXPERIMENT)
trial_runs = pd.DataFrame(
    {
        "trial": int(r.data.tags["trial"]),
        "state": r.data.tags.get("state"),
        "valid ndcg@10": r.data.metrics.get("valid/ndcg_at_10"),
    }
    for r in client.search_runs([experiment.experiment_id])
)
assert len(trial_runs) == len(study.trials)  # one MLflow run per trial, pruned ones included
trial_runs.sort_values("valid ndcg@10", ascending=False).head()
