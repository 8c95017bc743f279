"""The `shoprec` entry point: one Typer app composed of each stage's thin commands.

Commands import their stage lazily, so `shoprec data generate` never pays for importing BentoML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.cli import data_app, features_app
from serving.ab_cli import ab_app
from training.cli import register as register_training

app = typer.Typer(
    help="shoprec: recommender training and serving for web shops (features -> training -> serving).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
register_training(app)
app.add_typer(ab_app, name="ab")


# -- serving commands: `serve`, `recommend`, `forget`, `demo-curls` (heavy imports inside each) ----


@app.command("recommend")
def recommend_cmd(
    data: Annotated[Path, typer.Option(help="Workspace: its shop state, registry and impression log.")],
    users: Annotated[
        Path, typer.Option(help="CSV/Parquet with a user_id column, or a text file, one id per line.")
    ],
    k: Annotated[int, typer.Option(min=1, max=1000, help="Items per customer.")],
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    model_uri: Annotated[
        str | None,
        typer.Option(help="One MLflow model URI or bundle directory instead of the champion/challenger."),
    ] = None,
    exclude_seen: Annotated[
        str, typer.Option(help="Past items: learned (the re-buy policy, as on the site), always or never.")
    ] = "learned",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """The e-mail feed: the service's engine and rules over today's shop state, for every customer
    in USERS. Columns: user_id, rank, item_id, score, reason, variant, model_version,
    recommendation_id (every block is in the impression log, for attribution). Customers without
    consent, and unknown ones, get the non-personal block. SHOPREC_AB_SHARES splits customers
    between champion, challenger and control exactly as the service does."""
    import json

    from features.workspace import Workspace
    from serving.feed import recommend

    ws = Workspace.at(data)
    if not ws.root.is_dir():
        typer.echo(f"error: workspace {ws.root} does not exist", err=True)
        raise typer.Exit(2)
    try:
        summary = recommend(
            ws, users, k, out, model_uri=model_uri, exclude_seen=exclude_seen, progress=progress
        )
    except (ValueError, LookupError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary, default=str))


_CAMPAIGN_HELP = """An e-mail campaign feed for the customers a trigger selects today (NAME):

\b
  abandoned-cart  a cart (add_to_cart) left without a purchase for `hours` (24; at most
                  `max_cart_age_hours`, 72; not removed; nothing of its category bought since).
                  Price doubt (the item costs more than `spend_ratio` x the median price the
                  customer pays per item, or they came back to it `repeat_views` times in
                  `doubt_days` and it costs more than its category's median): cheaper
                  alternatives of the same category. Otherwise product doubt: the category's
                  most popular. The reason says which.
  reactivation    customers in the `segments` (lapsed,at_risk; `shoprec segments`, with
                  `cycle_days`): their personal block.
  replenishment   re-buyable items due within `due_days` (7) or overdue by at most
                  `overdue_days` (7), from the learned re-buy windows at `due_fraction` (1 = the
                  median interval): the due items first, then the personal block.
  post-purchase   a durable bought `after_days` (14) ago (within `after_window_days`, 1): what
                  is bought together with it, never another item of its category.

Only customers with consent_email (abandoned-cart, replenishment and post-purchase also need
consent_personalisation); every row passes the engine's rules (stock in size, gender, the re-buy
policy, durables); an item mailed to a customer is not mailed again within `cap_days` (7; from the
impression log, which the feed writes too). Columns: those of `shoprec recommend` plus campaign,
trigger (why the customer is in it) and vip (for a VIP template). A funnel table goes to stderr,
one JSON line last to stdout."""


@app.command("campaign", help=_CAMPAIGN_HELP)
def campaign_cmd(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME", help="abandoned-cart, reactivation, replenishment or post-purchase."),
    ],
    data: Annotated[
        Path, typer.Option(help="Workspace: its events, shop state, registry and impression log.")
    ],
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    k: Annotated[int, typer.Option(min=1, max=1000, help="Items per customer (at most).")] = 10,
    config: Annotated[
        Path | None,
        typer.Option(help="Thresholds from a TOML or JSON file (serving.campaigns.CampaignConfig)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one threshold, key=value (repeatable), e.g. hours=48."),
    ] = None,
    now: Annotated[
        str | None,
        typer.Option(help="The moment the triggers look from (ISO time, UTC); default: the newest event."),
    ] = None,
    model_uri: Annotated[
        str | None, typer.Option(help="One MLflow model URI or bundle directory instead of the champion.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    import json

    import pandas as pd

    from features.console import quiet_exit, show
    from features.workspace import Workspace
    from serving.campaigns import CampaignConfig, report, run_campaign
    from training.train import parse_sets

    quiet_exit()
    ws = Workspace.at(data)
    if not ws.root.is_dir():
        typer.echo(f"error: workspace {ws.root} does not exist", err=True)
        raise typer.Exit(2)
    try:
        cfg = CampaignConfig.from_file(config) if config is not None else CampaignConfig()
        if set_:
            cfg = CampaignConfig.from_dict({**cfg.to_dict(), **parse_sets(set_)})
        when = None
        if now is not None:
            stamp = pd.Timestamp(now)
            when = (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp()
        result, summary = run_campaign(
            ws, name, out, k=k, config=cfg, now=when, model_uri=model_uri, progress=progress
        )
    except (ValueError, LookupError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    show(*report(result, summary))
    typer.echo(json.dumps(summary, default=str))


def _serve_env(
    data: Path | None, bundle: Path | None, poll_seconds: float | None, access_log: bool
) -> dict[str, str]:
    """The environment `bentoml serve` passes to the service workers (serving.loader reads it)."""
    import os

    env = dict(os.environ)
    if data is not None:
        env["SHOPREC_DATA"] = str(data.expanduser().resolve())
    if bundle is not None:
        env["SHOPREC_BUNDLE"] = str(bundle.expanduser().resolve())
    if poll_seconds is not None:
        env["SHOPREC_POLL_SECONDS"] = str(poll_seconds)
    env["SHOPREC_ACCESS_LOG"] = "1" if access_log else "0"
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage reporting from a shop's server
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")  # one request = one core's worth of BLAS; workers scale out
    return env


@app.command("serve")
def serve_cmd(
    data: Annotated[
        Path | None, typer.Option(help="Workspace; its MLflow registry's champion is served.")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    host: Annotated[
        str, typer.Option(help="Interface to bind (0.0.0.0 to accept remote clients).")
    ] = "127.0.0.1",
    bundle: Annotated[
        Path | None, typer.Option(help="Serve this local bundle directory instead of the registry.")
    ] = None,
    poll_seconds: Annotated[
        float | None, typer.Option(help="How often to look for a newly promoted champion (0 = never).")
    ] = None,
    access_log: Annotated[
        bool, typer.Option(help="BentoML access log (never contains customer ids).")
    ] = True,
) -> None:
    """Serve the champion over HTTP with BentoML (see CONTRACT.md "HTTP API").

    Configuration also comes from the environment: MLFLOW_TRACKING_URI, REDIS_URL,
    SHOPREC_API_KEY (enables the write endpoints and the /ui pages), SHOPREC_AB_SHARES,
    SHOPREC_WORKERS.

    SIGTERM or Ctrl-C stops the whole service gracefully: requests in flight are answered, the
    service's shutdown hooks run, and no server process is left; a second Ctrl-C stops it at once.
    """
    import sys

    from serving import supervise
    from serving.loader import ConfigError, ServeConfig, make_source

    if data is None and bundle is None:
        typer.echo("error: give --data DIR (a workspace with a promoted champion) or --bundle DIR", err=True)
        raise typer.Exit(2)
    env = _serve_env(data, bundle, poll_seconds, access_log)
    # Fail here, in one readable line, rather than in a worker's traceback.
    try:
        source = make_source(ServeConfig.from_env(env))
        if source.version("champion") is None:
            raise ConfigError(
                f"no `champion` in the registry of {data}: run `shoprec promote --data {data}` first"
            )
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    bentoml = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml), "serve", "serving.service:ShopRec", "--host", host, "--port", str(port)]
    cmd += ["--working-dir", str(Path(__file__).resolve().parent.parent)]
    typer.echo(
        f"serving on http://{host}:{port} (OpenAPI at /docs.json; the inspection pages at "
        f"http://{host}:{port}/ui); Ctrl-C stops",
        err=True,
    )
    # SIGTERM/SIGINT stop the whole server gracefully (in-flight requests answered, on_shutdown
    # hooks run), and no BentoML process outlives this one (serving.supervise).
    raise typer.Exit(supervise.run(cmd, env))


@app.command("forget")
def forget_cmd(
    data: Annotated[Path, typer.Option(help="Workspace holding the customer's data.")],
    user: Annotated[str, typer.Option(help="The customer id to erase.")],
) -> None:
    """Erase one customer everywhere: raw tables, the change log, validated and feature tables,
    every model bundle in the workspace's MLflow store (registered versions included), and (with
    REDIS_URL) the online store. A running service learns of it from the workspace's forget log.

    Models trained afterwards never see the customer. Prints one JSON summary line (no id in it).
    """
    import json
    import os

    from features.workspace import Workspace
    from training.forget import forget_customer

    ws = Workspace.at(data)
    if not ws.root.is_dir():
        typer.echo(f"error: workspace {ws.root} does not exist", err=True)
        raise typer.Exit(2)
    if not user.strip():
        typer.echo("error: --user must be a non-empty customer id", err=True)
        raise typer.Exit(2)
    summary = forget_customer(ws, user)
    from serving.ab import forget_impressions

    salt = os.environ.get("SHOPREC_AB_SALT") or "shoprec"
    summary["impressions"] = forget_impressions(ws.serving_dir / "impressions.jsonl", user, salt)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        from serving.store import make_store

        store = make_store(redis_url, prefix=os.environ.get("SHOPREC_REDIS_PREFIX") or "shoprec")
        summary["online_store"] = "erased" if store.forget(user) else "unreachable"
    else:
        summary["online_store"] = "a running service on this workspace stops at once (its forget log)"
    typer.echo(json.dumps(summary, default=str))


@app.command("demo-curls")
def demo_curls_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port the service listens on.")] = 3000,
    host: Annotated[str, typer.Option(help="Host the service listens on.")] = "127.0.0.1",
    data: Annotated[Path | None, typer.Option(help="Workspace to take real user and item ids from.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="The key the service runs with (SHOPREC_API_KEY), to print with the pages."),
    ] = None,
) -> None:
    """Print example curl calls for every endpoint (real ids from the workspace with --data), and
    last the address of the inspection pages (/ui)."""
    import json
    import shlex
    from urllib.parse import quote

    from serving.schemas import example_requests

    user_id, item_id, other_item_id, category = _demo_ids(data)
    base = f"http://{host}:{port}"
    lines = ["# shoprec HTTP API examples (OpenAPI: " + base + "/docs.json)"]
    if api_key:
        lines.append(f"export SHOPREC_API_KEY={shlex.quote(api_key)}")
    for route, body in example_requests(user_id, item_id, other_item_id, category).items():
        from serving.app import WRITE_PATHS

        auth = ' -H "Authorization: Bearer $SHOPREC_API_KEY"' if route in WRITE_PATHS else ""
        payload = shlex.quote(json.dumps(body))
        lines.append(f"curl -s -X POST {base}{route} -H 'Content-Type: application/json'{auth} -d {payload}")
    lines.append(f"curl -s {base}/readyz")
    lines.append("")
    lines.append(f"# The inspection pages: open {base}/ui in a browser and enter the API key once")
    lines.append(
        f"#   API key:      {api_key}"
        if api_key
        else "#   (start the service with SHOPREC_API_KEY set to open them)"
    )
    lines.append(f"#   a customer:   {base}/ui/customers/{quote(user_id, safe='')}")
    lines.append(f"#   an item:      {base}/ui/items/{quote(item_id, safe='')}")
    lines.append(f"#   the models:   {base}/ui/models    the A/B report: {base}/ui/ab")
    lines.append(f"{base}/ui")
    typer.echo("\n".join(lines))


def _demo_ids(data: Path | None) -> tuple[str, str, str, str | None]:
    """(a customer with purchases, a popular item, another item, that item's category) from the
    workspace's features, or placeholders when there is no workspace."""
    placeholders = ("u1", "i1", "i2", None)
    if data is None:
        return placeholders
    import pandas as pd

    from features.workspace import Workspace

    ws = Workspace.at(data)
    try:
        profiles = pd.read_parquet(ws.feature("profiles"), columns=["user_id", "n_purchases"])
        items = pd.read_parquet(ws.feature("items"))
        stats = pd.read_parquet(ws.feature("item_stats"), columns=["item_idx", "n_users"])
    except (OSError, ValueError, KeyError):
        return placeholders
    if profiles.empty or len(items) < 2:
        return placeholders
    user_id = str(profiles.sort_values("n_purchases", ascending=False)["user_id"].iloc[0])
    top = items.merge(stats, on="item_idx").sort_values("n_users", ascending=False)
    first, second = top.iloc[0], top.iloc[1]
    category = first.get("category") if "category" in top.columns else None
    return (
        user_id,
        str(first["item_id"]),
        str(second["item_id"]),
        (str(category) if pd.notna(category) else None),
    )


if __name__ == "__main__":
    app()
