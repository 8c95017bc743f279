"""The A/B report for a person: the plot (serving.views shows it on /ui/ab) and the terminal table
`shoprec ab report` prints on stderr."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot(report: Mapping[str, Any], path: Path | None = None) -> Any:
    """Conversion and click-through per variant with their intervals, and each variant's uplift
    against control with its interval. Saved to `path` when given; returns the figure (a
    matplotlib Figure not managed by pyplot: `display(fig)` in a notebook)."""
    from matplotlib.figure import Figure

    rows = report["variants"]
    # A Figure without pyplot: no global backend switch, so a notebook still shows its plots inline
    # (display(fig)), and the command needs no display.
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    names = [r["variant"] for r in rows]
    for ax, metric, title in (
        (axes[0], "conversion", "conversion (customers)"),
        (axes[1], "ctr", "click-through (blocks)"),
    ):
        vals = [r[metric] or 0.0 for r in rows]
        lo = [
            max(0.0, v - (r[f"{metric}_low"] if r[f"{metric}_low"] is not None else v))
            for v, r in zip(vals, rows, strict=True)
        ]
        hi = [
            max(0.0, (r[f"{metric}_high"] if r[f"{metric}_high"] is not None else v) - v)
            for v, r in zip(vals, rows, strict=True)
        ]
        colors = ["tab:gray" if n == report.get("control") else "tab:blue" for n in names]
        ax.bar(names, vals, yerr=[lo, hi], capsize=6, color=colors)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    ax = axes[2]
    ups = [u for u in report["uplift"] if u["metric"] in ("conversion", "ctr") and u["uplift"] is not None]
    labels = [f"{u['variant']}\n{u['metric']}" for u in ups]
    for i, u in enumerate(ups):
        low = u["uplift_low"] if u["uplift_low"] is not None else u["uplift"]
        high = u["uplift_high"] if u["uplift_high"] is not None else u["uplift"]
        ax.errorbar([u["uplift"] * 100], [i], xerr=[[(u["uplift"] - low) * 100], [(high - u["uplift"]) * 100]],
                    fmt="o", capsize=6, color="tab:red" if u["significant"] else "tab:blue")  # fmt: skip
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(ups)), labels)
    ax.set_xlabel("uplift against control, % (95% interval)")
    ax.set_title("uplift (red: p < 0.05)" if ups else "uplift (no control group)")
    srm = report.get("srm", {})
    if srm.get("flagged"):
        fig.suptitle("SAMPLE RATIO MISMATCH: " + str(srm.get("note", "")), color="tab:red", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def report_table(report: Mapping[str, Any]) -> tuple[str, Any, list[str]]:
    """(heading, rich table, lines) for features.console.show."""
    from rich.table import Table

    def ci(r: Mapping[str, Any], m: str) -> str:
        if r[m] is None:
            return "-"
        low, high = r[m + "_low"], r[m + "_high"]
        if low is None:
            return f"{100 * r[m]:.1f}%"
        return f"{100 * r[m]:.1f}%\n[{100 * low:.1f}, {100 * high:.1f}]"  # fits 100 columns

    def signed(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = Table(show_edge=False)  # fits a 100-column terminal with the intervals
    for col in (
        "variant",
        "users",
        "blocks",
        "clicks",
        "purchases",
        "revenue",
        "ctr",
        "conversion",
        "rev/user",
    ):
        wide = 12 if col in ("ctr", "conversion") else None  # "[25.8, 32.8]" on one line
        table.add_column(col, justify="left" if col == "variant" else "right", min_width=wide)
    for r in report["variants"]:
        table.add_row(
            r["variant"], f"{r['users']:,}", f"{r['impressions']:,}", f"{r['clicks']:,}", f"{r['purchases']:,}",
            f"{r['revenue']:,.0f}", ci(r, "ctr"), ci(r, "conversion"), signed(r["revenue_per_user"], ".2f"),
        )  # fmt: skip
    lines = []
    for u in report["uplift"]:
        head = f"{u['variant']} vs {report['control']}:"
        if u["metric"] == "revenue_per_user":
            diff = None if u["value"] is None or u["control"] is None else u["value"] - u["control"]
            lines.append(
                f"{head} revenue per user {signed(diff, '+.2f')} [{signed(u['difference_low'], '+.2f')}, "
                f"{signed(u['difference_high'], '+.2f')}], p {_p(u['p_value'])}"
            )
        else:
            pct = [None if u[k] is None else 100 * u[k] for k in ("uplift", "uplift_low", "uplift_high")]
            if pct[0] is None:  # a relative change from a rate of 0 (or of nothing) has no value
                rates = [("-" if r is None else f"{100 * r:.1f}%") for r in (u["value"], u["control"])]
                lines.append(
                    f"{head} {u['metric']} {rates[0]} against {rates[1]}: the relative uplift is "
                    f"undefined (a rate of 0), p {_p(u['p_value'])}"
                )
                continue
            lines.append(
                f"{head} {u['metric']} {signed(pct[0], '+.1f')}% [{signed(pct[1], '+.1f')}%, "
                f"{signed(pct[2], '+.1f')}%], p {_p(u['p_value'])}"
            )
    if not report["variants"]:
        where = report.get("period", {}).get("impression_log", "the impression log")
        lines.append(f"no impressions of known customers in {where}: nothing to compare yet")
    elif not report["uplift"]:
        lines.append(f"no uplift: no customers in the control variant `{report['control']}`")
    srm = report["srm"]
    lines.append(
        f"sample ratio: {'MISMATCH' if srm['flagged'] else 'ok'} (observed {srm['observed']}; configured "
        f"{srm['expected']}; p {_p(srm['p_value'])}){' - ' + srm['note'] if srm['note'] else ''}"
    )
    channels = report.get("channels") or {}
    which = report.get("channel", "all")
    if channels:
        shown = " · ".join(f"{c} {sum(v.values()):,}" for c, v in channels.items())
        lines.append(f"blocks by channel: {shown}; {'all' if which == 'all' else 'only ' + which} counted")
    a = report["attribution"]
    lines.append(
        f"purchases: {a['purchases']:,} ({a['by_id']:,} by recommendation id, {a['by_window']:,} within "
        f"{a['window_hours']:g} h of a block that showed the item, {a['not_attributed']:,} not attributed"
        + (f", {a['other_channels']:,} of other channels' blocks)" if "other_channels" in a else ")")
    )
    return ("A/B report" if which == "all" else f"A/B report, {which} only"), table, lines


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"= {p:.3g}" if p >= 1e-4 else "< 0.0001")
