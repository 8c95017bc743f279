"""Each serving rule (serving/filters.py) on a tiny shop whose right answer is known by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving import filters as F

ITEMS = pd.DataFrame(
    [
        # item_id, title, category, brand, price, gender, popularity
        ("lbox", "Litter box", "pets/cats/litter-boxes", "Kitty", 30.0, "unisex", 5.0),  # 0
        ("scoop", "Litter scoop", "pets/cats/litter-accessories", "Kitty", 5.0, None, 9.0),  # 1
        ("dogfood", "Dog food", "pets/dogs/food", "Woof", 20.0, "", 8.0),  # 2
        ("dress", "Summer dress", "fashion/women/dresses", "Mode", 40.0, "women", 7.0),  # 3
        ("shirt", "Oxford shirt", "fashion/men/shirts", "Mode", 35.0, "men", 6.0),  # 4
        ("tee", None, "fashion/unisex/tshirts", "Mode", 15.0, "unisex", 4.0),  # 5
        ("boots", "Boots", "fashion/women/shoes", "Stomp", None, "women", 3.0),  # 6
        ("lbox2", "Litter box XL", "pets/cats/litter-boxes", None, 25.0, "unisex", 1.0),  # 7
    ],
    columns=["item_id", "title", "category", "brand", "price", "gender", "popularity"],
)
STOCK = pd.DataFrame(
    [
        ("dress", "S", 0), ("dress", "M", 2),
        ("shirt", "M", 1), ("shirt", "L", 0),
        ("tee", "S", 3), ("tee", "M", 0),
        ("boots", "38", 0), ("boots", "39", 0),  # sold out in every size
        ("dogfood", "", 0),  # unsized, sold out
        ("scoop", "", 4),
        ("ghost", "", 9),  # not in the catalogue: ignored
    ],
    columns=["item_id", "size", "quantity"],
)  # fmt: skip


@pytest.fixture(scope="module")
def cat() -> F.Catalog:
    return F.build_catalog(ITEMS.assign(item_idx=range(len(ITEMS))), STOCK)


def where(mask: np.ndarray) -> set[str]:
    return set(ITEMS["item_id"][np.asarray(mask)])


def test_build_catalog_arrays(cat: F.Catalog) -> None:
    assert cat.idx("dress") == 3 and cat.idx("nope") is None and cat.idx(None) is None
    assert cat.title(5) == "tee"  # a missing title falls back to the id
    assert list(cat.gender) == [F.UNISEX, F.UNISEX, F.UNISEX, F.WOMEN, F.MEN, F.UNISEX, F.WOMEN, F.UNISEX]
    assert cat.brand[0] == cat.brand[1] and cat.brand[7] == -1
    assert cat.leaf[0] == cat.leaf[7] != cat.leaf[1]
    assert list(cat.prefix_items["pets/cats"]) == [0, 1, 7]
    assert list(cat.prefix_items["fashion"]) == [3, 4, 5, 6]
    assert where(cat.sized) == {"dress", "shirt", "tee", "boots"}


def test_out_of_stock_items_never_pass(cat: F.Catalog) -> None:
    # Unlisted items (lbox, lbox2) count as available; listed ones need quantity > 0 in some size.
    assert where(F.stock_mask(cat)) == {"lbox", "scoop", "dress", "shirt", "tee", "lbox2"}


def test_requested_size_wins_for_every_sized_item(cat: F.Catalog) -> None:
    m = F.stock_mask(cat, size="M", sizes_by_garment={"fashion/women/dresses": "S"})
    assert where(m) == {"lbox", "scoop", "dress", "shirt", "lbox2"}  # tee is sold out in M
    assert where(F.stock_mask(cat, size="XXL")) == {"lbox", "scoop", "lbox2"}  # no sized item in XXL


def test_learned_size_applies_per_garment_type(cat: F.Catalog) -> None:
    # She wears S in dresses (sold out) and L in shirts (sold out); tees: no learned size, any size.
    m = F.stock_mask(cat, sizes_by_garment={"fashion/women/dresses": "S", "fashion/men/shirts": "L"})
    assert where(m) == {"lbox", "scoop", "tee", "lbox2"}
    m = F.stock_mask(cat, sizes_by_garment={"fashion/women/dresses": "M"})
    assert "dress" in where(m)


def test_learned_sizes_of_nested_garments_apply_in_order(cat: F.Catalog) -> None:
    """The per-garment fast path (one AND per garment) gives the scatter's answer, also when
    garment paths nest and a later, deeper one overrides an earlier one."""

    def scatter(sizes: dict[str, str]) -> np.ndarray:  # the rule as first written
        mask = cat.in_stock.copy()
        for garment, s in sizes.items():
            under = cat.prefix_items.get(garment.strip("/"))
            if under is None or not s:
                continue
            under = under[cat.sized[under]]
            in_size = cat.size_stock.get(s)
            mask[under] = False if in_size is None else in_size[under]
        return mask

    cases = [
        {"fashion/women/dresses": "S"},
        {"fashion/women/dresses": "M", "fashion/men/shirts": "L", "fashion/unisex/tshirts": "S"},
        {"fashion": "S", "fashion/women/dresses": "M"},  # nested: dresses in M, the rest in S
        {"fashion/women/dresses": "M", "fashion": "S"},  # nested the other way: all in S
        {"fashion/women": "XXL", "/fashion/women/": "M"},  # the same path twice
        {"fashion/men/shirts": "M", "pets/cats": "S", "nowhere": "M", "fashion/women/shoes": ""},
    ]
    for _ in range(2):  # the second pass from the kept per-garment arrays
        for sizes in cases:
            np.testing.assert_array_equal(F.stock_mask(cat, sizes_by_garment=sizes), scatter(sizes))
    assert "dress" in where(F.stock_mask(cat, sizes_by_garment=cases[2]))
    assert "dress" not in where(F.stock_mask(cat, sizes_by_garment=cases[3]))


def test_gender_rule(cat: F.Catalog) -> None:
    everything = set(ITEMS["item_id"])
    assert where(F.gender_mask(cat, "women")) == everything - {"shirt"}
    assert where(F.gender_mask(cat, "men")) == everything - {"dress", "boots"}
    assert where(F.gender_mask(cat, None)) == everything
    assert where(F.gender_mask(cat, "unisex")) == everything
    assert F.resolve_gender("men", "women") == "men"  # the request wins over the learned affinity
    assert F.resolve_gender(None, "Women") == "women"
    assert F.resolve_gender("", None) is None and F.resolve_gender("other", None) is None


def test_price_rule_for_cheaper_alternatives(cat: F.Catalog) -> None:
    assert where(F.price_mask(cat, below=30.0)) == {"scoop", "dogfood", "tee", "lbox2"}  # strictly cheaper
    assert where(F.price_mask(cat, below=30.0, max_price=15.0)) == {"scoop", "tee"}
    assert where(F.price_mask(cat)) == set(ITEMS["item_id"])  # no condition: boots' unknown price passes
    assert "boots" not in where(F.price_mask(cat, max_price=1000.0))


def test_rebuy_split_keeps_window_items_out_and_returns_due_ones() -> None:
    keep_out, due = F.rebuy_split(np.array([4, 2, 9, 2]), excluded=np.array([9, 4]))
    assert list(keep_out) == [4, 9] and list(due) == [2]


def test_page_tier_category_page_and_item_page(cat: F.Catalog) -> None:
    t = F.page_tier(cat, page_category="pets/cats/")
    assert where(t == 1) == {"lbox", "scoop", "lbox2"} and where(t == 0) >= {"dogfood", "dress"}
    # Litter-box item page: its complement (the scoop) first, then cat things, never dog food.
    t = F.page_tier(cat, current_item=0, complements=np.array([1]))
    assert t[1] == 2 and t[7] == 1 and t[0] == 0 and t[2] == 0
    assert not F.page_tier(cat, page_category="no/such/category").any()


def test_diversify_caps_brand_and_leaf_category(cat: F.Catalog) -> None:
    order = np.array([3, 4, 5, 6, 0, 7, 1, 2])  # dress shirt tee (Mode x3) boots lbox lbox2 scoop dogfood
    kept = F.diversify(order, cat, k=5, max_per_brand=2, max_per_category=1)
    # tee: third Mode item -> skipped; lbox2: second litter box -> skipped; lbox2 has no brand.
    assert list(ITEMS["item_id"][kept]) == ["dress", "shirt", "boots", "lbox", "scoop"]
    # One per brand and leaf: lbox2 (no brand) still shares lbox's leaf; the order runs out at 4.
    kept = F.diversify(order, cat, k=50, max_per_brand=1, max_per_category=1)
    assert list(ITEMS["item_id"][kept]) == ["dress", "boots", "lbox", "dogfood"]


def test_diversify_walks_a_long_ordering_exactly_like_the_one_by_one_rule() -> None:
    # 600 candidates, 3 brands (one unknown) and 4 categories: the block is only complete far down
    # the list, past hundreds of items whose brand or category is already full.
    n = 600
    items = pd.DataFrame({"item_idx": range(n), "item_id": [f"i{j}" for j in range(n)],
                          "brand": [None if j % 7 == 0 else f"b{j % 2}" for j in range(n)],
                          "category": [f"c/{0 if j < 400 else 1 + j % 3}" for j in range(n)]})  # fmt: skip
    cat = F.build_catalog(items)
    order = np.arange(n)[::-1].copy()
    order[:500] = order[:500][np.random.default_rng(0).permutation(500)]

    def one_by_one(ordered: np.ndarray, k: int, per_brand: int, per_cat: int) -> list[int]:
        kept: list[int] = []
        for i in ordered.tolist():
            same_brand = sum(cat.brand[j] == cat.brand[i] for j in kept) if cat.brand[i] >= 0 else 0
            same_cat = sum(cat.leaf[j] == cat.leaf[i] for j in kept) if cat.leaf[i] >= 0 else 0
            if same_brand < per_brand and same_cat < per_cat:
                kept.append(i)
            if len(kept) == k:
                break
        return kept

    for k, per_brand, per_cat in [(10, 3, 3), (12, 2, 4), (30, 5, 2), (8, 1, 1)]:
        got = F.diversify(order, cat, k, max_per_brand=per_brand, max_per_category=per_cat).tolist()
        assert got == one_by_one(order, k, per_brand, per_cat)
    assert F.diversify(np.array([399, 450, 451]), cat, 3, max_per_category=1).tolist() == [399, 450, 451]


def test_capped_names_the_items_diversify_would_skip_after_a_short_block(cat: F.Catalog) -> None:
    order = np.array([3, 4, 5, 6, 0, 7, 1, 2])
    kept = F.diversify(order, cat, k=50, max_per_brand=1, max_per_category=1)
    blocked = F.capped(kept, cat, max_per_brand=1, max_per_category=1)(np.arange(len(ITEMS)))
    # Kept: dress, boots, lbox, dogfood. Every other item shares a full brand (Mode, Kitty) or
    # leaf; lbox2 (no brand) only through its leaf (litter boxes).
    assert list(ITEMS["item_id"][kept]) == ["dress", "boots", "lbox", "dogfood"] and blocked.all()
    # Unknown brand never fills: with only a brand cap, lbox2 (no brand) is not blocked, shirt is.
    brand_only = F.capped(kept, cat, max_per_brand=1, max_per_category=99)(np.array([7, 4]))
    assert brand_only.tolist() == [False, True]
    assert not F.capped(np.zeros(0, np.int64), cat, 1, 1)(np.arange(len(ITEMS))).any()


def test_content_neighbours_of_a_new_item(cat: F.Catalog) -> None:
    sim = F.content_neighbours(cat, 7)  # the new XL litter box (no brand, 25.0)
    ranked = list(ITEMS["item_id"][np.argsort(-sim, kind="stable")])
    assert ranked[0] == "lbox" and ranked[1] == "scoop"  # same leaf, then same parent category
    assert ranked[-1] == "lbox2" and sim[7] == -np.inf


@pytest.mark.parametrize("fraction", [None, 0.5])
def test_policy_windows_agree_with_the_shared_rebuy_policy(fraction: float | None) -> None:
    from training.policy import RebuyPolicy

    frame = pd.DataFrame(
        {"category": ["pets/cats/food", "electronics/laptops"], "rebuyable": [True, False],
         "median_interval_days": [30.0, None]}
    )  # fmt: skip
    # None: training's default window (0 since the Instacart measurement: staples may come back
    # at once); 0.5: half the median re-buy interval, a shop's cooling-off period.
    policy = (
        RebuyPolicy.from_frame(frame)
        if fraction is None
        else RebuyPolicy.from_frame(frame, window_fraction=fraction)
    )
    cats = np.array(["pets/cats/food", "electronics/laptops", "never/seen"], dtype=object)
    w = F.policy_windows(policy, cats)
    expected = max(policy.floor_seconds, 30 * policy.window_fraction * 86_400)  # never sooner than the floor
    assert w[0] == pytest.approx(expected, abs=0.05) and np.isinf(w[1]) and np.isinf(w[2])
    # Serving's per-request comparison (now < last_ts + window) equals the policy's own answer.
    rng = np.random.default_rng(1)
    n = 200
    lp = pd.DataFrame(
        {"user_idx": np.zeros(n, int), "item_idx": np.arange(n), "category": rng.choice(cats, n),
         "last_ts": rng.integers(0, 40 * 86_400, n)}
    )  # fmt: skip
    now = 40 * 86_400
    policy_out = set(policy.exclusions(np.array([0]), lp, now, n).indices)
    lookup = dict(zip(cats, w, strict=True))
    serving_out = {
        i for i, c, t in zip(lp.item_idx, lp.category, lp.last_ts, strict=True) if now < t + lookup[c]
    }
    assert serving_out == policy_out


class _ThreeDayPolicy:
    """A policy without RebuyPolicy's fields: policy_windows must find its window by bisection."""

    def exclusions(self, users, last_purchases, now, n_items):  # noqa: ANN001, ANN201
        import scipy.sparse as sp

        now = np.broadcast_to(np.asarray(now, float), (len(users),))
        lp = last_purchases
        waited = now[lp["user_idx"].to_numpy()] - lp["last_ts"].to_numpy()
        out = (lp["category"].to_numpy() != "a") | (waited < 3 * 86_400)
        rows = lp["user_idx"].to_numpy()[out]
        return sp.csr_matrix(
            (np.ones(len(rows)), (rows, np.zeros(len(rows), int))), shape=(len(users), n_items)
        )


def test_policy_windows_bisects_any_policy() -> None:
    w = F.policy_windows(_ThreeDayPolicy(), np.array(["a", "b"], dtype=object))
    assert w[0] == pytest.approx(3 * 86_400, abs=0.1) and np.isinf(w[1])
