"""DuckDB SQL -> Spark SQL: SQLGlot's Spark dialect plus what it does not translate (or translates
wrongly) in the feature definitions.

The definitions (features.transforms, features.split, features.validate) are written once, in
DuckDB's dialect, and run as written on DuckDB. For Spark, `to_spark(sql)` parses them with SQLGlot
and generates Spark SQL with `ShoprecSpark`, SQLGlot's Spark dialect with these fixes:

- `list(x ORDER BY a, b)`: SQLGlot drops the ORDER BY (COLLECT_LIST has no order), which would
  silently scramble every sequence. Here: the values are collected as structs (a, b, x), sorted, and
  projected back to x. `list(DISTINCT x ORDER BY x)` becomes ARRAY_SORT(COLLECT_SET(x)).
- `quantile_disc(x, q)` -> `PERCENTILE_DISC(q) WITHIN GROUP (ORDER BY x)` (both: the first value
  whose cumulative share reaches q).
- `list[a:b]` (1-based, inclusive) -> SLICE; `list_where(l, mask)` -> FILTER with an index lambda;
  `epoch_us` -> UNIX_MICROS; `isfinite`/`isinf`/`trunc`/`to_timestamp` spelled out (SQLGlot's
  versions do not exist in Spark, overflow in ANSI mode, or drop the fraction of a second).
- Decimal literals (`86400.0`) are DOUBLE literals (`86400.0D`): DuckDB computes with doubles where
  Spark would otherwise switch to DECIMAL arithmetic and round differently.

Functions that exist in both engines with *different* results (`hash`) are refused, as is any
DuckDB-only function without a translation: a definition that cannot run the same on Spark fails
loudly (`DialectError`) instead of giving other numbers.
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.dialects.spark import Spark

# DuckDB functions that must not reach Spark untranslated: they do not exist there, or (hash) give
# different values under the same name.
_REFUSED = {
    "hash": "hash() differs between DuckDB and Spark; order by md5(...) of the key instead",
    "list_filter": None,
    "list_transform": None,
    "list_contains": None,
    "list_zip": None,
    "epoch": None,
    "epoch_ms": None,
    "epoch_ns": None,
    "quantile_cont": None,
    "md5_number": None,
    "list_sort": None,
    "len": "use array_length(list)",
}


class DialectError(ValueError):
    """A definition uses SQL that has no faithful Spark translation."""


def _array_agg(self: Spark.Generator, e: exp.ArrayAgg) -> str:
    arg = e.this
    if isinstance(arg, exp.Order):
        value, keys = arg.this, arg.expressions
        if any(k.args.get("desc") for k in keys):
            raise DialectError("list(... ORDER BY ... DESC) has no Spark translation here; sort ascending")
        if isinstance(value, exp.Distinct):
            (v,) = value.expressions
            if len(keys) == 1 and keys[0].this == v:
                return f"ARRAY_SORT(COLLECT_SET({self.sql(v)}))"
            raise DialectError("list(DISTINCT x ORDER BY y) is only translated for y = x")
        fields = ", ".join(f"{self.sql(k.this)} AS k{i}" for i, k in enumerate(keys))
        return f"TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT({fields}, {self.sql(value)} AS v))), _s -> _s.v)"
    if isinstance(arg, exp.Distinct):
        return f"COLLECT_SET({self.sql(arg.expressions[0])})"
    return f"COLLECT_LIST({self.sql(arg)})"


def _percentile_disc(self: Spark.Generator, e: exp.PercentileDisc) -> str:
    return f"PERCENTILE_DISC({self.sql(e.expression)}) WITHIN GROUP (ORDER BY {self.sql(e.this)})"


def _bracket(self: Spark.Generator, e: exp.Bracket) -> str:
    (index,) = e.expressions
    if isinstance(index, exp.Slice):
        lo, hi = self.sql(index.this), self.sql(index.expression)
        return f"SLICE({self.sql(e.this)}, {lo}, ({hi}) - ({lo}) + 1)"
    return Spark.Generator.bracket_sql(self, e)


def _anonymous(self: Spark.Generator, e: exp.Anonymous) -> str:
    name = str(e.this).lower()
    args = [self.sql(a) for a in e.expressions]
    if name == "epoch_us":
        return f"UNIX_MICROS({args[0]})"
    if name == "list_where":
        return f"FILTER({args[0]}, (_x, _i) -> ({args[1]})[_i])"
    if name == "isfinite":
        return f"(NOT ISNAN({args[0]}) AND ABS({args[0]}) <> DOUBLE('Infinity'))"
    if name in _REFUSED:
        hint = _REFUSED[name]
        raise DialectError(f"{name}() has no faithful Spark translation" + (f": {hint}" if hint else ""))
    return Spark.Generator.anonymous_sql(self, e)


def _trunc(self: Spark.Generator, e: exp.Trunc) -> str:
    # trunc(double) without a scale: toward zero, with no cast to BIGINT (which overflows in ANSI mode).
    if e.args.get("decimals") is not None:
        raise DialectError("trunc(x, n) has no translation here")
    x = self.sql(e.this)
    return f"(({x}) - ({x}) % 1)"


def _unix_to_time(self: Spark.Generator, e: exp.UnixToTime) -> str:
    if e.args.get("scale") not in (None, exp.UnixToTime.SECONDS):
        raise DialectError("to_timestamp with a scale has no translation here")
    return f"TIMESTAMP_MICROS(CAST(ROUND(({self.sql(e.this)}) * 1000000D) AS BIGINT))"


class ShoprecSpark(Spark):
    """SQLGlot's Spark dialect with the translations the feature definitions need (module doc)."""

    class Generator(Spark.Generator):
        TRANSFORMS = {
            **Spark.Generator.TRANSFORMS,
            exp.ArrayAgg: _array_agg,
            exp.PercentileDisc: _percentile_disc,
            exp.Bracket: _bracket,
            exp.Anonymous: _anonymous,
            exp.IsInf: lambda self, e: f"(ABS({self.sql(e.this)}) = DOUBLE('Infinity'))",
            exp.Trunc: _trunc,
            exp.UnixToTime: _unix_to_time,
        }

        def literal_sql(self, expression: exp.Literal) -> str:
            text = super().literal_sql(expression)
            if not expression.is_string and "." in text and "e" not in text.lower():
                return f"{text}D"
            return text


def _refuse_hash(tree: exp.Expression) -> None:
    for node in tree.find_all(exp.Func):
        name = node.sql_name().lower() if not isinstance(node, exp.Anonymous) else str(node.this).lower()
        if name in ("hash", "murmur3_hash") or type(node).__name__ in ("Hash", "MD5Digest"):
            raise DialectError(_REFUSED["hash"])


@lru_cache(maxsize=1024)
def to_spark(sql: str) -> str:
    """The Spark SQL for one DuckDB statement (SELECT, or CREATE ... AS SELECT). Raises DialectError
    when the statement uses something that would not give the same answer on Spark."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise DialectError(f"cannot parse the definition as DuckDB SQL: {e}") from e
    _refuse_hash(tree)
    return tree.sql(dialect=ShoprecSpark, unsupported_level=sqlglot.ErrorLevel.RAISE)
