"""Where the served model comes from, and how a newly promoted champion replaces it while serving.

The service holds a `Models` snapshot (champion engine, optional challenger engine, their versions)
behind one attribute. A background thread polls the source (the MLflow registry alias, or a local
bundle directory); when the version changes it builds the new `Engine` completely, then replaces
the snapshot with one assignment. A request reads the snapshot once and uses it to the end, so a
swap never fails or mixes two models within one request; the old engine is freed when the last
request holding it finishes.

Configuration comes from environment variables (`ServeConfig.from_env`), because `bentoml serve`
starts the service in its own worker processes and the environment is what reaches them:

    SHOPREC_BUNDLE        a local bundle directory (wins over the registry; no MLflow needed)
    SHOPREC_DATA          the workspace: the shop state (tables, features, change log) and, by
                          default, the registry (its SQLite MLflow store)
    SHOPREC_SHOP          another workspace to take the shop state from
    MLFLOW_TRACKING_URI   another registry (e.g. a PostgreSQL-backed `mlflow server`)
    SHOPREC_MODEL_NAME    registered model name (default `shoprec`)
    SHOPREC_AB_SHARES     e.g. `champion=0.8,challenger=0.1,control=0.1` (default: all champion)
    SHOPREC_AB_SALT       salt of the assignment hash (change it to reshuffle users)
    SHOPREC_POLL_SECONDS  how often to look for a new champion (default 30; 0 = never)
    REDIS_URL             the online store, forget list and change stream (default: in-process)
    SHOPREC_REDIS_PREFIX  the prefix of shoprec's Redis keys (default `shoprec`)
    SHOPREC_API_KEY       bearer key for the write endpoints (unset: write endpoints refused)

With none of SHOPREC_BUNDLE / SHOPREC_DATA / MLFLOW_TRACKING_URI set, the bundle packaged into a
Bento (`bundle/` beside the code, see bentofile.yaml) is served.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("shoprec.serving")

# Where `export_bundle` puts the champion for `bentoml build` (bentofile.yaml includes it), and a
# snapshot of the shop state (the workspace's validated tables and features) to start from.
PACKAGED_BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
PACKAGED_SHOP = Path(__file__).resolve().parent.parent / "shop"


class ConfigError(ValueError):
    """A serving setting is wrong; the message names the variable and what is expected."""


def parse_shares(text: str) -> dict[str, float]:
    """serving.ab.parse_shares, its errors as ConfigError (a setting of the service)."""
    from serving.ab import parse_shares as parse

    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service is configured with; built from the environment by `from_env`."""

    bundle: Path | None = None
    data: Path | None = None
    shop: Path | None = None  # the shop state's workspace when it is not `data` (SHOPREC_SHOP)
    tracking_uri: str | None = None
    model_name: str = "shoprec"
    shares: Mapping[str, float] = field(default_factory=lambda: {"champion": 1.0})
    ab_salt: str = "shoprec"
    # 30 s: a promotion shows up within half a minute; the alias lookup is one cheap registry query.
    poll_seconds: float = 30.0
    redis_url: str | None = None
    redis_prefix: str = "shoprec"  # keys of the online store, forget list and change stream
    api_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        env = os.environ if env is None else env

        def opt(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        poll = opt("SHOPREC_POLL_SECONDS")
        try:
            poll_seconds = float(poll) if poll is not None else 30.0
        except ValueError:
            raise ConfigError(f"SHOPREC_POLL_SECONDS must be a number of seconds, got {poll!r}") from None
        bundle = opt("SHOPREC_BUNDLE")
        data = opt("SHOPREC_DATA")
        if bundle is not None and not (Path(bundle) / "bundle.json").exists():
            raise ConfigError(f"SHOPREC_BUNDLE={bundle} is not a bundle directory (no bundle.json in it)")
        if data is not None and not Path(data).is_dir():
            raise ConfigError(f"SHOPREC_DATA={data} is not a directory")
        shop = opt("SHOPREC_SHOP")
        if shop is not None and not (Path(shop) / "features" / "items.parquet").exists():
            raise ConfigError(f"SHOPREC_SHOP={shop} holds no features (run `shoprec features build` there)")
        return cls(
            bundle=Path(bundle) if bundle else None,
            data=Path(data) if data else None,
            shop=Path(shop) if shop else None,
            tracking_uri=opt("MLFLOW_TRACKING_URI"),
            model_name=opt("SHOPREC_MODEL_NAME") or "shoprec",
            shares=parse_shares(opt("SHOPREC_AB_SHARES") or "champion=1"),
            ab_salt=opt("SHOPREC_AB_SALT") or "shoprec",
            poll_seconds=max(0.0, poll_seconds),
            redis_url=opt("REDIS_URL"),
            redis_prefix=opt("SHOPREC_REDIS_PREFIX") or "shoprec",
            api_key=opt("SHOPREC_API_KEY"),
        )

    @property
    def registry_uri(self) -> str | None:
        """The MLflow tracking URI to read the registry from, or None when serving a local bundle."""
        if self.bundle is not None:
            return None
        if self.tracking_uri:
            return self.tracking_uri
        if self.data is not None:
            from features.workspace import Workspace

            return Workspace.at(self.data).mlflow_uri
        return None


# -- sources: where a version lives and how to get its bundle onto the disk ----------------------


class BundleSource(Protocol):
    def version(self, alias: str) -> str | None:
        """The version currently behind `alias` (champion/challenger), or None when unset."""

    def fetch(self, version: str) -> Path:
        """A local directory holding that version's bundle (bundle.json, model/, context/ ...)."""

    def release(self, version: str) -> None:
        """The engine built from `fetch(version)` is no longer served: remove what fetch made for
        it (a downloaded copy). The engine holds everything in memory, so nothing reads it again."""


def bundle_version(path: Path) -> str:
    """A stable id for a local bundle: its model name and a hash of bundle.json (which holds the
    data hash and creation time), so a rewritten bundle gets a new id."""
    raw = (path / "bundle.json").read_bytes()
    try:
        name = str(json.loads(raw).get("model", "bundle"))
    except (ValueError, AttributeError):
        name = "bundle"
    return f"{name}-{hashlib.sha1(raw).hexdigest()[:10]}"


class LocalBundleSource:
    """A bundle directory on disk. It is re-read on every poll, so replacing the directory (or
    pointing a symlink at another one) is a hot-swap; a local bundle has no challenger."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def version(self, alias: str) -> str | None:
        if alias != "champion":
            return None
        return bundle_version(self.path)

    def fetch(self, version: str) -> Path:
        # Resolve a symlink once so the engine reads one consistent directory.
        return self.path.resolve()

    def release(self, version: str) -> None:
        return None  # the directory is the operator's, not a copy


class RegistrySource:
    """The MLflow registry: `models:/<name>@<alias>`, downloaded through training.tracking.

    `ws` is the workspace whose SQLite store is the default registry; MLFLOW_TRACKING_URI in the
    environment wins over it (training.tracking's rule, so training and serving agree)."""

    def __init__(self, tracking_uri: str, name: str = "shoprec", ws: Any = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.ws = ws
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._downloads: dict[str, list[Path]] = {}  # version -> temporary directories fetched

    def version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None  # alias (or the registered model) does not exist yet

    def fetch(self, version: str) -> Path:
        from training.tracking import load_bundle_dir

        # By version, not by alias: the alias may move again between lookup and download.
        dst = Path(tempfile.mkdtemp(prefix="shoprec-bundle-"))
        try:
            path = Path(load_bundle_dir(f"models:/{self.name}/{version}", self.ws, dst=dst))
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
        self._downloads.setdefault(version, []).append(dst)
        return path

    def release(self, version: str) -> None:
        """Remove the downloaded copies of `version` (a swapped-out model: its engine is in memory)."""
        for d in self._downloads.pop(version, []):
            shutil.rmtree(d, ignore_errors=True)


def make_source(config: ServeConfig) -> BundleSource:
    """The source the config names: a local bundle, the registry, or the bundle packaged in a Bento."""
    if config.bundle is not None:
        return LocalBundleSource(config.bundle)
    uri = config.registry_uri
    if uri is not None:
        from features.workspace import Workspace

        ws = Workspace.at(config.data) if config.data is not None else None
        return RegistrySource(uri, config.model_name, ws)
    if (PACKAGED_BUNDLE / "bundle.json").exists():
        return LocalBundleSource(PACKAGED_BUNDLE)
    raise ConfigError(
        "no model to serve: set SHOPREC_BUNDLE (a bundle directory), SHOPREC_DATA (a workspace with a "
        "promoted champion) or MLFLOW_TRACKING_URI, or build a Bento with the bundle inside"
    )


# -- the swappable snapshot ----------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    """What one request uses: never mutated, replaced whole on a swap."""

    champion: Any  # serving.pipeline.Engine
    champion_version: str
    challenger: Any = None
    challenger_version: str | None = None
    loaded_at: float = field(default_factory=time.time)


EngineFactory = Callable[[Path, str], Any]


def default_engine_factory(state: Any, store: Any) -> EngineFactory:
    """Engines built by serving.pipeline over one shop state and one online store, which every
    engine of the process shares: a swap changes the model, never the shop."""
    from serving.pipeline import Engine

    def build(path: Path, version: str) -> Any:
        return Engine.from_bundle(path, state, store=store, model_version=version)

    return build


def load_state(config: ServeConfig) -> Any:
    """The live shop state the service starts from: the workspace's tables and features (SHOPREC_DATA,
    or SHOPREC_SHOP: a directory laid out as a workspace, e.g. the snapshot `export` packs into a
    Bento); without either, only what the champion's own item table says (no stock, no customers,
    no histories), which /readyz reports."""
    from serving.state import ShopState

    root = config.shop or config.data
    if root is None and (PACKAGED_SHOP / "features" / "items.parquet").exists():
        root = PACKAGED_SHOP
    if root is not None:
        from features.workspace import Workspace

        state = ShopState.from_workspace(Workspace.at(root))
        state.source = f"workspace {root}"
        return state
    source = make_source(config)
    version = source.version("champion")
    if version is None:
        raise ConfigError("no champion to serve: run `shoprec promote` first")
    from training.base import Recommender

    path = source.fetch(version)
    try:
        items = Recommender.load(
            path / "bundle" / "model" if not (path / "model").exists() else path / "model"
        ).items
    finally:
        source.release(version)
    state = ShopState.from_model_items(items)
    state.source = "the model's item table only (no workspace: no stock, customers or histories)"
    logger.warning("serving without a workspace: %s", state.source)
    return state


class ModelHolder:
    """Loads the champion (and challenger), then keeps them current from a background thread."""

    def __init__(self, source: BundleSource, factory: EngineFactory, poll_seconds: float = 30.0) -> None:
        self.source = source
        self.factory = factory
        self.poll_seconds = poll_seconds
        self.models: Models | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self.last_check: float | None = None
        self._lock = threading.Lock()  # one refresh at a time (poll thread vs. an explicit call)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> Models:
        """Load the current champion (required) and challenger (optional); raise when there is no
        champion, because a service without a model must not report ready."""
        self.refresh(initial=True)
        assert self.models is not None
        return self.models

    def refresh(self, initial: bool = False) -> bool:
        """Look up the versions behind the aliases; build and swap in what changed. Returns True
        when the snapshot was replaced. A failed load keeps the old snapshot (logged, and shown in
        `/readyz` as last_error) unless this is the initial load."""
        with self._lock:
            self.last_check = time.time()
            try:
                champ_v = self.source.version("champion")
                if champ_v is None:
                    raise ConfigError("the registry has no `champion` alias yet: run `shoprec promote` first")
                chall_v = self.source.version("challenger")
                cur = self.models
                if cur is not None and cur.champion_version == champ_v and cur.challenger_version == chall_v:
                    self.last_error = None
                    return False
                champion = (
                    cur.champion
                    if cur is not None and cur.champion_version == champ_v
                    else self._build(champ_v)
                )
                challenger = None
                if chall_v is not None and chall_v != champ_v:
                    challenger = (
                        cur.challenger
                        if cur is not None and cur.challenger_version == chall_v
                        else self._build(chall_v)
                    )
                # The swap: one reference assignment; requests already running keep the old snapshot.
                self.models = Models(
                    champion, champ_v, challenger, chall_v if challenger is not None else None
                )
                if cur is not None:
                    kept = {champ_v, chall_v if challenger is not None else None}
                    for old in {cur.champion_version, cur.challenger_version} - kept - {None}:
                        self._release(old)
                    for engine in (cur.champion, cur.challenger):
                        if engine is not None and engine is not champion and engine is not challenger:
                            getattr(engine, "close", lambda: None)()  # stops following the shop state
                    self.swaps += 1
                    logger.info("hot-swapped models: champion %s -> %s", cur.champion_version, champ_v)
                else:
                    logger.info("serving champion %s (challenger %s)", champ_v, chall_v)
                self.last_error = None
                return True
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                if initial or self.models is None:
                    raise
                logger.warning("model refresh failed, still serving %s: %s", self.models.champion_version, e)
                return False

    def _build(self, version: str) -> Any:
        start = time.perf_counter()
        path = self.source.fetch(version)
        try:
            engine = self.factory(path, version)
        except BaseException:
            self._release(version)  # a failed load leaves no download behind either
            raise
        logger.info("loaded model version %s in %.1f s", version, time.perf_counter() - start)
        return engine

    def _release(self, version: str) -> None:
        release = getattr(self.source, "release", None)
        if release is None:
            return
        try:
            release(version)
        except Exception:  # cleaning up must never break serving
            logger.warning("could not remove the files of model version %s", version, exc_info=True)

    def start_polling(self) -> None:
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="shoprec-champion-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # never let the poll thread die; refresh already recorded the error
                logger.exception("champion poll failed")

    def stop(self) -> None:
        """Stop polling and remove the downloaded bundles of the models served (at shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self.models is not None:
                for version in {self.models.champion_version, self.models.challenger_version} - {None}:
                    self._release(version)


def export_bundle(config: ServeConfig, dest: Path = PACKAGED_BUNDLE, shop: Path = PACKAGED_SHOP) -> Path:
    """Copy the current champion's bundle to `dest` (default: `bundle/` at the top level, which
    bentofile.yaml packages), so `bentoml build` makes a Bento that needs no MLflow; and the
    workspace's shop state as of now (validated tables, features, change log) to `shop/`, which the
    Bento starts from (a deployment then keeps it current through POST /catalog, /stock, ...)."""
    source = make_source(config)
    version = source.version("champion")
    if version is None:
        raise ConfigError("no champion to export: run `shoprec promote` first")
    src = source.fetch(version)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    if config.data is not None:
        from features.workspace import Workspace

        ws = Workspace.at(config.data)
        if shop.exists():
            shutil.rmtree(shop)
        for d in (ws.validated_dir, ws.features_dir, ws.changes_dir):
            if d.exists():
                shutil.copytree(d, shop / d.name, ignore=shutil.ignore_patterns("splits"))
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.loader export --data DIR`: put the champion's bundle where bentofile.yaml
    expects it, before `bentoml build`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["export"])
    parser.add_argument("--data", type=Path, help="workspace (its MLflow store holds the champion)")
    parser.add_argument("--out", type=Path, default=PACKAGED_BUNDLE)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.data is not None:
        env["SHOPREC_DATA"] = str(args.data)
    path = export_bundle(ServeConfig.from_env(env), args.out)
    print(json.dumps({"bundle": str(path), "version": bundle_version(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
