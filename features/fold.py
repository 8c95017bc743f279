"""Folding the change log's validated rows into a validated table (features.validate calls it).

Events are appended. Catalog, stock and customers rows *upsert* the table by key (`item_id`;
`item_id` + `size`; `user_id`): a row with a new key adds it, a row with a known key updates it,
column by column, the last non-null value winning (a null in an update means "not given", so a
partial update such as `{"item_id": "i1", "active": false}` keeps the item's title and price).
Rows keep the table's order: the raw table's rows first, then new keys in the order they first
appeared in the log.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from features.schemas import TABLE_SPECS, arrow_schema

_SEQ = "__seq"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upsert(base: pa.Table | None, updates: pa.Table, table: str) -> pa.Table:
    """`base` (validated rows with unique keys, or None) with `updates` (validated change-log rows
    in log order, keys repeating freely) applied; returns rows with `arrow_schema(table)`.

    Both inputs carry the table's canonical columns. For each key and column the value is the last
    non-null one in (base, then updates in order); a key's position is its first appearance."""
    spec = TABLE_SPECS[table]
    if not spec.unique:
        raise ValueError(f"{table} has no key: its change-log rows are appended, not upserted")
    schema = arrow_schema(table)
    base = schema.empty_table() if base is None else base.select(schema.names).cast(schema)
    updates = updates.select(schema.names).cast(schema)
    n = base.num_rows
    # One sequence over both: base rows -n..-1 (before every update), updates 0.. in log order.
    both = pa.concat_tables(
        [
            base.append_column(_SEQ, pa.array(np.arange(-n, 0, dtype=np.int64))),
            updates.append_column(_SEQ, pa.array(np.arange(updates.num_rows, dtype=np.int64))),
        ]
    )
    keys = list(spec.unique)
    values = [c.name for c in spec.columns if c.name not in keys]
    picks = ", ".join(
        f"arg_max({_q(c)}, {_SEQ}) FILTER (WHERE {_q(c)} IS NOT NULL) AS {_q(c)}" for c in values
    )
    key_list = ", ".join(_q(k) for k in keys)
    sql = f"SELECT {key_list}, {picks}, min({_SEQ}) AS __first FROM rows GROUP BY {key_list} ORDER BY __first"
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("rows", both)
        out = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return out.select(schema.names).cast(schema)
