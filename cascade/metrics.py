"""Retrieval metrics on arrays, with article-clustered bootstrap CIs. Recalls are in percent.

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
    return float(hits_at(ranks, k).mean()) if len(ranks) else 0.0


def hit_percent(ranks: np.ndarray, k: int) -> float:
    """Hit@k in percent: 100 x the fraction of queries whose target is within the top k."""
    return float(100 * ((ranks >= 0) & (ranks < k)).mean()) if len(ranks) else 0.0


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank (0 for a target outside the list)."""
    return float(reciprocal_ranks(ranks).mean()) if len(ranks) else 0.0


def wilson_ci(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion p over n *independent* trials.

    Pairs of one article are not independent: report `cluster_bootstrap_ci` instead. Kept for
    the one place where trials are independent (a single query per article)."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


N_BOOT = 2000
BOOT_SEED = 0
_BOOT_CELLS = 1 << 23  # bound the (resamples, clusters) count matrix of one block to 64 MB


def cluster_bootstrap_ci(values: np.ndarray, clusters: np.ndarray | None = None,
                         n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                         level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap CI of the mean of per-query `values`, resampling whole clusters.

    values: (P,) or (P, M) per-query numbers (a hit 0/1, a reciprocal rank, a paired difference);
    clusters: (P,) cluster id of each query (the article of its target); None treats every
    query as its own cluster. Queries of one article are correlated (up to 30 pairs of one
    article at the checklist's settings), so resampling queries would make intervals too narrow:
    a resample draws articles with replacement and keeps all their queries. Returns (2,) or
    (2, M): the lower and upper bounds. Seeded: the same inputs give the same interval.
    """
    x = np.asarray(values, np.float64)
    one = x.ndim == 1
    x = x.reshape(len(x), -1)
    if not len(x):
        out = np.full((2, x.shape[1]), np.nan)
        return out[:, 0] if one else out
    if clusters is None:
        inverse = np.arange(len(x))
    else:
        _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    g = int(inverse.max()) + 1
    sums = np.zeros((g, x.shape[1]))
    np.add.at(sums, inverse, x)
    sizes = np.bincount(inverse, minlength=g).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, x.shape[1]))
    block = max(1, _BOOT_CELLS // g)
    for b0 in range(0, n_boot, block):
        b = min(block, n_boot - b0)
        draws = rng.integers(0, g, size=(b, g))
        # counts[i, j] = how often resample i drew cluster j
        counts = np.bincount((draws + g * np.arange(b)[:, None]).ravel(),
                             minlength=b * g).reshape(b, g).astype(np.float64)
        means[b0:b0 + b] = (counts @ sums) / (counts @ sizes)[:, None]
    tail = 100 * (1 - level) / 2
    out = np.percentile(means, [tail, 100 - tail], axis=0)
    return out[:, 0] if one else out


def mean_ci(values: np.ndarray, clusters: np.ndarray | None = None, scale: float = 1.0,
            seed: int = BOOT_SEED, n_boot: int = N_BOOT) -> tuple[float, list[float]]:
    """A metric with its clustered CI: the mean of per-query `values` (a hit, a reciprocal rank,
    a paired difference) and its 95% interval resampling `clusters` (see
    `cluster_bootstrap_ci`), both times `scale` (100: a fraction as percent)."""
    lo, hi = cluster_bootstrap_ci(values, clusters, n_boot, seed)
    return scale * float(values.mean()), [scale * float(lo), scale * float(hi)]


def difference_ci(values: np.ndarray, clusters: np.ndarray | None = None) -> dict:
    """Per-query paired differences -> {"diff": mean, "ci95": [lo, hi], "significant": the
    clustered 95% interval excludes 0}."""
    diff, (lo, hi) = mean_ci(values, clusters)
    return {"diff": diff, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}


def hits_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """(P,) 1.0 where the target is within the top k, else 0.0."""
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def reciprocal_ranks(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    """(P,) 1 / (rank + 1), 0 for a target outside the list (or below rank k: MRR@k)."""
    inside = ranks >= 0 if k is None else (ranks >= 0) & (ranks < k)
    return np.where(inside, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)


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


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int,
                      clusters: np.ndarray | None = None, n_boot: int = N_BOOT,
                      seed: int = BOOT_SEED) -> dict:
    """Recall@k of A minus B on the same queries, in points, with a 95% CI that resamples
    `clusters` (articles; None = each query its own cluster). `significant` means the interval
    excludes 0."""
    d = hits_at(ranks_a, k) - hits_at(ranks_b, k)
    n = len(d)
    diff, (lo, hi) = mean_ci(d, clusters, 100, seed, n_boot) if n else (0.0, (np.nan, np.nan))
    return {"k": k, "diff": diff, "ci95": [lo, hi], "n": n,
            "clusters": int(len(np.unique(clusters))) if clusters is not None else n,
            "ci_method": "article bootstrap" if clusters is not None else "query bootstrap",
            "significant": bool(n > 1 and (lo > 0 or hi < 0))}


def recall_report(ranks: np.ndarray, ks: tuple[int, ...], clusters: np.ndarray | None = None,
                  n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """recall@k (percent) and MRR, each with a 95% CI that resamples `clusters` (the article of
    each query's target; None = each query its own cluster)."""
    ranks = np.asarray(ranks)
    out: dict = {"n": int(len(ranks)),
                 "articles": int(len(np.unique(clusters))) if clusters is not None else None}
    cols = np.stack([hits_at(ranks, k) for k in ks] + [reciprocal_ranks(ranks)], axis=1)
    ci = cluster_bootstrap_ci(cols, clusters, n_boot, seed) if len(ranks) else None
    for j, k in enumerate(ks):
        out[f"recall@{k}"] = 100 * recall_at(ranks, k)
        out[f"recall@{k}_ci95"] = ([100 * float(ci[0, j]), 100 * float(ci[1, j])]
                                   if ci is not None else [0.0, 100.0])
    out["mrr"] = mrr(ranks)
    out["mrr_ci95"] = [float(ci[0, -1]), float(ci[1, -1])] if ci is not None else [0.0, 1.0]
    out["ci_method"] = "article bootstrap" if clusters is not None else "query bootstrap"
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
