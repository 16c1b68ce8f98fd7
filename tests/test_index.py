"""FAISS index and context-excluding search against brute-force numpy, tolerating ties."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.index import build_index, drop_rows, search, search_batched
from training.synth_bank import SynthConfig, synth_bank


def assert_topk(D, I, S, k, atol=1e-5):
    """(D, I) is a top-k of the score matrix S (B, N) where -inf marks forbidden rows.

    Tie-tolerant: the returned scores equal S at the returned rows, are in descending order and
    equal the sorted top-k of S; so the rows are a top-k up to the order of equal scores.
    """
    assert D.shape == I.shape == (len(S), k)
    exp = -np.sort(-S, axis=1)[:, :k]
    real = I >= 0
    np.testing.assert_array_equal(real, np.isfinite(exp), "padding where rows remain")
    assert (D[~real] == -np.inf).all() and (I[~real] == -1).all()
    np.testing.assert_allclose(D[real], exp[real], atol=atol)
    got = np.take_along_axis(S, np.where(real, I, 0), axis=1)
    np.testing.assert_allclose(got[real], D[real], atol=atol)
    assert np.isfinite(got[real]).all(), "a forbidden (context) row was returned"
    for row in I:
        kept = row[row >= 0]
        assert len(np.unique(kept)) == len(kept), "a row was returned twice"
    assert (np.diff(np.where(real, D, -1e30), axis=1) <= atol).all()


def _masked_scores(xq, xb, ctx_start, ctx_end):
    S = (xq.astype(np.float64) @ xb.T.astype(np.float64))
    cols = np.arange(len(xb))[None, :]
    S[(cols >= ctx_start[:, None]) & (cols < ctx_end[:, None])] = -np.inf
    return S


@pytest.fixture(scope="module")
def queries(small_bank):
    rng = np.random.default_rng(5)
    target = rng.integers(10, small_bank.n, size=300)
    ctx_end = target
    ctx_start = target - rng.integers(1, 10, size=300)
    # Last-vector queries: without exclusion each would find its own last context row first.
    xq = small_bank.vectors[ctx_end - 1].copy()
    return xq, ctx_start, ctx_end


@pytest.fixture(scope="module")
def flat(small_bank):
    return build_index(small_bank.vectors, "flat")


@pytest.mark.parametrize("k", [1, 10, 100])
def test_flat_equals_brute_force(small_bank, flat, queries, k):
    xq = queries[0]
    D, I = search(flat, xq, k)
    assert_topk(D, I, xq.astype(np.float64) @ small_bank.vectors.T.astype(np.float64), k)


def test_flat_with_ties(small_bank):
    xb = np.repeat(small_bank.vectors[:50], 3, axis=0)  # every score appears three times
    D, I = search(build_index(xb, "flat"), xb[:20], 7)
    assert_topk(D, I, xb[:20].astype(np.float64) @ xb.T.astype(np.float64), 7)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_search_excludes_context(small_bank, flat, queries, k):
    xq, ctx_start, ctx_end = queries
    D, I = search(flat, xq, k, ctx_start, ctx_end)
    inside = (I >= ctx_start[:, None]) & (I < ctx_end[:, None])
    assert not inside.any()
    assert_topk(D, I, _masked_scores(xq, small_bank.vectors, ctx_start, ctx_end), k)
    # Without exclusion the last-vector query finds its own row first: the test has teeth.
    _, I_raw = search(flat, xq, 1)
    assert (I_raw[:, 0] == ctx_end - 1).mean() > 0.99


def test_padding_when_bank_smaller_than_k_plus_context(small_bank):
    xb = small_bank.vectors[:12]
    index = build_index(xb, "flat")
    xq = xb[[3, 8]]
    ctx_start, ctx_end = np.array([1, 5]), np.array([4, 9])
    D, I = search(index, xq, 10, ctx_start, ctx_end)
    assert_topk(D, I, _masked_scores(xq, xb, ctx_start, ctx_end), 10)
    assert (I[0] >= 0).sum() == 9 and (I[1] >= 0).sum() == 8
    # k beyond the bank, with and without exclusion: trailing -1 / -inf, never -FLT_MAX.
    for D, I in (search(index, xq, 20, ctx_start, ctx_end), search(index, xq, 20)):
        assert D.shape == I.shape == (2, 20)
        assert (I[:, 12:] == -1).all() and (D[:, 12:] == -np.inf).all()
        assert np.isfinite(D[I >= 0]).all()


def test_search_batched_equals_search(flat, queries):
    xq, ctx_start, ctx_end = queries
    D, I = search(flat, xq, 25, ctx_start, ctx_end)
    Db, Ib = search_batched(flat, xq, 25, ctx_start, ctx_end, batch=7)
    np.testing.assert_array_equal(Ib, I)
    np.testing.assert_allclose(Db, D, atol=1e-6)
    D0, I0 = search_batched(flat, xq[:0], 25, ctx_start[:0], ctx_end[:0])
    assert D0.shape == I0.shape == (0, 25)


def test_build_index_kinds(small_bank):
    assert build_index(small_bank.vectors, "auto").ntotal == small_bank.n
    # Exact search runs over the bank's own array: no second copy of the vectors.
    assert np.shares_memory(build_index(small_bank.vectors, "flat").xb, small_bank.vectors)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(small_bank.vectors, "hnsw")


@pytest.fixture(scope="module")
def bank_20k():
    # 128 dims: at 32 the synthetic rows are so isotropic that IVF recall@10 at nprobe 32 sits
    # right at 0.90 (measured 0.90-0.91), too close to the bar; at 128 it is about 0.95.
    return synth_bank(SynthConfig(n=20_000, dim=128, mean_chunks=20, topics=8, seed=7))


def test_ivf_recall_vs_flat_and_determinism(bank_20k):
    xb = bank_20k.vectors
    rng = np.random.default_rng(11)
    rows = rng.integers(0, len(xb), size=500)
    xq = xb[rows] + 0.05 * rng.standard_normal((500, xb.shape[1])).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    ivf = build_index(xb, "ivf", nprobe=32, seed=3)
    assert ivf.nprobe == 32 and ivf.ntotal == len(xb)
    _, I_flat = search(build_index(xb, "flat"), xq, 10)
    _, I_ivf = search(ivf, xq, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I_flat, I_ivf, strict=True)])
    assert overlap > 0.9, f"ivf top-10 overlap with flat {overlap:.3f}"
    _, I_again = search(build_index(xb, "ivf", nprobe=32, seed=3), xq, 10)
    np.testing.assert_array_equal(I_again, I_ivf)
    # Context exclusion works the same on IVF results.
    ctx_start, ctx_end = rows - 3, rows + 1
    D, I = search(ivf, xq, 10, ctx_start, ctx_end)
    assert not ((I >= ctx_start[:, None]) & (I < ctx_end[:, None])).any()


def _drop_loop(D, I, drop, k):
    outD, outI = [], []
    for d, i, x in zip(D, I, drop, strict=True):
        keep = [(dd, ii) for dd, ii, xx in zip(d, i, x, strict=True) if not xx and ii >= 0][:k]
        keep += [(-np.inf, -1)] * (k - len(keep))
        outD.append([a for a, _ in keep])
        outI.append([b for _, b in keep])
    return np.array(outD, np.float32), np.array(outI)


@pytest.mark.parametrize("width,k", [(30, 10), (30, 30), (8, 12)])
def test_drop_rows_keeps_order(width, k):
    rng = np.random.default_rng(width + k)
    D = -np.sort(-rng.random((40, width)).astype(np.float32), axis=1)
    I = rng.integers(0, 1000, size=(40, width))
    I[:5, -3:] = -1  # faiss padding is dropped too
    drop = rng.random((40, width)) < 0.4
    drop[0] = True  # a query with nothing left
    Dk, Ik = drop_rows(D, I, drop, k)
    eD, eI = _drop_loop(D, I, drop, k)
    assert Dk.shape == Ik.shape == (40, k) and Dk.dtype == np.float32
    np.testing.assert_array_equal(Ik, eI)
    np.testing.assert_array_equal(Dk, eD)


# -- the exact 8-bit prefilter of single queries ----------------------------------------------

def _one_by_one(index, xq, k):
    found = [index.search(q[None], k) for q in xq]
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


@pytest.mark.parametrize("k", [1, 10, 500])
def test_prefilter_is_exact(small_bank, queries, k):
    """One query at a time (the path the prefilter takes) gives the exact top k."""
    from cascade.index import ExactIndex

    xq = queries[0][:60]
    index = ExactIndex(small_bank.vectors, prefilter=True)
    D, I = _one_by_one(index, xq, k)
    assert_topk(D, I, xq.astype(np.float64) @ small_bank.vectors.T.astype(np.float64), k)
    if k < 500:  # the bound cut: a shortlist, not every row (k = 500 is most of this bank)
        assert index.prefilter.widened == 0
    # ... and the same scores as the float scan, to float rounding
    D0, _ = _one_by_one(ExactIndex(small_bank.vectors), xq, k)
    np.testing.assert_allclose(D, D0, atol=1e-5)


def test_prefilter_widens_when_the_bound_does_not_cut():
    """Rows that all score nearly alike defeat the bound: the scan widens to every row and
    stays exact (and queries that are not unit vectors scale the bound)."""
    from cascade.index import ExactIndex

    rng = np.random.default_rng(0)
    base = rng.standard_normal(64).astype(np.float32)
    xb = base + 1e-3 * rng.standard_normal((3000, 64)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = 3.0 * xb[:5]
    index = ExactIndex(xb, prefilter=True)
    D, I = _one_by_one(index, xq, 200)
    assert_topk(D, I, xq.astype(np.float64) @ xb.T.astype(np.float64), 200, atol=1e-4)
    # the first query widens; the shortlist it needed sets the next ones' first fetch
    assert index.prefilter.widened == 1 and index.prefilter.hint > 2 * 200 + 512


def test_prefilter_excludes_context(small_bank, queries):
    from cascade.index import ExactIndex

    xq, ctx_start, ctx_end = (a[:40] for a in queries)
    index = ExactIndex(small_bank.vectors, prefilter=True)
    parts = [search(index, xq[i:i + 1], 50, ctx_start[i:i + 1], ctx_end[i:i + 1])
             for i in range(len(xq))]
    D, I = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    assert_topk(D, I, _masked_scores(xq, small_bank.vectors, ctx_start, ctx_end), 50)


def test_prefilter_is_built_on_first_single_query_only(small_bank, queries):
    """Batched evaluation and mining never build the 8-bit copy; one query does."""
    from cascade.index import ExactIndex

    index = ExactIndex(small_bank.vectors, prefilter=True)
    search(index, queries[0][:64], 10)
    assert index._prefilter is None
    search(index, queries[0][:1], 10)
    assert index._prefilter is not None
    assert ExactIndex(small_bank.vectors).prefilter is None  # off: never built


def test_exact_search_leaves_faiss_blas_threshold_as_it_found_it(small_bank, queries):
    """The threshold is process-wide: other FAISS indexes in the process keep their path."""
    import faiss

    from cascade.index import ExactIndex

    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        index = ExactIndex(small_bank.vectors)
        index.search(queries[0][:64], 10)
        index.search(queries[0][:1], 10)
        assert faiss.cvar.distance_compute_blas_threshold == 20
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
