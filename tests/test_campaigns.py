"""`shoprec campaign`: every trigger on a tiny shop whose answers are known (who is in, who is out,
why), consent_email and the frequency cap, every feed row held to the engine's rules, and the
command end to end on a generated shop.

The tiny shop is test_pipeline's catalogue and learned bundle (real itemknn + bought-together), with
its own customers whose events put them in or out of each campaign. The re-buy policy is given here
(cat food re-bought every 30 days; litter boxes and laptops durable), so the known answers do not
depend on what the policy learns.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from serving import triggers as T
from serving.ab import ImpressionLog, read_impressions
from serving.campaigns import CampaignConfig, build_campaign, items_frame, mailed_items, select
from serving.pipeline import Engine
from serving.router import Router
from serving.state import Customer, ShopState, histories_from_purchases
from serving.store import InMemoryStore
from tests.test_pipeline import IDX, ITEMS, NOW, STOCK, _shop, write_tiny_bundle
from training.policy import RebuyPolicy

H, DAY = 3600.0, 86_400.0
SALT = "test-salt"
DURABLE_DAYS = {"pets/cats/litter-boxes": 180.0, "electronics/laptops": 365.0}


class DurablePolicy(RebuyPolicy):
    """The learned policy's interface with durables: litter boxes and laptops keep the other items
    of their category out for a while after a purchase."""

    def durable_until(
        self, user_ids: np.ndarray, categories: np.ndarray, bought_ts: np.ndarray
    ) -> np.ndarray:
        days = np.array([DURABLE_DAYS.get(str(c), np.nan) for c in categories], dtype=np.float64)
        return np.where(np.isnan(days), -np.inf, np.asarray(bought_ts, np.float64) + days * DAY)


POLICY = DurablePolicy(windows=(("pets/cats/food", 30.0),))

# (user, item, event type, seconds before NOW)
EVENTS = [
    # abandoned-cart
    ("pia", "cattoy", "purchase", 60 * DAY), ("pia", "scoop", "purchase", 60 * DAY),  # pays ~4.5 per item
    ("pia", "lbox_a", "view", 31 * H), ("pia", "lbox_a", "add_to_cart", 30 * H),  # price doubt: spend
    ("rex", "lbox_a", "view", 50 * H), ("rex", "lbox_a", "view", 40 * H), ("rex", "lbox_a", "view", 31 * H),
    ("rex", "lbox_a", "add_to_cart", 30 * H),  # price doubt: came back 4 times, dearer than the median
    ("pete", "cattoy", "purchase", 60 * DAY), ("pete", "lbox_b", "add_to_cart", 30 * H),  # nothing cheaper
    ("pam", "laptop", "purchase", 100 * DAY), ("pam", "lbox_b", "view", 27 * H),
    ("pam", "lbox_b", "add_to_cart", 26 * H),  # product doubt: cheap for her, one look
    ("quin", "lbox_a", "add_to_cart", 2 * H),  # too recent
    ("ray", "lbox_a", "add_to_cart", 30 * H), ("ray", "lbox_b", "purchase", 20 * H),  # bought the category
    ("rob", "lbox_a", "add_to_cart", 30 * H), ("rob", "lbox_a", "remove_from_cart", 29 * H),  # removed
    ("noe", "lbox_a", "add_to_cart", 30 * H),  # no consent_email
    ("nop", "lbox_a", "add_to_cart", 30 * H),  # no consent_personalisation
    ("old", "lbox_a", "add_to_cart", 100 * H),  # the moment has passed
    # replenishment (cat food every 30 days)
    ("fay", "catfood", "purchase", 27 * DAY),  # due in 3 days
    ("gus", "catfood", "purchase", 10 * DAY),  # due in 20 days
    ("hal", "catfood", "purchase", 40 * DAY),  # overdue by 10 days (> overdue_days 7)
    ("ida", "laptop", "purchase", 29 * DAY),  # not re-bought
    # post-purchase (litter box durable)
    ("lea", "lbox_a", "purchase", 14.5 * DAY),  # 14 days ago: the scoop
    ("max", "lbox_a", "purchase", 10 * DAY),  # too recent
    ("ned", "catfood", "purchase", 14.5 * DAY),  # not a durable
]  # fmt: skip
NO_EMAIL = {"noe"}
NO_PERSONAL = {"nop", "bob"}


def tiny_events() -> pd.DataFrame:
    rows = [(u, i, e, NOW - ago) for u, i, e, ago in EVENTS]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])
    price = {row[0]: row[4] for row in ITEMS}
    return ev.assign(price=ev["item_id"].map(price).where(ev["event_type"] == "purchase"))


def campaign_state(events: pd.DataFrame) -> ShopState:
    """test_pipeline's shop (its model users keep their rows) plus the customers of EVENTS, with
    their purchases as the histories' last purchases."""
    users, items, _, history = _shop()
    extra = list(dict.fromkeys(events["user_id"]))
    ids = list(users["user_id"]) + extra
    row = {u: r for r, u in enumerate(ids)}
    rows, cols = [], []
    for uid, its in history.items():
        rows += [row[uid]] * len(its)
        cols += [IDX[i] for i in its]
    for e in events.itertuples():
        rows.append(row[e.user_id])
        cols.append(IDX[e.item_id])
    ui = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(ids), len(items)))
    ui.sum_duplicates()
    buys = events[events["event_type"] == "purchase"]
    last = buys.groupby(["user_id", "item_id"])["ts"].max().reset_index()
    cat = {r[0]: r[2] for r in ITEMS}
    lp = pd.DataFrame(
        {
            "user_idx": last["user_id"].map(row).astype(np.int64),
            "item_idx": last["item_id"].map(IDX).astype(np.int64),
            "category": last["item_id"].map(cat),
            "last_ts": last["ts"].astype(np.int64),
        }
    )
    pop = np.asarray(ui[: len(users)].sum(axis=0)).ravel()
    catalog = items.drop(columns="item_idx").assign(n_users=pop, popularity=pop.astype(float))
    seqs = {row[u]: np.array([IDX[i] for i in history[u]]) for u in history}
    customers = {
        uid: Customer(r, uid not in NO_PERSONAL, uid not in NO_EMAIL, "active") for uid, r in row.items()
    }
    hist = histories_from_purchases(ui, seqs, {}, lp)
    return ShopState(catalog, stock=STOCK, customers=customers, histories=hist, has_customers_table=True)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle"))


class Shop:
    """An engine with POLICY over the campaign state, a router and its impression log."""

    def __init__(self, bundle_dir: Path, log_path: Path, events: pd.DataFrame | None = None) -> None:
        from serving.bundle import load_bundle
        from serving.loader import Models

        self.events = tiny_events() if events is None else events
        bundle = load_bundle(bundle_dir)
        bundle.policy = POLICY
        self.engine = Engine(bundle, campaign_state(self.events), store=InMemoryStore(), model_version="v1")
        self.models = Models(self.engine, "v1")
        self.log = ImpressionLog(log_path, salt=SALT, flush_seconds=0)
        self.router = Router(lambda: self.models, {"champion": 1.0}, SALT, self.log)
        self.items = items_frame(self.engine.state.current.catalog)

    def select(self, name: str, config: CampaignConfig = CampaignConfig(), segments=None) -> list[T.Trigger]:
        return select(name, self.events, self.items, POLICY, NOW, config, segments)

    def run(self, name: str, k: int = 3, config: CampaignConfig = CampaignConfig(), *, segments=None,
            sent_at: float | None = None):  # fmt: skip
        return build_campaign(
            name, self.select(name, config, segments), self.router, self.models, k=k, now=NOW,
            config=config, impressions=read_impressions(self.log.path), salt=SALT, vip={"pia"},
            sent_at=sent_at,
        )  # fmt: skip


@pytest.fixture()
def shop(bundle_dir: Path, tmp_path: Path) -> Shop:
    return Shop(bundle_dir, tmp_path / "serving" / "impressions.jsonl")


def by_user(frame: pd.DataFrame) -> dict[str, list[str]]:
    return {u: g.sort_values("rank")["item_id"].tolist() for u, g in frame.groupby("user_id")}


# -- abandoned cart ----------------------------------------------------------------------------------


def test_abandoned_cart_selects_who_left_a_cart_and_names_the_doubt(shop: Shop) -> None:
    got = {t.user_id: t for t in shop.select("abandoned-cart")}
    # in: the carts 24-72 hours old, not removed, nothing of their category bought since
    assert set(got) == {"pia", "rex", "pam", "pete", "noe", "nop"}
    assert got["pia"].kind == T.PRICE_DOUBT and "usually pay" in got["pia"].text
    assert got["rex"].kind == T.PRICE_DOUBT and "came back to it 4 times" in got["rex"].text
    assert got["pam"].kind == T.PRODUCT_DOUBT
    assert got["pia"].items == ("lbox_a",) and "Litter box Deluxe" in got["pia"].text
    assert "30 hours ago" in got["pia"].text
    # a longer wait moves who is in: at 31 h nobody carted 30 h ago qualifies
    assert not {t.user_id for t in shop.select("abandoned-cart", CampaignConfig(hours=31))} & {"pia", "rex"}


def test_abandoned_cart_feed_cheaper_alternatives_for_price_doubt_popular_for_product_doubt(
    shop: Shop,
) -> None:
    res = shop.run("abandoned-cart")
    feed = by_user(res.frame)
    assert set(feed) == {"pia", "rex", "pam", "pete"}  # noe: no consent_email; nop: no personalisation
    assert res.funnel == {"selected": 6, "erased": 0, "no_consent_email": 1, "no_consent_personalisation": 1,
                          "nothing_left": 0, "mailed": 4}  # fmt: skip
    # price doubt: the litter boxes cheaper than the 30.00 Deluxe in the cart, nothing else
    assert set(feed["pia"]) == {"lbox_b", "lbox_new"}
    rows = res.frame[res.frame["user_id"] == "pia"]
    assert rows["reason"].str.startswith("price doubt: a cheaper alternative to Litter box Deluxe").all()
    assert rows["vip"].all() and not res.frame.loc[res.frame["user_id"] != "pia", "vip"].any()
    # product doubt: the category's most popular, without the carted item itself
    assert feed["pam"] == ["lbox_a", "lbox_new"]
    assert (
        res.frame.loc[res.frame["user_id"] == "pam", "reason"]
        .str.startswith("product doubt: most popular in litter boxes")
        .all()
    )
    # price doubt about the cheapest litter box: nothing cheaper to show, so the most popular
    assert feed["pete"] == ["lbox_a", "lbox_new"]
    pete = res.frame[res.frame["user_id"] == "pete"]
    assert pete["trigger"].iloc[0].endswith("price doubt, it costs more than the 4.00 they usually pay per "
                                            "item; nothing cheaper in its category to show")  # fmt: skip
    assert pete["reason"].str.startswith("product doubt: most popular in litter boxes").all()
    assert (res.frame["campaign"] == "abandoned-cart").all()
    assert (
        res.frame.loc[res.frame["user_id"] == "pam", "trigger"]
        .iloc[0]
        .startswith("left Litter box Basic (price 15.00) in the cart 26 hours ago")
    )


# -- reactivation --------------------------------------------------------------------------------------


SEGMENTS = pd.DataFrame(
    {
        "user_id": ["alice", "carl", "bob", "noe", "gus"],
        "segment": ["lapsed", "at_risk", "lapsed", "lapsed", "active"],
        "recency_days": [200.0, 70.0, 150.0, 120.0, 10.0],
        "frequency": [5, 2, 1, 1, 3],
        "p_alive": [0.05, 0.4, 0.1, 0.2, 0.9],
    }
)


def test_reactivation_mails_lapsed_and_at_risk_their_personal_block(shop: Shop) -> None:
    from serving.feed import feed_context

    trig = {t.user_id: t for t in shop.select("reactivation", segments=SEGMENTS)}
    assert list(trig) == ["alice", "bob", "noe", "carl"]  # least likely alive first; gus is active
    assert trig["alice"].text == "lapsed: last purchase 200 days ago after 5 order(s), p_alive 0.05"
    assert trig["carl"].text.startswith("at risk: ")
    res = shop.run("reactivation", k=4, segments=SEGMENTS)
    feed = by_user(res.frame)
    assert set(feed) == {"alice", "bob", "carl"} and res.funnel["no_consent_email"] == 1
    ctx = feed_context("learned")
    for uid in ("alice", "carl"):  # the engine's own personal block, reasons and all
        want = shop.engine.recommend(uid, 4, ctx, now=NOW)
        rows = res.frame[res.frame["user_id"] == uid]
        assert rows["item_id"].tolist() == [r.item_id for r in want]
        assert rows["reason"].tolist() == [r.reason for r in want]
    # bob refused personalisation: the non-personal block, as on every channel
    assert feed["bob"] == [r.item_id for r in shop.engine.popular(4, context=ctx)]
    only_lapsed = shop.select("reactivation", CampaignConfig(segments="lapsed"), segments=SEGMENTS)
    assert [t.user_id for t in only_lapsed] == ["alice", "bob", "noe"]


# -- replenishment ---------------------------------------------------------------------------------------


def test_replenishment_reminds_of_items_due_in_the_coming_days(shop: Shop) -> None:
    trig = {t.user_id: t for t in shop.select("replenishment")}
    assert set(trig) == {"fay"}  # gus: due in 20 days; hal: 10 days overdue; ida: a laptop
    assert trig["fay"].text == "running out: Cat food 2kg (due in 3 days, re-bought about every 30 days)"
    wider = {t.user_id for t in shop.select("replenishment", CampaignConfig(due_days=25, overdue_days=12))}
    assert wider == {"fay", "gus", "hal", "ned"}  # ned: cat food 14.5 days ago, due in 15.5
    res = shop.run("replenishment")
    rows = res.frame[res.frame["user_id"] == "fay"]
    assert rows["item_id"].iloc[0] == "catfood" and rows["reason"].iloc[0] == "running out: buy it again"
    assert rows["score"].is_monotonic_decreasing


def test_replenishment_mails_nothing_when_the_due_item_is_sold_out(shop: Shop) -> None:
    shop.engine.state.apply("stock", [{"item_id": "catfood", "size": "", "quantity": 0}])
    res = shop.run("replenishment")
    assert res.frame.empty and res.funnel["nothing_left"] == 1


# -- post-purchase ---------------------------------------------------------------------------------------


def test_post_purchase_sends_what_goes_with_the_durable_never_another_of_it(shop: Shop) -> None:
    trig = {t.user_id: t for t in shop.select("post-purchase")}
    assert set(trig) == {"lea"}  # max: 10 days ago; ned: cat food is no durable
    assert trig["lea"].text == "bought Litter box Deluxe 14 days ago: what goes with it"
    res = shop.run("post-purchase", k=3)
    feed = by_user(res.frame)
    assert feed["lea"][0] == "scoop"
    assert not {"lbox_a", "lbox_b", "lbox_new"} & set(feed["lea"])
    assert res.frame["reason"].iloc[0] == "bought together with Litter box Deluxe"
    # a policy without durables selects nobody
    assert select("post-purchase", shop.events, shop.items, RebuyPolicy(), NOW, CampaignConfig()) == []


# -- consent, the cap, the rules -----------------------------------------------------------------------------


def test_frequency_cap_keeps_an_item_out_of_mail_for_cap_days(shop: Shop) -> None:
    first = shop.run("abandoned-cart")
    log = read_impressions(shop.log.path)
    assert set(log["endpoint"]) == {"campaign/abandoned-cart"} and len(log) == 4
    assert set(first.frame["recommendation_id"]) == set(log["recommendation_id"])
    # the next day (the cap counts the impression log's clock, the real one): pia's two cheaper
    # litter boxes were mailed, so she has nothing left
    assert (log["ts"] > time.time() - 60).all()
    again = shop.run("abandoned-cart", sent_at=time.time() + DAY)
    assert "pia" not in set(again.frame["user_id"]) and again.capped_items >= 4
    pairs = set(zip(first.frame["user_id"], first.frame["item_id"], strict=True))
    assert not pairs & set(zip(again.frame["user_id"], again.frame["item_id"], strict=True))
    # after cap_days the same items may go again
    later = shop.run("abandoned-cart", sent_at=time.time() + 30 * DAY)
    assert by_user(later.frame)["pia"] == by_user(first.frame)["pia"]
    off = shop.run("abandoned-cart", config=CampaignConfig(cap_days=0))
    assert by_user(off.frame)["pia"] == by_user(first.frame)["pia"]


def test_mailed_items_count_campaigns_and_the_email_feed_only(tmp_path: Path) -> None:
    from serving.ab import hash_user

    with ImpressionLog(tmp_path / "i.jsonl", salt=SALT, flush_seconds=0) as log:
        log.log("r1", "champion", "1", "pia", ["a"], timestamp=NOW, endpoint="campaign/reactivation")
        log.log("r2", "champion", "1", "pia", ["b"], timestamp=NOW, endpoint="feed")
        log.log("r3", "champion", "1", "pia", ["c"], timestamp=NOW, endpoint="recommend")  # the web shop
        log.log(
            "r4", "champion", "1", "pia", ["d"], timestamp=NOW - 9 * DAY, endpoint="campaign/replenishment"
        )
    got = mailed_items(read_impressions(tmp_path / "i.jsonl"), NOW - 7 * DAY)
    assert got == {hash_user("pia", SALT): {"a", "b"}}


def test_every_feed_row_passes_the_engines_rules(bundle_dir: Path, tmp_path: Path) -> None:
    """Sold out, erased customers, no consent, bought durables and non-re-buyable purchases: no row of
    any campaign breaks a rule, checked against the shop's own tables (not the engine's mask)."""
    events = tiny_events()
    # everybody in the abandoned-cart campaign also lapsed, and rex erased since
    shop = Shop(bundle_dir, tmp_path / "imp.jsonl", events)
    shop.engine.state.apply("stock", [{"item_id": "lbox_new", "size": "", "quantity": 0}])
    shop.engine.forget("rex")
    segments = pd.DataFrame(
        {"user_id": ["pia", "rex", "pam", "noe", "nop", "lea", "fay"], "segment": "lapsed",
         "recency_days": 50.0, "frequency": 1, "p_alive": 0.1}
    )  # fmt: skip
    no_cap = CampaignConfig(cap_days=0)  # the rules alone (the cap would share items across campaigns)
    frames = [shop.run(n, k=5, config=no_cap, segments=segments).frame for n in
              ("abandoned-cart", "reactivation", "replenishment", "post-purchase")]  # fmt: skip
    feed = pd.concat(frames, ignore_index=True)
    assert len(feed) and set(feed["campaign"]) == {
        "abandoned-cart",
        "reactivation",
        "replenishment",
        "post-purchase",
    }
    sold_out = set(STOCK.groupby("item_id")["quantity"].sum().loc[lambda q: q == 0].index) | {"lbox_new"}
    assert not set(feed["item_id"]) & sold_out
    assert not set(feed["user_id"]) & (NO_EMAIL | {"rex"})  # no consent_email, erased
    cat = {r[0]: r[2] for r in ITEMS}
    buys = events[events["event_type"] == "purchase"]
    for row in feed.itertuples():
        mine = buys[buys["user_id"] == row.user_id]
        for b in mine.itertuples():
            c = cat[b.item_id]
            if b.item_id == row.item_id:  # a purchase comes back only where the category is re-bought
                assert c in POLICY.rebuyable, (row.user_id, row.item_id)
            if c in DURABLE_DAYS and b.ts + DURABLE_DAYS[c] * DAY > NOW:  # never another of a durable
                assert cat[row.item_id] != c, (row.user_id, row.item_id)
    assert not feed.duplicated(["campaign", "user_id", "item_id"]).any()
    assert (
        feed.groupby(["campaign", "user_id"])["rank"]
        .apply(lambda r: list(r) == list(range(1, len(r) + 1)))
        .all()
    )


def test_engine_allowed_is_the_rules_for_this_customer_now(shop: Shop) -> None:
    from serving.pipeline import Context

    cat = shop.engine.state.current.catalog

    def ok(uid: str, item: str, **ctx) -> bool:
        return bool(shop.engine.allowed(uid, Context(channel="email", **ctx), now=NOW)[cat.index[item]])

    assert not ok("pia", "leash")  # sold out
    assert not ok("pam", "laptop") and ok("pia", "laptop")  # pam bought it; laptops never come back
    assert not ok("lea", "lbox_b") and ok("max", "scoop")  # lea's litter box is a durable: no other box
    assert ok("fay", "catfood")  # cat food is re-bought
    assert not ok("pia", "lbox_b", cart=("lbox_b",))  # in the cart
    assert not ok("nop", "lbox_a", cart=("lbox_a",)) and ok("nop", "lbox_b")  # no consent: request rules


def test_the_control_group_gets_the_popular_block_under_the_same_rules(shop: Shop) -> None:
    from serving.feed import feed_context

    shop.router = Router(lambda: shop.models, {"champion": 0.5, "control": 0.5}, SALT, shop.log)
    res = shop.run("reactivation", k=4, segments=SEGMENTS)
    variants = res.frame.drop_duplicates("user_id").set_index("user_id")["variant"]
    assert set(variants) == {"champion", "control"}
    popular = [r.item_id for r in shop.engine.popular(20, context=feed_context("learned"))]
    for uid in variants[variants == "control"].index:
        allowed = shop.engine.allowed(uid, feed_context("learned"), now=NOW)
        want = [i for i in popular if allowed[shop.engine.state.current.catalog.index[i]]][:4]
        assert by_user(res.frame)[uid] == want


def test_campaign_config_is_strict_and_checked() -> None:
    assert CampaignConfig.from_dict({"hours": "48", "repeat_views": "2"}) == CampaignConfig(
        hours=48.0, repeat_views=2
    )
    with pytest.raises(ValueError, match="unknown config key.*hour"):
        CampaignConfig.from_dict({"hour": "48"})
    with pytest.raises(ValueError, match="expects int"):
        CampaignConfig.from_dict({"repeat_views": "many"})
    with pytest.raises(ValueError, match="segments"):
        CampaignConfig(segments="sleeping")
    with pytest.raises(ValueError, match="max_cart_age_hours"):
        CampaignConfig(hours=96)


# -- the command on a generated shop -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic shop with features and a promoted `popular` champion, through the CLI."""
    from typer.testing import CliRunner

    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace
    from serving.cli import app

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("campaign-shop")
    generate(root, customers=300, items=150, days=90, seed=3, progress=False)
    build_features(Workspace.at(root), FeatureConfig())
    runner = CliRunner()
    for args in (["train", "--data", str(root), "--model", "popular"], ["promote", "--data", str(root)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return root


def _campaign(root: Path, *args: str):
    from typer.testing import CliRunner

    from serving.cli import app

    return CliRunner().invoke(app, ["campaign", *args, "--data", str(root), "--no-progress"])


def test_campaign_command_end_to_end_with_consent_and_the_cap(generated: Path, tmp_path: Path) -> None:
    customers = pd.read_parquet(generated / "customers.parquet")
    emailable = set(
        customers.loc[customers["consent_email"].fillna(False).astype(bool), "user_id"].astype(str)
    )
    res = _campaign(generated, "reactivation", "--out", str(tmp_path / "r1.csv"), "--k", "4")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["campaign"] == "reactivation" and summary["funnel"]["mailed"] == summary["customers"] > 0
    assert summary["funnel"]["no_consent_email"] > 0 and "in the feed" in res.stderr
    feed = pd.read_csv(tmp_path / "r1.csv", dtype={"user_id": str, "item_id": str, "model_version": str})
    assert list(feed.columns) == ["user_id", "rank", "item_id", "score", "reason", "variant", "model_version",
                                  "recommendation_id", "campaign", "trigger", "vip"]  # fmt: skip
    assert set(feed["user_id"]) <= emailable
    assert feed["trigger"].str.match(r"^(lapsed|at risk): ").all() and feed["vip"].dtype == bool
    stock = pd.read_parquet(generated / "stock.parquet").groupby("item_id")["quantity"].sum()
    assert not set(feed["item_id"]) & set(stock[stock == 0].index.astype(str))
    # the second run of the day mails no (customer, item) pair again
    res = _campaign(generated, "reactivation", "--out", str(tmp_path / "r2.parquet"), "--k", "4")
    assert res.exit_code == 0, res.output
    again = pd.read_parquet(tmp_path / "r2.parquet")
    pairs = set(zip(feed["user_id"], feed["item_id"], strict=True))
    assert not pairs & set(zip(again["user_id"], again["item_id"], strict=True))
    assert json.loads(res.stdout.strip().splitlines()[-1])["capped_items"] > 0


def test_campaign_command_abandoned_cart_and_bad_input(generated: Path, tmp_path: Path) -> None:
    res = _campaign(generated, "abandoned-cart", "--out", str(tmp_path / "a.csv"), "--set", "hours=12")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["config"]["hours"] == 12.0
    feed = pd.read_csv(tmp_path / "a.csv", dtype=str)
    if len(feed):
        assert feed["reason"].str.match(r"^(price|product) doubt: ").all()
        assert feed["trigger"].str.contains(" in the cart ").all()
    bad = _campaign(generated, "abandoned-cart", "--out", str(tmp_path / "a.csv"), "--set", "hourz=12")
    assert bad.exit_code == 2 and "unknown config key" in bad.output
    bad = _campaign(generated, "win-back", "--out", str(tmp_path / "a.csv"))
    assert bad.exit_code == 2 and "unknown campaign" in bad.output


def test_campaign_help_explains_each_campaign() -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    res = CliRunner().invoke(app, ["campaign", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for words in (
        "abandoned-cart",
        "reactivation",
        "replenishment",
        "post-purchase",
        "consent_email",
        "cap_days",
    ):
        assert words in res.output
