"""NumPy inference of the GRU query tower, for serving on the CPU.

Serving forms one context's query at a time, and a tower's forward is a few dozen small torch
operations at ~7 us of dispatch each (NumPy's cost ~1 us), so the torch forward spends more
time dispatching than computing: 0.8 ms for a 3-chunk context against 0.3 ms here. `GruQuery`
is a frozen NumPy copy of a trained `GRUTower` (any number of layers, residual or not) that
computes the same function (float32, equal to the torch forward within ~1e-6; tests check
it). Training and batched evaluation keep the torch modules; stage 1 and the LVM use this copy
only when they are loaded frozen from checkpoints on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from cascade.towers import GRUTower, QueryTower


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + e^-x)


def _normalize(x: np.ndarray) -> np.ndarray:
    """F.normalize(x, dim=-1): x / max(|x|, 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


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
        return _normalize(delta).astype(np.float32)

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
        return _normalize(np.einsum("bl,bld->bd", w, ctx))
