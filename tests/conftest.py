"""Shared test configuration. Fixtures that belong to one area live in that area's test module;
those several modules share live here."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Tests run on a 2-core machine beside other work: one BLAS/OpenMP thread per library keeps
# implicit, numpy and torch from oversubscribing the cores (implicit warns about exactly this).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass(frozen=True)
class Shop:
    """A workspace with features and a serving bundle trained on it."""

    ws: Any  # features.workspace.Workspace
    bundle: Path

    def state(self) -> Any:
        """A fresh live shop state of the workspace (serving.state.ShopState)."""
        from serving.state import ShopState

        return ShopState.from_workspace(self.ws)

    @property
    def user_ids(self) -> list[str]:
        import pandas as pd

        return (
            pd.read_parquet(self.ws.feature("profiles"), columns=["user_id"])["user_id"].astype(str).tolist()
        )


@pytest.fixture(scope="session")
def als_shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """A real ALS serving bundle of a small synthetic shop (400 customers, 1500 items), built once
    for the tests that compare the pruned engine with the one that ranks every item."""
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace
    from training.bundle import write_bundle
    from training.data import load_train_data
    from training.models import get_model_class

    tmp = tmp_path_factory.mktemp("als-shop")
    ws = Workspace.at(tmp / "shop")
    generate(ws.root, customers=400, items=1500, days=60, seed=5, progress=False)
    build_features(ws, FeatureConfig())
    data = load_train_data(ws)
    als = get_model_class("als")
    model = als(als.Config.from_dict({"num_threads": 1, "factors": 16, "iterations": 8})).fit(data)
    return Shop(ws, write_bundle(model, ws, tmp / "bundle", data=data))


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession (local[2], two shuffle partitions) for every Spark test of the pytest
    session. Skips when Java is missing: `make test` installs it (Makefile target `java`)."""
    if shutil.which("java") is None:
        pytest.skip("Java 17 is not installed (`make test` installs openjdk-17-jre-headless with apt-get)")
    pyspark_sql = pytest.importorskip("pyspark.sql", reason="pyspark is not installed (make install)")
    from features.engines.spark import DEFAULT_CONF

    builder = pyspark_sql.SparkSession.builder.master("local[2]")
    # Test data is tiny: what costs is per-query overhead, so no code generation (Janino compiles
    # per query), no adaptive re-planning, and a JVM that does not spend the CPU on its top JIT tier.
    for key, value in {
        **DEFAULT_CONF,
        "spark.sql.shuffle.partitions": "2",
        "spark.driver.memory": "1g",
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
        "spark.sql.adaptive.enabled": "false",
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    }.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
