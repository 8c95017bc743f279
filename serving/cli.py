"""The `shoprec` entry point: one Typer app composed of each stage's thin commands.

Commands import their stage lazily, so `shoprec data generate` never pays for importing BentoML.
"""

from __future__ import annotations

import typer

from features.cli import data_app, features_app
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


if __name__ == "__main__":
    app()
