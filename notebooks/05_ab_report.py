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
# # 05 · The A/B report, checked on a planted effect
#
# `shoprec ab report` ties clicks and purchases to the answers the service gave (by the
# `recommendation_id` an event quotes, or for a purchase without one, by a block that showed that
# item to that customer in the 24 hours before), then compares the variants: click-through and
# conversion with 95% intervals, revenue per customer, the uplift against control with its p-value,
# and a check that the split matches the configured shares.
#
# A report is only worth reading if it finds an effect that is there and none that is not. This
# notebook plants one: simulated customers get blocks from the service's engine (champion,
# challenger and control, split by the service's own hash) and buy a shown item twice as often in the
# champion variant, as often in the challenger as in control. The report should see the first and
# not the second.
#
# By default it works in a temporary synthetic shop; with `SHOPREC_NOTEBOOK_DATA=DIR` it first shows
# the report of your workspace's own impression log and events (read only: nothing is written there),
# then runs the simulation in a temporary copy of your shop.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars print as text here

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

from features.workspace import Workspace
from serving.ab import read_impressions
from serving.ab_display import plot
from serving.ab_report import ReportConfig, ab_report, build_report, load_events
from serving.ab_sim import EngineShop, Plan, outcome, simulate
from serving.feed import Feed
from training.demo import notebook_workspace, scratch_copy, train_quietly

MODELS = ["popular", "itemknn"]  # champion and challenger after promote
ws, is_demo = notebook_workspace(models=MODELS, promote=True, customers=1200, items=150, days=30, seed=3)
print(f"workspace: {ws.root} ({'temporary demo shop' if is_demo else 'yours, read only'})")

# %% [markdown]
# ## Your experiment (with `SHOPREC_NOTEBOOK_DATA` only)
#
# The same computation as `shoprec ab report`, without writing the report into the workspace. The
# salt and the configured shares are the service's (`SHOPREC_AB_SALT`, `SHOPREC_AB_SHARES`).

# %%
own_report = None
log = ws.serving_dir / "impressions.jsonl"
if not is_demo and log.exists():
    import os

    from serving.ab import parse_shares

    impressions = read_impressions(log)
    config = ReportConfig(
        shares=parse_shares(os.environ.get("SHOPREC_AB_SHARES") or "champion=1"),
        salt=os.environ.get("SHOPREC_AB_SALT") or "shoprec",
    )
    since = float(impressions["ts"].min()) if len(impressions) else None
    own_report = build_report(impressions, load_events(ws, since), config)
    display(pd.DataFrame(own_report["variants"]).set_index("variant"))
    own_png = Path(tempfile.mkdtemp(prefix="shoprec-ab-")) / "ab_report.png"
    plot(own_report, own_png)
    display(Image(filename=own_png))
else:
    print("no impression log to report on here: the simulation below makes one")

# %% [markdown]
# ## A shop to experiment in
#
# The demo shop already has its models; your workspace gets a temporary copy with `popular` and
# `itemknn` trained and promoted there (your registry is not touched).

# %%
if is_demo:
    shop = ws
else:
    from training.promote import promote

    shop = scratch_copy(ws)
    for name in MODELS:
        train_quietly(shop, name)
    promote(shop)
feed = Feed(shop, env={"SHOPREC_AB_SHARES": "champion=1"})  # the service's engine over the shop state
customers = pd.read_parquet(shop.feature("profiles"), columns=["user_id"])["user_id"].astype(str).tolist()
catalog = pd.read_parquet(shop.validated("catalog"), columns=["item_id", "price"])
print(f"{len(customers):,} customers, {len(catalog):,} items; champion {feed.holder.models.champion_version}")

# %% [markdown]
# ## The planted experiment
#
# Two visits per customer. A block leads to buying one of its items with probability 0.10, and
# 0.20 in the champion variant; half of those purchases quote the block's id, half come without it
# (only the window finds them). One visit in twenty also buys an item no block showed, which the
# report must leave out. The planted uplift of conversion (a customer buying at least once) is
# (1 − 0.8²) / (1 − 0.9²) − 1 = +89.5%; for the challenger it is 0.

# %%
SHARES = {"champion": 0.34, "challenger": 0.33, "control": 0.33}
plan = Plan(p_buy=0.10, uplift=1.0, treated="champion", visits=2, seed=0)
run = Workspace.at(Path(tempfile.mkdtemp(prefix="shoprec-ab-")) / "run")
run.root.mkdir(parents=True)
engine_shop = EngineShop(feed, run, shares=SHARES, salt="notebook-05")
counts = simulate(engine_shop, customers, plan, catalog)
engine_shop.close()
report = ab_report(run, ReportConfig(shares=SHARES, salt="notebook-05"))
print(counts)
print(f"planted uplift of conversion: {plan.true_uplift():+.1%}")

# %% [markdown]
# ## The report
#
# One row per variant, then the uplift of each variant against control. `shoprec ab report --data
# DIR` prints the same as a table and writes it to `DIR/reports/ab_report.json` (with the plot
# beside it), which the service's `/ui/ab` page shows.

# %%
variants = pd.DataFrame(report["variants"]).set_index("variant")
variants[["users", "impressions", "clicks", "purchases", "revenue", "ctr", "ctr_low", "ctr_high",
          "conversion", "conversion_low", "conversion_high", "revenue_per_user"]].round(4)  # fmt: skip

# %%
uplift = pd.DataFrame(report["uplift"]).set_index(["variant", "metric"])
uplift[["value", "control", "uplift", "uplift_low", "uplift_high", "p_value", "significant"]].round(4)

# %%
print(
    "sample ratio:", "MISMATCH" if report["srm"]["flagged"] else "ok", f"(p = {report['srm']['p_value']:.3f})"
)
print("attribution:", report["attribution"])
display(Image(filename=run.root / "reports" / "ab_report.png"))  # the plot the report wrote

# %%
planted = outcome(report, plan)
zero = next(u for u in report["uplift"] if u["variant"] == "challenger" and u["metric"] == "conversion")
print(f"champion: planted {planted['planted']:+.1%}, estimated {planted['estimate']:+.1%} "
      f"[{planted['low']:+.1%}, {planted['high']:+.1%}], p = {planted['p_value']:.2g}")  # fmt: skip
print(f"challenger: planted +0.0%, estimated {zero['uplift']:+.1%} "
      f"[{zero['uplift_low']:+.1%}, {zero['uplift_high']:+.1%}], p = {zero['p_value']:.2g}")  # fmt: skip

# %% [markdown]
# ## Twenty more seeds
#
# One run can be lucky. Repeating the experiment with new seeds and a new split (a new salt) shows
# what the interval promises: about 19 of 20 95% intervals hold the planted value.
# (`benchmarks/bench_ab.py` does this 50 times for a planted uplift and for an A/A test.)

# %%
repeats = []
for seed in range(20):
    rep_run = Workspace.at(Path(tempfile.mkdtemp(prefix="shoprec-ab-")) / "run")
    rep_run.root.mkdir(parents=True)
    s = EngineShop(feed, rep_run, shares=SHARES, salt=f"notebook-05-{seed}")
    p = Plan(p_buy=0.10, uplift=1.0, treated="champion", visits=2, seed=100 + seed)
    simulate(s, customers, p, catalog)
    s.close()
    repeats.append(
        outcome(
            ab_report(rep_run, ReportConfig(shares=SHARES, salt=f"notebook-05-{seed}"), with_plot=False), p
        )
    )
repeats = pd.DataFrame(repeats)
covered = int(repeats["covered"].sum())
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.errorbar(repeats.index, repeats["estimate"] * 100,
            yerr=[(repeats["estimate"] - repeats["low"]) * 100, (repeats["high"] - repeats["estimate"]) * 100],
            fmt="o", capsize=3)  # fmt: skip
ax.axhline(plan.true_uplift() * 100, color="tab:red", label="planted")
ax.axhline(0, color="black", lw=0.8)
ax.set_xlabel("seed")
ax.set_ylabel("conversion uplift, %")
ax.set_title(f"{covered} of {len(repeats)} intervals hold the planted uplift")
ax.legend()
plt.show()
print(
    f"{covered} of {len(repeats)} intervals hold the planted uplift; {int(repeats['flagged'].sum())} significant"
)
feed.close()
