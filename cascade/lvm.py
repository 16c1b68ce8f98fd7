"""Stage 2, the LVM reranker (500 -> 50): a next-vector predictor plus a small learned head over
features of each (context, candidate) pair and of the candidate list itself.

The predictor (a latent vector model: a GRU over the context, started as the exp-weighted
heuristic like the query tower) reads the context and predicts the next chunk's vector. It is
trained on stage 1's own top-500 candidates, so it learns to separate what stage 1 confuses.

The head scores each candidate from FEATURES. Two towers' dot product sees one number per
candidate; the head also sees the candidate against every context chunk, and the candidate list's
structure: how many candidates share its article and how much stage-1 mass that article holds,
whether its successor chunk is a candidate too, whether it opens an article (an article's first
chunk never continues a context), and how close it is to the centroid of the top candidates.

The structure features find the candidate's article among the candidates: they help when the
article being read is in the bank, which is what next-chunk retrieval from a bank assumes (the
next chunk must be there); they cannot tell which chunk of it comes next.

ADJACENCY features (off by default) use the bank's order: cos(context's last chunk, the
candidate's predecessor row). With a context that is itself bank rows, the true next chunk's
predecessor *is* the context's last chunk, so these features turn next-chunk retrieval into a
lookup: the number they produce measures the lookup, not prediction from content.

All features of a batch are computed in one pass of batched tensor operations over (B, K)
candidates: no Python loop over candidates.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cascade.bank import Bank, atomic_write, sha256_file
from cascade.config_loader import build_checked
from cascade.context import pad_left_aligned
from cascade.device import to_cpu
from cascade.infer import BankArrays, GruQuery, lvm_features
from cascade.lvm_schema import (  # noqa: F401  (ADJACENCY: still importable from here)
    ADJACENCY,
    CONTENT,
    FEATURES,
    MASS_TAU,
    STRUCTURE,
    TOP_CENTROID,
)
from cascade.pairs import Pairs
from cascade.result import StageResult
from cascade.split import SIDE_NAMES, TEST, SplitSpec, row_sides
from cascade.towers import GRUTower, TowerConfig, age_weighted, build_towers

FORMAT_VERSION = 1


class LvmError(ValueError):
    """An LVM checkpoint that is unreadable, for another bank, or does not match its pin."""


@dataclass
class LvmConfig:
    dim: int = 384  # bank vector dimension; set from the bank
    kind: str = "gru"  # the predictor: gru | mean_mlp | transformer (the query tower's kinds)
    hidden: int = 256
    max_len: int = 8  # the predictor reads the last max_len context chunks
    alpha: float = 0.1
    head_hidden: int = 32
    features: list[str] = field(default_factory=lambda: list(CONTENT + STRUCTURE))

    @classmethod
    def from_dict(cls, d: dict) -> LvmConfig:
        """The config a checkpoint stores, checked (ValueError naming the key)."""
        return build_checked(cls, d, "LVM config", ValueError)

    def validate(self) -> None:
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features:
            raise ValueError(f"lvm.features: {bad or 'none'} (known: {', '.join(FEATURES)})")
        for key in ("dim", "hidden", "max_len", "head_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"lvm.{key} must be >= 1, got {getattr(self, key)}")

    def tower(self) -> TowerConfig:
        return TowerConfig(kind=self.kind, dim=self.dim, hidden=self.hidden,
                           max_len=self.max_len, alpha=self.alpha)

    def to_dict(self) -> dict:
        return asdict(self)


class BankStructure:
    """What the features need of the bank, as tensors sharing the bank's memory."""

    def __init__(self, bank: Bank):
        with warnings.catch_warnings():  # a mapped bank is read-only; the features only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            self.vectors = torch.from_numpy(bank.vectors)
        self.article = torch.from_numpy(np.ascontiguousarray(bank.article_indices, np.int64))
        chunk = np.ascontiguousarray(bank.chunk_indices, np.int64)
        self.is_first = torch.from_numpy(chunk == 0)
        n = bank.n
        prev = np.arange(n) - 1
        prev[chunk == 0] = -1  # an article's first chunk has no predecessor
        nxt = np.arange(n) + 1
        nxt[np.append(chunk[1:] == 0, True)] = -1  # nor its last a successor
        self.prev = torch.from_numpy(prev)
        self.next = torch.from_numpy(nxt)
        self.n = n
        self.fingerprint = bank.fingerprint()

    def to(self, device) -> BankStructure:
        """Moves its tensors to `device` (no copy when they are there already); returns it."""
        for key in ("vectors", "article", "is_first", "prev", "next"):
            setattr(self, key, getattr(self, key).to(device))
        return self


class Lvm(nn.Module):
    """Predictor + head. `forward` scores (B, K) candidates -> (B, K) logits (-inf at padding)."""

    def __init__(self, cfg: LvmConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.predictor, _ = build_towers(cfg.tower())
        nf = len(cfg.features)
        self.head = nn.Sequential(nn.Linear(nf, cfg.head_hidden), nn.GELU(),
                                  nn.Linear(cfg.head_hidden, 1))
        # Standardization of the features, fitted with the head (identity until then).
        self.register_buffer("feat_mean", torch.zeros(nf))
        self.register_buffer("feat_std", torch.ones(nf))

    def predict(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D), (B, L) -> (B, D) unit predicted next vectors (last max_len chunks read)."""
        ctx, mask = keep_last(ctx, mask, self.cfg.max_len)
        return self.predictor(ctx, mask)

    def features(self, bs: BankStructure, ctx: torch.Tensor, mask: torch.Tensor,
                 ids: torch.Tensor, s1: torch.Tensor, pred: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """(B, K, F) raw features of candidates `ids` (B, K) with stage-1 scores `s1` (B, K).

        Every cosine of a candidate (to the prediction, the context's chunks, the heuristic
        query, the top candidates' centroid) comes from one batched matrix product."""
        want = set(self.cfg.features)
        b, k = ids.shape
        length = ctx.shape[1]
        valid = ids >= 0
        safe = ids.clamp(min=0)
        cand = take(bs.vectors, safe)  # (B, K, D): the one gather of candidate vectors
        lengths = mask.sum(1)
        fm = mask.to(ctx.dtype)
        s1 = torch.where(valid, s1, torch.zeros_like(s1))
        # Reference vectors, one product: context chunks (L), then the prediction, the
        # heuristic query and the centroid of the top candidates.
        refs = [ctx]
        if "pred" in want:
            refs.append((self.predict(ctx, mask) if pred is None else pred)[:, None])
        if "heur" in want:
            age_w = -self.cfg.alpha * torch.arange(length, dtype=ctx.dtype, device=ctx.device)
            refs.append(age_weighted(ctx, mask, age_w)[:, None])
        if "top_centroid" in want:
            top = cand[:, :TOP_CENTROID] * valid[:, :TOP_CENTROID, None].to(ctx.dtype)
            refs.append(F.normalize(top.sum(1), dim=-1)[:, None])
        sims = torch.bmm(cand, torch.cat(refs, 1).transpose(1, 2))  # (B, K, L + extra)
        cc = sims[:, :, :length]
        extra = iter(range(length, sims.shape[2]))
        out: dict[str, torch.Tensor] = {"s1": s1}
        out["log_rank"] = torch.log1p(torch.arange(k, dtype=ctx.dtype, device=ctx.device)
                                      ).expand(b, k)
        out["last"] = torch.gather(cc, 2, (lengths - 1)[:, None, None].expand(b, k, 1))[..., 0]
        out["ctx_max"] = cc.masked_fill(~mask[:, None, :], -2.0).max(2).values
        out["ctx_mean"] = (cc * fm[:, None, :]).sum(2) / lengths[:, None].to(ctx.dtype)
        for name in ("pred", "heur", "top_centroid"):
            if name in want:
                out[name] = sims[:, :, next(extra)]
        if {"same_article", "article_mass", "succ_s1"} & want:
            # Groups by sorting (B, K) keys, not by (B, K, K) comparisons: O(BK log BK).
            row = torch.arange(b, device=ctx.device)[:, None]
            art = torch.where(valid, take(bs.article, safe),
                              -1 - torch.arange(k, device=ctx.device)[None, :])
            _, group, count = torch.unique(row * (bs.n + k + 1) + art + k + 1,
                                           return_inverse=True, return_counts=True)
            out["same_article"] = torch.log(count[group].to(ctx.dtype))
            w = torch.softmax((s1 / MASS_TAU).masked_fill(~valid, float("-inf")), dim=1)
            mass = torch.zeros(len(count), dtype=ctx.dtype,
                               device=ctx.device).index_add_(0, group.ravel(),
                                                                       w.ravel())
            out["article_mass"] = mass[group]
            # succ_s1: the stage-1 score of the candidate's successor row, 0 if not a candidate.
            keys = torch.where(valid, row * bs.n + ids, -1).ravel()
            order = torch.argsort(keys)
            sorted_keys = keys[order]
            nxt = torch.where(valid, take(bs.next, safe), -1)
            want_keys = torch.where(nxt >= 0, row * bs.n + nxt, -2).ravel()
            pos = torch.searchsorted(sorted_keys, want_keys).clamp(max=len(keys) - 1)
            found = (sorted_keys[pos] == want_keys) & (want_keys >= 0)
            out["succ_s1"] = torch.where(found, s1.ravel()[order[pos]], 0.0).reshape(b, k)
        out["is_first"] = take(bs.is_first, safe).to(ctx.dtype)
        if {"prev_last", "prev_ctx_max"} & want:
            prev = torch.where(valid, take(bs.prev, safe), -1)
            has = prev >= 0
            pm = torch.bmm(take(bs.vectors, prev.clamp(min=0)), ctx.transpose(1, 2))  # (B, K, L)
            last = torch.gather(pm, 2, (lengths - 1)[:, None, None].expand(b, k, 1))[..., 0]
            out["prev_last"] = torch.where(has, last, 0.0)
            out["prev_ctx_max"] = torch.where(has, pm.masked_fill(~mask[:, None, :], -2.0)
                                           .max(2).values, 0.0)
        x = torch.stack([out[f] for f in self.cfg.features], dim=-1)
        return torch.where(valid[..., None], x, torch.zeros_like(x))

    def score(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, K, F) raw features -> (B, K) logits, -inf where not valid."""
        z = (feats - self.feat_mean) / self.feat_std
        return self.head(z).squeeze(-1).masked_fill(~valid, float("-inf"))


def take(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] for any shape of ids, by index_select: 10x faster than advanced indexing on
    the CPU for (1, 500) ids of the bank (0.03 ms instead of 0.34)."""
    return table.index_select(0, ids.reshape(-1)).reshape(*ids.shape, *table.shape[1:])


def keep_last(ctx: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last n chunks of left-aligned contexts, still left-aligned."""
    if ctx.shape[1] <= n:
        return ctx, mask
    lengths = mask.sum(1)
    start = (lengths - n).clamp(min=0)
    idx = start[:, None] + torch.arange(n, device=ctx.device)[None, :]
    keep = idx < lengths[:, None]
    idx = idx.clamp(max=ctx.shape[1] - 1)
    return torch.gather(ctx, 1, idx[..., None].expand(-1, -1, ctx.shape[2])), keep


def rerank_logits(model: Lvm, bs: BankStructure, ctx: torch.Tensor, mask: torch.Tensor,
                  ids: torch.Tensor, s1: torch.Tensor, pred: torch.Tensor | None = None
                  ) -> torch.Tensor:
    return model.score(model.features(bs, ctx, mask, ids, s1, pred), ids >= 0)


# Checkpoint keys.
MODEL = "model"
CONFIG = "lvm_config"
BANK_FINGERPRINT = "bank_fingerprint"
FORMAT = "format_version"
SPLIT = "split"  # the article split of the pairs it was fitted on (train + val articles)


def save_lvm(path, model: Lvm, fingerprint: str, extra: dict | None = None) -> None:
    # CPU tensors, so a checkpoint written on a GPU loads anywhere (weights_only=True).
    state = {FORMAT: FORMAT_VERSION, MODEL: to_cpu(model.state_dict()), CONFIG: model.cfg.to_dict(),
             BANK_FINGERPRINT: fingerprint, **(extra or {})}
    atomic_write(path, lambda f: torch.save(state, f))


def load_lvm_state(path, fingerprint: str | None = None, sha256: str | None = None) -> dict:
    path = str(path)
    if not os.path.exists(path):
        raise LvmError(f"{path}: no such LVM checkpoint")
    if sha256 is not None and sha256_file(path) != sha256:
        raise LvmError(f"{path}: sha256 {sha256_file(path)[:19]}... does not match the pinned "
                       f"{sha256[:19]}...")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise LvmError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get(FORMAT) != FORMAT_VERSION or MODEL not in state:
        raise LvmError(f"{path}: not a v{FORMAT_VERSION} LVM checkpoint")
    if fingerprint and state.get(BANK_FINGERPRINT) != fingerprint:
        raise LvmError(f"{path}: trained on another bank ({str(state.get(BANK_FINGERPRINT))[:19]}"
                       f"..., this bank is {fingerprint[:19]}...)")
    return state


def build_lvm(state: dict, where: str = "checkpoint") -> Lvm:
    try:
        model = Lvm(LvmConfig.from_dict(state[CONFIG]))
        model.load_state_dict(state[MODEL])
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        raise LvmError(f"{where}: weights do not match its config "
                       f"({str(e).splitlines()[0][:200]})") from None
    return model.eval()


class LvmReranker:
    """Stage 2 for serving: load once, rerank batches of stage-1 candidates."""

    def __init__(self, model: Lvm, bank: Bank, split: SplitSpec | None = None,
                 path: str = "", device="cpu"):
        if model.cfg.dim != bank.dim:
            raise LvmError(f"LVM dimension {model.cfg.dim} is not the bank's {bank.dim}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.bank = bank
        self.structure = BankStructure(bank).to(self.device)  # the bank's vectors go along
        self.split = split  # the article split it was fitted with (None: not recorded)
        self.path = path
        # On the CPU the predictor runs as a frozen NumPy copy and the features in NumPy
        # (cascade.infer; the head stays torch): the model is loaded for serving and must not
        # change afterwards.
        cpu = self.device.type == "cpu"
        self.fast_predict = (GruQuery(self.model.predictor)
                             if cpu and isinstance(self.model.predictor, GRUTower) else None)
        self.arrays = BankArrays.of(self.structure) if cpu else None

    @classmethod
    def load(cls, ckpt_path, bank: Bank, *, sha256: str | None = None,
             device="cpu") -> LvmReranker:
        state = load_lvm_state(ckpt_path, bank.fingerprint(), sha256)
        split = state.get(SPLIT)
        return cls(build_lvm(state, str(ckpt_path)), bank,
                   SplitSpec.from_dict(split) if isinstance(split, dict) else None, str(ckpt_path),
                   device)

    def check_reported_on(self, pairs: Pairs, side: int = TEST) -> None:
        """Refuse to report on `side` pairs of `pairs` whose articles this LVM was fitted on:
        its predictor trains on train articles and its head is fitted on val articles, so only
        articles on its own test side are unseen."""
        if self.split is None:
            raise LvmError(f"LVM {self.path}: records no article split (trained before splits "
                           f"were pinned); retrain it (make train-lvm)")
        rows = np.flatnonzero(pairs.split == side)
        seen = row_sides(self.bank, self.split)[pairs.target[rows]] != TEST
        if seen.any():
            n_art = len(np.unique(self.bank.article_indices[pairs.target[rows[seen]]]))
            raise LvmError(f"LVM {self.path}: {int(seen.sum()):,} {SIDE_NAMES[side]} pairs "
                           f"({n_art:,} articles) of {pairs.path} are articles it was fitted on "
                           f"(its split: seed {self.split.seed}, key {self.split.key}); use pairs "
                           f"with its split or retrain it")

    @torch.inference_mode()
    def predict(self, contexts: list[np.ndarray]) -> torch.Tensor | None:
        """(B, D) predicted next vectors of checked contexts, None when the head does not use
        them. It needs only the contexts, so the cascade computes it while stage 1 searches."""
        if "pred" not in self.model.cfg.features:
            return None
        if self.fast_predict is not None:
            return torch.from_numpy(self.fast_predict(*pad_left_aligned(
                contexts, self.model.cfg.max_len)))
        ctx, mask = pad_left_aligned(contexts)
        d = self.device
        return self.model.predict(torch.from_numpy(ctx).to(d), torch.from_numpy(mask).to(d))

    @torch.inference_mode()
    def logits(self, contexts: list[np.ndarray], cand_ids: np.ndarray,
               cand_scores: np.ndarray, pred: torch.Tensor | None = None) -> torch.Tensor:
        if pred is None:
            pred = self.predict(contexts)
        ctx, mask = pad_left_aligned(contexts)
        if self.arrays is not None:
            feats = lvm_features(self.arrays, self.model.cfg, ctx, mask, cand_ids, cand_scores,
                                 None if pred is None else pred.cpu().numpy())
            return self.model.score(torch.from_numpy(feats), torch.from_numpy(cand_ids >= 0))
        d = self.device
        return rerank_logits(self.model, self.structure, torch.from_numpy(ctx).to(d),
                             torch.from_numpy(mask).to(d), torch.from_numpy(cand_ids).to(d),
                             torch.from_numpy(cand_scores).to(d), pred).cpu()

    def rerank(self, contexts: list[np.ndarray], cand_ids: np.ndarray, cand_scores: np.ndarray,
               keep: int = 50, pred: torch.Tensor | None = None) -> StageResult:
        """Keep the best `keep` of each row of stage-1 candidates (B, K), best first. `pred`:
        `predict(contexts)` if already computed."""
        t0 = time.perf_counter()
        cand_ids, cand_scores = check_candidates(cand_ids, cand_scores, len(contexts),
                                                 self.bank.n, keep)
        if pred is not None and pred.shape != (len(contexts), self.bank.dim):
            raise ValueError(f"lvm rerank: pred has shape {tuple(pred.shape)}, expected "
                             f"({len(contexts)}, {self.bank.dim})")
        logits = self.logits(contexts, cand_ids, cand_scores, pred)
        top = torch.topk(logits, keep, dim=1)
        ids = np.take_along_axis(cand_ids, top.indices.numpy(), axis=1)
        scores = top.values.numpy().astype(np.float32)
        ids = np.where(np.isfinite(scores), ids, -1)
        return StageResult(ids, scores, time.perf_counter() - t0)


def check_candidates(cand_ids, cand_scores, batch: int, n: int, keep: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (B, K) and scores (B, K) for a reranker, or a ValueError naming the problem."""
    ids = np.asarray(cand_ids)
    scores = np.asarray(cand_scores)
    if ids.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(f"candidates: ids {ids.shape} and scores {scores.shape} must both be "
                         f"(B, K)")
    if len(ids) != batch:
        raise ValueError(f"candidates: {len(ids)} rows for {batch} contexts")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"candidates: ids must be integers, got dtype {ids.dtype}")
    bad = np.argwhere((ids < -1) | (ids >= n))
    if len(bad):
        b, j = bad[0]
        raise ValueError(f"candidates row {b} position {j}: id {ids[b, j]} is out of range "
                         f"[0, {n}) (-1 pads)")
    if isinstance(keep, bool) or not isinstance(keep, int | np.integer) or \
            not 1 <= keep <= ids.shape[1]:
        raise ValueError(f"keep must be an integer in [1, {ids.shape[1]}], got {keep!r}")
    s = scores.astype(np.float32)
    if np.isnan(s).any() or np.isposinf(s).any():
        raise ValueError("candidates: scores hold NaN or +inf")
    return ids.astype(np.int64), np.where(ids >= 0, s, -np.inf).astype(np.float32)
