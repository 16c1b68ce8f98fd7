"""Shared fixtures: small seeded synthetic banks, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from training.synth_bank import SynthConfig, synth_bank  # noqa: E402


@pytest.fixture(scope="session")
def small_bank():
    """3,000 rows x 32 dims, ~150 articles of ~20 chunks."""
    return synth_bank(SynthConfig(n=3000, dim=32, mean_chunks=20, topics=4, seed=1))


@pytest.fixture(scope="session")
def small_bank_path(tmp_path_factory, small_bank):
    from cascade.bank import save_bank

    path = tmp_path_factory.mktemp("bank") / "small_bank.npz"
    save_bank(small_bank, path)
    return path
