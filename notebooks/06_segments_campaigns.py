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
# # 06 · Segments and e-mail campaigns
#
# The lifecycle segments as lists (`shoprec segments`: BG/NBD's `p_alive` per customer), and the four
# triggered e-mail campaigns of `shoprec campaign`: who each trigger selects today and why, who
# consent and the frequency cap leave out, and what each customer would be mailed. The blocks come
# from the serving engine (`serving.pipeline.Engine`) with every rule the web shop applies.
#
# By default it trains two models on a small synthetic shop in a temporary workspace; with
# `SHOPREC_NOTEBOOK_DATA=DIR` it reads your workspace instead, read only: the campaigns' impressions
# (which the command writes into the workspace for the next run's frequency cap) go to a temporary
# file here.

# %%
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars print as text here

import matplotlib.pyplot as plt
import pandas as pd

from training import tracking
from training.demo import notebook_workspace

ws, is_demo = notebook_workspace(models=["popular", "als"], promote=True)
tracking.configure(ws)
print(f"workspace: {ws.root} ({'temporary demo shop' if is_demo else 'yours, read only'})")

# %% [markdown]
# ## Segments
#
# One row per customer: the lifecycle segment (first rule that matches: new, lapsed, at risk, VIP,
# active; thresholds in `features.lifecycle.SegmentConfig`) and the lifetime figures. `p_alive` is
# BG/NBD's probability that the customer still buys here; customers who never bought have none.

# %%
from features.lifecycle import SEGMENTS
from training.segments import customer_segments

seg = customer_segments(ws)
segments = seg.frame
sizes = segments["segment"].value_counts().reindex(SEGMENTS, fill_value=0)
table = segments.groupby("segment").agg(
    customers=("user_id", "size"),
    median_p_alive=("p_alive", "median"),
    median_recency_days=("recency_days", "median"),
    median_orders=("frequency", "median"),
    clv_90d=("clv_90d", "sum"),
)
print("BG/NBD:", seg.bgnbd.to_dict() if seg.bgnbd else "not fitted", "| warnings:", seg.warnings or "none")
table.reindex(SEGMENTS).round(2)

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
sizes.plot.bar(ax=left, color="#4c72b0")
left.set_title("customers per segment")
left.set_ylabel("customers")
left.tick_params(axis="x", rotation=0)
for name in SEGMENTS:
    p = segments.loc[segments["segment"] == name, "p_alive"].dropna()
    if len(p):
        right.hist(p, bins=20, range=(0, 1), alpha=0.55, label=f"{name} ({len(p)})")
right.set_title("p_alive per segment (BG/NBD)")
right.set_xlabel("p_alive")
right.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The campaign engine
#
# The champion over the workspace's live shop state, behind the A/B router every channel shares; the
# impression log (the frequency cap's memory) is a temporary file.

# %%
from serving.ab import ImpressionLog, read_impressions
from serving.campaigns import (
    CAMPAIGNS,
    CampaignConfig,
    build_campaign,
    items_frame,
    load_events,
    select,
    vip_customers,
)
from serving.loader import Models
from serving.pipeline import Engine
from serving.router import Router
from serving.state import ShopState

bundle = tracking.load_bundle_dir("models:/shoprec@champion", ws)
engine = Engine.from_bundle(bundle, ShopState.from_workspace(ws), model_version="champion")
models = Models(engine, "champion")
log = ImpressionLog(Path(tempfile.mkdtemp(prefix="shoprec-nb06-")) / "impressions.jsonl", flush_seconds=0)
router = Router(lambda: models, {"champion": 1.0}, log.salt, log)
events = load_events(ws)
now = float(events["ts"].max())  # the campaigns run "today" = the shop's last event
items = items_frame(engine.state.current.catalog)
vip = vip_customers(ws)
config = CampaignConfig()
print(f"champion: {engine.model.name}; as of {pd.Timestamp(round(now), unit='s', tz='UTC')}; {len(vip)} VIPs")


def run(name: str, cfg: CampaignConfig = config):
    """One campaign: the trigger's audience, then the feed (consent, rules, frequency cap)."""
    triggers = select(name, events, items, engine.policy, now, cfg, segments)
    return build_campaign(
        name, triggers, router, models, k=5, now=now, config=cfg,
        impressions=read_impressions(log.path), salt=log.salt, vip=vip,
    )  # fmt: skip


results = {name: run(name) for name in CAMPAIGNS}
funnel = pd.DataFrame({name: r.funnel for name, r in results.items()}).T
funnel

# %% [markdown]
# `selected`: the trigger's audience; then who is left out (erased, no `consent_email`, no
# `consent_personalisation` for the triggers that read the customer's own behaviour, nothing left
# to mail once the rules and the frequency cap are applied) and who is `mailed`. The campaigns run
# one after another, as a scheduler would, so an item mailed by an earlier one is held back from a
# later one for `cap_days`. Post-purchase needs durable categories in the re-buy policy
# (`RebuyPolicy.durable_until`); a policy that knows none selects nobody.

# %%
fig, ax = plt.subplots(figsize=(9, 3.5))
steps = ["mailed", "nothing_left", "no_consent_personalisation", "no_consent_email", "erased"]
funnel[steps].plot.barh(stacked=True, ax=ax, color=["#55a868", "#c44e52", "#dd8452", "#8172b2", "#937860"])
ax.set_xlabel("customers selected by the trigger")
ax.set_title("each campaign's audience: mailed, and why the rest are not")
ax.invert_yaxis()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A few rows of each feed
#
# The columns of `shoprec recommend` plus `campaign`, `trigger` (why the customer is in it) and
# `vip` (for a VIP template).

# %%
feeds = pd.concat([r.frame for r in results.values()], ignore_index=True)
with pd.option_context("display.max_colwidth", 90):
    for name, frame in feeds.groupby("campaign", sort=False):
        print(f"\n== {name}: {frame['user_id'].nunique()} customers, {len(frame)} rows")
        first = frame[frame["user_id"] == frame["user_id"].iloc[0]]
        print("trigger:", first["trigger"].iloc[0], "| vip:", bool(first["vip"].iloc[0]))
        print(first[["rank", "item_id", "score", "reason"]].to_string(index=False))

# %% [markdown]
# ## The frequency cap
#
# The same reactivation campaign again: every item it mailed a moment ago is held back for
# `cap_days`, so a customer gets other items or no mail at all.

# %%
again = run("reactivation")


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"], frame["item_id"], strict=True))


first_pairs, again_pairs = pairs(results["reactivation"].frame), pairs(again.frame)
print(
    f"first run: {len(first_pairs)} (customer, item) pairs; again: {len(again_pairs)}, "
    f"{len(first_pairs & again_pairs)} of them mailed before; {again.capped_items} items held back"
)
