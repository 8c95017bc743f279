"""`shoprec train|tune|promote|recommend`: thin commands over training's stage functions."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add training's commands to the root app."""
