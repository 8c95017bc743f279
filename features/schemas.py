"""The canonical schemas of the four input tables (docs/workspace.md, "Validated tables").

Two views of the same contract live here:

* `TABLE_SPECS`: per table, the columns in canonical order with their *kind* (which validation rule
  applies: an id, a timestamp, a quantity, ...), whether the column must be present in the raw file,
  and its canonical Arrow type. `features.validate` turns the kinds into vectorised SQL rules, and
  writes `validated/<table>.parquet` with exactly `arrow_schema(table)`.
* `pandera_schema(table)`: a pandera `DataFrameSchema` of a validated table as pandas reads it back,
  so any stage (or a test) can assert the dtype and value contract with
  `pandera_schema("events").validate(df)`. Validation itself does not run pandera over every row
  (it streams Arrow blocks through vectorised SQL, see `features.validate`); pandera is kept for
  the contract on what comes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    import pandera.pandas as pa_schema

# Which rule validates and converts a column (see features.validate._column_sql).
Kind = Literal[
    "id",  # string, required non-empty (trimmed)
    "string",  # string, nullable (trimmed; "" -> null)
    "lower",  # string, nullable, lower-cased
    "event_type",  # string, required non-empty, lower-cased
    "timestamp",  # timestamp[us, UTC], required, never in the future
    "timestamp_nullable",  # timestamp[us, UTC], nullable
    "quantity",  # int64 >= 1, null/absent -> 1
    "stock_quantity",  # int64 >= 0, required
    "price",  # float64 >= 0, nullable
    "year",  # Int64, nullable, a plausible birth year
    "bool",  # boolean, nullable
    "gender",  # women/men/unisex or null
    "size",  # string, null -> "" (unsized)
]

GENDERS: tuple[str, ...] = ("women", "men", "unisex")
TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ColumnSpec:
    """One canonical column: `required` means the raw file must have it (else BuildError)."""

    name: str
    kind: Kind
    required: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.kind]


_ARROW_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "string": pa.string(),
    "lower": pa.string(),
    "event_type": pa.string(),
    "timestamp": TIMESTAMP,
    "timestamp_nullable": TIMESTAMP,
    "quantity": pa.int64(),
    "stock_quantity": pa.int64(),
    "price": pa.float64(),
    "year": pa.int64(),
    "bool": pa.bool_(),
    "gender": pa.string(),
    "size": pa.string(),
}


@dataclass(frozen=True)
class TableSpec:
    """A table's canonical columns; `unique` names the key whose repeats are quarantined."""

    name: str
    columns: tuple[ColumnSpec, ...]
    unique: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")


TABLE_SPECS: dict[str, TableSpec] = {
    "events": TableSpec(
        "events",
        (
            ColumnSpec("user_id", "id", required=True),
            ColumnSpec("item_id", "id", required=True),
            ColumnSpec("event_type", "event_type", required=True),
            ColumnSpec("timestamp", "timestamp", required=True),
            ColumnSpec("quantity", "quantity"),
            ColumnSpec("price", "price"),
            ColumnSpec("order_id", "string"),
            ColumnSpec("session_id", "string"),
            ColumnSpec("size", "string"),
            # the answer (`recommendation_id` of the response) this event came from: attribution
            ColumnSpec("recommendation_id", "string"),
            # the visit's context (optional): device (mobile, desktop, ...), city, weather; what
            # training.context learns per-category lifts from (docs/synthetic.md plants one)
            ColumnSpec("device", "lower"),
            ColumnSpec("city", "string"),
            ColumnSpec("weather", "lower"),
        ),
    ),
    "catalog": TableSpec(
        "catalog",
        (
            ColumnSpec("item_id", "id", required=True),
            ColumnSpec("title", "string"),
            ColumnSpec("category", "string"),
            ColumnSpec("brand", "string"),
            ColumnSpec("price", "price"),
            ColumnSpec("gender", "gender"),
            ColumnSpec("created_at", "timestamp_nullable"),
            # false: the item leaves every answer. Absent or null in a raw table = active; the
            # validated catalogue always holds true/false (features.validate).
            ColumnSpec("active", "bool"),
        ),
        unique=("item_id",),
    ),
    "stock": TableSpec(
        "stock",
        (
            ColumnSpec("item_id", "id", required=True),
            ColumnSpec("size", "size"),
            ColumnSpec("quantity", "stock_quantity", required=True),
        ),
        unique=("item_id", "size"),
    ),
    "customers": TableSpec(
        "customers",
        (
            ColumnSpec("user_id", "id", required=True),
            ColumnSpec("birth_year", "year"),
            ColumnSpec("gender", "lower"),
            ColumnSpec("city", "string"),
            ColumnSpec("signup_date", "timestamp_nullable"),
            ColumnSpec("consent_personalisation", "bool"),
            ColumnSpec("consent_email", "bool"),
        ),
        unique=("user_id",),
    ),
}


def arrow_schema(table: str) -> pa.Schema:
    """The exact Arrow schema of `validated/<table>.parquet`."""
    spec = TABLE_SPECS[table]
    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.kind not in _NOT_NULL) for c in spec.columns])


_NOT_NULL = {"id", "event_type", "timestamp", "quantity", "stock_quantity", "size"}


def _pandera_column(c: ColumnSpec) -> pa_schema.Column:
    # pandera is imported only here: with pyspark installed, importing pandera also imports
    # pyspark.pandas (which patches pandas and warns about pandas 3) into every process.
    import pandera.pandas as pa_schema

    nullable = c.kind not in _NOT_NULL
    checks: list[pa_schema.Check] = []
    if c.kind in ("timestamp", "timestamp_nullable"):
        dtype: object = pd.DatetimeTZDtype("us", "UTC")
    elif c.kind in ("quantity", "stock_quantity"):
        dtype = "int64"
        checks.append(pa_schema.Check.ge(1 if c.kind == "quantity" else 0))
    elif c.kind == "price":
        dtype = "float64"
        checks.append(pa_schema.Check.ge(0))
    elif c.kind == "year":
        dtype = "Int64"
    elif c.kind == "bool":
        dtype = "boolean"
    else:
        # Strings are checked by value, not dtype: pandas 2 and 3 read Parquet strings back as
        # object or `str` depending on version and options, and both are fine for every stage.
        dtype = None
        checks.append(
            pa_schema.Check(
                lambda s: s.map(lambda v: isinstance(v, str) or pd.isna(v)),
                element_wise=False,
                error="not a string",
            )
        )
        if c.kind in ("id", "event_type"):
            checks.append(pa_schema.Check(lambda s: s.str.len() > 0, error="empty"))
        if c.kind == "event_type":
            checks.append(pa_schema.Check(lambda s: s == s.str.lower(), error="not lower-case"))
        if c.kind == "gender":
            checks.append(pa_schema.Check.isin(list(GENDERS)))
    # pandas reads a nullable int64/bool Parquet column as float64/object unless asked otherwise,
    # so those two are coerced to their nullable pandas dtypes rather than rejected.
    coerce = c.kind in ("year", "bool")
    return pa_schema.Column(dtype, checks=checks, nullable=nullable, required=True, coerce=coerce)


def pandera_schema(table: str) -> pa_schema.DataFrameSchema:
    """The contract of a validated table as a pandas frame (`pd.read_parquet(ws.validated(table))`):
    canonical columns in order, no others, dtypes and value ranges of docs/workspace.md, and unique
    keys for catalog/customers/stock."""
    import pandera.pandas as pa_schema

    spec = TABLE_SPECS[table]
    return pa_schema.DataFrameSchema(
        {c.name: _pandera_column(c) for c in spec.columns},
        strict=True,
        ordered=True,
        unique=list(spec.unique) or None,
    )
