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
# # 01 · Exploring a shop
#
# What a shop's events look like before any model sees them: the event mix, how sparse the
# customer × item matrix is, the long tail of items, how often customers buy again, and the
# lifecycle segments `shoprec features build` learns.
#
# By default the notebook generates a small synthetic shop into a temporary directory (400
# customers, 200 items, 90 days) and builds its features; set `SHOPREC_NOTEBOOK_DATA=DIR` to explore
# your own workspace instead (read only: its features must be built, nothing is written into it).

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars print as text here

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from training.demo import notebook_workspace

ws, is_demo = notebook_workspace()
events = pd.read_parquet(ws.validated("events"))
profiles = pd.read_parquet(ws.feature("profiles"))
catalog = pd.read_parquet(ws.validated("catalog")) if ws.validated("catalog").exists() else None
print(f"workspace: {ws.root} ({'temporary demo shop' if is_demo else 'yours, read only'})")
print(
    f"{len(events):,} events · {events['user_id'].nunique():,} customers · {events['item_id'].nunique():,} items"
)
print(f"from {events['timestamp'].min():%Y-%m-%d} to {events['timestamp'].max():%Y-%m-%d}")

# %% [markdown]
# ## Event mix
#
# Views dominate; purchases are the rare signal the held-out targets are made of. The funnel
# ratios say how much weaker a view is than a purchase (the feature build weights them
# view 1, add-to-cart 3, purchase 5 by default).

# %%
mix = events["event_type"].value_counts()
fig, ax = plt.subplots(figsize=(6, 2.8))
mix.sort_values().plot.barh(ax=ax, color="#4c72b0")
ax.set_xscale("log")
ax.set_xlabel("events (log scale)")
ax.set_title("Event mix")
for i, v in enumerate(mix.sort_values()):
    ax.annotate(
        f"{v:,} ({v / mix.sum():.1%})", (v, i), xytext=(3, 0), textcoords="offset points", va="center"
    )
plt.show()

funnel = {t: mix.get(t, 0) for t in ("view", "add_to_cart", "purchase")}
for a, b in [("view", "add_to_cart"), ("add_to_cart", "purchase")]:
    print(f"{a} -> {b}: {funnel[b] / max(funnel[a], 1):.1%}")

# %% [markdown]
# ## Sparsity: how much each customer and each item tells us

# %%
pairs = events.groupby(["user_id", "item_id"]).size()
n_users, n_items = events["user_id"].nunique(), events["item_id"].nunique()
density = len(pairs) / (n_users * n_items)
per_user = pairs.groupby(level=0).size()
per_item = pairs.groupby(level=1).size()
print(f"matrix density {density:.2%}: {len(pairs):,} of {n_users * n_items:,} customer-item pairs observed")
print(
    f"items per customer: median {per_user.median():.0f}, {(per_user < 5).mean():.0%} of customers have fewer than 5"
)

fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].hist(per_user, bins=30, color="#4c72b0")
axes[0].set_title("distinct items per customer")
axes[0].set_xlabel("items")
axes[0].set_ylabel("customers")
axes[1].hist(per_item, bins=30, color="#dd8452")
axes[1].set_title("distinct customers per item")
axes[1].set_xlabel("customers")
axes[1].set_ylabel("items")
plt.show()

# %% [markdown]
# ## The long tail
#
# Share of all interactions that the most popular items take: a popularity baseline is strong
# when a few items take most of it, and coverage of the catalogue matters when they do not.

# %%
counts = events.groupby("item_id").size().sort_values(ascending=False).to_numpy()
share = np.cumsum(counts) / counts.sum()
head = int(np.searchsorted(share, 0.8) + 1)
ascending, n = np.sort(counts), len(counts)
gini = 2 * np.sum(np.arange(1, n + 1) * ascending) / (n * ascending.sum()) - (n + 1) / n  # 0 = all equal
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, len(counts) + 1) / len(counts), share, color="#4c72b0")
ax.axhline(0.8, color="grey", linestyle=":")
ax.axvline(head / len(counts), color="grey", linestyle=":")
ax.set_xlabel("share of items, most popular first")
ax.set_ylabel("share of interactions")
ax.set_title(f"Long tail: {head / len(counts):.0%} of items take 80% of interactions (Gini {gini:.2f})")
plt.show()

# %% [markdown]
# ## Repeat behaviour
#
# How often customers buy the same item again, and after how long: the feature build learns per
# category whether items may come back (the re-buy policy) instead of a hard-coded list.

# %%
purchases = events[events["event_type"] == "purchase"]
per_pair = purchases.groupby(["user_id", "item_id"]).size()
print(f"{(per_pair > 1).mean():.1%} of customer-item purchase pairs were bought more than once")
buyers = purchases.groupby("user_id").size()
print(f"{(buyers > 1).mean():.1%} of buyers bought more than once")

rebuy = pd.read_parquet(ws.feature("category_rebuy")).sort_values("rebuy_rate", ascending=False)
top = rebuy.head(12).iloc[::-1]
fig, ax = plt.subplots(figsize=(7, 4))
ax.barh(top["category"], top["rebuy_rate"], color=np.where(top["rebuyable"], "#55a868", "#c7c7c7"))
ax.set_xlabel("share of buyers who bought the same item again")
ax.set_title("Re-buy rate per category (green: learned as re-buyable)")
plt.show()
rebuy[rebuy["rebuyable"]][["category", "n_buyers", "rebuy_rate", "median_interval_days"]]

# %% [markdown]
# ## Lifecycle segments
#
# RFM scores (recency, frequency, monetary, 1–5) put every customer into `new`, `active`, `vip`,
# `at_risk` or `lapsed`; evaluation reports metrics per segment and serving uses them for
# popular-in-segment fallbacks.

# %%
segments = profiles["segment"].value_counts()
assert segments.sum() == len(profiles)  # every customer has exactly one segment

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
segments.plot.bar(ax=axes[0], color="#8172b3")
axes[0].set_title("customers per segment")
axes[0].set_ylabel("customers")
for seg, g in profiles.groupby("segment"):
    axes[1].scatter(
        g["recency_days"],
        g["frequency"] + np.random.default_rng(0).uniform(-0.2, 0.2, len(g)),
        s=8,
        label=seg,
        alpha=0.7,
    )
axes[1].set_xlabel("days since last event")
axes[1].set_ylabel("orders (jittered)")
axes[1].set_title("recency and frequency by segment")
axes[1].legend(fontsize=8)
plt.show()
profiles.groupby("segment")[["recency_days", "frequency", "monetary"]].median().round(1)

# %% [markdown]
# ## Consent
#
# Customers without `consent_personalisation` only ever get non-personal blocks; those without
# `consent_email` never get a campaign mail.

# %%
if ws.validated("customers").exists():
    customers = pd.read_parquet(ws.validated("customers"))
    consent = customers[["consent_personalisation", "consent_email"]].mean()
    print(consent.map("{:.1%}".format).to_string())
else:
    print("no customers table: consent is treated as given")
