"""Heuristic stage-1 queries from a context: exp-weighted average, plain mean and last vector.

The exp-weighted heuristic weights the context chunk `age` steps before the target by
exp(-alpha * age) (the last chunk has age 0), sums, and L2-normalizes. It is the stage-1 fallback
when a trained query tower misses its gate.
"""

from __future__ import annotations

import numpy as np

from cascade.pairs import Pairs, context_windows, window_batch

DEFAULT_ALPHA = 0.1
_BATCH = 2048


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalize rows of (B, D), leaving all-zero rows at zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def exp_weights(mask: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """(B, L) weights exp(-alpha * age) over left-aligned contexts; 0 at padding."""
    lengths = mask.sum(axis=1, keepdims=True)
    age = lengths - 1 - np.arange(mask.shape[1])[None, :]
    return np.where(mask, np.exp(-alpha * np.maximum(age, 0)), 0.0).astype(np.float32)


def exp_weighted(ctx: np.ndarray, mask: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """(B, L, D) context vectors + (B, L) mask -> (B, D) unit queries."""
    return unit(np.einsum("bl,bld->bd", exp_weights(mask, alpha), ctx))


def last_vector(ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, L, D) left-aligned contexts -> (B, D) their last valid vectors."""
    last = mask.sum(axis=1) - 1
    return ctx[np.arange(len(ctx)), last]


def heuristic_queries(vectors: np.ndarray, pairs: Pairs, kind: str = "exp_weighted",
                      alpha: float = DEFAULT_ALPHA, max_len: int | None = None) -> np.ndarray:
    """Queries for every pair, batched so no (P, L, D) gather is ever built: -> (P, D)."""
    if kind not in ("exp_weighted", "mean", "last_vector"):  # checked up front: also no pairs
        raise ValueError(f"unknown heuristic {kind!r} (exp_weighted, mean, last_vector)")
    out = np.empty((len(pairs), vectors.shape[1]), dtype=np.float32)
    longest = int(pairs.lengths.max()) if len(pairs) else 1
    batch = window_batch(min(longest, max_len or longest), vectors.shape[1], most=_BATCH)
    for lo in range(0, len(pairs), batch):
        rows, mask = context_windows(pairs.subset(np.arange(lo, min(lo + batch, len(pairs)))),
                                     max_len)
        ctx = vectors[rows]
        if kind == "exp_weighted":
            out[lo:lo + len(rows)] = exp_weighted(ctx, mask, alpha)
        elif kind == "mean":  # every context chunk weighs the same: exp-weighted at alpha 0
            out[lo:lo + len(rows)] = exp_weighted(ctx, mask, 0.0)
        else:
            out[lo:lo + len(rows)] = last_vector(ctx, mask)
    return out
