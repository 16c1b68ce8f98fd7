"""`evaluate` against a brute-force numpy evaluation over the whole bank, context rows masked."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.evaluation import evaluate
from cascade.index import build_index
from cascade.metrics import mrr, recall_at
from cascade.negatives import DUP_THRESHOLD
from cascade.pairs import TRAIN, Pairs
from cascade.query import heuristic_queries

KS = (1, 10, 100)


@pytest.fixture(scope="module")
def setup(small_bank):
    starts, ends = small_bank.article_bounds()
    t = np.concatenate([np.arange(s + 1, e) for s, e in zip(starts, ends, strict=True)])
    t = np.random.default_rng(8).choice(t, size=500, replace=False)
    first = starts[np.searchsorted(starts, t, "right") - 1]
    pairs = Pairs(np.maximum(t - 8, first), t, t, np.full(len(t), TRAIN, np.uint8))
    return small_bank, pairs, build_index(small_bank.vectors, "flat")


def _scores(q, V, pairs):
    S = q.astype(np.float64) @ V.T.astype(np.float64)
    for i, (s, e) in enumerate(zip(pairs.ctx_start, pairs.ctx_end, strict=True)):
        S[i, s:e] = -np.inf
    return S


def _brute_force_ranks(S, target, kmax):
    order = np.argsort(-S, axis=1, kind="stable")
    ranks = np.array([int(np.flatnonzero(o == t)[0]) for o, t in zip(order, target, strict=True)])
    return np.where(ranks < kmax, ranks, -1)


def _brute_force_margin(q, V, pairs, S, n=16):
    cos_pos = V[pairs.target] @ V.T
    neg = []
    for i, t in enumerate(pairs.target):
        ok = np.isfinite(S[i]) & (np.arange(len(V)) != t) & (cos_pos[i] <= DUP_THRESHOLD)
        order = np.argsort(-S[i], kind="stable")
        neg.extend(S[i, order[ok[order]][:n]])
    pos = np.einsum("pd,pd->p", q.astype(np.float64), V[pairs.target])
    return pos.mean() - np.mean(neg)


def _check_ranks(ranks, S, target, kmax, tol=1e-5):
    """Tie-tolerant: a rank lies between the count of rows scoring clearly above the target and
    the count scoring above or level with it."""
    st = S[np.arange(len(S)), target][:, None]
    above = (S > st + tol).sum(axis=1)
    level = (S >= st - tol).sum(axis=1) - 1
    found = ranks >= 0
    assert ((above <= ranks) & (ranks <= level))[found].all()
    assert (above[~found] >= kmax - 1).all() and (level[~found] >= kmax).all()


@pytest.mark.parametrize("kind", ["exp_weighted", "last_vector"])
def test_evaluate_equals_brute_force(setup, kind):
    bank, pairs, index = setup
    q = heuristic_queries(bank.vectors, pairs, kind)
    metrics, ranks = evaluate(q, pairs, bank, index, ks=KS)
    S = _scores(q, bank.vectors, pairs)
    bf = _brute_force_ranks(S, pairs.target, max(KS))
    _check_ranks(ranks, S, pairs.target, max(KS))
    assert (ranks != bf).mean() < 0.01  # differences only where scores tie to float precision
    for k in KS:
        assert metrics[f"recall@{k}"] == pytest.approx(100 * recall_at(bf, k), abs=0.5)
        lo, hi = metrics[f"recall@{k}_ci95"]
        assert lo <= metrics[f"recall@{k}"] <= hi
    assert metrics["mrr"] == pytest.approx(mrr(bf), abs=2e-3)
    assert metrics["n"] == len(pairs)
    assert metrics["margin"] == pytest.approx(_brute_force_margin(q, bank.vectors, pairs, S),
                                              abs=1e-5)
    assert metrics["pos_cos"] - metrics["neg_cos"] == pytest.approx(metrics["margin"])
    for key in ("raw_top16_positive_rate", "raw_top16_same_article_rate",
                "raw_top16_near_dup_rate"):
        assert 0.0 <= metrics[key] <= 1.0


def test_last_vector_never_finds_its_own_context(setup):
    bank, pairs, index = setup
    q = heuristic_queries(bank.vectors, pairs, "last_vector")
    _, ranks = evaluate(q, pairs, bank, index, ks=KS)
    S_raw = q.astype(np.float64) @ bank.vectors.T.astype(np.float64)
    # Without exclusion the query's own row (cos 1) beats the target every time ...
    assert (S_raw[np.arange(len(q)), pairs.ctx_end - 1] >
            S_raw[np.arange(len(q)), pairs.target]).all()
    # ... so rank 0 for a target is only possible because context rows were excluded, and the
    # ranks equal those over the bank with the context rows masked.
    assert (ranks == 0).any()
    S = _scores(q, bank.vectors, pairs)
    _check_ranks(ranks, S, pairs.target, max(KS))


def test_oracle_queries_find_every_target(setup):
    bank, pairs, index = setup
    V = bank.vectors
    q = V[pairs.target].copy()
    cos = q @ V.T
    cos[np.arange(len(q)), pairs.target] = -1
    assert cos.max() < DUP_THRESHOLD, "the synthetic bank has near-duplicates: pick another seed"
    metrics, ranks = evaluate(q, pairs, bank, index, ks=KS)
    assert metrics["recall@1"] == metrics["recall@10"] == 100.0
    assert (ranks == 0).all() and metrics["mrr"] == pytest.approx(1.0)
    assert metrics["raw_top16_positive_rate"] == 1.0  # the positive tops the raw list ...
    assert metrics["pos_cos"] == pytest.approx(1.0, abs=1e-5)  # ... but is never a negative
    assert metrics["neg_cos"] < DUP_THRESHOLD and metrics["margin"] > 0


def test_oracle_with_a_duplicate_target(setup):
    bank, pairs, _ = setup
    V = bank.vectors.copy()
    t = int(pairs.target[0])
    twin = (t + len(V) // 2) % len(V)
    V[twin] = V[t]  # an exact duplicate elsewhere in the bank
    dup_bank = type(bank)(vectors=V, article_indices=bank.article_indices,
                          chunk_indices=bank.chunk_indices)
    metrics, ranks = evaluate(V[pairs.target], pairs, dup_bank, build_index(V, "flat"), ks=KS)
    assert ranks[0] in (0, 1) and metrics["recall@10"] == 100.0  # carried by row id, not lookup
    assert metrics["raw_top16_near_dup_rate"] > 0
