"""The FAISS index over the bank, and search that leaves out each query's own context rows.

A context's rows are in the bank, so a last-vector query finds itself first. Stage 1 therefore
excludes the context window [ctx_start, ctx_end) of each query, in evaluation and serving alike.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

# Above this many rows x dims, stage 1 should serve an ANN index (training.tune_index) rather
# than exact search: where one served search costs about twice the default bank's. Measured
# (issue 24, in_process, one client, the same build and machine): 6.7 ms on the default bank
# (36k x 384 = 14M) and 24.5 ms on 500k x 384 (192M): a + b * size with a = 5.3 ms and
# b = 0.1 ms per million, which doubles 6.7 ms at ~80M (e.g. 210k x 384 or 105k x 768).
# serving.yaml's stage1.exact_max_size and tune_index's --exact-max-size default to it.
EXACT_MAX_SIZE = 80_000_000
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

    With `prefilter=True` a search of fewer than BLAS_MIN_QUERIES queries (serving's one
    context) reads an 8-bit copy of the bank (a quarter of the bytes; the float scan is bound by
    memory bandwidth) and then rescores exactly: still exact, see `Int8Prefilter`.
    """

    def __init__(self, vectors: np.ndarray, prefilter: bool = False):
        self.xb = np.ascontiguousarray(vectors, dtype=np.float32)  # no copy for a bank's array
        self.ntotal = len(self.xb)
        self.d = self.xb.shape[1]
        self.use_prefilter = bool(prefilter and self.ntotal)
        self._prefilter: Int8Prefilter | None = None
        self._build = threading.Lock()

    @property
    def prefilter(self) -> Int8Prefilter | None:
        """The 8-bit copy, built on first use (a search of fewer than BLAS_MIN_QUERIES queries,
        or serving's warm-up): batched evaluation and mining never pay for it."""
        if self.use_prefilter and self._prefilter is None:
            with self._build:
                if self._prefilter is None:
                    self._prefilter = Int8Prefilter(self.xb)
        return self._prefilter

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if self.use_prefilter and len(xq) < BLAS_MIN_QUERIES and k < self.ntotal:
            found = [self.prefilter.search(q, k) for q in xq]
            return np.stack([f[0] for f in found]), np.stack([f[1] for f in found])
        with _PATH_LOCK:  # the threshold is process-wide: no other search may change it meanwhile
            before = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 0 if len(xq) >= BLAS_MIN_QUERIES \
                else 2**31 - 1
            try:
                return faiss.knn(xq, self.xb, k, metric=faiss.METRIC_INNER_PRODUCT)
            finally:  # other FAISS indexes in the process keep FAISS's own choice
                faiss.cvar.distance_compute_blas_threshold = before


class Int8Prefilter:
    """Exact top-k of one query from an 8-bit scan plus an exact rescore of a bounded shortlist.

    The float scan of one query is bound by memory bandwidth; FAISS's direct int8 codes are a
    quarter of the bytes and its int8 x int8 kernel is fast, so:

    - each dimension d of the bank is scaled by s_d = 127 / max |x_d| and rounded to an integer
      code c_d (|c_d| <= 127); the query u = q / s is scaled by t = 127 / max |u| and rounded to
      integers too (FAISS casts the query of these codes to int8 when D >= 16);
    - a row's approximate score a = (round(t u) . c) / t differs from its exact score q . x by
      at most eps = |q| r + |round(t u) / t - u| C (Cauchy-Schwarz on each rounding), where r is
      the largest |c / s - x| and C the largest |c| over the bank's rows, plus float rounding;
    - if A is the k-th best approximate score, every row of the exact top k has a >= A - 2 eps
      (k rows score at least A - eps exactly). The scan returns the best k' approximate rows;
      when the last of them scores below A - 2 eps the shortlist holds every such row, which
      is rescored with the float32 vectors. Otherwise k' grows until it does (at worst every
      row: the exact scan).

    The first k' is 2k + 512, or more when recent shortlists were longer (`hint`).
    On the default bank (36k x 384, k = 500 plus the context) the shortlist is about a thousand
    rows and the scan reads 14 MB instead of 56 MB: 2.8 ms instead of 5.8 (1 thread)."""

    SLACK = 1e-4  # float32 rounding of the scores, with a wide margin

    def __init__(self, vectors: np.ndarray, block: int = 65536):
        n, d = vectors.shape
        self.xb = vectors
        self.scale = (127.0 / np.maximum(np.abs(vectors).max(axis=0), 1e-30)).astype(np.float32)
        self.codes = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit_direct_signed,
                                                faiss.METRIC_INNER_PRODUCT)
        self.radius = self.code_norm = 0.0
        self.widened = 0  # searches whose first shortlist was too short (the bound did not cut)
        # 1.25 x a slowly decaying maximum of the shortlists the bound asked for: the first
        # fetch covers them, so a bank whose scores crowd (the long-document bank's shortlists
        # run 1,300-1,900 rows) does not scan twice for a fifth of its queries.
        self.hint = 0
        for lo in range(0, n, block):  # blocks bound the float temporaries of a large bank
            c = np.rint(vectors[lo:lo + block] * self.scale).astype(np.float32)
            self.codes.add(c)  # direct_signed stores floor(v) + 128: integers as they are
            err = np.linalg.norm(c / self.scale - vectors[lo:lo + block], axis=1)
            self.radius = max(self.radius, float(err.max()))
            self.code_norm = max(self.code_norm, float(np.linalg.norm(c, axis=1).max()))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(k,) exact scores and ids, best first, for one (D,) query; k < the bank's rows."""
        n = len(self.xb)
        u = q.astype(np.float64) / self.scale
        top = float(np.abs(u).max())
        if top == 0.0 or not np.isfinite(top):
            self.widened += 1
            return self.rescore(q, np.arange(n), k)
        t = 127.0 / top
        qi = np.clip(np.rint(u * t), -127, 127)
        eps = (float(np.linalg.norm(q)) * self.radius
               + float(np.linalg.norm(qi / t - u)) * self.code_norm + self.SLACK)
        fetch = min(max(2 * k + 512, self.hint), n)
        while True:
            a, ids = self.codes.search(qi.astype(np.float32)[None], fetch)
            a, ids = a[0] / t, ids[0]
            floor = a[k - 1] - 2 * eps  # every row of the exact top k scores at least this
            if fetch == n or a[-1] < floor:  # every row above the floor is in the shortlist
                keep = ids[a >= floor]
                self.hint = max(int(1.25 * len(keep)), int(0.98 * self.hint))
                return self.rescore(q, keep, k)
            fetch = min(4 * fetch, n)
            self.widened += 1

    def rescore(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        exact = self.xb[rows] @ q  # fancy indexing: np.take is ~1000x slower on an unaligned map
        best = np.argsort(-exact, kind="stable")[:k]
        return exact[best].astype(np.float32), rows[best].astype(np.int64)


class RescoredIndex:
    """An approximate (ANN) index's shortlist, rescored exactly from the bank's own vectors.

    The ANN index (IVF or HNSW over 8-bit or PQ codes) only picks `shortlist` candidate rows;
    their scores are then computed from `vectors` (the bank's memory map, shared by every
    process: unlike FAISS's RFlat, which keeps a private float copy) and the best k returned in
    FAISS's exact order (score descending, the larger id first on a tie). So every returned
    score is the exact one; only which rows reach the shortlist is approximate, which is what
    containment@500 measures (training.tune_index)."""

    def __init__(self, ann: faiss.Index, vectors: np.ndarray, shortlist: int = 1000):
        if ann.ntotal != len(vectors):
            raise ValueError(f"the ANN index holds {ann.ntotal} rows, the bank {len(vectors)}")
        self.ann = ann
        self.xb = vectors
        self.ntotal = int(ann.ntotal)
        self.d = int(ann.d)
        self.shortlist = int(shortlist)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        fetch = min(max(self.shortlist, k), self.ntotal)
        _, cand = self.ann.search(xq, fetch)
        D = np.full((len(xq), k), -np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)
        for b in range(len(xq)):
            rows = np.sort(cand[b][cand[b] >= 0])  # in file order: the map is read forwards
            exact = self.xb[rows] @ xq[b]  # not np.take: slow on the unaligned map of an .npz
            order = np.lexsort((-rows, -exact))[:k]
            D[b, :len(order)], I[b, :len(order)] = exact[order], rows[order]
        return D, I


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
