"""benchmarks.train_speed end to end on a tiny grid: real trainer children, their own peak RSS,
the epoch split into its parts, strict JSON, the table and the plot. (Speeds are not asserted:
they are measured by the benchmark, never by a test.)"""

from __future__ import annotations

import json

import numpy as np

from benchmarks import train_speed
from cascade.bank import load_bank
from cascade.pairs import load_pairs


def test_tiny_grid(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = train_speed.main(["--rows", "6000", "--contexts", "4,8", "--dim", "16",
                           "--pairs", "64", "--threads", "1", "--work", str(tmp_path / "work"),
                           "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(
        ValueError(f"non-strict JSON constant {c}")))
    cells = report["cells"]
    assert [(c["rows"], c["context"]) for c in cells] == [(6000, 4), (6000, 8)]
    for c in cells:
        assert 0 < c["peak_rss_gb"] < 4
        parts = sum(c[f"{p}_s"] for p in train_speed.PARTS)
        assert 0 < parts <= c["epoch_s"] + 0.05
        assert c["mine_s"] > 0 and c["mined_per_pair"] == 16  # the cos window 0-1 fills all 16
        assert c["pairs_per_s_all_in"] <= c["pairs_per_s_train"]
        assert c["pairs_per_s_all_in_full_memory_est"] <= c["pairs_per_s_all_in"]
    printed = capsys.readouterr().out
    assert "quoted, not measured here" in printed and "dominates" in printed
    assert (tmp_path / "speed.png").stat().st_size > 10_000


def test_benchmark_pairs_have_full_contexts_inside_one_article(tmp_path):
    bank_file = train_speed.ensure_bank(tmp_path, 3000, 8)
    bank = load_bank(bank_file)
    pairs = load_pairs(train_speed.build_pairs(bank_file, 10, 200), bank)
    assert len(pairs) == 200 and (pairs.lengths == 10).all()
    art = bank.article_indices
    assert (art[pairs.ctx_start] == art[pairs.target]).all()
    assert (pairs.target == pairs.ctx_end).all()
    # split by article: no article on both sides
    for a in np.unique(art[pairs.target]):
        assert len(np.unique(pairs.split[art[pairs.target] == a])) == 1
