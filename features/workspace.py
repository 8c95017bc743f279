"""The workspace: one directory per shop holding raw tables, validated tables, features and models.

Every stage finds its inputs and leaves its outputs through these paths, so the layout lives in one
place. Nothing here touches the disk at import time; callers create directories when they write.
See docs/workspace.md for what each file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLES: tuple[str, ...] = ("events", "catalog", "stock", "customers")
SPLITS: tuple[str, ...] = ("loo", "time", "random")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        return cls(Path(root).expanduser().resolve())

    # raw tables (immutable input: written by `data generate` / `data fetch`, or dropped in by a user)
    def raw(self, table: str) -> Path | None:
        """The raw file for `table` (Parquet preferred over CSV), or None when absent."""
        for ext in (".parquet", ".csv"):
            p = self.root / f"{table}{ext}"
            if p.exists():
                return p
        return None

    @property
    def validated_dir(self) -> Path:
        return self.root / "validated"

    def validated(self, table: str) -> Path:
        return self.validated_dir / f"{table}.parquet"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def quarantine(self, table: str) -> Path:
        return self.quarantine_dir / f"{table}.parquet"

    @property
    def changes_dir(self) -> Path:
        """The durable change log: `changes/<table>.jsonl`, appended by the service (features.changelog)."""
        return self.root / "changes"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def feature(self, name: str) -> Path:
        """A feature table, e.g. feature("users") -> features/users.parquet."""
        return self.features_dir / f"{name}.parquet"

    def split_dir(self, split: str) -> Path:
        return self.features_dir / "splits" / split

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def mlflow_uri(self) -> str:
        """Default tracking URI: SQLite under the workspace (MLFLOW_TRACKING_URI overrides it)."""
        return f"sqlite:///{self.mlflow_db}"

    @property
    def optuna_uri(self) -> str:
        return f"sqlite:///{self.root / 'optuna.db'}"

    @property
    def serving_dir(self) -> Path:
        """Serving-side state: impression log, forget log, the online store's snapshot."""
        return self.root / "serving"
