"""Bank format: round trip, normalization, and one test per validation refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cascade.bank import Bank, BankError, article_runs, load_bank, save_bank, summary


def _arrays(bank: Bank) -> dict:
    return {"vectors": bank.vectors.copy(), "article_indices": bank.article_indices.copy(),
            "chunk_indices": bank.chunk_indices.copy(), "tmd_codes": bank.tmd_codes.copy()}


def _write(tmp_path, arrays, name="bank.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_round_trip(tmp_path, small_bank):
    texts = np.array([f"chunk {i}" for i in range(small_bank.n)])
    bank = Bank(**_arrays(small_bank), concept_texts=texts, cpe_ids=np.arange(small_bank.n))
    meta = save_bank(bank, tmp_path / "b.npz", {"corpus": "test"})
    loaded = load_bank(tmp_path / "b.npz")
    np.testing.assert_array_equal(loaded.vectors, small_bank.vectors)
    np.testing.assert_array_equal(loaded.article_indices, small_bank.article_indices)
    np.testing.assert_array_equal(loaded.tmd_codes, small_bank.tmd_codes)
    assert loaded.text(7) == "chunk 7"
    assert loaded.fingerprint() == small_bank.fingerprint() == meta["fingerprint"]
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["corpus"] == "test" and sidecar["rows"] == small_bank.n
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def test_any_dimension_and_float64_accepted(tmp_path, small_bank):
    arrays = _arrays(small_bank)
    arrays["vectors"] = np.random.default_rng(0).standard_normal((small_bank.n, 768))
    bank = load_bank(_write(tmp_path, arrays))
    assert bank.dim == 768 and bank.vectors.dtype == np.float32


def test_unnormalized_vectors_are_normalized_with_notice(tmp_path, small_bank, caplog):
    arrays = _arrays(small_bank)
    arrays["vectors"] *= 3.0
    bank = load_bank(_write(tmp_path, arrays))
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, atol=1e-5)
    assert "not unit length" in caplog.text


def test_article_runs():
    starts, ends = article_runs(np.array([5, 5, 2, 2, 2, 9]))
    assert starts.tolist() == [0, 2, 5] and ends.tolist() == [2, 5, 6]


def _refusal(tmp_path, small_bank, mutate):
    arrays = _arrays(small_bank)
    mutate(arrays)
    path = _write(tmp_path, arrays)
    with pytest.raises(BankError) as e:
        load_bank(path)
    return str(e.value)


def test_refuses_missing_key(tmp_path, small_bank):
    msg = _refusal(tmp_path, small_bank, lambda a: a.pop("article_indices"))
    assert "missing key 'article_indices'" in msg


def test_refuses_nan(tmp_path, small_bank):
    def mutate(a):
        a["vectors"][123, 4] = np.nan
    assert "'vectors' row 123 holds NaN" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_inf(tmp_path, small_bank):
    def mutate(a):
        a["vectors"][9, 0] = np.inf
    assert "row 9 holds NaN or inf" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_zero_norm_row(tmp_path, small_bank):
    def mutate(a):
        a["vectors"][77] = 0.0
    assert "row 77 has zero norm" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_wrong_vector_dtype(tmp_path, small_bank):
    def mutate(a):
        a["vectors"] = (a["vectors"] * 100).astype(np.int32)
    assert "'vectors' must be float32" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_wrong_vector_shape(tmp_path, small_bank):
    def mutate(a):
        a["vectors"] = a["vectors"][:, 0].copy()
    assert "2-d array" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_wrong_index_dtype(tmp_path, small_bank):
    def mutate(a):
        a["chunk_indices"] = a["chunk_indices"].astype(np.float32)
    assert "'chunk_indices' must be integers" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_mismatched_lengths(tmp_path, small_bank):
    def mutate(a):
        a["article_indices"] = a["article_indices"][:-1]
    assert "'article_indices' has shape" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_split_article(tmp_path, small_bank):
    def mutate(a):
        a["article_indices"][100:105] = a["article_indices"][0]
    msg = _refusal(tmp_path, small_bank, mutate)
    assert "is split into non-contiguous runs" in msg and "row 100" in msg


def test_refuses_chunks_out_of_order(tmp_path, small_bank):
    def mutate(a):
        a["chunk_indices"][[3, 4]] = a["chunk_indices"][[4, 3]]
    msg = _refusal(tmp_path, small_bank, mutate)
    assert "'chunk_indices' row 4" in msg


def test_refuses_tmd_out_of_range(tmp_path, small_bank):
    def mutate(a):
        a["tmd_codes"] = a["tmd_codes"].astype(np.int64)
        a["tmd_codes"][5] = 1 << 15
    assert "'tmd_codes' row 5" in _refusal(tmp_path, small_bank, mutate)


def test_refuses_non_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    with pytest.raises(BankError, match="not an .npz file \\(not a zip archive\\)"):
        load_bank(path)
    with pytest.raises(BankError, match="is a directory"):
        load_bank(tmp_path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(BankError, match="not an .npz"):
        load_bank(tmp_path / "single.npy")


def test_summary(small_bank):
    s = summary(small_bank)
    assert s["rows"] == 3000 and s["dim"] == 32 and s["tmd_codes"] and not s["texts"]
    assert s["articles"] == len(np.unique(small_bank.article_indices))


def test_cli_valid_and_invalid(tmp_path, small_bank_path, small_bank):
    ok = subprocess.run([sys.executable, "-m", "cascade.bank", str(small_bank_path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "rows        3,000" in ok.stdout and "synthetic" in ok.stdout
    arrays = _arrays(small_bank)
    arrays["vectors"][11, 1] = np.nan
    bad = subprocess.run([sys.executable, "-m", "cascade.bank", str(_write(tmp_path, arrays))],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "row 11" in bad.stderr
    assert "Traceback" not in bad.stderr
