"""The synthetic shop: a deterministic web shop with structure the rest of shoprec must discover.

`generate(out, customers=..., items=..., days=..., seed=...)` writes the four raw tables of
CONTRACT.md (`events`, `catalog`, `stock`, `customers`, as Parquet) and the ground truth under
`out/truth/` that tests compare learned features against (the feature build never reads truth/).
docs/synthetic.md describes every planted pattern and its parameters; the numbers live in
`ShopParams` and `LEAVES` below so that tests assert against them, never against a past run.

How it scales: the catalogue and the customers' latent traits are drawn once (a few arrays of
length `items` / `customers`); events are drawn per chunk of `CHUNK_CUSTOMERS` customers with
vectorised numpy and appended to `events.parquet` with one `pyarrow.parquet.ParquetWriter`, so
memory is bounded by one chunk whatever the shop size. Each chunk has its own random stream
derived from (seed, chunk index), and ids are numbered in chunk order, so a seed always gives
the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------------------------
# The catalogue: leaf categories and what kind of buying each one plants
# ----------------------------------------------------------------------------------------------

SIZES: tuple[str, ...] = ("XS", "S", "M", "L", "XL", "XXL")
GENDERS: tuple[str, ...] = ("women", "men", "unisex")
DEPARTMENTS: tuple[str, ...] = ("fashion", "electronics", "pets", "home")

# Leaf kinds. The kind decides where purchases come from:
#   fashion     sized and gendered garments; bought in browsing sessions in the customer's size
#   durable     bought only in a "durable mission", at most once per customer and category
#   accessory   bought with / soon after its durable (item-level pairing), and sometimes alone
#   consumable  bought only on the owner's re-buy cycle (never in random browsing)
#   project     home/DIY project baskets (paint + brushes + tape in one order); also bought alone
#   other       ordinary browsing purchases
KINDS: tuple[str, ...] = ("fashion", "durable", "accessory", "consumable", "project", "other")


@dataclass(frozen=True)
class Leaf:
    """One leaf category of the tree (its path is the catalogue `category`)."""

    path: str
    kind: str
    price: float  # median catalogue price in EUR (log-normal around it, sigma 0.3)
    item_share: float  # relative share of the catalogue's items
    browse: float  # relative weight of browsing sessions within its department
    noun: str  # used in titles
    cycle_days: float | None = None  # consumables: the category's re-buy cycle
    new_ok: bool = False  # may hold items created near the end (few interactions)

    @property
    def department(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def sized(self) -> bool:
        return self.kind == "fashion"


LEAVES: tuple[Leaf, ...] = (
    # fashion: every garment type is one leaf; gender is a catalogue column, sizes XS-XXL
    Leaf("fashion/tops/t-shirts", "fashion", 20.0, 8.0, 1.2, "T-shirt", new_ok=True),
    Leaf("fashion/tops/sweaters", "fashion", 45.0, 6.0, 1.0, "Sweater", new_ok=True),
    Leaf("fashion/bottoms/jeans", "fashion", 60.0, 6.0, 1.0, "Jeans", new_ok=True),
    Leaf("fashion/outerwear/jackets", "fashion", 110.0, 4.0, 0.8, "Jacket", new_ok=True),
    # electronics: durables with their accessories
    Leaf("electronics/computers/laptops", "durable", 900.0, 2.0, 1.0, "Laptop"),
    Leaf("electronics/computers/laptop-bags", "accessory", 45.0, 1.5, 0.5, "Laptop Bag"),
    Leaf("electronics/computers/mice", "accessory", 25.0, 1.5, 0.5, "Wireless Mouse"),
    Leaf("electronics/phones/smartphones", "durable", 600.0, 2.0, 1.2, "Smartphone"),
    Leaf("electronics/phones/phone-cases", "accessory", 18.0, 2.0, 0.6, "Phone Case"),
    Leaf("electronics/audio/headphones", "other", 80.0, 2.0, 1.0, "Headphones", new_ok=True),
    # pets: consumables on a cycle, a litter box with its scoop
    Leaf("pets/cats/cat-food", "consumable", 15.0, 2.0, 1.0, "Cat Food", cycle_days=25.0),
    Leaf("pets/cats/cat-litter", "consumable", 9.0, 1.0, 0.5, "Cat Litter", cycle_days=35.0),
    Leaf("pets/cats/litter-boxes", "durable", 35.0, 1.0, 0.4, "Litter Box"),
    Leaf("pets/cats/litter-scoops", "accessory", 7.0, 1.0, 0.3, "Litter Scoop"),
    Leaf("pets/dogs/dog-food", "consumable", 40.0, 2.0, 1.0, "Dog Food", cycle_days=30.0),
    Leaf("pets/dogs/dog-toys", "other", 12.0, 2.0, 0.8, "Dog Toy", new_ok=True),
    # home/DIY: a painting project basket, plus ordinary home goods
    Leaf("home/diy/paint", "project", 30.0, 2.0, 1.0, "Wall Paint"),
    Leaf("home/diy/brushes", "project", 8.0, 1.5, 0.5, "Paint Brush"),
    Leaf("home/diy/tape", "project", 5.0, 1.0, 0.4, "Masking Tape"),
    Leaf("home/kitchen/mugs", "other", 10.0, 3.0, 1.0, "Mug", new_ok=True),
    Leaf("home/decor/candles", "other", 12.0, 3.0, 1.0, "Candle", new_ok=True),
)

# durable leaf -> its accessory leaves. Every durable *item* is paired with one item of each
# accessory leaf (truth/complements.parquet); that accessory is what its buyers add.
DURABLE_ACCESSORIES: dict[str, tuple[str, ...]] = {
    "electronics/computers/laptops": ("electronics/computers/laptop-bags", "electronics/computers/mice"),
    "electronics/phones/smartphones": ("electronics/phones/phone-cases",),
    "pets/cats/litter-boxes": ("pets/cats/litter-scoops",),
}
# The painting project: leaf -> probability that a project basket holds an item of it.
PROJECT_BASKET: dict[str, float] = {"home/diy/paint": 1.0, "home/diy/brushes": 0.85, "home/diy/tape": 0.75}
# Which pet a consumable or pet durable belongs to (only owners buy them).
PET_OF: dict[str, str] = {
    "pets/cats/cat-food": "cat",
    "pets/cats/cat-litter": "cat",
    "pets/cats/litter-boxes": "cat",
    "pets/dogs/dog-food": "dog",
}
# Within a fashion leaf, the share of items per gender (women, men, unisex).
FASHION_GENDER_SHARE: tuple[float, float, float] = (0.45, 0.40, 0.15)

BRANDS: dict[str, tuple[str, ...]] = {
    "fashion": ("Nordwind", "Linnen & Co", "Urban Fox", "Kaapstad", "Blauw", "Morgenrood"),
    "electronics": ("Voltix", "Pixelon", "Kestrel", "Orbita", "Zentro"),
    "pets": ("Purrfect", "Happy Paws", "Kibbleworks", "Snorr"),
    "home": ("Verfwerk", "Klusmeester", "Hout & Haard", "Lumen"),
}
ADJECTIVES: tuple[str, ...] = ("Classic", "Essential", "Premium", "Eco", "Pro", "Soft", "Compact", "Urban")
CITIES: tuple[tuple[str, float], ...] = (
    ("Amsterdam", 0.18),
    ("Rotterdam", 0.13),
    ("Den Haag", 0.11),
    ("Utrecht", 0.09),
    ("Eindhoven", 0.07),
    ("Groningen", 0.06),
    ("Tilburg", 0.05),
    ("Almere", 0.05),
    ("Breda", 0.05),
    ("Nijmegen", 0.05),
    ("Arnhem", 0.04),
    ("Haarlem", 0.04),
    ("Zwolle", 0.04),
    ("Maastricht", 0.04),
)

CHUNK_CUSTOMERS = 20_000  # customers per event chunk: ~1.4M events, a few hundred MB at most
EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")
_VIEW, _CART, _REMOVE, _BUY = 0, 1, 2, 3
_CONTEXT_STREAM = 1  # spawn-key suffix of a chunk's context stream (device, weather), beside its events' own
_US_PER_DAY = 86_400 * 1_000_000


# ----------------------------------------------------------------------------------------------
# Behaviour parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopParams:
    """Every behavioural knob of the synthetic shop (docs/synthetic.md explains each).

    Rates are per customer per active day unless named otherwise. Tests read these fields, so a
    change here changes what the tests expect, never the other way round.
    """

    # customers
    share_women: float = 0.50  # customer gender women / men; the rest has no recorded gender
    share_men: float = 0.45
    gender_loyal: float = 0.85  # women (men) who shop only women's (men's) + unisex fashion
    share_no_consent: float = 0.15  # consent_personalisation = False
    share_no_email_consent: float = 0.30  # consent_email = False
    share_new: float = 0.12  # sign up inside the history window, more of them late
    share_lapsed: float = 0.20  # stop all activity at least `lapse_quiet_days` before the end
    lapse_quiet_days: float = 60.0  # shortened to days/3 for short histories
    share_vip: float = 0.04  # VIPs: `vip_activity` x the sessions, more carts and purchases
    vip_activity: float = 5.0
    share_cat_owner: float = 0.25
    share_dog_owner: float = 0.20
    share_missing_birth_year: float = 0.03
    share_missing_city: float = 0.02
    # sessions (browsing)
    sessions_per_day: float = 0.075  # median of a log-normal per-customer rate (sigma below)
    sessions_sigma: float = 0.6
    views_geometric_p: float = 0.4  # views per session = Geometric(p), capped at 8 (mean ~2.5)
    p_cart: float = 0.30  # a session adds its last viewed item to the cart (VIP: p_cart_vip)
    p_cart_vip: float = 0.45
    p_second_cart: float = 0.25  # ... and also the one viewed before it
    p_remove: float = 0.15  # a cart session removes its first carted item again
    p_buy: float = 0.55  # a cart session ends in a purchase (else: abandoned cart); VIP below
    p_buy_vip: float = 0.75
    zipf_exponent: float = 0.9  # item popularity within a pool ~ 1 / rank**zipf_exponent
    p_sale: float = 0.10  # a purchase line pays `sale_discount` less than the catalogue price
    sale_discount: float = 0.20
    # fashion
    p_true_size: float = 0.95  # a fashion event uses the customer's size for that garment type
    p_size_offset: float = 0.15  # per garment, the size is one below (and one above) the base size
    # durables and accessories
    durable_hazard: tuple[tuple[str, float], ...] = (
        ("electronics/computers/laptops", 0.0008),  # -> ~13% of customers active 180 days
        ("electronics/phones/smartphones", 0.0012),  # -> ~19%
        ("pets/cats/litter-boxes", 0.004),  # cat owners only -> ~51%
    )
    p_accessory_same_order: float = 0.55  # the paired accessory is in the durable's order
    p_accessory_later: float = 0.50  # else, bought 1..`accessory_later_days` days later
    accessory_later_days: float = 14.0
    # consumables
    cycle_jitter: float = 0.15  # a customer's own cycle = category cycle x U(1 - j, 1 + j)
    gap_sd_frac: float = 0.08  # each gap = own cycle + Normal(0, gap_sd_frac x category cycle)
    p_favourite: float = 0.85  # a re-buy is the customer's favourite item of the category
    p_rebuy_view: float = 0.4  # a re-buy session views the item first (else straight to cart)
    # home/DIY projects
    projects_per_day: float = 0.003  # x 5 x the customer's home preference (mean preference 0.2)
    # catalogue
    share_new_items: float = 0.06  # of items in `new_ok` leaves (never a pool's first item)
    new_item_days: float = 21.0  # new items are created within this many days before `end`
    share_out_of_stock: float = 0.12  # (fashion item, size) pairs with quantity 0
    share_out_of_stock_unsized: float = 0.05
    # seasonality: weekday multipliers (Mon..Sun) x yearly wave x sale bumps
    weekday: tuple[float, ...] = (0.95, 0.90, 0.92, 0.97, 1.05, 1.15, 1.06)
    yearly_amplitude: float = 0.15  # 1 + a cos(2 pi (doy - yearly_peak_doy) / 365.25)
    yearly_peak_doy: int = 350
    bumps: tuple[tuple[int, int, float, float], ...] = (
        (7, 1, 0.5, 5.0),  # summer sale: (month, day, +50%, sd 5 days)
        (11, 27, 0.8, 4.0),  # Black Friday: +80%, sd 4 days
    )
    # the visit's context (events' device / city / weather columns), drawn per session from a
    # stream of its own after everything else, so the other columns do not change with it
    device_shares: tuple[tuple[str, float], ...] = (("mobile", 0.55), ("desktop", 0.35), ("tablet", 0.10))
    weather_shares: tuple[tuple[str, float], ...] = (("sunny", 0.35), ("cloudy", 0.40), ("rain", 0.25))
    # The planted context effect: a session in this leaf happens in the rain with p_rain_leaf
    # (other weathers in their shares' proportions), so on rainy days its share of sessions, views
    # and purchases is p_rain_leaf / P(rain) ~ 2x its share on other days. Device and city have no
    # effect (the null a learner must not find).
    rain_leaf: str = "fashion/outerwear/jackets"
    p_rain_leaf: float = 0.55

    def __post_init__(self) -> None:
        # a probability outside [0, 1] or a negative rate would silently skew the shop: refuse it
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.startswith(("p_", "share_")) or f.name in (
                "gender_loyal",
                "sale_discount",
                "cycle_jitter",
            ):
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"ShopParams.{f.name} must be within [0, 1], got {v!r}")
            elif isinstance(v, int | float) and v < 0:
                raise ValueError(f"ShopParams.{f.name} must be >= 0, got {v!r}")
        if self.share_women + self.share_men > 1.0:
            raise ValueError("ShopParams.share_women + share_men must be <= 1")
        if not 0.0 < self.views_geometric_p <= 1.0:
            raise ValueError(
                f"ShopParams.views_geometric_p must be within (0, 1], got {self.views_geometric_p!r}"
            )
        if len(self.weekday) != 7 or min(self.weekday) <= 0:
            raise ValueError("ShopParams.weekday needs 7 positive multipliers (Monday..Sunday)")
        if self.rain_leaf not in _LEAF_INDEX:
            raise ValueError(f"ShopParams.rain_leaf {self.rain_leaf!r} is not a leaf of LEAVES")
        for name in ("device_shares", "weather_shares"):
            shares = getattr(self, name)
            if not shares or min(w for _, w in shares) < 0 or sum(w for _, w in shares) <= 0:
                raise ValueError(f"ShopParams.{name} needs (value, share >= 0) pairs with a positive sum")
        if "rain" not in dict(self.weather_shares):
            raise ValueError("ShopParams.weather_shares must name 'rain' (the planted effect)")
        unknown = [d for d, _ in self.durable_hazard if d not in DURABLE_ACCESSORIES]
        if unknown:
            raise ValueError(
                f"ShopParams.durable_hazard names {unknown}, known durables: {list(DURABLE_ACCESSORIES)}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ShopParams:
        """Build from a dict; an unknown key is an error, never a silently ignored default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown ShopParams key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        fixed = {
            k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in values.items()
        }
        return cls(**fixed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Internal structures
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalog:
    """The catalogue in pool order: items of pool p are rows off[p]:off[p+1].

    A pool is a leaf (or, for fashion, a leaf x gender). `pick` is the global cumulative
    popularity array used by `_draw_items` (pool p's entries run from p to p+1).
    """

    item_ids: pa.Array  # string, per internal item index
    leaf: np.ndarray  # int16 leaf index per item
    gender: np.ndarray  # int8: 0 women, 1 men, 2 unisex, -1 none
    price: np.ndarray  # float64
    created_day: np.ndarray  # float64 days since history start (negative: before)
    pool: np.ndarray  # int32 pool per item
    pool_leaf: np.ndarray  # int16 leaf per pool
    pool_gender: np.ndarray  # int8 gender per pool (-1 for unsized leaves)
    off: np.ndarray  # int64 pool offsets, len n_pools + 1
    pick: np.ndarray  # float64, len n_items
    complement: dict[str, np.ndarray]  # accessory leaf path -> per item of its durable leaf: accessory item

    def pool_of(self, leaf_path: str, gender: int = -1) -> int:
        li = _LEAF_INDEX[leaf_path]
        hit = np.flatnonzero((self.pool_leaf == li) & (self.pool_gender == gender))
        return int(hit[0])


_LEAF_INDEX: dict[str, int] = {leaf.path: i for i, leaf in enumerate(LEAVES)}
_GARMENTS: tuple[int, ...] = tuple(i for i, leaf in enumerate(LEAVES) if leaf.sized)
_LEAF_SIZED = np.array([leaf.sized for leaf in LEAVES])
_LEAF_BROWSE_BUYABLE = np.array([leaf.kind not in ("durable", "consumable") for leaf in LEAVES])


@dataclass(frozen=True)
class _Customers:
    """Latent traits of every customer (arrays of length n); days are since the history start."""

    n: int
    gender: np.ndarray  # int8: 0 women, 1 men, -1 unknown
    affinity: np.ndarray  # int8: 0 women-only, 1 men-only, 2 any
    sizes: np.ndarray  # int8 (n, len(_GARMENTS)) index into SIZES
    active_from: np.ndarray  # float64 day
    active_until: np.ndarray  # float64 day (exclusive; <= days)
    new: np.ndarray  # bool
    lapsed: np.ndarray  # bool
    vip: np.ndarray  # bool
    cat: np.ndarray  # bool
    dog: np.ndarray  # bool
    rate: np.ndarray  # float64 browsing sessions per (seasonally weighted) active day
    dept_cum: np.ndarray  # float64 (n, 4) cumulative department preference
    home_pref: np.ndarray  # float64
    birth_year: np.ndarray  # int64, -1 missing
    city: np.ndarray  # int16 index into CITIES, -1 missing
    signup_day: np.ndarray  # float64 day (negative: before the window)
    consent_personalisation: np.ndarray  # bool
    consent_email: np.ndarray  # bool


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def generate(
    out: Path,
    *,
    customers: int = 5000,
    items: int = 2000,
    days: int = 180,
    seed: int = 42,
    end: date = date(2026, 11, 1),
    progress: bool = True,
    params: ShopParams | None = None,
) -> dict[str, int]:
    """Write the synthetic shop into `out` and return the row count of each raw table.

    Writes `events.parquet`, `catalog.parquet`, `stock.parquet`, `customers.parquet` (columns of
    CONTRACT.md) and `truth/*.parquet` + `truth/params.json` (docs/synthetic.md). Every timestamp
    is UTC and strictly before `end` (midnight UTC); the history covers the `days` days before it.
    The same arguments give byte-identical files.

    Returns: {"events": n, "catalog": n_items, "stock": n_rows, "customers": n_customers}.
    """
    p = params or ShopParams()
    if customers < 1:
        raise ValueError(f"customers must be >= 1, got {customers}")
    if days < 7:
        raise ValueError(f"days must be >= 7, got {days}")
    n_pools = sum(len(GENDERS) if leaf.sized else 1 for leaf in LEAVES)
    if items < n_pools:
        raise ValueError(f"items must be >= {n_pools} (one per category and gender pool), got {items}")
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)

    end_dt = datetime(end.year, end.month, end.day, tzinfo=UTC)
    end_us = int(end_dt.timestamp()) * 1_000_000
    start_us = end_us - days * _US_PER_DAY
    start_date = end - timedelta(days=days)
    root = np.random.SeedSequence(seed)
    # independent streams per part, so changing one part's draws leaves the others' bytes alone
    cat_ss, cust_ss, ev_ss, title_ss, stock_ss = root.spawn(5)

    catalog = _make_catalog(items, days, p, np.random.default_rng(cat_ss))
    people = _make_customers(customers, days, p, np.random.default_rng(cust_ss))
    day_w = _day_weights(start_date, days, p)

    counts = {
        "catalog": _write_catalog(
            out / "catalog.parquet", catalog, start_us, np.random.default_rng(title_ss)
        ),
        "stock": _write_stock(out / "stock.parquet", catalog, p, np.random.default_rng(stock_ss)),
        "customers": _write_customers(out / "customers.parquet", people, start_us),
    }
    counts["events"] = _write_events(
        out / "events.parquet", catalog, people, day_w, p, ev_ss, start_us, end_us, days, progress
    )
    _write_truth(out / "truth", catalog, people, p, start_us, days, seed, end)
    return {k: counts[k] for k in ("events", "catalog", "stock", "customers")}


# ----------------------------------------------------------------------------------------------
# Catalogue
# ----------------------------------------------------------------------------------------------


def _make_catalog(n_items: int, days: int, p: ShopParams, rng: np.random.Generator) -> _Catalog:
    """Allocate `n_items` over the pools (at least one each), draw prices, ages and pairings."""
    pool_leaf, pool_gender, pool_share = [], [], []
    for li, leaf in enumerate(LEAVES):
        if leaf.sized:
            for g, share in enumerate(FASHION_GENDER_SHARE):
                pool_leaf.append(li)
                pool_gender.append(g)
                pool_share.append(leaf.item_share * share)
        else:
            pool_leaf.append(li)
            pool_gender.append(-1)
            pool_share.append(leaf.item_share)
    share = np.asarray(pool_share) / sum(pool_share)
    n_pools = len(share)
    # one item per pool, the rest by largest remainder so the total is exact
    extra = (n_items - n_pools) * share
    counts = np.ones(n_pools, dtype=np.int64) + np.floor(extra).astype(np.int64)
    rest = n_items - counts.sum()
    counts[np.argsort(-(extra - np.floor(extra)), kind="stable")[:rest]] += 1
    off = np.concatenate([[0], np.cumsum(counts)])
    pool = np.repeat(np.arange(n_pools, dtype=np.int32), counts)
    leaf_idx = np.asarray(pool_leaf, dtype=np.int16)[pool]
    gender = np.asarray(pool_gender, dtype=np.int8)[pool]

    median = np.array([LEAVES[i].price for i in leaf_idx])
    price = np.round(median * np.exp(rng.normal(0.0, 0.3, n_items)), 0) - 0.01
    price = np.maximum(price, 0.99)

    # item age: most exist before the window; some in `new_ok` leaves appear near the end
    created = -rng.uniform(30.0, 730.0, n_items)
    new_ok = np.array([LEAVES[i].new_ok for i in leaf_idx])
    first = np.zeros(n_items, dtype=bool)
    first[off[:-1]] = True  # a pool's first item is always old: events before a new item's birth move to it
    is_new = new_ok & ~first & (rng.random(n_items) < p.share_new_items)
    window = min(p.new_item_days, days / 2)
    created[is_new] = days - rng.uniform(1.0, window, int(is_new.sum()))

    # popularity within a pool: Zipf over a random order of its items
    w = np.empty(n_items)
    for k in range(n_pools):
        m = int(counts[k])
        ranks = rng.permutation(m) + 1.0
        w[off[k] : off[k + 1]] = ranks ** (-p.zipf_exponent)
    pick = np.empty(n_items)
    for k in range(n_pools):
        seg = np.cumsum(w[off[k] : off[k + 1]])
        seg /= seg[-1]
        seg[-1] = 1.0
        pick[off[k] : off[k + 1]] = k + seg

    # durable item -> accessory item (random, accessories may serve several durables)
    complement: dict[str, np.ndarray] = {}
    for durable, accessories in DURABLE_ACCESSORIES.items():
        d = _LEAF_INDEX[durable]
        n_d = int((leaf_idx == d).sum())
        for acc in accessories:
            a = np.flatnonzero(leaf_idx == _LEAF_INDEX[acc])
            complement[acc] = a[rng.integers(0, len(a), n_d)]

    # ids in a shuffled order, so an id reveals nothing about the category
    width = max(6, len(str(n_items)))
    perm = rng.permutation(n_items)
    ids = pc.binary_join_element_wise(
        "i", pc.utf8_lpad(pc.cast(pa.array(perm), pa.string()), width=width, padding="0"), ""
    )
    return _Catalog(
        item_ids=ids,
        leaf=leaf_idx,
        gender=gender,
        price=price,
        created_day=created,
        pool=pool,
        pool_leaf=np.asarray(pool_leaf, dtype=np.int16),
        pool_gender=np.asarray(pool_gender, dtype=np.int8),
        off=off,
        pick=pick,
        complement=complement,
    )


def _draw_items(cat: _Catalog, pools: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `pools` (int array), by popularity within the pool. Returns int64 items."""
    u = rng.random(len(pools))
    return np.searchsorted(cat.pick, pools + u, side="right").astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Customers
# ----------------------------------------------------------------------------------------------


def _make_customers(n: int, days: int, p: ShopParams, rng: np.random.Generator) -> _Customers:
    """Draw every customer's latent traits (vectorised; a few arrays of length n)."""
    u = rng.random(n)
    gender = np.where(u < p.share_women, 0, np.where(u < p.share_women + p.share_men, 1, -1)).astype(np.int8)
    loyal = rng.random(n) < p.gender_loyal
    affinity = np.where((gender >= 0) & loyal, gender, 2).astype(np.int8)

    # base size by gender, then per garment type one step down / up with p_size_offset each
    base_p = {
        0: (0.15, 0.30, 0.30, 0.15, 0.07, 0.03),
        1: (0.02, 0.10, 0.30, 0.33, 0.17, 0.08),
        -1: (0.08, 0.20, 0.30, 0.24, 0.12, 0.06),
    }
    base = np.empty(n, dtype=np.int64)
    for g, probs in base_p.items():
        m = gender == g
        base[m] = rng.choice(len(SIZES), size=int(m.sum()), p=probs)
    r = rng.random((n, len(_GARMENTS)))
    step = np.where(r < p.p_size_offset, -1, np.where(r < 2 * p.p_size_offset, 1, 0))
    sizes = np.clip(base[:, None] + step, 0, len(SIZES) - 1).astype(np.int8)

    # sign-up and the active window [active_from, active_until) in days since the window start
    new = rng.random(n) < p.share_new
    signup = -rng.uniform(0.0, 3 * 365.0, n)
    # new customers sign up inside the window, more of them late (density grows linearly)
    signup[new] = days * np.sqrt(rng.random(int(new.sum())))
    active_from = np.maximum(signup, 0.0)
    quiet = min(p.lapse_quiet_days, days / 3)
    can_lapse = active_from < days - quiet
    lapsed = can_lapse & (rng.random(n) < p.share_lapsed)
    active_until = np.full(n, float(days))
    lu = rng.random(n)
    active_until[lapsed] = active_from[lapsed] + lu[lapsed] * (days - quiet - active_from[lapsed])

    vip = rng.random(n) < p.share_vip
    rate = p.sessions_per_day * np.exp(rng.normal(0.0, p.sessions_sigma, n))
    rate[vip] *= p.vip_activity
    cat = rng.random(n) < p.share_cat_owner
    dog = rng.random(n) < p.share_dog_owner
    pref = rng.dirichlet((2.0, 1.0, 1.0, 1.0), n)
    # people without a pet browse the pet department a quarter as much
    pref[:, 2] *= np.where(cat | dog, 1.0, 0.25)
    pref /= pref.sum(axis=1, keepdims=True)

    age = np.clip(np.round(rng.normal(40.0, 13.0, n)), 18, 85).astype(np.int64)
    birth_year = 2026 - age
    birth_year[rng.random(n) < p.share_missing_birth_year] = -1
    city_p = np.array([w for _, w in CITIES])
    city = rng.choice(len(CITIES), size=n, p=city_p / city_p.sum()).astype(np.int16)
    city[rng.random(n) < p.share_missing_city] = -1
    return _Customers(
        n=n,
        gender=gender,
        affinity=affinity,
        sizes=sizes,
        active_from=active_from,
        active_until=active_until,
        new=new,
        lapsed=lapsed,
        vip=vip,
        cat=cat,
        dog=dog,
        rate=rate,
        dept_cum=np.cumsum(pref, axis=1),
        home_pref=pref[:, 3].copy(),
        birth_year=birth_year,
        city=city,
        signup_day=signup,
        consent_personalisation=rng.random(n) >= p.share_no_consent,
        consent_email=rng.random(n) >= p.share_no_email_consent,
    )


# ----------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DayWeights:
    """Relative shopping intensity per day (mean 1) and its cumulative sum for inverse sampling."""

    w: np.ndarray  # (days,)
    cum: np.ndarray  # (days + 1,), cum[0] = 0

    def mass(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Weighted length of [a, b) in days (0 where b <= a)."""
        return np.maximum(self._W(b) - self._W(a), 0.0)

    def _W(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0.0, len(self.w))
        d = np.minimum(np.floor(x).astype(np.int64), len(self.w) - 1)
        return self.cum[d] + (x - d) * self.w[d]

    def sample(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One day (float) per window [a, b), drawn with density proportional to the day weights."""
        lo, hi = self._W(a), self._W(b)
        y = lo + rng.random(len(lo)) * (hi - lo)
        d = np.clip(np.searchsorted(self.cum, y, side="right") - 1, 0, len(self.w) - 1)
        x = d + (y - self.cum[d]) / self.w[d]
        return np.clip(x, a, np.nextafter(b, -np.inf))


def _day_weights(start: date, days: int, p: ShopParams) -> _DayWeights:
    """Weekday x yearly wave x sale bumps for each day of the window, normalised to mean 1."""
    dates = [start + timedelta(days=i) for i in range(days)]
    dow = np.array([d.weekday() for d in dates])
    doy = np.array([d.timetuple().tm_yday for d in dates], dtype=np.float64)
    w = np.asarray(p.weekday)[dow] * (
        1 + p.yearly_amplitude * np.cos(2 * np.pi * (doy - p.yearly_peak_doy) / 365.25)
    )
    for month, day, height, sd in p.bumps:
        for year in {d.year for d in dates} | {dates[0].year - 1, dates[-1].year + 1}:
            centre = date(year, month, day)
            dist = np.array([(d - centre).days for d in dates], dtype=np.float64)
            w = w * (1 + height * np.exp(-0.5 * (dist / sd) ** 2))
    w = w / w.mean()
    return _DayWeights(w=w, cum=np.concatenate([[0.0], np.cumsum(w)]))


# Time of day of a session start: quiet at night, a lunch bump and an evening peak.
_HOUR_W = np.array([2, 1, 0.5, 0.3, 0.3, 0.5, 1, 2, 3, 4, 4.5, 5, 5.5, 5, 4.5, 4.5, 5, 5.5, 6, 7, 8, 8, 6, 4])
_HOUR_CUM = np.cumsum(_HOUR_W / _HOUR_W.sum())


def _session_starts(day: np.ndarray, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Seconds since the window start for sessions on (float) days `day`: the day plus a time of day,
    kept inside the customer's active window [lo, hi) (days) so no event precedes the sign-up."""
    hour = np.minimum(np.searchsorted(_HOUR_CUM, rng.random(len(day)), side="right"), 23)
    t = np.floor(day) * 86_400.0 + hour * 3600.0 + rng.random(len(day)) * 3600.0
    # a session may run up to an hour: start it at the latest an hour before the window closes
    return np.maximum(np.minimum(t, hi * 86_400.0 - 3600.0), lo * 86_400.0)


# ----------------------------------------------------------------------------------------------
# Events: sessions made of lines; a line is one item in one session
# ----------------------------------------------------------------------------------------------


@dataclass
class _Lines:
    """Session lines of one chunk. Sessions: user, start (s since window start). Lines index sessions.

    A line becomes up to four events: a view at `start + offset`, an add_to_cart shortly after,
    a remove_from_cart after that (if `removed`), and a purchase at the session's end (if `buy`).
    """

    s_user: list[np.ndarray] = dataclasses.field(default_factory=list)
    s_start: list[np.ndarray] = dataclasses.field(default_factory=list)
    session: list[np.ndarray] = dataclasses.field(default_factory=list)
    item: list[np.ndarray] = dataclasses.field(default_factory=list)
    size: list[np.ndarray] = dataclasses.field(default_factory=list)
    qty: list[np.ndarray] = dataclasses.field(default_factory=list)
    offset: list[np.ndarray] = dataclasses.field(default_factory=list)
    view: list[np.ndarray] = dataclasses.field(default_factory=list)
    cart: list[np.ndarray] = dataclasses.field(default_factory=list)
    removed: list[np.ndarray] = dataclasses.field(default_factory=list)
    buy: list[np.ndarray] = dataclasses.field(default_factory=list)
    n_sessions: int = 0

    def add(
        self,
        s_user: np.ndarray,
        s_start: np.ndarray,
        session: np.ndarray,
        item: np.ndarray,
        size: np.ndarray | int,
        qty: np.ndarray | int,
        offset: np.ndarray,
        view: np.ndarray | bool,
        cart: np.ndarray | bool,
        removed: np.ndarray | bool,
        buy: np.ndarray | bool,
    ) -> None:
        """Append sessions (arrays over sessions) and their lines (`session` indexes the new sessions)."""
        self.s_user.append(np.asarray(s_user, dtype=np.int64))
        self.s_start.append(np.asarray(s_start, dtype=np.float64))
        self.session.append(np.asarray(session, dtype=np.int64) + self.n_sessions)
        n = len(session)
        self.item.append(np.asarray(item, dtype=np.int64))
        self.size.append(np.broadcast_to(np.asarray(size, dtype=np.int8), (n,)))
        self.qty.append(np.broadcast_to(np.asarray(qty, dtype=np.int64), (n,)))
        self.offset.append(np.asarray(offset, dtype=np.float64))
        for name, v in (("view", view), ("cart", cart), ("removed", removed), ("buy", buy)):
            getattr(self, name).append(np.broadcast_to(np.asarray(v, dtype=bool), (n,)))
        self.n_sessions += len(s_user)

    def cat(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.empty(0)


def _sizes_for(
    cat: _Catalog,
    people: _Customers,
    users: np.ndarray,
    items: np.ndarray,
    p: ShopParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """The size (index into SIZES, -1 for unsized) each user picks for each item: their own size for
    that garment type with probability p_true_size, else a neighbouring size."""
    leaf = cat.leaf[items]
    g = np.full(len(items), -1, dtype=np.int64)
    for k, li in enumerate(_GARMENTS):
        g[leaf == li] = k
    sized = g >= 0
    size = np.full(len(items), -1, dtype=np.int8)
    if not sized.any():
        return size
    truth = people.sizes[users[sized], g[sized]].astype(np.int64)
    off = np.where(rng.random(len(truth)) < 0.5, -1, 1)
    other = truth + off
    other = np.where((other < 0) | (other >= len(SIZES)), truth - off, other)
    size[sized] = np.where(rng.random(len(truth)) < p.p_true_size, truth, other)
    return size


def _browse(
    lines: _Lines,
    cat: _Catalog,
    people: _Customers,
    users: np.ndarray,
    dw: _DayWeights,
    p: ShopParams,
    rng: np.random.Generator,
) -> None:
    """Random browsing sessions: views -> maybe cart -> maybe purchase (or an abandoned cart)."""
    a, b = people.active_from[users], people.active_until[users]
    n_s = rng.poisson(people.rate[users] * dw.mass(a, b))
    s_user = np.repeat(users, n_s)
    S = len(s_user)
    if S == 0:
        return
    s_day = dw.sample(people.active_from[s_user], people.active_until[s_user], rng)
    s_start = _session_starts(s_day, rng, people.active_from[s_user], people.active_until[s_user])

    # department by the customer's preference, leaf by browse weight, fashion gender by affinity
    u = rng.random(S)
    dept = (u[:, None] > people.dept_cum[s_user]).sum(axis=1).clip(0, len(DEPARTMENTS) - 1)
    leaf = np.empty(S, dtype=np.int64)
    for di, dname in enumerate(DEPARTMENTS):
        m = np.flatnonzero(dept == di)
        cand = [i for i, lf in enumerate(LEAVES) if lf.department == dname]
        bw = np.array([LEAVES[i].browse for i in cand])
        leaf[m] = np.asarray(cand)[rng.choice(len(cand), size=len(m), p=bw / bw.sum())]
    gprob = np.array([[0.8, 0.0, 0.2], [0.0, 0.8, 0.2], [0.4, 0.4, 0.2]])  # affinity -> women/men/unisex
    gcum = np.cumsum(gprob, axis=1)[people.affinity[s_user]]
    g = (rng.random(S)[:, None] > gcum).sum(axis=1).clip(0, 2)
    pool_lookup = np.full((len(LEAVES), 4), -1, dtype=np.int64)  # column 3: unsized
    for k, (li, pg) in enumerate(zip(cat.pool_leaf, cat.pool_gender, strict=True)):
        pool_lookup[li, pg if pg >= 0 else 3] = k
    sized = _LEAF_SIZED[leaf]
    s_pool = np.where(sized, pool_lookup[leaf, g], pool_lookup[leaf, 3])

    vip = people.vip[s_user]
    nv = np.minimum(rng.geometric(p.views_geometric_p, S), 8)
    has_cart = rng.random(S) < np.where(vip, p.p_cart_vip, p.p_cart)
    n_cart = has_cart * (1 + ((rng.random(S) < p.p_second_cart) & (nv >= 2)))
    s_removed = has_cart & (rng.random(S) < p.p_remove)
    # durables and consumables are bought only in their missions, never while browsing
    buyable = _LEAF_BROWSE_BUYABLE[leaf]
    s_buy = buyable & (rng.random(S) < np.where(vip, p.p_buy_vip, p.p_buy))

    L = int(nv.sum())
    session = np.repeat(np.arange(S), nv)
    first = np.repeat(np.cumsum(nv) - nv, nv)
    pos = np.arange(L) - first
    item = _draw_items(cat, s_pool[session], rng)
    gaps = rng.exponential(45.0, L)
    csum = np.cumsum(gaps)
    offset = csum - np.repeat(csum[np.cumsum(nv) - nv] - gaps[np.cumsum(nv) - nv], nv)
    cart = pos >= (nv - n_cart)[session]
    removed = cart & (pos == (nv - n_cart)[session]) & s_removed[session]
    buy = cart & ~removed & s_buy[session]
    size = _sizes_for(cat, people, s_user[session], item, p, rng)
    lines.add(s_user, s_start, session, item, size, 1, offset, True, cart, removed, buy)


def _durables(
    lines: _Lines,
    cat: _Catalog,
    people: _Customers,
    users: np.ndarray,
    dw: _DayWeights,
    p: ShopParams,
    days: int,
    rng: np.random.Generator,
) -> None:
    """Durable missions: browse a few of the kind, buy one (once ever), its accessories with it or later."""
    for durable, hazard in p.durable_hazard:
        if durable not in DURABLE_ACCESSORIES:
            raise ValueError(
                f"durable_hazard names {durable!r}, which has no accessories in DURABLE_ACCESSORIES"
            )
        a, b = people.active_from[users], people.active_until[users]
        eligible = b > a
        pet = PET_OF.get(durable)
        if pet == "cat":
            eligible &= people.cat[users]
        elif pet == "dog":
            eligible &= people.dog[users]
        p_buy = 1.0 - np.exp(-hazard * np.maximum(b - a, 0.0))
        buyers = users[eligible & (rng.random(len(users)) < p_buy)]
        n = len(buyers)
        if n == 0:
            continue
        day = dw.sample(people.active_from[buyers], people.active_until[buyers], rng)
        start = _session_starts(day, rng, people.active_from[buyers], people.active_until[buyers])
        pool = cat.pool_of(durable)
        chosen = _draw_items(cat, np.full(n, pool), rng)
        n_browse = rng.integers(0, 4, n)  # other items of the kind viewed first
        d_first = cat.off[pool]
        acc_lines = []
        later = []
        for acc in DURABLE_ACCESSORIES[durable]:
            acc_item = cat.complement[acc][chosen - d_first]
            u = rng.random(n)
            same = u < p.p_accessory_same_order
            late = ~same & (rng.random(n) < p.p_accessory_later)
            acc_lines.append((acc_item, same))
            later.append((acc_item, late))
        # the durable's session: browse views, the chosen item, accessories in the same order
        sess = [np.repeat(np.arange(n), n_browse), np.arange(n)]
        items = [_draw_items(cat, np.full(int(n_browse.sum()), pool), rng), chosen]
        flags = [np.zeros(int(n_browse.sum()), dtype=bool), np.ones(n, dtype=bool)]
        for acc_item, same in acc_lines:
            sess.append(np.flatnonzero(same))
            items.append(acc_item[same])
            flags.append(np.ones(int(same.sum()), dtype=bool))
        sess_a, items_a, buy_a = np.concatenate(sess), np.concatenate(items), np.concatenate(flags)
        order = np.argsort(sess_a, kind="stable")
        sess_a, items_a, buy_a = sess_a[order], items_a[order], buy_a[order]
        offset = _offsets(sess_a, rng, 60.0)
        lines.add(buyers, start, sess_a, items_a, -1, 1, offset, True, buy_a, False, buy_a)
        # accessories bought in a later session, within accessory_later_days (if still active)
        for acc_item, late in later:
            lu = buyers[late]
            t = start[late] + rng.uniform(1.0, p.accessory_later_days, len(lu)) * 86_400.0
            ok = t < np.minimum(people.active_until[lu], days) * 86_400.0
            k = int(ok.sum())
            lines.add(
                lu[ok], t[ok], np.arange(k), acc_item[late][ok], -1, 1, np.zeros(k), True, True, False, True
            )


def _offsets(sess: np.ndarray, rng: np.random.Generator, mean_gap: float) -> np.ndarray:
    """Seconds since session start for lines sorted by session: cumulative exponential gaps."""
    gaps = rng.exponential(mean_gap, len(sess))
    csum = np.cumsum(gaps)
    if len(sess) == 0:
        return csum
    starts = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]])
    base = np.repeat(csum[starts] - gaps[starts], np.diff(np.r_[starts, len(sess)]))
    return csum - base


def _consumables(
    lines: _Lines,
    cat: _Catalog,
    people: _Customers,
    users: np.ndarray,
    p: ShopParams,
    rng: np.random.Generator,
) -> None:
    """Re-buy cycles: owners buy their favourite item of each consumable leaf every ~cycle days."""
    for leaf in LEAVES:
        if leaf.kind != "consumable":
            continue
        owner = people.cat if PET_OF.get(leaf.path) == "cat" else people.dog
        a, b = people.active_from[users], people.active_until[users]
        buyers = users[owner[users] & (b > a)]
        n = len(buyers)
        if n == 0:
            continue
        c = float(leaf.cycle_days)
        own = c * rng.uniform(1 - p.cycle_jitter, 1 + p.cycle_jitter, n)
        span = people.active_until[buyers] - people.active_from[buyers]
        k_max = int(math.ceil(float(span.max()) / (c * (1 - p.cycle_jitter) - 3 * p.gap_sd_frac * c))) + 1
        gaps = own[:, None] + rng.normal(0.0, p.gap_sd_frac * c, (n, k_max))
        gaps[:, 0] = rng.random(n) * own  # first purchase somewhere within the first cycle
        t = people.active_from[buyers][:, None] + np.cumsum(np.maximum(gaps, 1.0), axis=1)
        ok = t < people.active_until[buyers][:, None]
        rows, _ = np.nonzero(ok)
        u = buyers[rows]
        day = t[ok]
        m = len(u)
        pool = cat.pool_of(leaf.path)
        fav = _draw_items(cat, np.full(n, pool), rng)
        item = np.where(rng.random(m) < p.p_favourite, fav[rows], _draw_items(cat, np.full(m, pool), rng))
        start = _session_starts(day, rng, people.active_from[u], people.active_until[u])
        qty = np.where(rng.random(m) < 0.7, 1, 2)
        view = rng.random(m) < p.p_rebuy_view
        lines.add(u, start, np.arange(m), item, -1, qty, np.zeros(m), view, True, False, True)


def _projects(
    lines: _Lines,
    cat: _Catalog,
    people: _Customers,
    users: np.ndarray,
    dw: _DayWeights,
    p: ShopParams,
    rng: np.random.Generator,
) -> None:
    """Painting projects: one order holding paint (1-3 cans) and usually brushes and tape."""
    a, b = people.active_from[users], people.active_until[users]
    n_proj = rng.poisson(p.projects_per_day * 5.0 * people.home_pref[users] * dw.mass(a, b))
    pu = np.repeat(users, n_proj)
    n = len(pu)
    if n == 0:
        return
    a, b = people.active_from[pu], people.active_until[pu]
    start = _session_starts(dw.sample(a, b, rng), rng, a, b)
    sess, items, qty = [], [], []
    for leaf_path, prob in PROJECT_BASKET.items():
        has = np.flatnonzero(rng.random(n) < prob)
        sess.append(has)
        items.append(_draw_items(cat, np.full(len(has), cat.pool_of(leaf_path)), rng))
        qty.append(
            rng.integers(1, 4, len(has))
            if leaf_path == "home/diy/paint"
            else np.ones(len(has), dtype=np.int64)
        )
    s, it, q = np.concatenate(sess), np.concatenate(items), np.concatenate(qty)
    order = np.argsort(s, kind="stable")
    s, it, q = s[order], it[order], q[order]
    lines.add(pu, start, s, it, -1, q, _offsets(s, rng, 50.0), True, True, False, True)


def _chunk_events(
    cat: _Catalog,
    people: _Customers,
    users: np.ndarray,
    dw: _DayWeights,
    p: ShopParams,
    rng: np.random.Generator,
    days: int,
) -> dict[str, np.ndarray]:
    """All events of the customers `users` as column arrays (seconds since window start), sorted by
    (user, time). Session and order columns are chunk-local numbers (-1: none)."""
    lines = _Lines()
    _browse(lines, cat, people, users, dw, p, rng)
    _durables(lines, cat, people, users, dw, p, days, rng)
    _consumables(lines, cat, people, users, p, rng)
    _projects(lines, cat, people, users, dw, p, rng)
    if lines.n_sessions == 0:
        return {}
    s_user, s_start = lines.cat("s_user").astype(np.int64), lines.cat("s_start")
    session = lines.cat("session").astype(np.int64)
    item, size, qty = lines.cat("item").astype(np.int64), lines.cat("size").astype(np.int8), lines.cat("qty")
    offset = lines.cat("offset")
    view, cart = lines.cat("view").astype(bool), lines.cat("cart").astype(bool)
    removed, buy = lines.cat("removed").astype(bool), lines.cat("buy").astype(bool)

    t_line = s_start[session] + offset
    # an item never appears before it was created: move such lines to the pool's first (old) item
    early = t_line < cat.created_day[item] * 86_400.0
    item[early] = cat.off[cat.pool[item[early]]]
    # one cart line per (session, item), the last one: two carted views of the same item (or two
    # items moved to the same old item above) must not list an item twice in an order
    c_idx = np.flatnonzero(cart)
    srt = c_idx[np.lexsort((c_idx, item[c_idx], session[c_idx]))]
    earlier = srt[:-1][(session[srt[:-1]] == session[srt[1:]]) & (item[srt[:-1]] == item[srt[1:]])]
    cart[earlier] = removed[earlier] = buy[earlier] = False
    t_cart = t_line + 10.0 + rng.exponential(20.0, len(item))
    t_remove = t_cart + 20.0 + rng.exponential(60.0, len(item))
    # checkout comes after the session's last view, cart and removal
    last = np.where(cart, np.where(removed, t_remove, t_cart), t_line)
    s_end = np.full(len(s_user), -np.inf)
    np.maximum.at(s_end, session, last)
    t_buy = s_end[session] + 30.0 + rng.exponential(60.0, len(item))
    on_sale = rng.random(len(item)) < p.p_sale

    parts = [
        (view, t_line, _VIEW),
        (cart, t_cart, _CART),
        (removed & cart, t_remove, _REMOVE),
        (buy & cart, t_buy, _BUY),
    ]
    idx = np.concatenate([np.flatnonzero(m) for m, _, _ in parts])
    ts = np.concatenate([t[m] for m, t, _ in parts])
    etype = np.concatenate([np.full(int(m.sum()), code, dtype=np.int8) for m, _, code in parts])
    keep = ts < days * 86_400.0  # sessions late on the last day may run past `end`
    idx, ts, etype = idx[keep], ts[keep], etype[keep]
    user = s_user[session[idx]]
    order = np.lexsort((etype, ts, user))
    idx, ts, etype, user = idx[order], ts[order], etype[order], user[order]
    ev_session = session[idx]
    # number sessions and orders in (user, time) order so ids read naturally
    _, first = np.unique(ev_session, return_index=True)
    s_rank = np.full(len(s_user), -1, dtype=np.int64)
    s_rank[ev_session[np.sort(first)]] = np.arange(len(first))
    bought_sessions = ev_session[etype == _BUY]
    _, bfirst = np.unique(bought_sessions, return_index=True)
    o_rank = np.full(len(s_user), -1, dtype=np.int64)
    o_rank[bought_sessions[np.sort(bfirst)]] = np.arange(len(bfirst))
    price = cat.price[item[idx]]
    is_buy = etype == _BUY
    price = np.where(is_buy & on_sale[idx], np.round(price * (1 - p.sale_discount), 2), price)
    return {
        "user": user,
        "item": item[idx],
        "etype": etype,
        "ts": ts,
        "qty": np.where(is_buy | (etype == _CART) | (etype == _REMOVE), qty[idx], 1),
        "price": price,
        "order": np.where(is_buy, o_rank[ev_session], -1),
        "session": s_rank[ev_session],
        "size": size[idx],
        "n_sessions": np.int64(len(first)),
        "n_orders": np.int64(len(bfirst)),
    }


EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("quantity", pa.int64()),
        ("price", pa.float64()),
        ("order_id", pa.string()),
        ("session_id", pa.string()),
        ("size", pa.string()),
        ("device", pa.string()),
        ("city", pa.string()),
        ("weather", pa.string()),
    ]
)


def _session_context(
    ev: dict[str, np.ndarray], cat: _Catalog, people: _Customers, p: ShopParams, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per event: the session's device and weather (codes into p.device_shares / weather_shares)
    and the customer's city (code into CITIES, -1 none). A session in `p.rain_leaf` (by its first
    event's item) is rainy with `p.p_rain_leaf`; every other one with the weather shares."""
    session = ev["session"]
    n_s = int(ev["n_sessions"])
    _, first = np.unique(session, return_index=True)
    s_leaf = np.full(n_s, -1, dtype=np.int64)
    s_leaf[session[first]] = cat.leaf[ev["item"][first]]
    dev_p = np.array([w for _, w in p.device_shares], dtype=np.float64)
    device = rng.choice(len(dev_p), size=n_s, p=dev_p / dev_p.sum())
    w_names = [w for w, _ in p.weather_shares]
    w_p = np.array([w for _, w in p.weather_shares], dtype=np.float64)
    w_p /= w_p.sum()
    rain = w_names.index("rain")
    dry = np.delete(np.arange(len(w_p)), rain)
    weather = rng.choice(len(w_p), size=n_s, p=w_p)
    in_leaf = np.flatnonzero(s_leaf == _LEAF_INDEX[p.rain_leaf])
    u = rng.random(len(in_leaf))
    other = dry[rng.choice(len(dry), size=len(in_leaf), p=w_p[dry] / w_p[dry].sum())] if len(dry) else rain
    weather[in_leaf] = np.where(u < p.p_rain_leaf, rain, other)
    return {
        "device": device[session],
        "weather": weather[session],
        "city": people.city[ev["user"]].astype(np.int64),
    }


def _user_ids(idx: np.ndarray, n_customers: int) -> pa.Array:
    width = max(7, len(str(n_customers)))
    return pc.binary_join_element_wise(
        "u", pc.utf8_lpad(pc.cast(pa.array(idx), pa.string()), width=width, padding="0"), ""
    )


def _numbered(prefix: str, num: np.ndarray) -> pa.Array:
    """`prefix` + number as strings; -1 becomes null."""
    arr = pa.array(num, mask=num < 0)
    return pc.binary_join_element_wise(prefix, pc.cast(arr, pa.string()), "")


def _write_events(
    path: Path,
    cat: _Catalog,
    people: _Customers,
    dw: _DayWeights,
    p: ShopParams,
    ss: np.random.SeedSequence,
    start_us: int,
    end_us: int,
    days: int,
    progress: bool,
) -> int:
    """Generate events chunk by chunk of customers and append each chunk to one Parquet file."""
    n_chunks = max(1, math.ceil(people.n / CHUNK_CUSTOMERS))
    size_names = pa.array(list(SIZES))
    etype_names = pa.array(list(EVENT_TYPES))
    device_names = pa.array([d for d, _ in p.device_shares])
    weather_names = pa.array([w for w, _ in p.weather_shares])
    city_names = pa.array([c for c, _ in CITIES])
    total, session_base, order_base = 0, 0, 0
    bar = tqdm(total=people.n, desc="synthetic shop", unit="customer", disable=not progress)
    with pq.ParquetWriter(path, EVENTS_SCHEMA, compression="zstd") as writer:
        for k in range(n_chunks):
            rng = np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))
            users = np.arange(k * CHUNK_CUSTOMERS, min((k + 1) * CHUNK_CUSTOMERS, people.n), dtype=np.int64)
            ev = _chunk_events(cat, people, users, dw, p, rng, days)
            bar.update(len(users))
            if not ev:
                continue
            ctx_rng = np.random.default_rng(
                np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k, _CONTEXT_STREAM))
            )
            ctx = _session_context(ev, cat, people, p, ctx_rng)
            ts_us = start_us + np.round(ev["ts"] * 1_000_000).astype(np.int64)
            order = ev["order"] + np.where(ev["order"] >= 0, order_base, 0)
            session = ev["session"] + session_base
            lo = int(users[0])
            table = pa.table(
                {
                    "user_id": pc.take(_user_ids(users, people.n), pa.array(ev["user"] - lo)),
                    "item_id": pc.take(cat.item_ids, pa.array(ev["item"])),
                    "event_type": pc.take(etype_names, pa.array(ev["etype"])),
                    "timestamp": pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
                    "quantity": pa.array(ev["qty"].astype(np.int64)),
                    "price": pa.array(ev["price"].astype(np.float64)),
                    "order_id": _numbered("o", order),
                    "session_id": _numbered("s", session),
                    "size": pc.take(size_names, pa.array(ev["size"].astype(np.int64), mask=ev["size"] < 0)),
                    "device": pc.take(device_names, pa.array(ctx["device"])),
                    "city": pc.take(city_names, pa.array(ctx["city"], mask=ctx["city"] < 0)),
                    "weather": pc.take(weather_names, pa.array(ctx["weather"])),
                },
                schema=EVENTS_SCHEMA,
            )
            writer.write_table(table, row_group_size=1_000_000)
            total += table.num_rows
            session_base += int(ev["n_sessions"])
            order_base += int(ev["n_orders"])
            if ts_us.max() >= end_us:  # an invariant of _chunk_events; a bug if it ever fires
                raise RuntimeError("synthetic event at or after `end`")
    bar.close()
    return total


# ----------------------------------------------------------------------------------------------
# The small tables and the truth
# ----------------------------------------------------------------------------------------------


def _to_ts(start_us: int, day: np.ndarray) -> pa.Array:
    return pa.array(
        start_us + np.round(day * _US_PER_DAY).astype(np.int64), type=pa.timestamp("us", tz="UTC")
    )


def _write_catalog(path: Path, cat: _Catalog, start_us: int, rng: np.random.Generator) -> int:
    n = len(cat.leaf)
    titles, brands, categories, genders = [], [], [], []
    gender_word = {0: "Women's ", 1: "Men's ", 2: "Unisex ", -1: ""}
    b_draw = rng.random(n)
    a_draw = rng.integers(0, len(ADJECTIVES), n)
    for i in range(n):
        leaf = LEAVES[cat.leaf[i]]
        options = BRANDS[leaf.department]
        brand = options[int(b_draw[i] * len(options))]
        g = int(cat.gender[i])
        brands.append(brand)
        categories.append(leaf.path)
        genders.append(GENDERS[g] if g >= 0 else None)
        titles.append(f"{brand} {ADJECTIVES[a_draw[i]]} {gender_word[g]}{leaf.noun} {i % 97 + 1}")
    table = pa.table(
        {
            "item_id": cat.item_ids,
            "title": pa.array(titles, pa.string()),
            "category": pa.array(categories, pa.string()),
            "brand": pa.array(brands, pa.string()),
            "price": pa.array(cat.price, pa.float64()),
            "gender": pa.array(genders, pa.string()),
            "created_at": _to_ts(start_us, cat.created_day),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return n


def _write_stock(path: Path, cat: _Catalog, p: ShopParams, rng: np.random.Generator) -> int:
    """Current stock: one row per (fashion item, size) and per unsized item; some at quantity 0."""
    sized = np.array([LEAVES[i].sized for i in cat.leaf])
    s_items = np.flatnonzero(sized)
    u_items = np.flatnonzero(~sized)
    s_item = np.repeat(s_items, len(SIZES))
    s_size = np.tile(np.arange(len(SIZES)), len(s_items))
    s_qty = rng.integers(1, 60, len(s_item))
    s_qty[rng.random(len(s_item)) < p.share_out_of_stock] = 0
    if len(s_qty) and not (s_qty == 0).any():
        s_qty[0] = 0  # a tiny catalogue still shows the pattern
    u_qty = rng.integers(1, 200, len(u_items))
    u_qty[rng.random(len(u_items)) < p.share_out_of_stock_unsized] = 0
    item = np.concatenate([s_item, u_items])
    order = np.argsort(item, kind="stable")
    size = pa.concat_arrays(
        [pc.take(pa.array(list(SIZES)), pa.array(s_size)), pa.array([""] * len(u_items), pa.string())]
    )
    table = pa.table(
        {
            "item_id": pc.take(cat.item_ids, pa.array(item[order])),
            "size": pc.take(size, pa.array(order)),
            "quantity": pa.array(np.concatenate([s_qty, u_qty])[order].astype(np.int64)),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def _write_customers(path: Path, people: _Customers, start_us: int) -> int:
    n = people.n
    city_names = pa.array([c for c, _ in CITIES])
    table = pa.table(
        {
            "user_id": _user_ids(np.arange(n), n),
            "birth_year": pa.array(people.birth_year, mask=people.birth_year < 0),
            "gender": pc.take(
                pa.array(["women", "men"]), pa.array(people.gender.astype(np.int64), mask=people.gender < 0)
            ),
            "city": pc.take(city_names, pa.array(people.city.astype(np.int64), mask=people.city < 0)),
            "signup_date": _to_ts(start_us, people.signup_day),
            "consent_personalisation": pa.array(people.consent_personalisation),
            "consent_email": pa.array(people.consent_email),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return n


def _write_truth(
    path: Path,
    cat: _Catalog,
    people: _Customers,
    p: ShopParams,
    start_us: int,
    days: int,
    seed: int,
    end: date,
) -> None:
    """The planted structure, for tests: see docs/synthetic.md, "Ground truth"."""
    n = people.n
    uid = _user_ids(np.arange(n), n)
    g = len(_GARMENTS)
    pq.write_table(
        pa.table(
            {
                "user_id": pc.take(uid, pa.array(np.repeat(np.arange(n), g))),
                "garment": pa.array(np.tile([LEAVES[i].path for i in _GARMENTS], n), pa.string()),
                "size": pc.take(pa.array(list(SIZES)), pa.array(people.sizes.reshape(-1).astype(np.int64))),
            }
        ),
        path / "personal_sizes.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": uid,
                "affinity": pc.take(
                    pa.array(["women", "men", "any"]), pa.array(people.affinity.astype(np.int64))
                ),
            }
        ),
        path / "gender_affinity.parquet",
    )
    d_ids, a_ids, d_cat, a_cat = [], [], [], []
    for durable, accessories in DURABLE_ACCESSORIES.items():
        d_items = np.flatnonzero(cat.leaf == _LEAF_INDEX[durable])
        for acc in accessories:
            d_ids.append(d_items)
            a_ids.append(cat.complement[acc])
            d_cat += [durable] * len(d_items)
            a_cat += [acc] * len(d_items)
    pq.write_table(
        pa.table(
            {
                "item_id": pc.take(cat.item_ids, pa.array(np.concatenate(d_ids))),
                "complement_id": pc.take(cat.item_ids, pa.array(np.concatenate(a_ids))),
                "category": pa.array(d_cat, pa.string()),
                "complement_category": pa.array(a_cat, pa.string()),
            }
        ),
        path / "complements.parquet",
    )
    cons = [leaf for leaf in LEAVES if leaf.kind == "consumable"]
    pq.write_table(
        pa.table(
            {
                "category": [leaf.path for leaf in cons],
                "cycle_days": pa.array([leaf.cycle_days for leaf in cons], pa.float64()),
            }
        ),
        path / "rebuy_cycles.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "category": [leaf.path for leaf in LEAVES],
                "kind": [leaf.kind for leaf in LEAVES],
                "rebuyable": [leaf.kind in ("consumable",) for leaf in LEAVES],
                "cycle_days": pa.array([leaf.cycle_days for leaf in LEAVES], pa.float64()),
            }
        ),
        path / "categories.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": uid,
                "affinity": pc.take(
                    pa.array(["women", "men", "any"]), pa.array(people.affinity.astype(np.int64))
                ),
                "active_from": _to_ts(start_us, people.active_from),
                "active_until": _to_ts(start_us, people.active_until),
                "new": pa.array(people.new),
                "lapsed": pa.array(people.lapsed),
                "vip": pa.array(people.vip),
                "cat_owner": pa.array(people.cat),
                "dog_owner": pa.array(people.dog),
            }
        ),
        path / "customers.parquet",
    )
    new_item = cat.created_day > 0
    pq.write_table(
        pa.table(
            {
                "item_id": cat.item_ids.filter(pa.array(new_item)),
                "created_at": _to_ts(start_us, cat.created_day[new_item]),
            }
        ),
        path / "new_items.parquet",
    )
    meta = {
        "seed": seed,
        "days": days,
        "end": end.isoformat(),
        "customers": n,
        "items": int(len(cat.leaf)),
        "params": p.to_dict(),
        "project_basket": PROJECT_BASKET,
        "durable_accessories": {k: list(v) for k, v in DURABLE_ACCESSORIES.items()},
    }
    (path / "params.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
