"""Clean hard negatives against a brute-force per-query filter, with planted duplicates."""

from __future__ import annotations

import numpy as np
import pytest

import cascade.negatives as negatives
from cascade.index import build_index, search
from cascade.negatives import DUP_THRESHOLD, clean_negatives, separation_margin
from cascade.pairs import Pairs
from cascade.query import heuristic_queries


@pytest.fixture(scope="module")
def setup(small_bank):
    """Vectors with 60 targets near-duplicated elsewhere; half oracle, half heuristic queries."""
    rng = np.random.default_rng(4)
    V = small_bank.vectors.copy()
    n = len(V)
    starts, ends = small_bank.article_bounds()
    t = np.concatenate([np.arange(s + 2, e) for s, e in zip(starts, ends, strict=True)])
    t = rng.choice(t, size=400, replace=False)
    pairs = Pairs(np.maximum(t - 6, starts[np.searchsorted(starts, t, "right") - 1]), t, t,
                  np.zeros(len(t), np.uint8))
    for target in t[:60]:
        row = (target + n // 2) % n  # another article, half the bank away
        dup = V[target] + 0.01 * rng.standard_normal(V.shape[1]).astype(np.float32)
        V[row] = dup / np.linalg.norm(dup)
    q = heuristic_queries(V, pairs)
    q[::2] = V[pairs.target[::2]]  # oracle queries: the positive and its duplicate come first
    D, I = search(build_index(V, "flat"), q, 48, pairs.ctx_start, pairs.ctx_end)
    return V, pairs, q, D, I, small_bank.article_indices


def _brute_force(V, q, D, I, pos, n, threshold, cos_min, cos_max):
    rows = np.full((len(q), n), -1)
    cos = np.full((len(q), n), -np.inf, np.float32)
    for i in range(len(q)):
        kept = [(r, d) for r, d in zip(I[i], D[i], strict=True)
                if r >= 0 and r != pos[i] and float(V[r] @ V[pos[i]]) <= threshold
                and cos_min <= d <= cos_max][:n]
        for j, (r, d) in enumerate(kept):
            rows[i, j], cos[i, j] = r, d
    return rows, cos


def _rates(V, D, I, pos, art, n, threshold, cos_min, cos_max):
    P = len(I)
    top_I = I[:, :n]
    positive = sum(pos[i] in top_I[i] for i in range(P)) / P
    same = sum(any(r >= 0 and r != pos[i] and art[r] == art[pos[i]] for r in top_I[i])
               for i in range(P)) / P
    dup = sum(1 for i in range(P) for r in top_I[i]
              if r >= 0 and r != pos[i] and V[r] @ V[pos[i]] > threshold)
    dropped = sum(1 for i in range(P) for r, d in zip(I[i], D[i], strict=True) if r >= 0 and (
        r == pos[i] or V[r] @ V[pos[i]] > threshold or not cos_min <= d <= cos_max))
    return positive, same, dup / (P * n), dropped / (I >= 0).sum()


@pytest.mark.parametrize("n,cos_min,cos_max", [(16, -1.0, 1.0), (8, 0.3, 0.8), (40, -1.0, 0.9)])
def test_clean_negatives_vs_brute_force(monkeypatch, setup, n, cos_min, cos_max):
    V, pairs, q, D, I, art = setup
    monkeypatch.setattr(negatives, "_BATCH", 37)  # 400 queries: 11 batches, the last partial
    pos = pairs.target
    got = clean_negatives(q, D, I, V, pos, art, n, DUP_THRESHOLD, cos_min, cos_max)
    rows, cos = _brute_force(V, q, D, I, pos, n, DUP_THRESHOLD, cos_min, cos_max)
    np.testing.assert_array_equal(got.rows, rows)
    np.testing.assert_array_equal(got.cos, cos)
    rates = _rates(V, D, I, pos, art, n, DUP_THRESHOLD, cos_min, cos_max)
    assert (got.positive_rate, got.same_article_rate, got.near_dup_rate,
            got.dropped_fraction) == pytest.approx(rates)
    if n == 16:  # the planted duplicates and the oracle queries are seen
        assert got.positive_rate > 0.4 and got.near_dup_rate > 0 and got.same_article_rate > 0


def test_near_dup_rate_counts_duplicates_far_from_the_query(setup):
    """Heuristic queries sit well below cos 0.98 to everything, yet their raw top-16 holds
    planted near-duplicates of the positive: the rate must count what the filter removes."""
    V, pairs, q, D, I, art = setup
    sl = slice(1, None, 2)  # the heuristic queries
    assert (D[sl, :16] < DUP_THRESHOLD).all()
    got = clean_negatives(q[sl], D[sl], I[sl], V, pairs.target[sl], art, 16)
    top = I[sl, :16]
    cos_pos = np.einsum("pkd,pd->pk", V[np.maximum(top, 0)], V[pairs.target[sl]])
    dups = (top >= 0) & (top != pairs.target[sl, None]) & (cos_pos > DUP_THRESHOLD)
    assert dups.sum() > 0
    assert got.near_dup_rate == pytest.approx(dups.sum() / dups.size)


def test_clean_negatives_invariants(setup):
    V, pairs, q, D, I, art = setup
    pos = pairs.target
    got = clean_negatives(q, D, I, V, pos, art, 16, cos_min=0.2, cos_max=0.95)
    valid = got.rows >= 0
    assert not (got.rows == pos[:, None]).any()
    cos_pos = np.einsum("pkd,pd->pk", V[np.where(valid, got.rows, 0)], V[pos])
    assert not (valid & (cos_pos > DUP_THRESHOLD)).any()
    assert ((got.cos[valid] >= 0.2) & (got.cos[valid] <= 0.95)).all()
    assert (got.cos[~valid] == -np.inf).all()
    # -1 only as trailing padding: once a row is padding, all after it are too.
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()
    assert not ((got.rows >= pairs.ctx_start[:, None]) & (got.rows < pairs.ctx_end[:, None])).any()
    np.testing.assert_allclose(got.cos[valid], np.einsum(
        "pkd,pd->pk", V[np.where(valid, got.rows, 0)], q)[valid], atol=1e-5)


def test_fewer_candidates_than_n_pads(setup):
    V, pairs, q, D, I, art = setup
    got = clean_negatives(q, D[:, :10], I[:, :10], V, pairs.target, art, 16)
    assert got.rows.shape == got.cos.shape == (len(q), 16)
    assert (got.rows[:, 10:] == -1).all() and (got.cos[:, 10:] == -np.inf).all()


def test_no_queries(setup):
    V, pairs, q, D, I, art = setup
    got = clean_negatives(q[:0], D[:0], I[:0], V, pairs.target[:0], art, 16)
    assert got.rows.shape == (0, 16) and got.positive_rate == 0.0


def test_separation_margin_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    pos = np.array([[0.8, 0.6], [0.6, 0.8]], np.float32)  # cos 0.8 each
    neg_cos = np.array([[0.5, 0.3, -np.inf], [0.1, -np.inf, -np.inf]], np.float32)
    out = separation_margin(q, pos, neg_cos)
    assert out["pos_cos"] == pytest.approx(0.8)
    assert out["neg_cos"] == pytest.approx(0.3)  # mean of the 3 real negatives, not of 6 slots
    assert out["margin"] == pytest.approx(0.5)
    assert all(np.isfinite(v) for v in out.values())


def test_separation_margin_from_clean_negatives(setup):
    V, pairs, q, D, I, art = setup
    got = clean_negatives(q, D[:, :20], I[:, :20], V, pairs.target, art, 16, cos_max=0.5)
    assert (got.rows == -1).any()  # padding is present
    out = separation_margin(q, V[pairs.target], got.cos)
    assert all(np.isfinite(v) for v in out.values())
    pos_cos = np.mean([q[i] @ V[t] for i, t in enumerate(pairs.target)])
    assert out["pos_cos"] == pytest.approx(pos_cos, abs=1e-5)
    assert out["neg_cos"] == pytest.approx(got.cos[got.rows >= 0].mean(), abs=1e-5)
