"""report.md and its plots from a real (tiny) training run, and re-rendering a finished run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from cascade.bank import save_bank
from cascade.metrics import recall_at
from cascade.pairs import save_pairs
from training import report
from training.config import load_config
from training.expand_pairs import ExpandConfig, expand_pairs
from training.plots import recall_curve
from training.synth_bank import SynthConfig, synth_bank
from training.train_v4 import train

PLOTS = ("plots/loss.png", "plots/recall.png", "plots/margin.png", "plots/recall_at_k.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    bank = synth_bank(SynthConfig(n=1500, dim=16, mean_chunks=10, topics=3, seed=3))
    save_bank(bank, root / "bank.npz")
    save_pairs(expand_pairs(bank, ExpandConfig(context_len=6, stride=1, max_per_seq=100,
                                               seed=1)), root / "pairs.npz")
    cfg = load_config(None, {
        "bank": str(root / "bank.npz"), "pairs": str(root / "pairs.npz"),
        "out": str(root / "run"), "log_dir": str(root / "logs"), "bs": 32, "accum": 2,
        "epochs": 3, "lr": 3e-3, "memory_bank_size": 256, "index": "flat", "threads": 1,
        "mine_schedule": "0-1:none;2-3:4@0.0-0.99", "eval_ks": [10, 100, 500],
        "select_metric": "recall@500", "model": {"hidden": 16, "max_len": 6},
        "gates": {"metric": "recall@500", "mid_epoch": 2, "mid": 50.0, "success": 99.0,
                  "partial": 60.0}})
    train(cfg)
    return root / "run"


def test_report_links_its_plots_and_they_are_images(run_dir):
    text = (run_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert linked == list(PLOTS)
    for rel in PLOTS:
        img = matplotlib.image.imread(run_dir / rel)
        assert img.shape[0] > 300 and img.shape[1] > 500, rel
        assert img[..., :3].std() > 0.05, rel  # not a blank canvas


def test_recall_curve_matches_the_gate_table(run_dir):
    """The Recall@K plot draws the final gate's own ranks: its values at the eval ks are the
    gate's recalls."""
    gate = json.loads((run_dir / "gate.json").read_text())
    with np.load(run_dir / report.RANKS_FILE) as z:
        ranks = {name: z[name] for name in z.files}
    assert set(ranks) >= {"v4", "heuristic", "last-vector", "oracle"}
    for name, r in ranks.items():
        curve = recall_curve(r, 500)
        for k in (10, 100, 500):
            assert curve[k - 1] == pytest.approx(100 * recall_at(r, k))
            assert curve[k - 1] == pytest.approx(gate["methods"][name][f"recall@{k}"])
        assert (np.diff(curve) >= 0).all()


def test_epoch_time_is_split_into_its_parts(run_dir):
    for h in json.loads((run_dir / "history.json").read_text()):
        parts = sum(h[f"seconds_{p}"] for p in ("encode", "mine", "train", "eval"))
        assert 0 < parts <= h["seconds"]
        assert (h["seconds_mine"] > 0) == (h["epoch"] >= 2)  # mining only in the mined phase


def test_rerender_a_finished_run(run_dir, capsys):
    before = (run_dir / "report.md").read_text()
    for rel in PLOTS:
        (run_dir / rel).unlink()
    (run_dir / "report.md").unlink()
    assert report.main([str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == before
    assert all((run_dir / rel).exists() for rel in PLOTS)


def test_rerender_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
