"""NumPy inference for serving on the CPU: the GRU query tower and the LVM's features.

Serving handles one context at a time, and a tower's forward or the LVM's features are dozens
of small torch operations at ~7 us of dispatch each (NumPy's cost: ~1 us), so torch spends more
time dispatching than computing: 0.8 ms for a 3-chunk context's query against 0.3 ms here.

- `GruQuery` is a frozen NumPy copy of a trained `GRUTower` (any number of layers, residual or
  not) that computes the same function.
- `lvm_features` computes `cascade.lvm.Lvm.features` (every feature, the same definitions); the
  LVM's own head then scores them in torch (`Lvm.score`), so the learned part runs one way.

Both are float32 and equal to the torch code within ~1e-6 (tests check it). Training and
batched evaluation keep the torch modules; stage 1 and the LVM use these only when they are
loaded frozen from checkpoints on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cascade.lvm_schema import MASS_TAU, TOP_CENTROID
from cascade.query import exp_weighted, unit
from cascade.towers import GRUTower, QueryTower


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + e^-x)


class GruQuery:
    """forward(ctx (B, L, D), mask (B, L)) -> (B, D) unit vectors, as `GRUTower.forward`.

    Contexts are left-aligned (mask True at real chunks, then padding); a context's hidden state
    stops at its last real chunk, as with packed sequences in torch."""

    def __init__(self, tower: QueryTower):
        if not isinstance(tower, GRUTower):
            raise TypeError(f"GruQuery copies a GRUTower, not a {type(tower).__name__}")

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        g = tower.gru
        self.hidden = g.hidden_size
        # Per layer: input weights (in, 3H) and recurrent weights (H, 3H), transposed for x @ W.
        self.layers = [(arr(getattr(g, f"weight_ih_l{i}")).T.copy(),
                        arr(getattr(g, f"bias_ih_l{i}")),
                        arr(getattr(g, f"weight_hh_l{i}")).T.copy(),
                        arr(getattr(g, f"bias_hh_l{i}")))
                       for i in range(g.num_layers)]
        self.out_w = arr(tower.out.weight).T.copy()
        self.out_b = arr(tower.out.bias)
        self.log_weights = arr(tower.age_log_weights) if tower.cfg.residual else None

    def __call__(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ctx = np.asarray(ctx, np.float32)
        mask = np.asarray(mask, bool)
        delta = self.encode(ctx, mask) @ self.out_w + self.out_b
        if self.log_weights is not None:
            delta = delta + self.age_weighted(ctx, mask)
        return unit(delta).astype(np.float32)

    def encode(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, H): the last layer's hidden state after each context's last real chunk."""
        b, length, _ = ctx.shape
        H = self.hidden
        x = ctx
        for w_ih, b_ih, w_hh, b_hh in self.layers:
            gi = x @ w_ih + b_ih  # (B, L, 3H): every step's input part in one product
            h = np.zeros((b, H), np.float32)
            outs = np.empty((b, length, H), np.float32)
            for t in range(length):
                gh = h @ w_hh + b_hh
                rz = _sigmoid(gi[:, t, :2 * H] + gh[:, :2 * H])
                n = np.tanh(gi[:, t, 2 * H:] + rz[:, :H] * gh[:, 2 * H:])
                z = rz[:, H:]
                new = n + z * (h - n)  # (1 - z) n + z h
                live = mask[:, t]
                h = new if live.all() else np.where(live[:, None], new, h)
                outs[:, t] = h
            x = outs
        return h

    def age_weighted(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """cascade.towers.age_weighted with the tower's learned weights per age."""
        lengths = mask.sum(axis=1, keepdims=True)
        age = np.clip(lengths - 1 - np.arange(ctx.shape[1])[None, :], 0,
                      len(self.log_weights) - 1)
        w = np.exp(self.log_weights[age]) * mask
        return unit(np.einsum("bl,bld->bd", w, ctx))


@dataclass
class BankArrays:
    """What the LVM's features need of the bank, as NumPy views of a `BankStructure` on the CPU."""
    vectors: np.ndarray  # (N, D) float32
    article: np.ndarray  # (N,) int64
    is_first: np.ndarray  # (N,) bool: an article's first chunk
    prev: np.ndarray  # (N,) int64: the row before in the article, -1 for its first chunk
    next: np.ndarray  # (N,) int64: the row after in the article, -1 for its last chunk
    n: int

    @classmethod
    def of(cls, bs) -> BankArrays:
        return cls(bs.vectors.numpy(), bs.article.numpy(), bs.is_first.numpy(),
                   bs.prev.numpy(), bs.next.numpy(), bs.n)


def lvm_features(bs, cfg, ctx: np.ndarray, mask: np.ndarray, ids: np.ndarray,
                 s1: np.ndarray, pred: np.ndarray | None) -> np.ndarray:
    """(B, K, F) raw features of candidates `ids` (B, K) (-1 pads) with stage-1 scores `s1`,
    for left-aligned contexts `ctx` (B, L, D) / `mask` (B, L): `Lvm.features` in NumPy.
    `bs`: the bank's `BankArrays`; `cfg`: the LVM's config; `pred` (B, D) when cfg uses it."""
    want = set(cfg.features)
    b, k = ids.shape
    length = ctx.shape[1]
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    cand = bs.vectors[safe]  # (B, K, D): the one gather of candidate vectors
    lengths = mask.sum(axis=1)
    fm = mask.astype(np.float32)
    s1 = np.where(valid, s1, 0.0).astype(np.float32)
    refs = [ctx]
    if "pred" in want:
        refs.append(np.asarray(pred, np.float32)[:, None])
    if "heur" in want:  # the exp-weighted heuristic query
        refs.append(exp_weighted(ctx, mask, cfg.alpha)[:, None])
    if "top_centroid" in want:
        top = (cand[:, :TOP_CENTROID] * valid[:, :TOP_CENTROID, None]).sum(axis=1)
        refs.append(unit(top)[:, None])
    sims = np.matmul(cand, np.concatenate(refs, axis=1).transpose(0, 2, 1))  # (B, K, L + x)
    cc = sims[:, :, :length]
    extra = iter(range(length, sims.shape[2]))
    out = {"s1": s1,
           "log_rank": np.broadcast_to(np.log1p(np.arange(k, dtype=np.float32)), (b, k))}
    last = (lengths - 1)[:, None, None]
    out["last"] = np.take_along_axis(cc, np.broadcast_to(last, (b, k, 1)), axis=2)[..., 0]
    out["ctx_max"] = np.where(mask[:, None, :], cc, np.float32(-2.0)).max(axis=2)
    out["ctx_mean"] = (cc * fm[:, None, :]).sum(axis=2) / lengths[:, None].astype(np.float32)
    for name in ("pred", "heur", "top_centroid"):
        if name in want:
            out[name] = sims[:, :, next(extra)]
    if {"same_article", "article_mass", "succ_s1"} & want:
        row = np.arange(b)[:, None]
        art = np.where(valid, bs.article[safe], -1 - np.arange(k)[None, :])
        _, group, count = np.unique((row * (bs.n + k + 1) + art + k + 1).ravel(),
                                    return_inverse=True, return_counts=True)
        group = group.reshape(b, k)
        out["same_article"] = np.log(count[group].astype(np.float32))
        z = np.where(valid, s1 / np.float32(MASS_TAU), -np.inf)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        mass = np.bincount(group.ravel(), (z / z.sum(axis=1, keepdims=True)).ravel(),
                           minlength=len(count))
        out["article_mass"] = mass[group].astype(np.float32)
        keys = np.where(valid, row * bs.n + ids, -1).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        nxt = np.where(valid, bs.next[safe], -1)
        want_keys = np.where(nxt >= 0, row * bs.n + nxt, -2).ravel()
        pos = np.minimum(np.searchsorted(sorted_keys, want_keys), len(keys) - 1)
        found = (sorted_keys[pos] == want_keys) & (want_keys >= 0)
        out["succ_s1"] = np.where(found, s1.ravel()[order[pos]], 0.0).reshape(b, k)
    out["is_first"] = bs.is_first[safe].astype(np.float32)
    if {"prev_last", "prev_ctx_max"} & want:
        prev = np.where(valid, bs.prev[safe], -1)
        has = prev >= 0
        pm = np.matmul(bs.vectors[np.maximum(prev, 0)], ctx.transpose(0, 2, 1))  # (B, K, L)
        plast = np.take_along_axis(pm, np.broadcast_to(last, (b, k, 1)), axis=2)[..., 0]
        out["prev_last"] = np.where(has, plast, 0.0)
        out["prev_ctx_max"] = np.where(has, np.where(mask[:, None, :], pm, np.float32(-2.0))
                                       .max(axis=2), 0.0)
    x = np.stack([out[f] for f in cfg.features], axis=-1).astype(np.float32)
    return np.where(valid[..., None], x, np.float32(0.0))
