"""What a person reads in the terminal: short rich tables on stderr, beside the progress bars and
log lines, while stdout keeps exactly one JSON line for a scheduler (the commands print it last).

Also keeps DuckDB's exit-time noise out of the terminal: DuckDB's Python bindings (nanobind) print
"nanobind: leaked N instances!" while the interpreter shuts down whenever a library left a daemon
thread running (tqdm's monitor, MLflow's and SQLAlchemy's workers). The objects are freed by the
OS a moment later; the lines are harmless but read like a crash. `quiet_exit` sends whatever the
interpreter writes to stderr *after* the exit handlers have run to /dev/null; tracebacks and every
line a command prints come before that and stay. `SHOPREC_EXIT_STDERR=1` keeps it for debugging.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

_quiet_registered = False


def console() -> Console:
    """A rich console on the current stderr (looked up per call, so test runners that swap
    sys.stderr capture it). 100 columns when stderr is not a terminal, so tables do not wrap."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 100, highlight=False)


def show(heading: str, table: RenderableType, lines: list[str]) -> None:
    """Print a report for a person on stderr: a bold heading, the table, then its lines (text is
    never wrapped; the table fits the terminal)."""
    c = console()
    c.print(f"[bold]{heading}[/]", soft_wrap=True)
    c.print(table)
    for line in lines:
        c.print(line, soft_wrap=True)


def quiet_exit() -> None:
    """Register (once) the exit handler that silences stderr for the interpreter's own shutdown.

    atexit runs handlers last-registered first, so registering this one at the start of a command
    makes it run after the handlers of everything the command imports (MLflow ends its run there)."""
    global _quiet_registered
    if _quiet_registered or os.environ.get("SHOPREC_EXIT_STDERR") == "1":
        return
    _quiet_registered = True
    atexit.register(_silence_stderr)


def _silence_stderr() -> None:
    try:
        sys.stderr.flush()
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except (OSError, ValueError):  # stderr already closed or not a real file: nothing to silence
        pass


def _n(v: Any) -> str:
    return f"{int(v):,}" if isinstance(v, int | float) else str(v)


def build_table(summary: dict[str, Any], data: str = "") -> tuple[str, Table, list[str]]:
    """The `features build` summary for a person: input = accepted + quarantined per table, then a
    few lines on what was built. Returns (heading, table, lines)."""
    from rich.table import Table

    table = Table()
    table.add_column("table")
    for col in ("input", "accepted", "quarantined"):
        table.add_column(col, justify="right")
    quarantined = []
    for name, counts in summary.items():
        if not isinstance(counts, dict) or "input_rows" not in counts:
            continue
        q = int(counts.get("quarantined", 0))
        table.add_row(
            name,
            _n(counts["input_rows"]),
            _n(counts["accepted"]),
            f"[bold red]{q:,}[/]" if q else "0",
        )
        if q:
            quarantined.append(name)
    f = summary.get("features", {})
    lines = []
    if f:
        lines.append(
            f"built: {_n(f.get('users', 0))} customers × {_n(f.get('items', 0))} items, "
            f"{_n(f.get('nnz', 0))} interactions (density {float(f.get('density', 0)):.2%}), "
            f"{_n(f.get('baskets', 0))} baskets"
        )
        if f.get("segments"):
            lines.append("segments: " + " · ".join(f"{k} {_n(v)}" for k, v in f["segments"].items()))
        splits = f.get("splits", {})
        if splits:
            lines.append(
                "splits, held-out test customers: "
                + " · ".join(f"{k} {_n(v.get('test_users', 0))}" for k, v in splits.items())
            )
        if f.get("rebuyable_categories") is not None:
            lines.append(
                f"re-buy: {f['rebuyable_categories']} of {f.get('categories', '?')} categories are re-bought "
                "(the learned policy lets their items come back)"
            )
    if quarantined:
        lines.append(
            f"[bold]quarantined rows kept with a reason per row[/]: {data or 'DIR'}/quarantine/"
            f"{{{','.join(quarantined)}}}.parquet"
        )
    else:
        lines.append("every row accepted: nothing quarantined")
    total = summary.get("features", {}).get("timings", {}).get("total")
    if total is not None:
        lines.append(f"took {float(total):.1f} s")
    return f"shoprec features build {data}".strip(), table, lines
