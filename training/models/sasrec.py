"""SASRec-style self-attentive sequential recommender (Kang & McAuley, 2018) in PyTorch.

A small causal transformer reads a user's item sequence (oldest first) and predicts the next item
at every position. Choices that make it train in minutes on a 2-core CPU and still rank well:

- every position of each sequence is trained at once (one forward pass per window of `max_len`
  items), not every prefix as a separate example (RecBole's way, ~200 s/epoch on MovieLens-100K);
- cross-entropy over ALL items (full softmax, no sampled negatives): the scores it learns are the
  ones full-catalogue ranking needs, and it converges in far fewer epochs than sampled BCE. Above
  `full_softmax_items` (a grocer's 92k products) the output layer would cost almost all the time,
  so the loss becomes a sampled softmax: the batch's targets against `sampled_negatives` items
  drawn from the training popularity^0.75, with the logQ correction (Jean et al. 2015);
- the output layer is the item-embedding table itself (weight tying): half the parameters, and the
  same vectors give `similar_items`;
- sequences longer than `max_len` are cut into consecutive windows, so no interaction is wasted;
  windows are batched by length so little time goes into padding;
- AdamW with a short linear warm-up and cosine decay over `epochs`;
- optionally `n_models` networks from consecutive seeds, trained side by side epoch by epoch, whose
  logits are averaged when scoring (a seed ensemble: a steadier ranking for n_models × the CPU);
- by default the ranking blends in a closed-form item × item model (DLAE, Steck 2020, the `ease`
  model's `closed_form`) fitted on the same sequences: score = z(logits) + ease_weight · z(X·B),
  each z-scored per row. The transformer knows order, the linear model knows the whole history
  (not only the last max_len items) and costs a second of CPU; on MovieLens-100K the blend lifted
  validation NDCG@10 from 0.122 to 0.144 (see SASRecConfig).

Item index i of the recommender is token i + 1 inside the network; token 0 is padding.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from training.base import History, ModelConfig, Recommender, TrainData, topk
from training.models.ease import closed_form, gram

# A validation hook scores the model as it stands (higher is better, e.g. NDCG@10 on held-out
# users); `fit` calls it after every epoch for early stopping and passes it on to the callback.
ValidationHook = Callable[["SASRec"], float]


@dataclass(frozen=True)
class SASRecConfig(ModelConfig):
    """Hyper-parameters of `SASRec`. Defaults chosen on validation NDCG@10 of MovieLens-100K's
    workspace `loo` split (seed 0): max_len 50, 2 heads, dropout 0.3, 30 epochs gave 0.1347 (20
    epochs 0.1278, dim 128 0.1078; seed 1: 0.1244 vs 0.1179 at 20 epochs). benchmarks/bench_sasrec.py
    with these defaults (2 threads, shared machine): workspace loo valid 0.1347, test 0.1075 from
    that fit, 0.1122 from the refit on train + valid for the 22 epochs validation chose; valid 0.10
    after epoch 3 (19.8 s wall, 38 CPU s). RecBole-file split: valid 0.1195, test 0.1088, refit
    0.1064; valid 0.10 after epoch 5 (258 s wall / 241 CPU s at load ~4-5; ~9 CPU s per epoch on one
    quiet thread). Those figures are the transformer alone; with the DLAE blend (the default since,
    one pinned thread): RecBole-file valid 0.1445, test 0.1293, refit 0.1258; workspace loo valid
    0.1474, test 0.1203, refit 0.1240; valid 0.10 after epoch 1 (8.3 CPU s incl. the DLAE fit)."""

    max_len: int = 50  # items of history the model sees; longer sequences become several windows
    dim: int = 64  # embedding and hidden size
    n_layers: int = 2
    n_heads: int = 2  # dim must be divisible by n_heads
    dropout: float = 0.3  # on embeddings and residual branches; this data is small
    lr: float = 3e-3  # peak learning rate after warm-up
    weight_decay: float = 0.01  # AdamW (decoupled); not applied to norms, biases or positions
    # windows per step: on a CPU the cost per trained position hardly depends on the batch, and
    # small batches mean more optimiser steps per epoch (16: NDCG@10 0.066 after epoch 1, 64: 0.023)
    batch_size: int = 16
    epochs: int = 30  # also the length of the cosine schedule
    warmup_steps: int = 30
    patience: int = 4  # epochs without a better validation score before stopping (0 = never stop)
    min_epochs: int = 1  # never stop before this many epochs
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu; or any torch device string
    threads: int = 0  # torch CPU threads while fitting/scoring; 0 = all cores, at most 8
    score_batch_size: int = 256  # sequences per forward pass when scoring
    progress: bool = True  # tqdm bar over epochs
    # networks trained from seeds seed, seed + 1, ...; scores are their mean logits (1 = one net).
    # RecBole-file leave-one-out, one thread: 2 networks (30 epochs, no early stop) lifted valid
    # NDCG@10 alone from 0.1217 to 0.1272, but with the DLAE blend 0.1436 vs 0.1442 for one: not
    # worth twice the CPU.
    n_models: int = 1
    label_smoothing: float = 0.0  # of the cross-entropy targets
    # Blend with DLAE (item × item, fitted on the binary matrix of the training sequences): weight
    # of its row-z-scored scores next to the row-z-scored logits; 0 = the transformer alone. Chosen
    # on validation of the RecBole-file leave-one-out split (benchmarks/bench_sasrec.py, one thread,
    # seed 0, weights 0.05-0.5 × (λ, p) in {(200, 0.5), (300, 0), (100, 0.75)}): 0.2 with λ 200,
    # p 0.5 gave valid NDCG@10 0.1442 vs 0.1217 alone (the next best 0.1421 / 0.1420).
    ease_weight: float = 0.2
    ease_lambda: float = 200.0
    ease_dropout: float = 0.5  # > 0: DLAE (free diagonal); 0: plain EASE (zero diagonal)
    # The item × item matrix is dense (20 000 items = 1.6 GB): above this the blend is skipped,
    # with a warning, and the transformer ranks alone.
    ease_max_items: int = 20_000
    # Above this many items each training step scores the targets against a shared sample of
    # `sampled_negatives` items instead of the whole catalogue. Complete Journey (92k items, ~1.46M
    # positions) is ~26 TFLOP per epoch of output layer with the full softmax by the flop count
    # (1,830 steps of 800 positions × 92k items × 64 dims, ×3 for the backward pass); 4,096
    # sampled items cut that ~20x by the same count (epoch times on it not measured yet: the
    # shared machine was too loaded). Scoring always ranks the whole catalogue.
    full_softmax_items: int = 20_000
    sampled_negatives: int = 4096

    def __post_init__(self) -> None:
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        for key in (
            "max_len",
            "dim",
            "n_layers",
            "n_heads",
            "batch_size",
            "epochs",
            "score_batch_size",
            "n_models",
            "full_softmax_items",
            "sampled_negatives",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.ease_weight < 0 or self.ease_lambda <= 0 or not 0.0 <= self.ease_dropout < 1.0:
            raise ValueError(
                "ease_weight must be >= 0, ease_lambda > 0 and ease_dropout in [0, 1), got "
                f"{self.ease_weight}, {self.ease_lambda}, {self.ease_dropout}"
            )
        if self.patience < 0 or self.warmup_steps < 0 or self.threads < 0 or self.min_epochs < 0:
            raise ValueError("patience, warmup_steps, threads and min_epochs must be >= 0")


# -- the network ---------------------------------------------------------------------------------


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU feed-forward (4 × dim)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        # Dropout only on the embeddings and the residual branches: dropout on the (B, heads, T, T)
        # attention weights and the 4 × dim hidden layer doubled the CPU time of a step.
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim); allowed: bool (B, 1, T, T), True where query t may attend to key s."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed,
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class _SASRecNet(nn.Module):
    """Token + learned position embeddings → causal blocks → final norm. Output layer = the
    item-embedding table (tied), so logits are `hidden @ item_emb[1:].T`."""

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.scale = math.sqrt(cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: int64 (B, T), left-padded with 0 → hidden states (B, T, dim).

        Positions count from each sequence's first real item, so a sequence gets the same
        encoding whatever padding its batch needs (batch scores equal single-user scores)."""
        real = tokens > 0
        pos = (real.cumsum(dim=1) - 1).clamp(min=0)
        x = self.item_emb(tokens) * self.scale + self.pos_emb(pos)
        x = self.drop(x * real.unsqueeze(-1))
        t = tokens.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        # Keys that are padding are never attended to; the diagonal stays allowed so a padding
        # query still has one key (its output is ignored) and softmax never sees an empty row.
        eye = torch.eye(t, dtype=torch.bool, device=tokens.device)
        allowed = (causal & real.unsqueeze(1)) | eye
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., dim) → scores over items (..., n_items); column i is item index i."""
        return hidden @ self.item_emb.weight[1:].T


# -- helpers -------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' → the GPU when torch sees one, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA GPU")
    return device


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads (0 = the cores there are, at most 8: more threads than
    cores only make the BLAS threads fight), restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n if n > 0 else max(1, min(8, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's global random state (CPU, and the GPU's when training there): dropout draws it."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _zrows(s: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (constant rows become 0)."""
    s = np.asarray(s, dtype=np.float64)
    sd = s.std(axis=1, keepdims=True)
    sd[sd == 0] = 1.0
    return (s - s.mean(axis=1, keepdims=True)) / sd


def _binary_rows(sequences: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """0/1 CSR (len(sequences), n_items): which items each sequence holds."""
    lens = [len(s) for s in sequences]
    rows = np.repeat(np.arange(len(sequences)), lens)
    cols = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
        if sum(lens)
        else np.zeros(0, np.int64)
    )
    X = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(sequences), n_items))
    X.data[:] = 1.0  # repeats count once
    return X


def make_windows(sequences: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut each sequence of item indices into training windows of at most max_len + 1 items.

    A window w trains inputs w[:-1] → targets w[1:]. Windows are taken from the end backwards and
    overlap by one item, so every transition (a → next) is trained exactly once; sequences with
    fewer than 2 items teach nothing and are skipped. Returns int64 arrays of item indices."""
    windows: list[np.ndarray] = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            windows.append(seq[start:end])
            end = start + 1  # the next window's last item is this window's first input
            if start == 0:
                break
    return windows


def _left_pad(seqs: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Token matrix (len(seqs), width): item index + 1, right-aligned, 0 = padding."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, width - len(s) :] = np.asarray(s[-width:], dtype=np.int64) + 1
    return out


def _batches(windows: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Group windows of similar length into batches (little padding), in random batch order.

    Returns arrays of window indices. Sorting is by length with a random tie-break, so batch
    contents change from epoch to epoch as well as their order."""
    lengths = np.array([len(w) for w in windows])
    order = np.lexsort((rng.random(len(windows)), lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


# -- the recommender -----------------------------------------------------------------------------


class SASRec(Recommender):
    """Next-item transformer over each user's event sequence (`TrainData.sequences`).

    `score` needs only `History.sequences`, so users unseen in training are scored too; an empty
    sequence gets the training popularity of the items (log counts) instead. With
    `n_models` > 1 the scores are the mean logits of that many networks (seeds seed, seed + 1, ...)."""

    name: ClassVar[str] = "sasrec"
    Config: ClassVar[type[ModelConfig]] = SASRecConfig

    def __init__(
        self, config: SASRecConfig | None = None, *, validation: ValidationHook | None = None
    ) -> None:
        """`validation(model) -> float` (higher is better), when given, runs after every epoch:
        training stops after `patience` epochs without improvement and keeps the best weights."""
        super().__init__(config)
        self.config: SASRecConfig
        self.validation = validation
        self.nets: nn.ModuleList | None = None  # config.n_models networks
        self.popularity = np.zeros(0, dtype=np.float32)  # log(1 + training count) per item
        self.history: list[dict[str, float]] = []  # per-epoch metrics of the last fit
        self.ease_B: np.ndarray | None = None  # float32 (n_items, n_items) when blended
        self.device = torch.device("cpu")
        self._proposal: torch.Tensor | None = None  # the sampled softmax's proposal while fitting

    @property
    def net(self) -> _SASRecNet | None:
        """The first network (the only one when n_models = 1)."""
        return None if self.nets is None else self.nets[0]  # type: ignore[return-value]

    # -- learning -------------------------------------------------------------------------------
    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        cfg = self.config
        if not data.sequences:
            raise ValueError("sasrec needs TrainData.sequences (per-user item indices in time order)")
        if data.n_items < 1:
            raise ValueError("sasrec needs at least one item")
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in data.sequences])
        counts = np.bincount(flat, minlength=data.n_items)[: data.n_items]
        self.popularity = np.log1p(counts).astype(np.float32)
        # The sampled softmax's proposal: popularity^0.75 (every item a little mass, so the tail
        # is sampled too); None = full softmax.
        self._proposal = None
        if data.n_items > cfg.full_softmax_items:
            q = (counts.astype(np.float64) + 1.0) ** 0.75
            self._proposal = torch.from_numpy(q / q.sum()).float()
        windows = make_windows(data.sequences, cfg.max_len)
        if not windows:
            raise ValueError("sasrec needs at least one user sequence with 2 or more items")

        self.device = resolve_device(cfg.device)
        steps_per_epoch = math.ceil(len(windows) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warm = min(cfg.warmup_steps, max(total - 1, 0))

        def lr_at(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        # One network, optimiser, schedule, batch-order generator and torch random state (dropout)
        # per seed: each network of an ensemble is exactly the 1-network fit of its seed.
        nets, opts, scheds, rngs, states = [], [], [], [], []
        for i in range(cfg.n_models):
            torch.manual_seed(cfg.seed + i)
            rngs.append(np.random.default_rng(cfg.seed + i))
            net = _SASRecNet(data.n_items, cfg).to(self.device)
            # Decay only weight matrices and the item table; norms, biases and positions are not.
            named = list(net.named_parameters())
            decay = [p for n, p in named if p.dim() >= 2 and not n.startswith("pos_emb")]
            no_decay = [p for n, p in named if p.dim() < 2 or n.startswith("pos_emb")]
            opt = torch.optim.AdamW(
                [
                    {"params": decay, "weight_decay": cfg.weight_decay},
                    {"params": no_decay, "weight_decay": 0.0},
                ],
                lr=cfg.lr,
            )
            nets.append(net)
            opts.append(opt)
            scheds.append(torch.optim.lr_scheduler.LambdaLR(opt, lr_at))
            states.append(_rng_state(self.device))
        self.nets = nn.ModuleList(nets)
        self.history = []
        # The linear part first: validation during training then scores the blend it will serve.
        # Its seconds are counted in epoch 0 (so time-to-quality figures include it).
        t_ease, c_ease = time.perf_counter(), time.process_time()
        self.ease_B = self._fit_ease(data)
        ease_s, ease_cpu = time.perf_counter() - t_ease, time.process_time() - c_ease
        best, best_state, bad_epochs = -math.inf, None, 0
        bar = tqdm(range(cfg.epochs), desc="sasrec", unit="epoch", disable=not cfg.progress, leave=False)
        with _torch_threads(cfg.threads):
            for epoch in bar:
                t0, c0 = time.perf_counter(), time.process_time()
                losses = []
                for i, (net, rng, opt, sched) in enumerate(zip(nets, rngs, opts, scheds, strict=True)):
                    _set_rng_state(self.device, states[i])
                    batches = _batches(windows, cfg.batch_size, rng)
                    losses.append(self._train_epoch(net, windows, batches, opt, sched))
                    states[i] = _rng_state(self.device)
                # CPU seconds as well as wall seconds: on a shared machine wall time mostly
                # measures the neighbours; CPU time / threads is what an idle machine would take.
                metrics = {
                    "train_loss": float(np.mean(losses)),
                    "epoch_seconds": time.perf_counter() - t0 + (ease_s if epoch == 0 else 0.0),
                    "epoch_cpu_seconds": time.process_time() - c0 + (ease_cpu if epoch == 0 else 0.0),
                }
                if self.validation is not None:
                    valid = float(self.validation(self))
                    metrics["valid"] = valid
                    if valid > best:
                        best, bad_epochs = valid, 0
                        best_state = copy.deepcopy(self.nets.state_dict())
                    else:
                        bad_epochs += 1
                self.history.append({"epoch": float(epoch), **metrics})
                bar.set_postfix({k: round(v, 4) for k, v in metrics.items()})
                if callback is not None:
                    callback(step=epoch, metrics=metrics)  # may raise (Optuna pruning) to stop
                if cfg.patience and bad_epochs >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                    break
        bar.close()
        if best_state is not None:
            self.nets.load_state_dict(best_state)
        self.nets.eval()

    def _fit_ease(self, data: TrainData) -> np.ndarray | None:
        """B of DLAE/EASE on the 0/1 matrix of the training sequences, or None when the blend is
        off (ease_weight 0) or the catalogue is above ease_max_items (warned)."""
        cfg = self.config
        if cfg.ease_weight == 0:
            return None
        if data.n_items > cfg.ease_max_items:
            self.fit_warnings.append(
                f"sasrec: {data.n_items} items > ease_max_items={cfg.ease_max_items}; "
                "the DLAE blend is skipped and the transformer ranks alone"
            )
            warnings.warn(self.fit_warnings[-1], stacklevel=3)
            return None
        X = _binary_rows(data.sequences, data.n_items)
        G = gram(X)
        B = closed_form(
            G, cfg.ease_lambda, cfg.ease_dropout, zero_diagonal=cfg.ease_dropout == 0, overwrite=True
        )
        return B.astype(np.float32)

    def _train_epoch(
        self,
        net: _SASRecNet,
        windows: list[np.ndarray],
        batches: list[np.ndarray],
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
    ) -> float:
        """One pass of `net` over all windows; returns the mean cross-entropy per trained position."""
        net.train()
        total, n = 0.0, 0
        for idx in batches:
            chunk = [windows[i] for i in idx]
            width = max(len(w) for w in chunk)
            tokens = torch.from_numpy(_left_pad(chunk, width)).to(self.device)
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            hidden = net(inputs)
            # Only positions with a real target cost softmax work: (N, dim) @ (dim, n_items).
            mask = targets > 0
            if self._proposal is None:
                logits = net.logits(hidden[mask])
                loss = F.cross_entropy(logits, targets[mask] - 1, label_smoothing=self.config.label_smoothing)
            else:
                loss = self._sampled_loss(net, hidden[mask], targets[mask] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            count = int(mask.sum())
            total += float(loss.detach()) * count
            n += count
        return total / max(n, 1)

    def _sampled_loss(self, net: _SASRecNet, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sampled softmax: the candidates are the batch's targets and `sampled_negatives` draws
        from the proposal q (shared by the batch); each candidate's logit is corrected by
        -log(K·q), its expected count in the sample, so the loss estimates the full softmax's."""
        assert self._proposal is not None
        k = self.config.sampled_negatives
        neg = torch.multinomial(self._proposal, k, replacement=True).to(self.device)
        cand, inverse = torch.unique(torch.cat([target, neg]), return_inverse=True)
        log_q = torch.log(self._proposal.to(self.device)[cand] * k)
        logits = hidden @ net.item_emb.weight[cand + 1].T - log_q[None, :]
        return F.cross_entropy(logits, inverse[: len(target)], label_smoothing=self.config.label_smoothing)

    # -- scoring --------------------------------------------------------------------------------
    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        """Logits over all items for each row's next item: float32 (len(users), n_items); with
        several networks, their mean. With the DLAE blend (`ease_weight` > 0) the row-z-scored
        logits plus ease_weight × the row-z-scored DLAE scores of the whole sequence.

        Reads only `history.sequences[i]` (item indices, oldest first; the last `max_len` are
        used), so `users` may be -1 for users unseen in training. Rows with an empty sequence get
        the training popularity `log(1 + count)`."""
        nets = self._require_nets()
        nets.eval()  # no dropout when scoring, also when a validation hook scores mid-training
        n = len(np.asarray(users))
        if len(history.sequences) != n:
            raise ValueError(
                f"sasrec scores from History.sequences: got {len(history.sequences)} sequences for {n} users"
            )
        out = np.empty((n, self.n_items), dtype=np.float32)
        cfg = self.config
        with _torch_threads(cfg.threads), torch.inference_mode():
            for start in range(0, n, cfg.score_batch_size):
                seqs = [
                    np.asarray(s, dtype=np.int64)[-cfg.max_len :]
                    for s in history.sequences[start : start + cfg.score_batch_size]
                ]
                for s in seqs:
                    if len(s) and (s.min() < 0 or s.max() >= self.n_items):
                        raise ValueError(f"sequence holds item indices outside [0, {self.n_items})")
                width = max([len(s) for s in seqs] + [1])
                tokens = torch.from_numpy(_left_pad(seqs, width)).to(self.device)
                summed = sum(net.logits(net(tokens)[:, -1, :]).float() for net in nets)
                logits = (summed / len(nets)).cpu().numpy()
                if self.ease_B is not None:
                    full = history.sequences[start : start + len(seqs)]  # all items, not max_len
                    linear = np.asarray(_binary_rows(full, self.n_items) @ self.ease_B)
                    logits = _zrows(logits) + self.config.ease_weight * _zrows(linear)
                empty = np.array([len(s) == 0 for s in seqs])
                logits[empty] = self.popularity
                out[start : start + len(seqs)] = logits
        return out

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by cosine similarity of their embeddings (the item itself excluded), the
        mean over the networks when there are several: (ids, scores), each (len(items), k),
        -1 / -inf padded."""
        nets = self._require_nets()
        items = np.asarray(items, dtype=np.int64)
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(f"item indices must be in [0, {self.n_items})")
        with torch.inference_mode():
            # Unit vectors of every network side by side, / sqrt(n): a dot product of two rows is
            # then the mean of the per-network cosines.
            parts = [F.normalize(net.item_emb.weight[1:].float(), dim=1) for net in nets]
            emb = (torch.cat(parts, dim=1) / math.sqrt(len(parts))).cpu().numpy()
        sims = emb[items] @ emb.T
        sims[np.arange(len(items)), items] = -np.inf
        k_eff = min(k, max(self.n_items - 1, 0))
        ids = np.full((len(items), k), -1, dtype=np.int64)
        scores = np.full((len(items), k), -np.inf, dtype=np.float32)
        top_ids, top_scores = topk(sims, k_eff)
        ids[:, :k_eff], scores[:, :k_eff] = top_ids, top_scores
        return ids, scores

    def _require_nets(self) -> nn.ModuleList:
        if self.nets is None:
            raise RuntimeError("sasrec is not fitted: call fit() or load() first")
        return self.nets

    def _require_net(self) -> _SASRecNet:
        """The first network (benchmarks time one network's training step with it)."""
        return self._require_nets()[0]  # type: ignore[return-value]

    # -- persistence ----------------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        """weights.pt: the networks' state dict (on the CPU; keys "<net>.<param>"); popularity.npy:
        the empty-history fallback; history.json: per-epoch metrics of the fit."""
        nets = self._require_nets()
        torch.save({k: v.detach().cpu() for k, v in nets.state_dict().items()}, path / "weights.pt")
        np.save(path / "popularity.npy", self.popularity)
        if self.ease_B is not None:
            np.save(path / "ease_B.npy", self.ease_B)
        (path / "history.json").write_text(json.dumps(self.history, indent=1))

    def _load_state(self, path: Path) -> None:
        """Rebuild the networks from config.json and load the weights onto this machine's device
        (a model trained on a GPU loads on a CPU-only machine). Weights saved before ensembles
        existed (one network, keys without the "0." prefix) load too."""
        wanted = self.config.device
        if wanted != "auto" and torch.device(wanted).type == "cuda" and not torch.cuda.is_available():
            wanted = "cpu"  # trained on a GPU, loaded where there is none
        self.device = resolve_device(wanted)
        state = torch.load(path / "weights.pt", map_location=self.device, weights_only=True)
        if "item_emb.weight" in state:  # a single network's state dict
            state = {f"0.{k}": v for k, v in state.items()}
        self.nets = nn.ModuleList(_SASRecNet(self.n_items, self.config) for _ in range(self.config.n_models))
        self.nets.to(self.device)
        self.nets.load_state_dict(state)
        self.nets.eval()
        self.popularity = np.load(path / "popularity.npy")
        ease = path / "ease_B.npy"
        self.ease_B = np.load(ease) if ease.exists() else None
        hist = path / "history.json"
        self.history = json.loads(hist.read_text()) if hist.exists() else []
