"""Our recall, MRR@10 and nDCG@10 (cascade.metrics) equal an IR evaluation library's on the same
runs: ir-measures (trec_eval underneath) scores the very result lists stage 1 returns."""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
from ir_measures import RR, R, nDCG

from cascade.index import build_index, search_batched
from cascade.metrics import mrr_at, ndcg_at, ndcg_gains, recall_at, reciprocal_ranks, target_ranks
from cascade.pairs import Pairs
from cascade.query import heuristic_queries
from training.synth_bank import SynthConfig, synth_bank

KS = (1, 5, 10, 50, 100, 500, 1000)


@pytest.fixture(scope="module")
def bank():
    """Large and noisy enough that some targets fall outside the top 1000."""
    return synth_bank(SynthConfig(n=12_000, dim=32, mean_chunks=20, topics=4, noise=1.5, seed=3))


def _pairs(bank, n: int = 400, context: int = 6) -> Pairs:
    """`n` full-context windows drawn from every article: predict row t from [t - context, t)."""
    starts, ends = bank.article_bounds()
    target = np.concatenate([np.arange(s + context, e) for s, e in zip(starts, ends,
                                                                        strict=True)])
    target = np.sort(np.random.default_rng(0).choice(target, size=n, replace=False))
    return Pairs(target - context, target, target, np.zeros(len(target), np.uint8))


def _runs(I: np.ndarray, D: np.ndarray, target: np.ndarray) -> tuple[list, list]:
    """qrels (the target, relevance 1) and the scored run exactly as stage 1 returned it.

    trec_eval sorts a run by score and breaks ties by doc id, so the score given is minus the
    position: the library sees our order, whatever FAISS's cosines were (D only checks that the
    list is sorted)."""
    assert (np.diff(D, axis=1) <= 1e-6).all()
    qrels = [ir_measures.Qrel(str(q), str(t), 1) for q, t in enumerate(target)]
    run = [ir_measures.ScoredDoc(str(q), str(doc), float(-pos))
           for q, row in enumerate(I) for pos, doc in enumerate(row) if doc >= 0]
    return qrels, run


@pytest.fixture(scope="module", params=["exp_weighted", "last_vector"])
def stage1_run(request, bank):
    pairs = _pairs(bank)
    q = heuristic_queries(bank.vectors, pairs, request.param)
    D, I = search_batched(build_index(bank.vectors, "flat"), q, max(KS), pairs.ctx_start,
                          pairs.ctx_end)
    ranks = target_ranks(I, pairs.target)
    # A cross-check needs hits at every depth and misses: otherwise it could not fail.
    assert (ranks == 0).any() and ((ranks > 10) & (ranks < 1000)).any() and (ranks == -1).any()
    return I, D, pairs.target, ranks


def test_aggregates_equal_ir_measures(stage1_run):
    I, D, target, ranks = stage1_run
    qrels, run = _runs(I, D, target)
    measures = [R @ k for k in KS] + [RR @ 10, nDCG @ 10]
    theirs = ir_measures.calc_aggregate(measures, qrels, run)
    for k in KS:
        assert recall_at(ranks, k) == pytest.approx(theirs[R @ k], rel=1e-12, abs=1e-15), k
    assert mrr_at(ranks, 10) == pytest.approx(theirs[RR @ 10], rel=1e-12, abs=1e-15)
    assert ndcg_at(ranks, 10) == pytest.approx(theirs[nDCG @ 10], rel=1e-12, abs=1e-15)


def test_per_query_values_equal_ir_measures(stage1_run):
    """The per-query values too: they are what the article-clustered bootstrap resamples."""
    I, D, target, ranks = stage1_run
    qrels, run = _runs(I, D, target)
    ours = {"RR@10": reciprocal_ranks(ranks, 10), "nDCG@10": ndcg_gains(ranks, 10)}
    seen = {name: 0 for name in ours}
    for m in ir_measures.iter_calc([RR @ 10, nDCG @ 10], qrels, run):
        name = str(m.measure)
        assert ours[name][int(m.query_id)] == pytest.approx(m.value, rel=1e-12, abs=1e-15), (
            name, m.query_id)
        seen[name] += 1
    assert seen == {name: len(ranks) for name in ours}
