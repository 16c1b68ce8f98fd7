"""Synthetic banks: valid format, and sequential structure a model can learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from cascade.bank import load_bank, validate
from training.synth_bank import SynthConfig, synth_bank


def test_valid_and_deterministic(small_bank):
    validate(small_bank)
    again = synth_bank(SynthConfig(n=3000, dim=32, mean_chunks=20, topics=4, seed=1))
    np.testing.assert_array_equal(again.vectors, small_bank.vectors)
    assert small_bank.meta["synthetic"] is True


def test_next_chunk_closer_than_random(small_bank):
    v, a = small_bank.vectors, small_bank.article_indices
    rows = np.flatnonzero(a[1:] == a[:-1])
    rng = np.random.default_rng(0)
    random_rows = rng.integers(0, small_bank.n, size=len(rows))
    next_cos = np.einsum("ij,ij->i", v[rows], v[rows + 1]).mean()
    random_cos = np.einsum("ij,ij->i", v[rows], v[random_rows]).mean()
    assert next_cos > random_cos + 0.3


def test_next_chunk_is_predictable_beyond_the_context(small_bank):
    """A linear predictor fitted on half the articles beats the mean and the last vector on the
    other half: the trajectories carry signal that a query tower can learn."""
    v, a, k = small_bank.vectors, small_bank.article_indices, 4
    t = np.flatnonzero((np.arange(small_bank.n) >= k) & (a == np.roll(a, k)))
    ctx = np.stack([v[t - i] for i in range(1, k + 1)], axis=-1)  # (m, D, k)
    half = len(t) // 2
    weights, *_ = np.linalg.lstsq(ctx[:half].reshape(-1, k), v[t[:half]].reshape(-1), rcond=None)

    def cos(q):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        return float(np.einsum("ij,ij->i", q, v[t[half:]]).mean())

    fitted, mean, last = cos(ctx[half:] @ weights), cos(ctx[half:].mean(-1)), cos(ctx[half:, :, 0])
    assert fitted > last + 0.02 and fitted > mean + 0.02


def test_cli(tmp_path):
    out = tmp_path / "b.npz"
    r = subprocess.run([sys.executable, "-m", "training.synth_bank", "--n", "5000", "--dim", "48",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bank = load_bank(out)
    assert bank.n == 5000 and bank.dim == 48 and bank.meta["synthetic"] is True


def test_like_bank_keeps_the_real_geometry_and_the_lift_keeps_inner_products(small_bank):
    from training.synth_bank import like_bank

    narrow = like_bank(small_bank, 6000, small_bank.dim, seed=5)
    wide = like_bank(small_bank, 6000, 96, seed=5)
    validate(wide)
    assert wide.n == 6000 and wide.dim == 96 and wide.meta["like"]["lift"] == "32->96"
    np.testing.assert_array_equal(wide.article_indices, narrow.article_indices)
    np.testing.assert_allclose(wide.vectors @ wide.vectors[:50].T,
                               narrow.vectors @ narrow.vectors[:50].T, atol=2e-5)
    v, a = wide.vectors, wide.article_indices
    rows = np.flatnonzero(a[1:] == a[:-1])
    random_rows = np.random.default_rng(0).integers(0, wide.n, size=len(rows))
    next_cos = np.einsum("ij,ij->i", v[rows], v[rows + 1]).mean()
    assert next_cos > np.einsum("ij,ij->i", v[rows], v[random_rows]).mean() + 0.3
    # The real article lengths and codes come along.
    starts, ends = small_bank.article_bounds()
    assert set(np.diff(np.flatnonzero(np.diff(a)))) <= set(ends - starts)
    assert wide.tmd_codes is not None
