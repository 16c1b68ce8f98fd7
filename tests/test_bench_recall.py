"""benchmarks.recall on a small synthetic bank: every formation side by side, strict JSON,
article-clustered CIs, the original protocol and the quoted reference kept apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import recall
from cascade.bank import save_bank
from cascade.metrics import recall_at, target_ranks
from cascade.pairs import load_pairs, save_pairs
from training.expand_pairs import ExpandConfig, expand_pairs
from training.synth_bank import SynthConfig, synth_bank


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_recall")
    bank = synth_bank(SynthConfig(n=6000, dim=32, mean_chunks=20, topics=4, seed=5))
    save_bank(bank, root / "bank.npz")
    save_pairs(expand_pairs(bank, ExpandConfig(context_len=8, stride=1, max_per_seq=1000,
                                               seed=1)), root / "pairs.npz")
    return root


@pytest.fixture(scope="module")
def result(inputs):
    out = inputs / "recall.json"
    assert recall.main(["--bank", str(inputs / "bank.npz"), "--pairs", str(inputs / "pairs.npz"),
                        "--out", str(out)]) == 0
    return _strict(out.read_text())


def test_every_formation_side_by_side(result):
    methods = result["methods"]
    assert list(methods) == [*recall.FORMATIONS, "oracle", *recall.ORIGINAL_WAY]
    assert result["split"] == "test" and result["n"] > 0 and result["articles"] > 1
    for name, m in methods.items():
        values = [m[f"recall@{k}"] for k in recall.KS]
        assert values == sorted(values), name  # recall grows with k
        for key in [f"recall@{k}" for k in recall.KS] + ["mrr@10", "ndcg@10"]:
            lo, hi = m[f"{key}_ci95"]
            assert lo <= m[key] <= hi, (name, key)
        assert 0 <= m["mrr@10"] <= m["ndcg@10"] <= 1  # one relevant item: RR <= nDCG
    assert methods["oracle"]["recall@1"] > 90
    assert result["checkpoints"] == {}  # none trained for this bank: scored without


def test_formations_are_distinct_queries(result):
    """alpha changes the query: a wiring slip that scored one formation for all would show."""
    m = result["methods"]
    r10 = {name: m[name]["mrr@10"] for name in recall.FORMATIONS}
    assert len(set(r10.values())) == len(r10), r10


def test_original_protocol_leaves_the_context_in(inputs, result):
    """Context rows left in: the last vector finds itself first, so its Recall@1 is ~0 there."""
    m = result["methods"]
    assert m["last vector, context rows left in"]["recall@1"] < 1.0
    assert m["last vector"]["recall@1"] > 5 * max(1.0, m["last vector, context rows left in"][
        "recall@1"])


def test_the_quoted_row_is_labelled_quoted(result, capsys):
    q = result["quoted_reference"]
    assert "quoted" in q["source"] and q["queries"] == 154
    assert q["recall@500"] == {"last vector": 35.71, "exp-weighted": 38.96, "oracle": 97.40}
    assert not any("quoted" in name for name in result["methods"])  # never among measured rows


def test_heuristic_row_equals_a_direct_evaluation(inputs, result):
    """The heuristic row through compare_methods equals exact search done here by hand."""
    from cascade.bank import load_bank
    from cascade.index import build_index, search_batched
    from cascade.query import heuristic_queries

    bank = load_bank(inputs / "bank.npz")
    test = load_pairs(inputs / "pairs.npz", bank).test()
    q = heuristic_queries(bank.vectors, test, "exp_weighted", 0.1)
    _, I = search_batched(build_index(bank.vectors, "flat"), q, 1000, test.ctx_start,
                          test.ctx_end)
    ranks = target_ranks(I, test.target)
    row = result["methods"][recall.HEURISTIC]
    for k in recall.KS:
        assert row[f"recall@{k}"] == pytest.approx(100 * recall_at(ranks, k))
    assert np.unique(bank.article_indices[test.target]).size == result["articles"]


def test_defaults_follow_the_bank():
    pairs, ckpts, deploy = recall.bank_defaults("artifacts/my_bank.npz")
    assert pairs == "artifacts/twotower/my_bank/pairs_v4.npz"
    assert deploy == "runs/my_bank/deploy.json"
    assert ckpts == {"v4": "runs/my_bank/twotower_v4/checkpoints/best.pt",
                     "v3": "runs/my_bank/twotower_v3_phase2/checkpoints/best.pt"}


def test_missing_checkpoint_is_one_clear_error(inputs, capsys):
    missing = inputs / "no_run" / "best.pt"
    assert recall.main(["--bank", str(inputs / "bank.npz"), "--pairs", str(inputs / "pairs.npz"),
                        "--ckpt", f"v4={missing}", "--out", str(inputs / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1
