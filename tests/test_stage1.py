"""Stage1: one object for evaluation and serving; exact search, exclusions, the index cache,
deploy.json pins, and the errors bad input gets."""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cascade import checkpoint as ck
from cascade.bank import save_bank, sha256_file
from cascade.context import ContextRows
from cascade.deploy import DeployError
from cascade.evaluation import evaluate
from cascade.index import build_index
from cascade.pairs import TRAIN, Pairs
from cascade.query import heuristic_queries
from cascade.stage1 import Stage1, index_cache_path
from cascade.towers import TowerConfig, build_towers


@pytest.fixture(scope="module")
def pairs(small_bank):
    starts, ends = small_bank.article_bounds()
    t = np.concatenate([np.arange(s + 1, e) for s, e in zip(starts, ends, strict=True)])
    t = np.random.default_rng(4).choice(t, size=300, replace=False)
    first = starts[np.searchsorted(starts, t, "right") - 1]
    return Pairs(np.maximum(t - 6, first), t, t, np.full(len(t), TRAIN, np.uint8))


@pytest.fixture(scope="module")
def tower_ckpt(tmp_path_factory, small_bank):
    torch.manual_seed(0)
    cfg = TowerConfig(dim=small_bank.dim, hidden=16, max_len=4, residual=True)
    query, doc = build_towers(cfg)
    with torch.no_grad():  # move it away from the heuristic it starts as
        query.out.weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    ck.save_checkpoint(path, {ck.QUERY_TOWER: query.state_dict(), ck.DOC_TOWER: doc.state_dict(),
                              ck.MODEL_CONFIG: cfg.to_dict(), ck.EPOCH: 1,
                              ck.BANK_FINGERPRINT: small_bank.fingerprint()})
    return path


def windows(pairs):
    return [np.arange(s, e) for s, e in zip(pairs.ctx_start, pairs.ctx_end, strict=True)]


def test_evaluate_through_stage1_equals_the_direct_evaluation(small_bank, pairs):
    """The refactor changed no number: Stage1.evaluate is evaluate() on the same queries."""
    direct, r0 = evaluate(heuristic_queries(small_bank.vectors, pairs), pairs, small_bank,
                          build_index(small_bank.vectors, "flat"), ks=(1, 10, 100))
    via, r1 = Stage1(small_bank).evaluate(pairs, ks=(1, 10, 100))
    assert via == direct and np.array_equal(r0, r1)


@pytest.mark.parametrize("use_tower", [False, True])
def test_vectors_rows_and_pairs_give_the_same_top_k(small_bank, pairs, tower_ckpt, use_tower):
    s1 = Stage1.from_checkpoint(tower_ckpt, small_bank) if use_tower else Stage1(small_bank)
    # A tower loaded from a checkpoint forms serving's queries by its NumPy copy; the pairs
    # path (evaluation) by the torch tower: both must find the same rows.
    assert (s1.fast_query is not None) == use_tower
    sub = pairs.subset(np.arange(40))
    _, D, I = s1.search_pairs(sub, 50)
    by_rows = s1.search(ContextRows(windows(sub)), k=50)
    by_vectors = s1.search([small_bank.vectors[w] for w in windows(sub)], k=50)
    assert np.array_equal(by_rows.ids, I) and np.array_equal(by_vectors.ids, I)
    np.testing.assert_allclose(by_rows.scores, D, atol=1e-5)
    assert by_rows.seconds > 0


def test_search_is_exact_brute_force_with_the_context_left_out(small_bank, pairs):
    s1 = Stage1(small_bank)
    res = s1.search(ContextRows(windows(pairs)), k=20)
    q = heuristic_queries(small_bank.vectors, pairs).astype(np.float64)
    S = q @ small_bank.vectors.T.astype(np.float64)
    for b, w in enumerate(windows(pairs)):
        S[b, w] = -np.inf
        assert not np.isin(res.ids[b], w).any()
    top = np.sort(S, axis=1)[:, ::-1][:, :20]
    np.testing.assert_allclose(res.scores, top, atol=1e-5)


def test_given_vectors_drops_every_bank_copy_of_a_context_chunk(small_bank):
    vectors = small_bank.vectors.copy()
    vectors[2000] = vectors[10]  # a duplicate of a context chunk, in another article
    bank = dataclasses.replace(small_bank, vectors=vectors, _fingerprint=None)
    s1 = Stage1(bank, heuristic="last_vector")
    res = s1.search(vectors[8:11], k=30)  # one context: rows 8, 9, 10
    assert not np.isin(res.ids[0], [8, 9, 10, 2000]).any()
    by_rows = s1.search(ContextRows(np.arange(8, 11)), k=30)  # ids: only those rows go
    assert 2000 in by_rows.ids[0] and not np.isin(by_rows.ids[0], [8, 9, 10]).any()


def test_an_approximate_index_is_saved_beside_the_bank_and_rebuilt_only_on_change(
        tmp_path, small_bank):
    bank = dataclasses.replace(small_bank, path=str(tmp_path / "b.npz"))
    save_bank(bank, tmp_path / "b.npz")
    s1 = Stage1(bank, index_factory="IVF16,Flat", index_params="nprobe=16")
    path = index_cache_path(bank, "IVF16,Flat")
    assert path.exists() and path.parent == tmp_path
    assert json.loads(path.with_name(path.name + ".json").read_text())["fingerprint"] == \
        bank.fingerprint()
    os.utime(path, (1, 1))
    Stage1(bank, index_factory="IVF16,Flat")
    assert os.stat(path).st_mtime == 1  # loaded, not rebuilt
    other = dataclasses.replace(bank, vectors=bank.vectors[::-1].copy(), _fingerprint=None)
    Stage1(other, index_factory="IVF16,Flat")
    assert os.stat(path).st_mtime > 1  # another bank: rebuilt
    res = s1.search(ContextRows(np.arange(0, 3)), k=5)
    assert res.ids.shape == (1, 5) and (res.ids >= 0).all()
    assert Stage1(bank).index.xb is bank.vectors  # exact: the bank array itself, no copy


def test_bad_inputs_name_the_problem(small_bank):
    s1 = Stage1(small_bank, max_context=10)
    v = small_bank.vectors
    nan = v[:3].copy()
    nan[1, 4] = np.nan
    cases = [
        (lambda: s1.search(v[:3, :5]), "dimension 5, the bank's is 32"),
        (lambda: s1.search([v[:3], nan]), r"context 1 row 1: NaN or inf"),
        (lambda: s1.search(v[:0]), "context 0 is empty"),
        (lambda: s1.search([]), "empty batch"),
        (lambda: s1.search(v[:11]), "11 chunks, longer than the configured maximum 10"),
        (lambda: s1.search(ContextRows([np.array([1, 2]), np.array([5, 3000])])),
         r"context 1 position 1: row id 3000 is out of range \[0, 3000\)"),
        (lambda: s1.search(ContextRows(np.array([], np.int64))), "context 0 is empty"),
        (lambda: s1.search(v[:3], k=0), r"k must be an integer in \[1, 3000\]"),
        (lambda: s1.search(v[:3], k=3001), r"k must be an integer in \[1, 3000\]"),
        (lambda: s1.search(np.zeros((2, 32), np.float32)), "row 0: an all-zero vector"),
        (lambda: Stage1(small_bank, index_factory="NoSuchIndex"), "not a FAISS index string"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def write_deploy(tmp_path, bank_path, bank, **extra):
    deploy = {"stage1": "heuristic", "checkpoint": None, "reason": "test",
              "heuristic": {"kind": "exp_weighted", "alpha": 0.3}, "bank": str(bank_path),
              "bank_fingerprint": bank.fingerprint(), **extra}
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(deploy))
    return path


def test_from_deploy_checks_pins(tmp_path, small_bank, small_bank_path, tower_ckpt):
    heur = Stage1.from_deploy(write_deploy(tmp_path, small_bank_path, small_bank))
    assert heur.kind == "heuristic" and heur.alpha == 0.3 and heur.reason == "test"
    good = write_deploy(tmp_path, small_bank_path, small_bank, stage1="v4",
                        checkpoint=str(tower_ckpt), checkpoint_sha256=sha256_file(tower_ckpt))
    assert Stage1.from_deploy(good).kind == "v4"
    bad_sha = write_deploy(tmp_path, small_bank_path, small_bank, stage1="v4",
                           checkpoint=str(tower_ckpt), checkpoint_sha256="sha256:" + "0" * 64)
    with pytest.raises(DeployError, match="has sha256 .* deploy.json pins sha256:0000"):
        Stage1.from_deploy(bad_sha)
    other = write_deploy(tmp_path, small_bank_path, small_bank,
                         bank_fingerprint="sha256:" + "1" * 64)
    with pytest.raises(DeployError, match="deploy.json pins sha256:1111"):
        Stage1.from_deploy(other)


def test_set_threads_holds_in_every_thread_that_searches(small_bank):
    """FAISS's thread count is OpenMP's, per thread: a pool's thread searching after
    set_threads must run with the count chosen, not OpenMP's default (whose idle threads spin).
    NumPy's BLAS gets the count too."""
    import faiss
    from threadpoolctl import threadpool_info, threadpool_limits

    from cascade import threads

    def blas_threads():
        return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}

    before = (torch.get_num_threads(), threads._faiss_threads, faiss.omp_get_max_threads(),
              max(blas_threads()))
    stage1 = Stage1(small_bank)

    def probe():
        faiss.omp_set_num_threads(2)  # a fresh thread starts at OpenMP's default
        stage1.search(small_bank.vectors[10:13], k=5)
        return faiss.omp_get_max_threads()

    try:
        threads.set_threads(1)
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(probe).result() == 1
        assert blas_threads() == {1}
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            threads.set_threads(0)
    finally:
        torch.set_num_threads(before[0])
        threads._faiss_threads = before[1]
        faiss.omp_set_num_threads(before[2])
        threadpool_limits(before[3], user_api="blas")
