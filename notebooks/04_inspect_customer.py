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
# # 04 · One customer, across models
#
# What one customer did, and what each registered model would show them on the web shop and in an
# e-mail, with the reason the serving engine gives for each item. The blocks come from the same
# engine the HTTP service runs (`serving.pipeline.Engine`), so every serving rule applies: stock in
# their size, gender, the learned re-buy windows, diversity caps, consent.
#
# By default it trains three models on a small synthetic shop in a temporary workspace; with
# `SHOPREC_NOTEBOOK_DATA=DIR` it reads your workspace's registry instead (read only). Set
# `CUSTOMER` below to look at someone else.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars print as text here

import matplotlib.pyplot as plt
import pandas as pd

from training import tracking
from training.demo import notebook_workspace

ws, is_demo = notebook_workspace(models=["popular", "ease", "als"], promote=True)
client = tracking.configure(ws)
events = pd.read_parquet(ws.validated("events"))
catalog = pd.read_parquet(ws.validated("catalog")).set_index("item_id")
profiles = pd.read_parquet(ws.feature("profiles")).set_index("user_id")
now = events["timestamp"].max().timestamp()  # re-buy windows are measured from the shop's last event
print(f"workspace: {ws.root} ({'temporary demo shop' if is_demo else 'yours, read only'})")

# %% [markdown]
# ## The customer
#
# By default: the active customer with consent who bought most often.

# %%
CUSTOMER = None
if CUSTOMER is None:
    candidates = profiles[
        (profiles["segment"] == "active") & profiles["consent_personalisation"].fillna(True).astype(bool)
    ]
    CUSTOMER = candidates.sort_values(["frequency", "n_events"], ascending=False).index[0]
profile = profiles.loc[CUSTOMER]
profile[
    [
        "segment",
        "recency_days",
        "frequency",
        "monetary",
        "r_score",
        "f_score",
        "m_score",
        "gender_affinity",
        "consent_personalisation",
    ]
]

# %% [markdown]
# ## Their history as a timeline

# %%
history = events[events["user_id"] == CUSTOMER].join(catalog[["title", "category"]], on="item_id")
history = history.sort_values("timestamp")
fig, ax = plt.subplots(figsize=(11, 0.35 * history["category"].nunique() + 1.5))
styles = {
    "view": ("o", "#c7c7c7"),
    "add_to_cart": ("s", "#dd8452"),
    "remove_from_cart": ("x", "#937860"),
    "purchase": ("*", "#c44e52"),
}
for kind, (marker, colour) in styles.items():
    part = history[history["event_type"] == kind]
    ax.scatter(
        part["timestamp"],
        part["category"],
        marker=marker,
        color=colour,
        s=60 if kind == "purchase" else 25,
        label=kind,
    )
ax.set_title(f"{CUSTOMER}: {len(history)} events")
ax.legend(fontsize=8, loc="upper left")
ax.grid(alpha=0.3)
plt.show()
print("last purchases:")
history[history["event_type"] == "purchase"].tail(8)[["timestamp", "item_id", "title", "category", "size"]]

# %% [markdown]
# ## The blocks every registered model would serve
#
# One engine per registered version (loaded from its bundle in the MLflow registry), the same
# customer, the web shop's home page and an e-mail.

# %%
from serving.pipeline import Context, Engine  # the serving engine's Python API
from serving.state import ShopState

state = ShopState.from_workspace(ws)  # the shop as it is now: catalogue, stock, customers, histories
aliases = {v: a for a, v in client.get_registered_model(tracking.REGISTERED_MODEL).aliases.items()}
engines, rows = {}, []
for mv in sorted(
    client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'"), key=lambda m: int(m.version)
):
    model = mv.tags.get("model", "?")
    if mv.tags.get("task", "recommend") != "recommend":
        continue
    label = f"v{mv.version} {model}" + (f" ({aliases[mv.version]})" if mv.version in aliases else "")
    bundle = tracking.load_bundle_dir(f"models:/{tracking.REGISTERED_MODEL}/{mv.version}", ws)
    engines[label] = engine = Engine.from_bundle(bundle, state, model_version=mv.version)
    for channel in ("web", "email"):
        for rank, rec in enumerate(engine.recommend(CUSTOMER, 10, Context(channel=channel), now=now), 1):
            rows.append(
                {
                    "model": label,
                    "channel": channel,
                    "rank": rank,
                    "item_id": rec.item_id,
                    "score": rec.score,
                    "reason": rec.reason,
                }
            )
blocks = pd.DataFrame(rows).join(catalog[["title", "category", "price"]], on="item_id")
print(f"{len(engines)} models: {', '.join(engines)}")

# %% [markdown]
# The web block side by side (item titles by rank): where the models agree, and where they do not.

# %%
web = blocks[blocks["channel"] == "web"]
web.pivot(index="rank", columns="model", values="title")

# %% [markdown]
# The champion's block with scores and reasons, on the web and in an e-mail:

# %%
champion_label = next((m for m in engines if "(champion)" in m), next(iter(engines)))
champ = blocks[blocks["model"] == champion_label]
champ[["channel", "rank", "title", "category", "price", "score", "reason"]].set_index(["channel", "rank"])

# %% [markdown]
# How much the models' web blocks overlap (shared items out of 10):

# %%
sets = {m: set(g["item_id"]) for m, g in web.groupby("model")}
overlap = pd.DataFrame({a: {b: len(sets[a] & sets[b]) for b in sets} for a in sets})
overlap

# %% [markdown]
# ## What the serving rules changed
#
# The items the champion model ranks highest for this customer that the served web block does not
# show, each with the rule that kept it out (`serving.explain`, the same answer as
# `"explain": true` on `POST /recommend` and the customer page of `/ui`): out of stock in their
# size, the other gender's collection, a purchase still inside its re-buy window, a durable bought
# recently, the per-brand / per-category caps, or ranked below the block by the boosts.

# %%
from serving.explain import removed_items

champion = engines[champion_label]
web_block = champion.recommend(CUSTOMER, 10, Context(channel="web"), now=now)
removed = pd.DataFrame(removed_items(champion, CUSTOMER, 10, Context(channel="web"), web_block, now=now))
removed.join(catalog[["title", "category", "price"]], on="item_id")

# %% [markdown]
# ## Bought together with their last purchase

# %%
last = history[history["event_type"] == "purchase"]["item_id"].iloc[-1]
print(f"last purchase: {catalog.loc[last, 'title']} ({catalog.loc[last, 'category']})")
together = engines[champion_label].bought_together([last], 5, user_id=CUSTOMER)
pd.DataFrame([{"item_id": r.item_id, "score": r.score, "reason": r.reason} for r in together]).join(
    catalog[["title"]], on="item_id"
)
