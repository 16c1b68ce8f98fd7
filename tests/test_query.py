"""Heuristic queries against a per-pair Python loop: exp(-alpha * age), age 0 = last chunk."""

from __future__ import annotations

import numpy as np
import pytest

import cascade.query as query
from cascade.pairs import Pairs, context_windows
from cascade.query import exp_weighted, exp_weights, heuristic_queries, last_vector


@pytest.fixture(scope="module")
def pairs(small_bank):
    """Pairs with contexts of 1-12 rows (some across article boundaries: the loop doesn't care)."""
    rng = np.random.default_rng(3)
    target = rng.integers(12, small_bank.n, size=700)
    ctx_end = target - rng.integers(0, 3, size=700)  # context need not touch the target
    ctx_start = ctx_end - rng.integers(1, 13, size=700)
    return Pairs(ctx_start, ctx_end, target, np.zeros(700, np.uint8))


def _loop_query(vectors, s, e, kind, alpha, max_len):
    ctx = vectors[s:e] if max_len is None else vectors[max(s, e - max_len):e]
    if kind == "last_vector":
        return ctx[-1]
    q = np.zeros(vectors.shape[1], np.float64)
    for j, v in enumerate(ctx):
        age = len(ctx) - 1 - j
        q += np.exp(-alpha * age) * v
    return q / np.linalg.norm(q)


@pytest.mark.parametrize("kind", ["exp_weighted", "last_vector"])
@pytest.mark.parametrize("alpha,max_len", [(0.1, None), (0.5, 4), (0.0, 1), (2.0, None)])
def test_heuristic_queries_vs_loop(small_bank, pairs, kind, alpha, max_len):
    V = small_bank.vectors
    got = heuristic_queries(V, pairs, kind, alpha, max_len)
    assert got.shape == (len(pairs), small_bank.dim) and got.dtype == np.float32
    for i in range(len(pairs)):
        exp = _loop_query(V, pairs.ctx_start[i], pairs.ctx_end[i], kind, alpha, max_len)
        np.testing.assert_allclose(got[i], exp, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_exp_weights_vs_loop():
    lengths = np.array([1, 4, 7, 2])
    mask = np.arange(7)[None, :] < lengths[:, None]
    w = exp_weights(mask, alpha=0.3)
    for i, n in enumerate(lengths):
        exp = [np.exp(-0.3 * (n - 1 - j)) for j in range(n)] + [0.0] * (7 - n)
        np.testing.assert_allclose(w[i], exp, rtol=1e-6)
    assert w.dtype == np.float32 and w[1, 3] == 1.0  # the last chunk has age 0


def test_exp_weighted_and_last_vector_direct(small_bank, pairs):
    rows, mask = context_windows(pairs.subset(np.arange(50)))
    ctx = small_bank.vectors[rows]
    np.testing.assert_array_equal(last_vector(ctx, mask),
                                  small_bank.vectors[pairs.ctx_end[:50] - 1])
    q = exp_weighted(ctx, mask, alpha=0.1)
    np.testing.assert_allclose(q, heuristic_queries(small_bank.vectors, pairs.subset(
        np.arange(50))), atol=1e-6)


@pytest.mark.parametrize("kind", ["exp_weighted", "last_vector"])
def test_batched_equals_unbatched(monkeypatch, small_bank, pairs, kind):
    whole = heuristic_queries(small_bank.vectors, pairs, kind, max_len=6)
    monkeypatch.setattr(query, "_BATCH", 64)  # 700 pairs: 11 batches, the last one partial
    batched = heuristic_queries(small_bank.vectors, pairs, kind, max_len=6)
    np.testing.assert_allclose(batched, whole, atol=1e-6)
    monkeypatch.setattr(query, "_BATCH", 1)
    one = heuristic_queries(small_bank.vectors, pairs.subset(np.arange(40)), kind, max_len=6)
    np.testing.assert_allclose(one, whole[:40], atol=1e-6)


def test_unknown_kind_raises(small_bank, pairs):
    with pytest.raises(ValueError, match="unknown heuristic 'median'"):
        heuristic_queries(small_bank.vectors, pairs, "median")
    with pytest.raises(ValueError, match="unknown heuristic 'median'"):
        heuristic_queries(small_bank.vectors, pairs.subset(np.arange(0)), "median")


def test_mean_is_the_normalized_average_of_the_context(small_bank, pairs):
    q = heuristic_queries(small_bank.vectors, pairs, "mean")
    for i in range(0, len(pairs), 97):
        m = small_bank.vectors[pairs.ctx_start[i]:pairs.ctx_end[i]].astype(np.float64).mean(0)
        np.testing.assert_allclose(q[i], m / np.linalg.norm(m), atol=1e-5)


def test_empty_pairs(small_bank, pairs):
    q = heuristic_queries(small_bank.vectors, pairs.subset(np.arange(0)))
    assert q.shape == (0, small_bank.dim)
