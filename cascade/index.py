"""The FAISS index over the bank, and search that leaves out each query's own context rows.

A context's rows are in the bank, so a last-vector query finds itself first. Stage 1 therefore
excludes the context window [ctx_start, ctx_end) of each query, in evaluation and serving alike.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

FLAT_MAX_ROWS = 200_000  # above this, "auto" builds an IVF index
# From this many queries per call, exact search computes scores with one BLAS matrix product per
# block of queries (the bank is read once per block) instead of one SIMD dot product per (query,
# row) (the bank is read once per query). Measured on the default bank, 1 thread, k = 508: 1 query
# 5.7 ms per-query vs 14.4 ms BLAS; 4 queries 22.5 vs 14.9; 64 queries 363 vs 49. FAISS picks the
# path by a global threshold that does not depend on the number of queries
# (`distance_compute_blas_threshold`), so ExactIndex sets it for each call, under a lock. Scores
# of the two paths differ by float rounding only (<= 5e-7 on unit vectors).
BLAS_MIN_QUERIES = 4
_PATH_LOCK = threading.Lock()


class ExactIndex:
    """Exact inner-product search over an (N, D) float32 array, in place.

    FAISS's brute-force kernel (`faiss.knn`) without the copy of the vectors an IndexFlatIP
    keeps, so exact search costs no memory beyond the bank. It has the part of the faiss index
    API the helpers below use (`ntotal`, `search`).
    """

    def __init__(self, vectors: np.ndarray):
        self.xb = np.ascontiguousarray(vectors, dtype=np.float32)  # no copy for a bank's array
        self.ntotal = len(self.xb)
        self.d = self.xb.shape[1]

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        with _PATH_LOCK:  # the threshold is process-wide: no other search may change it meanwhile
            faiss.cvar.distance_compute_blas_threshold = 0 if len(xq) >= BLAS_MIN_QUERIES \
                else 2**31 - 1
            return faiss.knn(xq, self.xb, k, metric=faiss.METRIC_INNER_PRODUCT)


def build_index(vectors: np.ndarray, kind: str = "auto", nprobe: int = 32,
                seed: int = 0) -> faiss.Index | ExactIndex:
    """Inner-product index over unit (N, D) vectors.

    "flat" (exact, over the array in place), "ivf" (IVF, float storage), "ivf_sq8" (IVF, 8-bit
    scalar-quantized storage: a quarter of the memory, cosines within ~1e-3), or "auto": flat up
    to FLAT_MAX_ROWS rows, ivf_sq8 above, where exact search over every training pair would be
    slow. IVF is approximate: use it for mining, and "flat" wherever a recall is reported.
    """
    n, d = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX_ROWS else "ivf_sq8"
    if kind == "flat":
        return ExactIndex(vectors)
    if kind in ("ivf", "ivf_sq8"):
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist,
                                                  faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        # 39 points per list is FAISS's floor for k-means without a warning; more only costs
        # memory (the sample is a copy) and training time.
        sample = vectors[np.sort(rng.choice(n, size=min(n, 39 * nlist), replace=False))]
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = nprobe
    else:
        raise ValueError(f"unknown index kind {kind!r} (auto, flat, ivf, ivf_sq8)")
    index.add(vectors)
    return index


def drop_rows(D: np.ndarray, I: np.ndarray, drop: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Remove entries where `drop` (B, K') is True, keeping order; pad with -inf / -1 to k."""
    drop = drop | (I < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    D = np.take_along_axis(D, order, axis=1)
    I = np.take_along_axis(I, order, axis=1)
    gone = np.take_along_axis(drop, order, axis=1)
    D, I = np.where(gone, -np.inf, D).astype(np.float32), np.where(gone, -1, I)
    if I.shape[1] < k:  # fewer candidates than k
        pad = ((0, 0), (0, k - I.shape[1]))
        D = np.pad(D, pad, constant_values=-np.inf)
        I = np.pad(I, pad, constant_values=-1)
    return D, I


def search(index: faiss.Index, xq: np.ndarray, k: int, ctx_start: np.ndarray | None = None,
           ctx_end: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (D, I) for (B, D) queries, excluding each query's rows [ctx_start, ctx_end)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if ctx_start is None:
        D, I = index.search(xq, k)
        return np.where(I < 0, -np.inf, D).astype(np.float32), I  # faiss pads with -FLT_MAX
    extra = int((ctx_end - ctx_start).max()) if len(xq) else 0
    D, I = index.search(xq, min(k + extra, index.ntotal))
    inside = (I >= ctx_start[:, None]) & (I < ctx_end[:, None])
    return drop_rows(D, I, inside, k)  # pads to k when the bank is smaller than k + context


def search_batched(index: faiss.Index, xq: np.ndarray, k: int, ctx_start: np.ndarray,
                   ctx_end: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`search` in query batches, bounding the (B, k + context) temporaries."""
    parts = [search(index, xq[lo:lo + batch], k, ctx_start[lo:lo + batch], ctx_end[lo:lo + batch])
             for lo in range(0, len(xq), batch)]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
