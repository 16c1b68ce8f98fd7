"""A bank written exactly as the original system writes it converts, loads and trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade.bank import BankError, load_bank
from cascade.bank.cli import main as bank_main
from cascade.bank.original import convert_original
from training.synth_bank import SynthConfig, synth_bank

REPO = Path(__file__).resolve().parent.parent


def write_original(path: Path, n_articles: int = 60, seed: int = 5, **extra) -> dict:
    """As the original system: object arrays, savez_compressed, TMD as separate int16 codes."""
    bank = synth_bank(SynthConfig(n=n_articles * 8, dim=16, mean_chunks=8, topics=3, seed=seed))
    n = bank.n
    rng = np.random.default_rng(seed)
    cols = {
        "vectors": bank.vectors,
        "article_indices": bank.article_indices.astype(np.int32),
        "chunk_indices": bank.chunk_indices.astype(np.int32),
        "cpe_ids": np.array([f"cpe-{i:06d}-{rng.integers(1 << 30):x}" for i in range(n)],
                            dtype=object),
        "concept_texts": np.array([f"Concept text {i} é" for i in range(n)], dtype=object),
        "domain_codes": rng.integers(0, 16, n).astype(np.int16),
        "task_codes": rng.integers(0, 32, n).astype(np.int16),
        "modifier_codes": rng.integers(0, 64, n).astype(np.int16),
        "lane_indices": rng.integers(0, 5, n).astype(np.int32),
        "tmd_lanes": np.array([f"lane-{i % 5}" for i in range(n)], dtype=object),
        "created_ats": np.array([f"2025-01-01T00:00:{i % 60:02d}" for i in range(n)],
                                dtype=object),
    }
    cols["tmd_codes"] = ((cols["domain_codes"].astype(np.int32) << 11)
                         | (cols["task_codes"].astype(np.int32) << 6)
                         | cols["modifier_codes"]).astype(np.int32)
    cols.update(extra)
    np.savez_compressed(path, **cols)
    return cols


def test_original_bank_is_refused_with_the_command_that_converts_it(tmp_path):
    write_original(tmp_path / "orig.npz")
    with pytest.raises(BankError, match="cascade.bank convert .*orig.npz OUT.npz --trust-pickle"):
        load_bank(tmp_path / "orig.npz")


def test_convert_maps_every_key_and_trains(tmp_path):
    cols = write_original(tmp_path / "orig.npz")
    rc = bank_main(["convert", str(tmp_path / "orig.npz"), str(tmp_path / "ours.npz"),
                    "--trust-pickle"])
    assert rc == 0
    bank = load_bank(tmp_path / "ours.npz")
    assert bank.n == len(cols["vectors"])
    assert np.allclose(bank.vectors, cols["vectors"], atol=1e-6)
    assert bank.text(3) == "Concept text 3 é"
    assert str(bank.cpe_ids[5]) == cols["cpe_ids"][5]
    code = bank.tmd_codes.astype(np.int64)
    assert np.array_equal(code >> 11, cols["domain_codes"])
    assert np.array_equal((code >> 6) & 31, cols["task_codes"])
    assert np.array_equal(code & 63, cols["modifier_codes"])
    conv = bank.meta["converted_from"]
    assert conv["dropped_keys"] == ["created_ats", "lane_indices", "tmd_lanes"]
    assert conv["tmd_codes_disagreeing_rows"] == 0
    # ... and the converted bank runs the checklist's steps: pairs, then a short training.
    pairs = tmp_path / "pairs.npz"
    env_py = sys.executable
    out = subprocess.run([env_py, "-m", "training.expand_pairs", "--bank",
                          str(tmp_path / "ours.npz"), "--out", str(pairs), "--stride", "1",
                          "--context-len", "4", "--target-pairs", "100"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "split key article_index" in out.stdout
    out = subprocess.run([env_py, "-m", "training.train_v4", "--bank", str(tmp_path / "ours.npz"),
                          "--pairs", str(pairs), "--out", str(tmp_path / "run"), "--epochs", "1",
                          "--bs", "16", "--accum", "1", "--mine-schedule", "0-1:none",
                          "--memory-bank-size", "64", "--log-dir", str(tmp_path / "logs")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "run" / "gate.json").exists()


def test_convert_needs_trust_and_refuses_bad_codes(tmp_path):
    write_original(tmp_path / "orig.npz")
    with pytest.raises(BankError, match="--trust-pickle"):
        convert_original(tmp_path / "orig.npz", tmp_path / "x.npz")
    assert bank_main(["convert", str(tmp_path / "orig.npz"), str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()
    bad = write_original(tmp_path / "bad.npz", task_codes=np.full(480, 40, np.int16))
    assert len(bad["vectors"]) == 480
    with pytest.raises(BankError, match=r"key 'task_codes' row 0: value 40 is outside 0..31"):
        convert_original(tmp_path / "bad.npz", tmp_path / "y.npz", trust_pickle=True)
    texts = np.array([f"t{i}" for i in range(480)], dtype=object)
    texts[7] = 3.5
    write_original(tmp_path / "bad2.npz", concept_texts=texts)
    with pytest.raises(BankError, match=r"key 'concept_texts' row 7: expected text"):
        convert_original(tmp_path / "bad2.npz", tmp_path / "z.npz", trust_pickle=True)
    assert not (tmp_path / "y.npz").exists() and not (tmp_path / "z.npz").exists()
