"""The plain SASRec recipe that `bench_sasrec` measures shoprec's `sasrec` against (issue 14).

A two-layer, 64-dimensional causal transformer (Kang & McAuley 2018, as RecBole and most
reproductions build it: learned positions, 2 heads, GELU feed-forward of 4 × dim, pre-norm,
output layer tied to the item table) trained with cross-entropy over ALL items at every position
of each user's last `max_len` + 1 training items at once (max_len 20), Adam at lr 1e-3 on
batches of 32 users, dropout 0.2, and the number of epochs chosen on validation (early stopping, best epoch kept). Nothing of
shoprec's training is used: its own network, batching and loop, so the comparison is between two
recipes, not two settings of one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PlainConfig:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 20
    dropout: float = 0.2
    lr: float = 1e-3
    # users per step: the benchmark's data sets have 943 and 2,469 users (one example each), so
    # 128 would leave 8 and 20 optimiser steps an epoch; 32 gives 4x the steps for the same CPU
    batch_size: int = 32
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation score before stopping
    seed: int = 0
    score_batch_size: int = 256


class PlainNet(nn.Module):
    """Right-padded sequences (item index + 1, 0 = padding) → hidden states; logits tied."""

    def __init__(self, n_items: int, cfg: PlainConfig) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.n_heads,
            4 * cfg.dim,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.dim)
        for emb in (self.item, self.pos):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        x = self.drop(self.item(tokens) * self.scale + self.pos(pos)[None])
        # Right padding: a real position never sees a later (padding) one through the causal mask.
        causal = torch.triu(torch.full((t, t), float("-inf"), device=tokens.device), diagonal=1)
        return self.norm(self.encoder(x, mask=causal, is_causal=True))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item.weight[1:].T


def _right_pad(seqs: Sequence[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s[-width:], dtype=np.int64)
        out[i, : len(s)] = s + 1
    return out


class PlainSASRec:
    """fit(sequences) with a validation hook; score(histories) → (n, n_items) logits."""

    def __init__(self, n_items: int, cfg: PlainConfig | None = None) -> None:
        self.cfg = cfg or PlainConfig()
        self.n_items = n_items
        self.history: list[dict[str, float]] = []
        torch.manual_seed(self.cfg.seed)
        self.net = PlainNet(n_items, self.cfg)

    def fit(self, sequences: Sequence[np.ndarray], validation: Callable[[PlainSASRec], float]) -> PlainSASRec:
        cfg = self.cfg
        # one example per user: the last max_len + 1 training items
        examples = [np.asarray(s[-(cfg.max_len + 1) :]) for s in sequences if len(s) >= 2]
        tokens = torch.from_numpy(_right_pad(examples, cfg.max_len + 1))
        rng = np.random.default_rng(cfg.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        best, best_state, bad = -math.inf, None, 0
        for epoch in range(cfg.max_epochs):
            c0, t0 = time.process_time(), time.perf_counter()
            self.net.train()
            total, n = 0.0, 0
            order = rng.permutation(len(examples))
            for start in range(0, len(order), cfg.batch_size):
                batch = tokens[order[start : start + cfg.batch_size]]
                inputs, targets = batch[:, :-1], batch[:, 1:]
                mask = targets > 0
                hidden = self.net(inputs)
                loss = F.cross_entropy(self.net.logits(hidden[mask]), targets[mask] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * int(mask.sum())
                n += int(mask.sum())
            row = {
                "epoch": float(epoch),
                "train_loss": total / max(n, 1),
                "epoch_seconds": time.perf_counter() - t0,
                "epoch_cpu_seconds": time.process_time() - c0,
            }
            row["valid"] = float(validation(self))
            self.history.append(row)
            if row["valid"] > best:
                best, best_state, bad = row["valid"], copy.deepcopy(self.net.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.net.eval()
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        w = self.cfg.max_len
        with torch.inference_mode():
            for start in range(0, len(histories), self.cfg.score_batch_size):
                chunk = [np.asarray(h)[-w:] for h in histories[start : start + self.cfg.score_batch_size]]
                tokens = torch.from_numpy(_right_pad(chunk, w))
                last = torch.tensor([max(len(h), 1) - 1 for h in chunk])
                hidden = self.net(tokens)[torch.arange(len(chunk)), last]
                out[start : start + len(chunk)] = self.net.logits(hidden).numpy()
        return out
