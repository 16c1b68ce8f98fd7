"""python -m training.tmd_stats on a saved bank: table, JSON, refusal of a bank without codes."""

from __future__ import annotations

import json

import numpy as np

from cascade.bank import Bank, save_bank
from cascade.tmd import name, pack
from training import tmd_stats


def test_stats_table_and_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    codes = pack(np.array([7, 7, 7, 0, 0, 9]), np.array([1, 1, 2, 0, 0, 1]), 3)
    save_bank(Bank(v, np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 0, 1, 0]),
                   tmd_codes=codes), tmp_path / "b.npz")
    assert tmd_stats.main([str(tmp_path / "b.npz"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "6 rows, 4 distinct codes" in out and "History" in out and "50.0%" in out
    dist = json.loads((tmp_path / "s.json").read_text())
    assert sum(dist["domains"].values()) == sum(dist["tasks"].values()) == 6
    assert dist["domains"] == {"History": 3, "Science": 2, "Art": 1}
    assert dist["top_codes"][name(int(codes[0]))] == 2


def test_stats_refuses_a_bank_without_codes(tmp_path, capsys):
    v = np.eye(3, dtype=np.float32)
    save_bank(Bank(v, np.array([0, 0, 1]), np.array([0, 1, 0])), tmp_path / "b.npz")
    assert tmd_stats.main([str(tmp_path / "b.npz")]) == 2
    assert "no key 'tmd_codes'" in capsys.readouterr().err
