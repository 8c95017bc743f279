"""Execute the notebooks: each jupytext percent-format `NN_name.py` (the source kept in git) becomes
`NN_name.ipynb` beside it with every output, plots inline, run top to bottom in a fresh Jupyter
kernel. `make notebooks` runs them all; tests/test_notebooks.py runs each the same way.

    .venv/bin/python notebooks/execute.py [01_explore_shop ...] [--timeout SECONDS] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def notebooks() -> list[Path]:
    """The notebooks, in order: `NN_name.py` under notebooks/."""
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def execute(path: Path, *, timeout: int = 600, write: bool = True, extra_cells: Sequence[str] = ()):
    """Run the notebook `path` in a new kernel (cwd: notebooks/); returns (executed notebook,
    seconds). `extra_cells` are appended first (tests read results through them). With `write`
    the executed notebook is saved as the `.ipynb` twin. A failing cell raises
    nbclient's CellExecutionError with the cell's traceback."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(path)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in extra_cells)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        # The kernel listens on 127.0.0.1 only; its start-up warning about unencrypted local TCP
        # says nothing a notebook run can act on.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    if write:
        for cell in nb.cells[len(nb.cells) - len(extra_cells) :]:
            nb.cells.remove(cell)
        nbformat.write(nb, path.with_suffix(".ipynb"))
    return nb, seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all), e.g. 01_explore_shop")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--no-write", action="store_true", help="do not write the .ipynb twins")
    args = parser.parse_args(argv)
    paths = notebooks()
    if args.names:
        wanted = {Path(n).stem for n in args.names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            parser.error(
                f"unknown notebook(s): {', '.join(sorted(unknown))}; known: {', '.join(p.stem for p in paths)}"
            )
        paths = [p for p in paths if p.stem in wanted]
    failed = []
    for path in paths:
        print(f"{path.stem} ...", end=" ", flush=True)
        try:
            _, seconds = execute(path, timeout=args.timeout, write=not args.no_write)
        except Exception as e:  # report every notebook, then fail
            print(f"FAILED\n{e}", flush=True)
            failed.append(path.stem)
            continue
        out = "" if args.no_write else f" -> {path.with_suffix('.ipynb').relative_to(HERE.parent)}"
        print(f"ok in {seconds:.1f} s{out}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
