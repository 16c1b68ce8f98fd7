"""The TMD reranker on real arrays: the lane, the blend against a brute-force loop, w = 0 is stage
2's order, fit_w on planted data, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.tmd import pack, unpack
from cascade.tmd_rerank import (
    DEFAULT_MATCH_WEIGHTS,
    TmdReranker,
    context_lane,
    context_lanes,
    normalize_scores,
)


def test_context_lane_majority_domain_last_task_modifier():
    codes = pack(np.array([3, 5, 3, 5, 9]), np.array([1, 2, 3, 4, 6]), np.array([0, 1, 2, 3, 7]))
    lane = context_lane(codes)
    assert [int(x) for x in unpack(lane)] == [5, 6, 7]  # 3 and 5 tie at 2: 5 came last
    codes = pack(np.array([3, 3, 5]), 0, 0)
    assert int(unpack(context_lane(codes))[0]) == 3  # majority beats recency
    assert context_lane(pack(np.array([4]), 2, 9)) == int(pack(4, 2, 9))


def test_context_lanes_batch_matches_one_by_one():
    rng = np.random.default_rng(0)
    codes = pack(rng.integers(0, 4, (50, 7)), rng.integers(0, 32, (50, 7)),
                 rng.integers(0, 64, (50, 7))).astype(np.int64)
    lengths = rng.integers(1, 8, 50)
    mask = np.arange(7)[None, :] < lengths[:, None]
    lanes = context_lanes(np.where(mask, codes, 0), mask)
    assert lanes.tolist() == [context_lane(codes[i, :lengths[i]]) for i in range(50)]
    with pytest.raises(ValueError, match="context 1 is empty"):
        context_lanes(codes[:2], np.array([[True] * 7, [False] * 7]))
    with pytest.raises(ValueError, match="non-empty"):
        context_lane(np.zeros(0, np.int64))


def test_normalize_scores():
    s = np.array([[3.0, 1.0, 2.0], [0.5, 0.5, -np.inf]], np.float32)
    n = normalize_scores(s)
    np.testing.assert_allclose(n[0], [1.0, 0.0, 0.5])
    assert n[1, :2].tolist() == [1.0, 1.0] and n[1, 2] == -np.inf


def brute_force(bank_codes, q, ids, scores, w, weights, keep):
    """The reranker's contract, one query and one candidate at a time."""
    out = []
    bd, bt, bm = unpack(bank_codes)
    qd, qt, qm = unpack(q)
    wd, wt, wm = np.asarray(weights) / np.sum(weights)
    for b in range(len(q)):
        real = [s for i, s in zip(ids[b], scores[b], strict=True) if i >= 0]
        lo, hi = min(real), max(real)
        scored = []
        for pos, (i, s) in enumerate(zip(ids[b], scores[b], strict=True)):
            if i < 0:
                scored.append((-np.inf, pos, i))
                continue
            base = (s - lo) / (hi - lo) if hi > lo else 1.0
            lane = wd * (bd[i] == qd[b]) + wt * (bt[i] == qt[b]) + wm * (bm[i] == qm[b])
            scored.append(((1 - w) * base + w * lane, pos, i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        out.append([i for _, _, i in scored[:keep]])
    return np.array(out)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    n, b, k = 2000, 64, 50
    bank_codes = pack(rng.integers(0, 16, n), rng.integers(0, 32, n), rng.integers(0, 64, n))
    ids = np.stack([rng.choice(n, k, replace=False) for _ in range(b)]).astype(np.int64)
    scores = np.sort(rng.normal(size=(b, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    ids[3, -5:] = -1  # fewer candidates found for one query
    scores[3, -5:] = -np.inf
    q = pack(rng.integers(0, 16, b), rng.integers(0, 32, b), rng.integers(0, 64, b))
    return bank_codes, q, ids, scores


@pytest.mark.parametrize("w", [0.0, 0.15, 0.5, 1.0])
@pytest.mark.parametrize("weights", [DEFAULT_MATCH_WEIGHTS, (0.6, 0.25, 0.15), (1, 1, 1)])
def test_rerank_matches_brute_force(setup, w, weights):
    bank_codes, q, ids, scores = setup
    r = TmdReranker(bank_codes, w=w, match_weights=weights)
    out_ids, out_scores = r.rerank(q, ids, scores, keep=10)
    assert out_ids.shape == (64, 10) and out_ids.dtype == np.int64
    assert out_scores.dtype == np.float32
    np.testing.assert_array_equal(out_ids, brute_force(bank_codes, q, ids, scores, w, weights, 10))
    assert (np.diff(out_scores, axis=1) <= 1e-6).all()  # best first


def test_w_zero_is_stage_two_order(setup):
    bank_codes, q, ids, scores = setup
    out_ids, _ = TmdReranker(bank_codes, w=0.0).rerank(q, ids, scores, keep=50)
    np.testing.assert_array_equal(out_ids, ids)  # scores were sorted best first
    # padded candidates stay last, whatever w
    out_ids, out_scores = TmdReranker(bank_codes, w=1.0).rerank(q, ids, scores, keep=50)
    assert (out_ids[3, -5:] == -1).all() and np.isneginf(out_scores[3, -5:]).all()


def test_lane_similarity_values():
    bank = pack(np.array([1, 1, 2, 1]), np.array([3, 4, 3, 3]), np.array([5, 5, 5, 6]))
    q, ids = pack(np.array([1]), 3, 5).astype(np.int64), np.array([[0, 1, 2, 3, -1]])
    sim = TmdReranker(bank, w=0.5, match_weights=(0.6, 0.25, 0.15)).lane_similarity(q, ids)
    np.testing.assert_allclose(sim[0], [1.0, 0.75, 0.4, 0.85, 0.0], atol=1e-6)
    # the default (chosen on val): the domain alone
    sim = TmdReranker(bank, w=0.5).lane_similarity(q, ids)
    np.testing.assert_allclose(sim[0], [1.0, 1.0, 0.0, 1.0, 0.0])


def test_fit_w_finds_a_planted_lane_and_prefers_zero_on_ties():
    """Targets sit at stage-2 rank 10-19 and are the only candidates in the query's domain:
    a w > 0 lifts Hit@10 from 0 to 100. With lane codes that carry no information, w = 0."""
    rng = np.random.default_rng(2)
    b, k, n = 200, 50, 10_000
    ids = np.stack([rng.choice(n, k, replace=False) for _ in range(b)]).astype(np.int64)
    scores = np.tile(np.linspace(1.0, 0.0, k, dtype=np.float32), (b, 1))
    target_pos = rng.integers(10, 20, b)
    targets = ids[np.arange(b), target_pos]
    domains = np.zeros(n, np.int64)
    domains[targets] = 5
    bank_codes = pack(domains, 0, 0)
    q = pack(np.full(b, 5), 1, 1)  # task and modifier match nothing
    r = TmdReranker(bank_codes, w=0.0)
    best, table = r.fit_w(q, ids, scores, targets, grid=(0.0, 0.1, 0.3, 0.5))
    assert table[0] == {"w": 0.0, "hit@10": 0.0}
    assert best == 0.3 and table[2]["hit@10"] == 100.0  # 0.1 is too small to lift rank 19
    # uninformative codes: every w scores the same Hit@10, and the tie goes to w = 0
    flat = TmdReranker(pack(np.zeros(n, np.int64), 0, 0), w=0.0)
    best, table = flat.fit_w(q, ids, scores, targets, grid=(0.5, 0.0, 0.2))
    assert best == 0.0 and [row["w"] for row in table] == [0.0, 0.2, 0.5]
    assert len({row["hit@10"] for row in table}) == 1


@pytest.mark.parametrize("call, message", [
    (lambda r, q, i, s: r.rerank(q, i, s, keep=0), "keep must be in"),
    (lambda r, q, i, s: r.rerank(q, i, s, keep=51), "keep must be in"),
    (lambda r, q, i, s: r.rerank(q[:3], i, s, keep=10), "expected query codes"),
    (lambda r, q, i, s: r.rerank(q, i + 5000, s, keep=10), "outside \\[0, 2000\\)"),
    (lambda r, q, i, s: r.rerank(q, i, np.full_like(s, np.nan), keep=10), "finite"),
    (lambda r, q, i, s: r.rerank(q, i.astype(np.float32), s, keep=10), "must be integers"),
    (lambda r, q, i, s: r.rerank(q + 40000, i, s, keep=10), "outside \\[0, 32768\\)"),
    (lambda r, q, i, s: r.rerank(q, i, s, keep=10, w=1.5), "w must be in \\[0, 1\\]"),
    (lambda r, q, i, s: r.fit_w(q, i, s, np.zeros(3, np.int64)), "target rows"),
])
def test_refusals(setup, call, message):
    bank_codes, q, ids, scores = setup
    with pytest.raises(ValueError, match=message):
        call(TmdReranker(bank_codes, w=0.2), q, ids, scores)


def test_constructor_refusals():
    with pytest.raises(ValueError, match="match weights"):
        TmdReranker(pack(np.zeros(3, np.int64)), w=0.1, match_weights=(0, 0, 0))
    with pytest.raises(ValueError, match="w must be in"):
        TmdReranker(pack(np.zeros(3, np.int64)), w=-0.1)
    with pytest.raises(ValueError, match="non-empty"):
        TmdReranker(np.zeros(0, np.uint16), w=0.1)


def test_soft_domains_one_hot_is_the_code_and_a_probability_weighs_each_domain(setup):
    bank_codes, q, ids, scores = setup
    r = TmdReranker(bank_codes, w=0.4)
    one_hot = np.eye(16, dtype=np.float32)[unpack(q)[0]]
    for keep in (10, 50):
        a = r.rerank(q, ids, scores, keep)
        b = r.rerank(q, ids, scores, keep, domain_probs=one_hot)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1])
    # Soft: the domain term of each candidate is P(its domain), checked against a loop.
    probs = np.random.default_rng(2).dirichlet(np.ones(16), size=len(q)).astype(np.float32)
    sim = r.lane_similarity(q, ids, probs)
    dom = unpack(bank_codes)[0]
    for b_ in (0, 3, 17):
        expected = [probs[b_, dom[i]] if i >= 0 else 0.0 for i in ids[b_]]
        np.testing.assert_allclose(sim[b_], expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"domain_probs: expected shape \(64, 16\)"):
        r.rerank(q, ids, scores, 10, domain_probs=probs[:5])
    with pytest.raises(ValueError, match="a probability in"):
        r.rerank(q, ids, scores, 10, domain_probs=probs + 1)


def test_the_domain_classifier_learns_the_codes_and_round_trips(tmp_path):
    from cascade.tagger import DomainClassifier
    from cascade.tmd_rerank import tagged_lanes

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 32))
    domains = rng.integers(0, 4, 3000)
    x = centres[domains] + 0.8 * rng.normal(size=(3000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    clf = DomainClassifier.fit(x[:2000], domains[:2000], weight_decay=1e-3)
    p = clf.proba(x[2000:])
    assert p.shape == (1000, 16) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == domains[2000:]).mean() > 0.9
    assert p[:, 4:].max() < 0.05  # domains never seen get (almost) nothing
    clf.save(tmp_path / "c.npz")
    back = DomainClassifier.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.proba(x[:10]), clf.proba(x[:10]))
    lanes = tagged_lanes([x[2000:2003], x[2003:2004]], None, back)
    assert lanes.source == "tagged" and lanes.domain_probs.shape == (2, 16)
    np.testing.assert_array_equal(unpack(lanes.codes)[0], lanes.domain_probs.argmax(1))
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a domain classifier file"):
        DomainClassifier.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="dimension 8, the classifier 32"):
        clf.proba(np.zeros((2, 8), np.float32))
