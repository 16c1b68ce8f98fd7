"""Retrieval metrics against Python loops, and the confidence intervals against known values."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.metrics import (
    cluster_bootstrap_ci,
    mrr,
    paired_difference,
    recall_at,
    recall_report,
    target_ranks,
    wilson_ci,
)


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    I = np.stack([rng.permutation(60)[:20] for _ in range(200)])
    I[:10, -4:] = -1  # search padding
    target = rng.integers(0, 60, size=200)
    return I, target


def _rank_loop(I, target):
    out = []
    for row, t in zip(I, target, strict=True):
        hits = [j for j, r in enumerate(row) if r == t]
        out.append(hits[0] if hits else -1)
    return np.array(out)


def test_target_ranks_vs_loop(result):
    I, target = result
    ranks = target_ranks(I, target)
    np.testing.assert_array_equal(ranks, _rank_loop(I, target))
    assert (ranks >= 0).any() and (ranks == -1).any()


@pytest.mark.parametrize("k", [1, 5, 10, 20, 100])
def test_recall_and_mrr_vs_loop(result, k):
    ranks = _rank_loop(*result)
    assert recall_at(ranks, k) == pytest.approx(
        sum(1 for r in ranks if 0 <= r < k) / len(ranks))
    assert mrr(ranks) == pytest.approx(
        sum(1.0 / (r + 1) for r in ranks if r >= 0) / len(ranks))


def test_empty_ranks():
    assert recall_at(np.zeros(0, int), 10) == 0.0 and mrr(np.zeros(0, int)) == 0.0


@pytest.mark.parametrize("p,n,lo,hi", [(0.5, 100, 0.4038, 0.5962), (0.1, 50, 0.0435, 0.2136),
                                       (0.0, 10, 0.0, 0.2775), (1.0, 10, 0.7225, 1.0)])
def test_wilson_ci_known_values(p, n, lo, hi):
    got = wilson_ci(p, n)
    assert got == pytest.approx((lo, hi), abs=1e-3)


def test_wilson_ci_no_trials_and_shrinks_with_n():
    assert wilson_ci(0.3, 0) == (0.0, 1.0)
    widths = [np.subtract(*wilson_ci(0.39, n)[::-1]) for n in (154, 1000, 10000)]
    assert widths[0] > widths[1] > widths[2]


def test_paired_difference_identical_is_zero():
    ranks = _rank_loop(*(np.stack([np.arange(10)] * 30), np.arange(30) % 12))
    out = paired_difference(ranks, ranks, 5)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and not out["significant"]
    assert out["n"] == 30 and out["k"] == 5


def test_paired_difference_better_method_is_significant():
    rng = np.random.default_rng(1)
    b = np.where(rng.random(500) < 0.3, 3, -1)  # B finds 30% of targets at rank 3
    a = np.where(rng.random(500) < 0.7, 0, b)  # A finds 70% at rank 0, and B's otherwise
    out = paired_difference(a, b, 10)
    hit_a, hit_b = (a >= 0) & (a < 10), (b >= 0) & (b < 10)
    assert out["diff"] == pytest.approx(100 * (hit_a.mean() - hit_b.mean()))
    # Independent queries: the bootstrap interval is close to the normal one.
    d = hit_a.astype(float) - hit_b
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d))
    assert out["ci95"] == pytest.approx([100 * (d.mean() - half), 100 * (d.mean() + half)],
                                        abs=1.0)
    assert out["significant"] and out["ci95"][0] > 0
    assert paired_difference(b, a, 10)["significant"]
    # At k = 1 none of B's rank-3 hits count: the difference is A's whole recall@1.
    assert paired_difference(a, b, 1)["diff"] == pytest.approx(100 * (a == 0).mean())


def _article_case(rng, articles: int, per_article: int, p_a: float, p_b: float):
    """Pairs of one article agree: the article decides whether A (and B) find its targets."""
    clusters = np.repeat(np.arange(articles), per_article)
    a_art = rng.random(articles) < p_a
    b_art = rng.random(articles) < p_b
    a = np.where(a_art[clusters], 0, -1)
    b = np.where(b_art[clusters], 0, -1)
    return a, b, clusters


def test_clustered_interval_is_wider_when_pairs_of_an_article_agree():
    a, b, clusters = _article_case(np.random.default_rng(3), 40, 25, 0.6, 0.5)
    per_pair = paired_difference(a, b, 10)
    clustered = paired_difference(a, b, 10, clusters=clusters)
    assert clustered["diff"] == per_pair["diff"]
    width = lambda d: d["ci95"][1] - d["ci95"][0]  # noqa: E731
    # 40 independent articles, not 1,000 independent pairs: the interval is ~sqrt(25) wider.
    assert width(clustered) > 3 * width(per_pair)
    rep_pair = recall_report(a, (10,))
    rep_art = recall_report(a, (10,), clusters=clusters)
    assert np.diff(rep_art["recall@10_ci95"])[0] > 3 * np.diff(rep_pair["recall@10_ci95"])[0]
    assert rep_art["articles"] == 40 and rep_art["ci_method"] == "article bootstrap"


def test_verdict_needs_a_win_beyond_the_article_interval():
    # A wins on a handful of articles with many pairs each: per pair it looks significant,
    # resampled by article it is not (a few articles decide it).
    clusters = np.repeat(np.arange(30), 30)
    b = np.full(len(clusters), -1)
    a = np.where(np.isin(clusters, [0, 1, 2]), 0, -1)
    assert paired_difference(a, b, 10)["significant"]
    verdict = paired_difference(a, b, 10, clusters=clusters)
    assert not verdict["significant"] and verdict["ci95"][0] <= 0
    # A broad win over most articles stays significant under the article bootstrap.
    a_broad = np.where(clusters % 10 < 8, 0, -1)
    assert paired_difference(a_broad, b, 10, clusters=clusters)["significant"]
    # ... and pure noise between equal methods is not significant.
    rng = np.random.default_rng(2)
    a_noise, b_noise, cl = _article_case(rng, 100, 5, 0.5, 0.5)
    assert not paired_difference(a_noise, b_noise, 10, clusters=cl)["significant"]


def test_bootstrap_is_seeded_and_vectorized_over_columns():
    rng = np.random.default_rng(4)
    values = rng.random((300, 3))
    clusters = rng.integers(0, 50, 300)
    ci = cluster_bootstrap_ci(values, clusters)
    assert ci.shape == (2, 3)
    assert np.array_equal(ci, cluster_bootstrap_ci(values, clusters))
    for j in range(3):  # each column's interval is that column's own bootstrap
        assert np.allclose(ci[:, j], cluster_bootstrap_ci(values[:, j], clusters))
    assert (ci[0] <= values.mean(0)).all() and (values.mean(0) <= ci[1]).all()


def test_recall_report_keys_and_percent(result):
    ranks = _rank_loop(*result)
    rep = recall_report(ranks, (1, 10))
    assert {"n", "recall@1", "recall@1_ci95", "recall@10", "recall@10_ci95", "mrr",
            "mrr_ci95"} <= set(rep)
    assert rep["n"] == len(ranks)
    assert rep["recall@10"] == pytest.approx(100 * recall_at(ranks, 10))
    # Independent queries: close to the Wilson interval.
    lo, hi = wilson_ci(recall_at(ranks, 10), len(ranks))
    assert rep["recall@10_ci95"] == pytest.approx([100 * lo, 100 * hi], abs=1.5)
    assert rep["recall@10_ci95"][0] <= rep["recall@10"] <= rep["recall@10_ci95"][1]
    assert 1 < rep["recall@10"] <= 100  # percent, not a fraction
    assert rep["mrr"] == pytest.approx(mrr(ranks))
    assert rep["mrr_ci95"][0] <= rep["mrr"] <= rep["mrr_ci95"][1]
