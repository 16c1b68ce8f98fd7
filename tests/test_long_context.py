"""benchmarks.long_context on a small synthetic long-article bank: queries read the last L chunks,
results exclude the whole context, and a trained checkpoint is scored like the heuristics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import long_context
from cascade.bank import save_bank
from cascade.evaluation import evaluate
from cascade.index import build_index
from cascade.pairs import load_pairs
from cascade.query import heuristic_queries
from training import expand_pairs, train_v4
from training.synth_bank import SynthConfig, synth_bank


@pytest.fixture(scope="module")
def long_bank(tmp_path_factory):
    """~40 articles of ~150 chunks, 32-d; pairs at the long-article retry (stride 25, context
    100), and a v4 tower trained for one epoch on them (the long config: max_len 100)."""
    tmp = tmp_path_factory.mktemp("long")
    bank_path = tmp / "long_bank.npz"
    save_bank(synth_bank(SynthConfig(n=6000, dim=32, mean_chunks=150, topics=4, seed=5)),
              bank_path)
    pairs_path = tmp / "pairs.npz"
    assert expand_pairs.main(["--bank", str(bank_path), "--out", str(pairs_path), "--stride",
                              "25", "--max-per-seq", "40", "--context-len", "100"]) == 0
    run = tmp / "run"
    assert train_v4.main(["--config", "v4_long.yaml", "--bank", str(bank_path), "--pairs",
                          str(pairs_path), "--out", str(run), "--epochs", "1",
                          "--max-train-pairs", "128", "--log-dir", str(tmp / "logs")]) == 0
    return bank_path, pairs_path, run / "checkpoints" / "best.pt"


def test_reading_cuts_the_context_to_its_last_chunks(long_bank):
    _, pairs_path, _ = long_bank
    pairs = load_pairs(pairs_path)
    cut = long_context.reading(pairs, 8)
    assert np.array_equal(cut.ctx_end, pairs.ctx_end)
    assert np.array_equal(cut.lengths, np.minimum(pairs.lengths, 8))
    assert np.array_equal(cut.target, pairs.target)


def test_context_lengths_table(long_bank, tmp_path, capsys):
    bank_path, pairs_path, ckpt = long_bank
    out = tmp_path / "lc.json"
    rc = long_context.main(["--bank", str(bank_path), "--pairs", str(pairs_path), "--ckpt",
                            f"v4={ckpt}", "--context-lens", "8", "32", "100", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["n"] > 0 and report["full_context"] == 100
    tables = report["tables"]
    assert list(tables) == ["8", "32", "100"]
    for table in tables.values():
        assert list(table) == ["v4", "heuristic", "last-vector", "oracle"]
        assert table["oracle"]["recall@10"] == 100.0
        assert table["v4"]["n"] == report["n"] and table["v4"]["ci_method"] == "article bootstrap"
    # The last vector reads the same chunk whatever L is.
    assert tables["8"]["last-vector"] == tables["100"]["last-vector"]

    # The heuristic at L = 8 is the exp-weighted query over the last 8 chunks, scored with the
    # whole 100-chunk context excluded: recompute it from the parts.
    from cascade.bank import load_bank
    bank = load_bank(bank_path)
    split = load_pairs(pairs_path, bank).test()
    full = split.subset(np.flatnonzero(split.lengths >= 100))
    q = heuristic_queries(bank.vectors, full, max_len=8)
    expected, _ = evaluate(q, full, bank, build_index(bank.vectors, "flat"), long_context.KS)
    for k in long_context.KS:
        assert tables["8"]["heuristic"][f"recall@{k}"] == expected[f"recall@{k}"]

    gain = report["gain_from_context"]["last-vector"]["recall@10"]
    assert gain["diff"] == 0.0 and gain["ci95"] == [0.0, 0.0] and not gain["significant"]
    assert set(report["gain_vs_heuristic_gain"]) == {"v4"}
    text = capsys.readouterr().out
    assert "context = last 8 chunks" in text and "v4 gain - heuristic gain" in text


def test_lengths_beyond_the_full_context_are_refused(long_bank, tmp_path, capsys):
    bank_path, pairs_path, _ = long_bank
    rc = long_context.main(["--bank", str(bank_path), "--pairs", str(pairs_path),
                            "--context-lens", "8", "200", "--out", str(tmp_path / "x.json")])
    assert rc == 2 and not (tmp_path / "x.json").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: --context-lens must lie in 1..") and err.count("\n") == 1


def test_no_full_context_pair_is_refused(long_bank, tmp_path, capsys):
    bank_path, pairs_path, _ = long_bank
    rc = long_context.main(["--bank", str(bank_path), "--pairs", str(pairs_path),
                            "--full-context", "100000", "--context-lens", "8",
                            "--out", str(tmp_path / "x.json")])
    assert rc == 2
    assert "no test pair has a context of 100000 chunks" in capsys.readouterr().err
