"""Retrieval metrics on arrays, with confidence intervals. Recalls are reported in percent.

`ranks` is (P,) the 0-based rank of each query's target in its result list, -1 when absent.
"""

from __future__ import annotations

import numpy as np

Z95 = 1.959964


def target_ranks(I: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(P, K) result rows + (P,) target rows -> (P,) rank of the target, -1 if not in the list."""
    hit = I == target[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose target is within the top k."""
    return float(((ranks >= 0) & (ranks < k)).mean()) if len(ranks) else 0.0


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank (0 for a target outside the list)."""
    if not len(ranks):
        return 0.0
    return float(np.where(ranks >= 0, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0).mean())


def hits(ranks: np.ndarray, k: int) -> np.ndarray:
    """(P,) 1.0 where the target is within the top k, else 0.0: recall@k per query."""
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def reciprocal_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    """(P,) 1 / (rank + 1) within the top k, else 0: MRR@k per query."""
    return np.where((ranks >= 0) & (ranks < k), 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """(P,) nDCG@k per query with one relevant item (the target): 1 / log2(rank + 2) within the
    top k, else 0. The ideal DCG of a single relevant item is 1, so no normalization is left."""
    return np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def mrr_at(ranks: np.ndarray, k: int) -> float:
    """MRR@k: mean reciprocal rank, counting a target below rank k as 0."""
    return float(reciprocal_ranks(ranks, k).mean()) if len(ranks) else 0.0


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    """nDCG@k over queries with one relevant item each (see `ndcg_gains`)."""
    return float(ndcg_gains(ranks, k).mean()) if len(ranks) else 0.0


def wilson_ci(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion p observed over n trials."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int) -> dict:
    """Recall@k of A minus B on the same queries, in points, with a 95% CI (paired normal)."""
    a = ((ranks_a >= 0) & (ranks_a < k)).astype(np.float64)
    b = ((ranks_b >= 0) & (ranks_b < k)).astype(np.float64)
    d = a - b
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    diff = float(d.mean()) if n else 0.0
    lo, hi = diff - Z95 * se, diff + Z95 * se
    return {"k": k, "diff": 100 * diff, "ci95": [100 * lo, 100 * hi], "n": n,
            "significant": bool(lo > 0 or hi < 0)}


def recall_report(ranks: np.ndarray, ks: tuple[int, ...]) -> dict:
    """recall@k (percent) with 95% CIs, and MRR, for every k."""
    out: dict = {"n": int(len(ranks))}
    for k in ks:
        r = recall_at(ranks, k)
        lo, hi = wilson_ci(r, len(ranks))
        out[f"recall@{k}"] = 100 * r
        out[f"recall@{k}_ci95"] = [100 * lo, 100 * hi]
    out["mrr"] = mrr(ranks)
    return out


def alignment(vectors: np.ndarray, sample: int, rng: np.random.Generator) -> dict:
    """Mean / std of cos over all distinct pairs of `sample` random rows of unit (N, D) vectors.

    A |mean| far from 0 means a common component dominates the space (whitening helps)."""
    rows = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
    x = vectors[rows].astype(np.float64)
    cos = (x @ x.T)[np.triu_indices(len(x), k=1)]
    mean = float(cos.mean()) if len(cos) else float("nan")
    return {"mean_cos": mean, "std_cos": float(cos.std()) if len(cos) else float("nan"),
            "mean_vector_norm": float(np.linalg.norm(x.mean(axis=0))),
            "sampled_rows": int(len(x)), "pairs": int(len(cos))}
