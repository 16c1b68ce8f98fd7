"""A context (the chunks read so far) as the cascade takes it, and the checks every stage runs.

A context arrives as raw vectors, one (L, D) array or a list of them, or as bank row ids
(`ContextRows`); stage 1, the LVM and the servers check it here, and pad a batch of them
left-aligned for the models (`pad_left_aligned`). Every refusal is one line naming the context
and the row that is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ContextRows:
    """Contexts given as bank row ids: one 1-d sequence of rows, or a list of them (oldest
    chunk first). The rows themselves are left out of the results."""
    rows: Sequence


def pad_left_aligned(vectors: list[np.ndarray], keep: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The last `keep` chunks of each context, left-aligned: (B, L, D) float32, (B, L) mask."""
    vectors = [v[-keep:] if keep else v for v in vectors]
    width = max(len(v) for v in vectors)
    ctx = np.zeros((len(vectors), width, vectors[0].shape[1]), np.float32)
    mask = np.zeros((len(vectors), width), bool)
    for b, v in enumerate(vectors):
        ctx[b, :len(v)] = v
        mask[b, :len(v)] = True
    return ctx, mask


def check_vectors(contexts, dim: int, max_context: int) -> list[np.ndarray]:
    """One (L, D) context, a (B, L, D) array or a list of (L, D) -> list of unit float32 (L, D);
    ValueError naming the context and row that is wrong."""
    if isinstance(contexts, np.ndarray | torch.Tensor):
        arr = np.asarray(contexts)
        if arr.ndim == 2:
            contexts = [arr]
        elif arr.ndim == 3:
            contexts = list(arr)
        else:
            raise ValueError(f"contexts: expected an (L, {dim}) array or a list of them, got "
                             f"shape {arr.shape}")
    if not isinstance(contexts, list | tuple):
        raise ValueError(f"contexts: expected an (L, {dim}) array, a list of them, or "
                         f"ContextRows, got {type(contexts).__name__}")
    if not contexts:
        raise ValueError("contexts: an empty batch (no context given)")
    out = []
    for b, c in enumerate(contexts):
        try:
            v = np.asarray(c, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"context {b}: not an array of numbers") from None
        if v.ndim != 2:
            raise ValueError(f"context {b}: expected shape (L, {dim}), got {v.shape}")
        if v.shape[0] == 0:
            raise ValueError(f"context {b} is empty (0 chunks)")
        if v.shape[1] != dim:
            raise ValueError(f"context {b}: dimension {v.shape[1]}, the bank's is {dim}")
        if v.shape[0] > max_context:
            raise ValueError(f"context {b}: {v.shape[0]} chunks, longer than the configured "
                             f"maximum {max_context} (cascade.max_context)")
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            raise ValueError(f"context {b} row {int(np.flatnonzero(bad)[0])}: NaN or inf")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"context {b} row {int(np.flatnonzero(norms[:, 0] == 0)[0])}: "
                             f"an all-zero vector")
        out.append(v / norms)
    return out


def check_queries(queries, batch: int, dim: int, field: str = "queries") -> np.ndarray:
    """(B, D) finite float32 vectors, one per context (queries, or the LVM's predictions);
    ValueError naming `field` and what is wrong."""
    q = np.asarray(queries, dtype=np.float32)
    if q.shape != (batch, dim):
        raise ValueError(f"{field}: expected shape ({batch}, {dim}) (one per context), got "
                         f"{q.shape}")
    if not np.isfinite(q).all():
        raise ValueError(f"{field} row {int(np.flatnonzero(~np.isfinite(q).all(1))[0])}: NaN "
                         f"or inf")
    return q


def check_rows(rows, n: int, max_context: int) -> list[np.ndarray]:
    """One 1-d sequence of bank rows or a list of them -> list of int64 arrays; ValueError
    naming the context and position that is wrong."""
    if isinstance(rows, np.ndarray) and rows.ndim == 1 or (
            isinstance(rows, list | tuple) and rows and np.isscalar(rows[0])):
        rows = [rows]
    if not isinstance(rows, list | tuple | np.ndarray) or len(rows) == 0:
        raise ValueError("ContextRows: an empty batch (no context given)")
    out = []
    for b, r in enumerate(rows):
        r = np.asarray(r)
        if r.ndim != 1:
            raise ValueError(f"context {b}: row ids must be a 1-d sequence, got shape {r.shape}")
        if len(r) == 0:
            raise ValueError(f"context {b} is empty (0 row ids)")
        if not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"context {b}: row ids must be integers, got dtype {r.dtype}")
        if len(r) > max_context:
            raise ValueError(f"context {b}: {len(r)} chunks, longer than the configured "
                             f"maximum {max_context} (cascade.max_context)")
        bad = np.flatnonzero((r < 0) | (r >= n))
        if len(bad):
            raise ValueError(f"context {b} position {int(bad[0])}: row id {int(r[bad[0]])} is "
                             f"out of range [0, {n})")
        out.append(r.astype(np.int64))
    return out
