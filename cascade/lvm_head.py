"""The LVM's head on stage 1's candidates, as training fits it and benchmarks ablate it: the
candidates, their features, the head's fit, and its cross-fitting by article (each fold's head
fitted on the other folds' articles, so a val estimate sees no context it was fitted on).

`make train-lvm` (training.train_lvm) fits the deployed head with these; benchmarks.lvm_features
refits them on feature subsets of the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from cascade.bank import Bank
from cascade.lvm import BankStructure, Lvm
from cascade.metrics import target_ranks
from cascade.pairs import Pairs, context_windows
from cascade.stage1 import Stage1


class HeadSettings(Protocol):
    """What fitting the head reads from a training config (training.train_lvm.LvmTrainConfig)."""
    head_steps: int  # full-batch Adam steps
    head_lr: float
    head_wd: float
    folds: int  # cross-fitting folds, by article
    seed: int


@dataclass
class Candidates:
    """Stage 1's top-k for a set of pairs."""
    pairs: Pairs
    ids: np.ndarray  # (P, k) int64
    scores: np.ndarray  # (P, k) float32
    queries: np.ndarray | None = None  # (P, D) stage 1's queries

    @property
    def ranks(self) -> np.ndarray:
        return target_ranks(self.ids, self.pairs.target)


def stage1_candidates(stage1: Stage1, pairs: Pairs, k: int) -> Candidates:
    q, D, I = stage1.search_pairs(pairs, k)
    return Candidates(pairs, I, D, q)


def batch_tensors(bank: Bank, pairs: Pairs, max_len: int | None, device=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    rows, mask = context_windows(pairs, max_len)
    return (torch.from_numpy(bank.vectors[rows]).to(device),
            torch.from_numpy(mask).to(device))


@torch.no_grad()
def all_features(model: Lvm, bs: BankStructure, bank: Bank, cands: Candidates,
                 batch: int = 128) -> torch.Tensor:
    """(P, k, F) raw features of every pair's candidates, in batches."""
    out = []
    model.eval()
    for lo in range(0, len(cands.pairs), batch):
        idx = np.arange(lo, min(lo + batch, len(cands.pairs)))
        ctx, mask = batch_tensors(bank, cands.pairs.subset(idx), None)
        out.append(model.features(bs, ctx, mask, torch.from_numpy(cands.ids[idx]),
                                  torch.from_numpy(cands.scores[idx])))
    return torch.cat(out) if out else torch.zeros(0)


def fit_head(model: Lvm, feats: torch.Tensor, ids: np.ndarray, ranks: np.ndarray,
             cfg: HeadSettings, seed: int) -> None:
    """Fit the standardization and the head on (P, k, F) features of candidates `ids` (P, k),
    listwise softmax CE on the contexts whose target stage 1 found (the others carry no
    signal)."""
    keep = ranks >= 0
    x = feats[torch.from_numpy(keep)]
    y = torch.from_numpy(ranks[keep])
    valid = torch.from_numpy(ids[keep] >= 0)
    flat = x[valid]
    model.feat_mean.copy_(flat.mean(0))
    model.feat_std.copy_(flat.std(0).clamp(min=1e-6))
    torch.manual_seed(seed)
    for layer in model.head:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    opt = torch.optim.Adam(model.head.parameters(), lr=cfg.head_lr, weight_decay=cfg.head_wd)
    model.head.train()
    for _ in range(cfg.head_steps):
        loss = F.cross_entropy(model.score(x, valid), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def article_folds(bank: Bank, pairs: Pairs, folds: int, seed: int) -> np.ndarray:
    """(P,) fold of each pair, a pure function of its article."""
    art = bank.article_indices[pairs.target]
    uniq = np.unique(art)
    fold_of = np.random.default_rng(seed).permutation(len(uniq)) % folds
    return fold_of[np.searchsorted(uniq, art)]


def cross_fit(model: Lvm, feats: torch.Tensor, cands: Candidates, bank: Bank,
              cfg: HeadSettings, others: tuple[tuple[torch.Tensor, np.ndarray], ...] = ()
              ) -> list[torch.Tensor]:
    """(P, k) head logits on val where each fold's head was fitted on the other folds only:
    for `feats` of `cands`, then for each (features, ids) of `others` (other candidate lists of
    the same pairs, e.g. stage 1's answer to the contexts sent as vectors)."""
    fold = article_folds(bank, cands.pairs, cfg.folds, cfg.seed)
    ranks = cands.ranks
    sets = ((feats, cands.ids), *others)
    out = [torch.empty(f.shape[:2]) for f, _ in sets]
    for f in range(cfg.folds):
        fit, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        fit_head(model, feats[torch.from_numpy(fit)], cands.ids[fit], ranks[fit], cfg,
                 cfg.seed + f)
        held_t = torch.from_numpy(held)
        with torch.no_grad():
            for (x, ids), logits in zip(sets, out, strict=True):
                logits[held_t] = model.score(x[held_t], torch.from_numpy(ids[held] >= 0))
    return out


def ranks_by(logits: torch.Tensor, cands: Candidates, keep: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates reordered by `logits` -> (target ranks, ids (P, keep), scores (P, keep))."""
    order = torch.argsort(logits, dim=1, descending=True, stable=True)[:, :keep].numpy()
    ids = np.take_along_axis(cands.ids, order, 1)
    scores = np.take_along_axis(logits.numpy(), order, 1).astype(np.float32)
    return target_ranks(ids, cands.pairs.target), ids, scores
