"""Hard negatives from a search result, never the positive, a near-duplicate of it, or context.

The original system's mined negatives could be the positive itself or a context row, and its
margin diagnostic counted the positive as a negative: that manufactures false negatives and
margin collapse. Every consumer (the margin metric, the post-mortem, the curriculum miner) takes
its negatives from `clean_negatives`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.index import drop_rows

DUP_THRESHOLD = 0.98  # cos to the positive above which a candidate counts as its near-duplicate
_BATCH = 1024


@dataclass
class Negatives:
    rows: np.ndarray  # (P, n) bank rows, -1 where fewer than n qualified
    cos: np.ndarray  # (P, n) cos(q, row), -inf at padding
    # Over the raw top-n of each query (before cleaning), how often it held:
    positive_rate: float  # the positive itself
    same_article_rate: float  # another row of the positive's article
    # of the top-n slots: another row with cos > threshold to the positive (cos to q not tested;
    # the post-mortem, mining and pre-flight all mean this by near_dup_rate)
    near_dup_rate: float
    dropped_fraction: float  # candidates the cleaning removed, of all considered


def clean_negatives(q: np.ndarray, D: np.ndarray, I: np.ndarray, vectors: np.ndarray,
                    pos: np.ndarray, article_indices: np.ndarray, n: int,
                    threshold: float = DUP_THRESHOLD, cos_min: float = -1.0,
                    cos_max: float = 1.0) -> Negatives:
    """Keep the first n candidates of (D, I) (already context-free) that qualify as negatives.

    q (P, D) queries, D/I (P, K) search result, pos (P,) positive rows. A candidate is dropped
    when it is the positive, has cos > threshold to the positive, or has cos(q, .) outside
    [cos_min, cos_max].
    """
    rows, cos, dropped, considered = [], [], 0, 0
    raw_pos = raw_same = raw_dup = 0.0
    for lo in range(0, len(q), _BATCH):
        sl = slice(lo, lo + _BATCH)
        Db, Ib, pb = D[sl], I[sl], pos[sl]
        valid = Ib >= 0
        cand = vectors[np.where(valid, Ib, 0)]  # (B, K, dim)
        cos_pos = np.einsum("bkd,bd->bk", cand, vectors[pb])
        is_pos = Ib == pb[:, None]
        near_dup = cos_pos > threshold
        same_article = valid & (article_indices[np.where(valid, Ib, 0)]
                                == article_indices[pb][:, None])
        top = slice(0, n)
        raw_pos += is_pos[:, top].any(axis=1).sum()
        raw_same += (same_article & ~is_pos)[:, top].any(axis=1).sum()
        # A near-duplicate of the positive is a false negative whatever its cos to q: count
        # what the filter removes (requiring cos(q, .) > threshold too counted ~nothing).
        raw_dup += (near_dup & valid & ~is_pos)[:, top].sum()
        drop = is_pos | near_dup | (Db < cos_min) | (Db > cos_max) | ~valid
        dropped += int((drop & valid).sum())
        considered += int(valid.sum())
        Dk, Ik = drop_rows(Db, Ib, drop, n)
        rows.append(Ik)
        cos.append(Dk)
    p = max(len(q), 1)
    return Negatives(
        rows=np.concatenate(rows) if rows else np.zeros((0, n), np.int64),
        cos=np.concatenate(cos) if cos else np.zeros((0, n), np.float32),
        positive_rate=float(raw_pos / p), same_article_rate=float(raw_same / p),
        near_dup_rate=float(raw_dup / (p * n)),
        dropped_fraction=float(dropped / max(considered, 1)))


def separation_margin(q: np.ndarray, pos_vectors: np.ndarray, neg_cos: np.ndarray) -> dict:
    """Δ = E[cos(q, pos)] - E[cos(q, hard neg)], negatives from `clean_negatives` (-inf = none)."""
    pos_cos = np.einsum("pd,pd->p", q, pos_vectors)
    valid = np.isfinite(neg_cos)
    neg_mean = float(neg_cos[valid].mean()) if valid.any() else float("nan")
    return {"margin": float(pos_cos.mean()) - neg_mean, "pos_cos": float(pos_cos.mean()),
            "neg_cos": neg_mean}
