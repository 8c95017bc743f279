"""The synthetic shop: deterministic, contract-shaped, and holding the structure docs/synthetic.md plants.

Every threshold below is derived from the generator's documented parameters (`ShopParams`, `LEAVES`)
with a tolerance for sampling noise on a ~400-customer shop, never copied from a past run.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.synthetic import (
    DURABLE_ACCESSORIES,
    EVENTS_SCHEMA,
    LEAVES,
    SIZES,
    ShopParams,
    generate,
)

P = ShopParams()
END = date(2026, 11, 1)
DAYS = 180
N_CUSTOMERS = 400
N_ITEMS = 300
TABLES = ("events", "catalog", "stock", "customers")
LEAF = {leaf.path: leaf for leaf in LEAVES}


def binomial_slack(p: float, n: int, z: float = 4.0) -> float:
    """z standard errors of a share estimated from n draws with true rate p (a generous band)."""
    return z * math.sqrt(p * (1 - p) / max(n, 1))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop")
    counts = generate(out, customers=N_CUSTOMERS, items=N_ITEMS, days=DAYS, seed=7, end=END, progress=False)
    assert counts["customers"] == N_CUSTOMERS and counts["catalog"] == N_ITEMS
    return out


@pytest.fixture(scope="module")
def events(shop: Path) -> pd.DataFrame:
    """Events joined with the item's category and gender."""
    ev = pd.read_parquet(shop / "events.parquet")
    cat = pd.read_parquet(shop / "catalog.parquet")[["item_id", "category", "gender", "created_at"]]
    return ev.merge(cat, on="item_id", how="left", validate="many_to_one")


@pytest.fixture(scope="module")
def purchases(events: pd.DataFrame) -> pd.DataFrame:
    return events[events.event_type == "purchase"]


@pytest.fixture(scope="module")
def traits(shop: Path) -> pd.DataFrame:
    return pd.read_parquet(shop / "truth" / "customers.parquet").set_index("user_id")


# ---------------------------------------------------------------------------------------------
# determinism and the contract's shape
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(customers=60, items=80, days=60, end=END, progress=False)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    counts_a = generate(a, seed=3, **kw)
    counts_b = generate(b, seed=3, **kw)
    generate(c, seed=4, **kw)
    assert counts_a == counts_b
    for name in [*TABLES, "truth/personal_sizes", "truth/complements", "truth/customers"]:
        assert (a / f"{name}.parquet").read_bytes() == (b / f"{name}.parquet").read_bytes(), name
    assert (a / "events.parquet").read_bytes() != (c / "events.parquet").read_bytes()
    assert counts_a["events"] == pq.read_metadata(a / "events.parquet").num_rows


def test_chunked_generation_keeps_ids_unique_and_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the 1M-customer path writes many chunks; shrink the chunk to exercise it on 70 customers
    import features.synthetic as synthetic

    monkeypatch.setattr(synthetic, "CHUNK_CUSTOMERS", 25)
    kw = dict(customers=70, items=80, days=90, seed=5, end=END, progress=False)
    generate(tmp_path / "a", **kw)
    generate(tmp_path / "b", **kw)
    assert (tmp_path / "a" / "events.parquet").read_bytes() == (
        tmp_path / "b" / "events.parquet"
    ).read_bytes()
    assert pq.ParquetFile(tmp_path / "a" / "events.parquet").metadata.num_row_groups == 3
    ev = pd.read_parquet(tmp_path / "a" / "events.parquet")
    assert ev.groupby("session_id").user_id.nunique().max() == 1, "a session id is reused across chunks"
    assert ev.dropna(subset=["order_id"]).groupby("order_id").session_id.nunique().max() == 1
    assert ev.user_id.is_monotonic_increasing
    assert (ev.groupby("user_id").timestamp.diff().dropna() >= pd.Timedelta(0)).all()


def test_tables_have_the_contract_columns_and_values(shop: Path) -> None:
    assert pq.read_schema(shop / "events.parquet").remove_metadata().equals(EVENTS_SCHEMA)
    cols = {t: pq.read_schema(shop / f"{t}.parquet").names for t in TABLES}
    assert cols["catalog"] == ["item_id", "title", "category", "brand", "price", "gender", "created_at"]
    assert cols["stock"] == ["item_id", "size", "quantity"]
    assert cols["customers"] == [
        "user_id", "birth_year", "gender", "city", "signup_date", "consent_personalisation", "consent_email",
    ]  # fmt: skip
    ev = pd.read_parquet(shop / "events.parquet")
    assert set(ev.event_type) == {"view", "add_to_cart", "remove_from_cart", "purchase"}
    assert (ev.quantity >= 1).all() and (ev.price >= 0).all()
    assert ev.order_id.notna().eq(ev.event_type == "purchase").all(), "order_id on purchases only"
    assert ev.session_id.notna().all()
    end = pd.Timestamp(datetime(END.year, END.month, END.day, tzinfo=UTC))
    assert ev.timestamp.max() < end and ev.timestamp.min() >= end - pd.Timedelta(days=DAYS)
    cat = pd.read_parquet(shop / "catalog.parquet")
    assert cat.item_id.is_unique and set(cat.category) == set(LEAF)
    assert set(cat.gender.dropna()) == {"women", "men", "unisex"}
    assert cat.gender.notna().eq(cat.category.str.startswith("fashion/")).all()


def test_sizes_on_sized_items_only_and_no_event_before_item_or_customer_exists(
    events: pd.DataFrame, shop: Path
) -> None:
    fashion = events.category.str.startswith("fashion/")
    assert events.loc[fashion, "size"].isin(SIZES).all()
    assert events.loc[~fashion, "size"].isna().all()
    assert (events.timestamp >= events.created_at).all(), "an item is interacted with before it exists"
    cust = pd.read_parquet(shop / "customers.parquet").set_index("user_id")
    first = events.groupby("user_id").timestamp.min()
    assert (first >= cust.loc[first.index, "signup_date"]).all()


def test_session_funnel_view_cart_purchase_and_abandoned_carts(shop: Path) -> None:
    ev = pd.read_parquet(shop / "events.parquet")
    counts = ev.event_type.value_counts()
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > counts["remove_from_cart"] > 0
    # every purchase line was carted earlier in the same session, and no order lists an item twice
    buys = ev[ev.event_type == "purchase"]
    carts = ev[ev.event_type == "add_to_cart"]
    first_cart = carts.groupby(["session_id", "item_id"]).timestamp.min().rename("cart_ts")
    joined = buys.join(first_cart, on=["session_id", "item_id"])
    assert joined.cart_ts.notna().all() and (joined.cart_ts < joined.timestamp).all()
    assert not buys.duplicated(["order_id", "item_id"]).any()
    assert buys.groupby("order_id").session_id.nunique().max() == 1
    # a removed item is not bought in that session
    removed = ev[ev.event_type == "remove_from_cart"][["session_id", "item_id"]]
    assert removed.merge(buys, on=["session_id", "item_id"]).empty
    # abandoned carts: sessions with an add_to_cart and no purchase. Browsing abandons 1 - p_buy of
    # its cart sessions (all of them on durable/consumable leaves), missions never abandon: so the
    # overall share lies well inside (0.25 (1 - p_buy), 1 - p_buy / 2)
    cart_sessions = set(carts.session_id)
    abandoned = len(cart_sessions - set(buys.session_id)) / len(cart_sessions)
    assert 0.25 * (1 - P.p_buy) <= abandoned <= 1 - P.p_buy / 2


def test_vips_buy_a_lot_more(purchases: pd.DataFrame, traits: pd.DataFrame) -> None:
    per_user = purchases.groupby("user_id").size().reindex(traits.index, fill_value=0)
    vip = traits.vip
    assert vip.sum() >= 5
    # vip_activity x the sessions and higher cart/buy rates; missions (same for all) dilute it
    assert per_user[vip].mean() >= 0.5 * P.vip_activity * per_user[~vip].mean()


def test_events_per_customer_in_the_target_range(shop: Path) -> None:
    # issue 2: roughly 50-100 events per customer at the default rates
    n = pq.read_metadata(shop / "events.parquet").num_rows
    assert 40 <= n / N_CUSTOMERS <= 110


# ---------------------------------------------------------------------------------------------
# planted structure
# ---------------------------------------------------------------------------------------------


def _category_orders(purchases: pd.DataFrame, category: str) -> pd.DataFrame:
    """One row per (user, order) holding an item of `category`, in time order."""
    rows = purchases[purchases.category == category]
    return (
        rows.groupby(["user_id", "order_id"], as_index=False)
        .timestamp.min()
        .sort_values(["user_id", "timestamp"])
    )


def test_cat_food_is_rebought_on_its_cycle_by_owners_only(
    purchases: pd.DataFrame, traits: pd.DataFrame
) -> None:
    leaf = LEAF["pets/cats/cat-food"]
    cycle = leaf.cycle_days
    orders = _category_orders(purchases, leaf.path)
    buyers = orders.user_id.unique()
    assert len(buyers) > 20
    assert traits.loc[buyers, "cat_owner"].all(), "only cat owners buy cat food"
    gaps = orders.groupby("user_id").timestamp.diff().dt.total_seconds().dropna() / 86_400
    # own cycle ~ cycle x U(1-j, 1+j) and symmetric gap noise: the median gap is the category cycle
    assert abs(gaps.median() - cycle) <= 0.1 * cycle
    # an owner active for two of their longest possible cycles plus 3 sd of noise buys at least twice
    window = (traits.active_until - traits.active_from).dt.total_seconds() / 86_400
    long_enough = window[window >= 2 * cycle * (1 + P.cycle_jitter) + 3 * P.gap_sd_frac * cycle].index
    per_buyer = orders.groupby("user_id").size()
    eligible = per_buyer.index.intersection(long_enough)
    assert (per_buyer[eligible] >= 2).mean() >= 0.95
    # "most of its buyers" re-buy
    assert (per_buyer >= 2).mean() >= 0.7


def test_durables_are_never_bought_twice(purchases: pd.DataFrame) -> None:
    durable = [leaf.path for leaf in LEAVES if leaf.kind == "durable"]
    per_user = purchases[purchases.category.isin(durable)].groupby(["user_id", "category"]).size()
    assert len(per_user) > 20
    assert per_user.max() == 1


def test_accessories_follow_their_durable_far_more_often_than_chance(
    purchases: pd.DataFrame, shop: Path
) -> None:
    comp = pd.read_parquet(shop / "truth" / "complements.parquet")
    assert set(comp.category) == set(DURABLE_ACCESSORIES)
    durable_buys = purchases[purchases.category.isin(DURABLE_ACCESSORIES)][
        ["user_id", "item_id", "order_id", "timestamp"]
    ]
    pairs = durable_buys.merge(comp, on="item_id")
    # every user's purchased items with time and order, to look up the paired accessory
    bought = purchases[["user_id", "item_id", "order_id", "timestamp"]].rename(
        columns={"item_id": "complement_id", "order_id": "acc_order", "timestamp": "acc_ts"}
    )
    hit = pairs.merge(bought, on=["user_id", "complement_id"], how="left")
    later_limit = pd.Timedelta(days=P.accessory_later_days)
    hit["same"] = hit.acc_order == hit.order_id
    hit["after"] = hit.same | ((hit.acc_ts > hit.timestamp) & (hit.acc_ts <= hit.timestamp + later_limit))
    per_pair = hit.groupby(["user_id", "item_id", "complement_id"])[["same", "after"]].any()
    n = len(per_pair)
    assert n > 30
    p_same = P.p_accessory_same_order
    assert abs(per_pair.same.mean() - p_same) <= binomial_slack(p_same, n) + 0.02
    # with or after: p_same + (1 - p_same) x p_later, less later sessions cut off by the window end
    p_after = p_same + (1 - p_same) * P.p_accessory_later
    assert per_pair.after.mean() >= p_after - binomial_slack(p_after, n) - 0.05
    # chance: the same users buying a *different* item of the accessory's category at all
    cat = pd.read_parquet(shop / "catalog.parquet")[["item_id", "category"]]
    acc_cat = dict(zip(cat.item_id, cat.category, strict=True))
    buyers = set(pairs.user_id)
    rng = np.random.default_rng(0)
    chance_hits = []
    user_items = purchases.groupby("user_id").item_id.agg(set)
    for user, _, complement in per_pair.index:
        others = cat.item_id[(cat.category == acc_cat[complement]) & (cat.item_id != complement)].to_numpy()
        if len(others) and user in buyers:
            chance_hits.append(rng.choice(others) in user_items[user])
    assert per_pair.after.mean() >= 5 * max(np.mean(chance_hits), 0.02)


def test_garment_purchases_are_in_the_personal_size(purchases: pd.DataFrame, shop: Path) -> None:
    truth = pd.read_parquet(shop / "truth" / "personal_sizes.parquet")
    garments = purchases[purchases.category.str.startswith("fashion/")]
    joined = garments.merge(
        truth, left_on=["user_id", "category"], right_on=["user_id", "garment"], suffixes=("", "_truth")
    )
    assert len(joined) == len(garments) > 200
    share = (joined["size"] == joined["size_truth"]).mean()
    assert abs(share - P.p_true_size) <= binomial_slack(P.p_true_size, len(joined))
    # the most bought size per (customer, garment) with 3+ purchases is the truth size: with
    # p_true_size = 0.95 at least 2 of 3 match with probability > 0.99
    groups = joined.groupby(["user_id", "garment"])
    many = groups.filter(lambda g: len(g) >= 3).groupby(["user_id", "garment"])
    mode_ok = many.apply(lambda g: g["size"].value_counts().index[0] == g["size_truth"].iloc[0])
    assert len(mode_ok) >= 10
    assert mode_ok.mean() >= 0.95


def test_gender_loyal_shoppers_never_touch_the_other_gender(events: pd.DataFrame, shop: Path) -> None:
    aff = pd.read_parquet(shop / "truth" / "gender_affinity.parquet")
    ev = events[events.gender.notna()].merge(aff, on="user_id")
    women_only = ev[ev.affinity == "women"]
    men_only = ev[ev.affinity == "men"]
    assert len(women_only) > 100 and len(men_only) > 100
    assert not (women_only.gender == "men").any()
    assert not (men_only.gender == "women").any()
    # and the share of loyal customers follows gender_loyal among customers with a gender
    cust = pd.read_parquet(shop / "customers.parquet").merge(aff, on="user_id")
    known = cust[cust.gender.notna()]
    loyal = (known.affinity == known.gender).mean()
    assert abs(loyal - P.gender_loyal) <= binomial_slack(P.gender_loyal, len(known))


def test_some_sizes_are_out_of_stock(shop: Path) -> None:
    stock = pd.read_parquet(shop / "stock.parquet")
    sized = stock[stock["size"] != ""]
    assert set(sized["size"]) == set(SIZES)
    out = (sized.quantity == 0).mean()
    assert abs(out - P.share_out_of_stock) <= binomial_slack(P.share_out_of_stock, len(sized))
    cat = pd.read_parquet(shop / "catalog.parquet")
    unsized_items = set(cat.item_id[cat.gender.isna()])
    assert set(stock.item_id[stock["size"] == ""]) == unsized_items
    assert (stock.quantity >= 0).all()


def test_consent_shares(shop: Path) -> None:
    cust = pd.read_parquet(shop / "customers.parquet")
    no = (~cust.consent_personalisation).mean()
    assert abs(no - P.share_no_consent) <= binomial_slack(P.share_no_consent, len(cust))
    no_mail = (~cust.consent_email).mean()
    assert abs(no_mail - P.share_no_email_consent) <= binomial_slack(P.share_no_email_consent, len(cust))


def test_lapsed_customers_go_quiet_and_new_customers_sign_up_inside_the_window(
    events: pd.DataFrame, traits: pd.DataFrame, shop: Path
) -> None:
    end = pd.Timestamp(datetime(END.year, END.month, END.day, tzinfo=UTC))
    last = events.groupby("user_id").timestamp.max()
    lapsed = traits.index[traits.lapsed].intersection(last.index)
    assert len(lapsed) > 20
    assert (last[lapsed] <= end - pd.Timedelta(days=P.lapse_quiet_days)).all()
    assert abs(traits.lapsed.mean() - P.share_lapsed) <= binomial_slack(P.share_lapsed, len(traits)) + 0.02
    cust = pd.read_parquet(shop / "customers.parquet").set_index("user_id")
    start = end - pd.Timedelta(days=DAYS)
    inside = cust.signup_date >= start
    assert inside.eq(traits.loc[cust.index, "new"]).all()
    assert abs(inside.mean() - P.share_new) <= binomial_slack(P.share_new, len(cust))
    # signup density grows linearly: 3/4 of the new customers sign up in the second half
    late = (cust.signup_date[inside] >= start + pd.Timedelta(days=DAYS / 2)).mean()
    assert abs(late - 0.75) <= binomial_slack(0.75, int(inside.sum()))


def test_painting_projects_are_bought_together(purchases: pd.DataFrame) -> None:
    orders = purchases.groupby("order_id").category.agg(set)
    has_paint = orders.map(lambda s: "home/diy/paint" in s)
    has_brush = orders.map(lambda s: "home/diy/brushes" in s)
    assert has_paint.sum() > 10
    # projects put brushes in 85% of paint orders; brushes bought alone are rare among other orders
    assert has_brush[has_paint].mean() >= 5 * has_brush[~has_paint].mean()


def test_weekly_rhythm_and_summer_sale(events: pd.DataFrame) -> None:
    # re-buy sessions follow each owner's cycle, not the calendar: leave them out
    consumables = [leaf.path for leaf in LEAVES if leaf.kind == "consumable"]
    rebuy = events.session_id[events.category.isin(consumables) & (events.event_type == "purchase")]
    starts = events[~events.session_id.isin(set(rebuy))].groupby("session_id").timestamp.min()
    by_dow = starts.dt.weekday.value_counts()
    monday, tuesday, saturday = P.weekday[0], P.weekday[1], P.weekday[5]
    assert saturday > tuesday and monday > tuesday  # the documented weights, then the data
    assert by_dow[5] > by_dow[1]
    day = starts.dt.floor("D")

    def week(first: str) -> int:
        lo = pd.Timestamp(first, tz="UTC")
        return int(day.between(lo, lo + pd.Timedelta(days=6)).sum())

    month, dom, height, sd = P.bumps[0]
    assert (month, dom) == (7, 1) and sd <= 7
    # the sale week (centred on July 1) against the weeks two weeks before and after it: the bump
    # lifts the week by ~0.9 x height; demand at least 0.3 x height (noise band for 400 customers)
    sale = week("2026-06-28")
    around = (week("2026-06-14") + week("2026-07-12")) / 2
    assert sale >= (1 + 0.3 * height) * around


def test_params_json_round_trips_to_the_params_used(shop: Path) -> None:
    meta = json.loads((shop / "truth" / "params.json").read_text())
    assert ShopParams.from_dict(meta["params"]) == P
    assert (meta["days"], meta["end"], meta["customers"]) == (DAYS, END.isoformat(), N_CUSTOMERS)


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown ShopParams key"):
        ShopParams.from_dict({"p_buy": 0.5, "p_bye": 0.1})
    assert ShopParams.from_dict({"p_buy": 0.5}).p_buy == 0.5
    with pytest.raises(ValueError, match="p_buy must be within"):
        ShopParams(p_buy=1.5)
    with pytest.raises(ValueError, match="durable_hazard"):
        ShopParams(durable_hazard=(("fashion/tops/t-shirts", 0.01),))
    with pytest.raises(ValueError, match="items must be"):
        generate(tmp_path, customers=10, items=5, progress=False)
    with pytest.raises(ValueError, match="days must be"):
        generate(tmp_path, customers=10, items=100, days=3, progress=False)


def test_end_is_respected_for_another_date(tmp_path: Path) -> None:
    end = date(2025, 3, 15)
    generate(tmp_path, customers=50, items=80, days=30, seed=1, end=end, progress=False)
    ts = pd.read_parquet(tmp_path / "events.parquet").timestamp
    end_ts = pd.Timestamp(datetime(end.year, end.month, end.day, tzinfo=UTC))
    assert ts.max() < end_ts and ts.min() >= end_ts - pd.Timedelta(days=30)
    assert (datetime(2025, 3, 15, tzinfo=UTC) - timedelta(days=30)).date() == date(2025, 2, 13)
