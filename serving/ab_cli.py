"""`shoprec ab report`: the thin command over serving.ab_report (registered in serving/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ab_app = typer.Typer(
    help="A/B experiments: the report of the impression log and the events.", no_args_is_help=True
)


@ab_app.command("report")
def report_cmd(
    data: Annotated[Path, typer.Option(help="Workspace: its impression log, events and change log.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Report JSON (default DIR/reports/ab_report.json); the plot goes beside it."),
    ] = None,
    window_hours: Annotated[
        float,
        typer.Option(
            min=0,
            help="A purchase without a recommendation id counts for a block that showed the item this many hours before.",
        ),
    ] = 24.0,
    shares: Annotated[
        str | None,
        typer.Option(
            help="The configured split for the sample-ratio check (default: SHOPREC_AB_SHARES, else champion=1)."
        ),
    ] = None,
    channel: Annotated[
        str,
        typer.Option(
            help="Which blocks count: all, site (the service's routes) or email (the e-mail feed and "
            "the campaign feeds). The report lists the blocks per channel either way."
        ),
    ] = "all",
) -> None:
    """Per variant: customers, impressions, clicks, purchases, revenue, click-through and conversion
    with 95% intervals, revenue per customer; the uplift of each variant against control with its
    p-value; a sample-ratio-mismatch check against the configured shares. Clicks and purchases are
    attributed through recommendation_id, and a purchase without one to a block that showed the item
    to the customer within --window-hours. The salt of the impression log's user hashes is
    SHOPREC_AB_SALT, as for the service. --channel email reports the e-mails alone (a customer counts
    from the first mail sent, opened or not), --channel site the web shop alone. Writes the report
    and its plot (read by /ui/ab), prints a table on stderr and the report as one JSON line last."""
    import json
    import os

    from features.console import quiet_exit, show
    from features.workspace import Workspace
    from serving.ab import parse_shares
    from serving.ab_display import report_table
    from serving.ab_report import ReportConfig, ab_report

    quiet_exit()
    ws = Workspace.at(data)
    if not ws.root.is_dir():
        typer.echo(f"error: workspace {ws.root} does not exist", err=True)
        raise typer.Exit(2)
    try:
        split = parse_shares(shares or os.environ.get("SHOPREC_AB_SHARES", "").strip() or "champion=1")
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        config = ReportConfig(
            shares=split,
            salt=os.environ.get("SHOPREC_AB_SALT", "").strip() or "shoprec",
            window_hours=window_hours,
            channel=channel,
        )
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    report = ab_report(ws, config, out)
    show(*report_table(report))
    from serving.ab_report import plain_json

    typer.echo(json.dumps(plain_json(report), default=str))
