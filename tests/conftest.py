"""Shared test configuration. Fixtures that belong to one area live in that area's test module."""

from __future__ import annotations

import os

# Tests run on a 2-core machine beside other work: one BLAS/OpenMP thread per library keeps
# implicit, numpy and torch from oversubscribing the cores (implicit warns about exactly this).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
