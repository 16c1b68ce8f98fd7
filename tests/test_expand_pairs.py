"""Pair expansion: windows against a brute-force enumeration, the cap, short articles, planted
duplicates, the article-disjoint seeded split, per-bank defaults, and the CLI (shortfall,
--auto-retry, manifest, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade.bank import Bank, save_bank
from cascade.pairs import TEST, TRAIN, VAL, load_pairs
from training.expand_pairs import (
    RETRY_MAX_PER_SEQ,
    RETRY_STRIDE,
    ExpandConfig,
    defaults_for,
    expand_pairs,
    near_duplicate_mask,
    resolve,
    split_spec,
)
from training.synth_bank import SynthConfig, synth_bank

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def long_bank():
    """6,000 rows x 16 dims, ~75 articles of 40-120 chunks (median >= 32: long-article kind)."""
    return synth_bank(SynthConfig(n=6000, dim=16, mean_chunks=80, topics=4, seed=3))


@pytest.fixture(scope="module")
def long_bank_path(tmp_path_factory, long_bank):
    path = tmp_path_factory.mktemp("long") / "long_bank.npz"
    save_bank(long_bank, path)
    return path


def _bank(lengths: list[int], dim: int = 32, seed: int = 0) -> Bank:
    """Random unit rows in articles of the given lengths."""
    lengths = np.array(lengths)
    v = np.random.default_rng(seed).standard_normal((int(lengths.sum()), dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return Bank(vectors=v, article_indices=np.repeat(np.arange(len(lengths)) * 10, lengths),
                chunk_indices=np.arange(int(lengths.sum())) - starts)


def _brute_force(bank: Bank, cfg: ExpandConfig) -> list[tuple[int, int, int]]:
    """(ctx_start, ctx_end, target) of every window, article by article, no cap."""
    starts, ends = bank.article_bounds()
    return [(max(s, t - cfg.context_len), t, t) for s, e in zip(starts, ends, strict=True)
            for t in range(s + cfg.min_context, e, cfg.stride)]


def _windows(pairs) -> list[tuple[int, int, int]]:
    return list(zip(pairs.ctx_start.tolist(), pairs.ctx_end.tolist(), pairs.target.tolist(),
                    strict=True))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.expand_pairs", *args],
                          capture_output=True, text=True, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("context_len, stride, min_context", [(8, 1, 1), (5, 3, 2), (20, 4, 6)])
def test_windows_match_brute_force(small_bank, context_len, stride, min_context):
    cfg = ExpandConfig(context_len=context_len, stride=stride, max_per_seq=10_000,
                       min_context=min_context)
    pairs = expand_pairs(small_bank, cfg)
    assert pairs.meta["near_duplicate_targets_dropped"] == 0
    assert _windows(pairs) == _brute_force(small_bank, cfg)
    art = small_bank.article_indices
    np.testing.assert_array_equal(pairs.target, pairs.ctx_end)
    assert (art[pairs.ctx_start] == art[pairs.target]).all()
    assert (pairs.lengths <= context_len).all() and (pairs.lengths >= min_context).all()
    assert (small_bank.chunk_indices[pairs.target] >= min_context).all()
    assert ((small_bank.chunk_indices[pairs.target] - min_context) % stride == 0).all()
    assert pairs.bank_fingerprint == small_bank.fingerprint()


def test_cap_per_article(long_bank):
    cfg = ExpandConfig(context_len=10, stride=3, max_per_seq=7, min_context=2)
    pairs = expand_pairs(long_bank, cfg)
    starts, ends = long_bank.article_bounds()
    full = -(-(ends - starts - 2) // 3)  # windows per article before the cap
    art = long_bank.article_indices[pairs.target]
    per_article = np.bincount(np.searchsorted(long_bank.article_indices[starts], art),
                              minlength=len(starts))
    np.testing.assert_array_equal(per_article, np.minimum(full, 7))
    assert pairs.meta["articles_capped"] == int((full > 7).sum()) > 0
    assert pairs.meta["windows_before_cap"] == int(full.sum())
    pos = long_bank.chunk_indices[pairs.target]
    assert ((pos - 2) % 3 == 0).all() and (pos >= 2).all()
    # Evenly spread: each capped article's kept windows reach past its middle.
    brute = {t for _, _, t in _brute_force(long_bank, cfg)}
    assert set(pairs.target.tolist()) <= brute
    for a in np.flatnonzero(full > 7)[:5]:
        kept = pos[art == long_bank.article_indices[starts[a]]]
        assert len(set(kept.tolist())) == 7 and kept.max() > (ends[a] - starts[a]) // 2


def test_short_articles_are_skipped_and_counted():
    lengths = [1, 5, 1, 1, 3, 2, 1, 6]
    bank = _bank(lengths)
    pairs = expand_pairs(bank, ExpandConfig(context_len=8, stride=1, max_per_seq=100))
    assert len(pairs) == sum(n - 1 for n in lengths if n >= 2)
    assert pairs.meta["articles_too_short"] == 4
    single = {10 * i for i, n in enumerate(lengths) if n < 2}
    assert not single & set(bank.article_indices[pairs.target].tolist())


def test_near_duplicate_target_dropped():
    bank = _bank([6, 6, 6], seed=1)
    bank.vectors[14] = bank.vectors[3]  # article 2, chunk 2 repeats article 0, chunk 3
    pairs = expand_pairs(bank, ExpandConfig(context_len=4, stride=1, max_per_seq=100))
    assert pairs.meta["near_duplicate_targets_dropped"] == 1
    assert 3 in pairs.target and 14 not in pairs.target
    assert len(pairs) == 3 * 5 - 1


def test_near_duplicate_chain_keeps_a_row_whose_only_duplicate_was_dropped():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(64).astype(np.float32)
    step = rng.standard_normal(64).astype(np.float32)
    step -= (step @ a) / (a @ a) * a  # orthogonal to a
    a /= np.linalg.norm(a)
    step *= 0.035 / np.linalg.norm(step)  # angle ~0.035 rad: cos ~0.99939 per step
    chain = np.stack([a + i * step for i in range(3)])
    chain /= np.linalg.norm(chain, axis=1, keepdims=True)
    other = rng.standard_normal((2, 64)).astype(np.float32)
    vectors = np.concatenate([chain, other / np.linalg.norm(other, axis=1, keepdims=True)])
    cos = vectors @ vectors.T
    assert cos[0, 1] > 0.999 and cos[1, 2] > 0.999 and cos[0, 2] < 0.999
    # Row 1 repeats row 0 and goes; row 2 repeats only row 1, which was not kept: it stays.
    assert near_duplicate_mask(vectors).tolist() == [False, True, False, False, False]


def test_near_duplicate_ivf_path_matches_exact():
    # Random directions are IVF's worst case (no clusters, many points near list borders).
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(3000, 200, replace=False)
    noise = rng.standard_normal((200, 48)).astype(np.float32)
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = np.arccos(0.9993)
    x[3000 + src] = np.cos(angle) * x[src] + np.sin(angle) * noise
    exact = near_duplicate_mask(x, exact_max=len(x))
    approx = near_duplicate_mask(x, exact_max=100)
    assert exact.sum() == 200 and set(np.flatnonzero(exact)) == set(3000 + src)
    assert (approx == exact).all()


# ---------------------------------------------------------------------------------------------
# split


def test_split_is_article_disjoint_and_seeded(small_bank):
    cfg = resolve(ExpandConfig(seed=11), small_bank)
    a, b = expand_pairs(small_bank, cfg), expand_pairs(small_bank, cfg)
    other = expand_pairs(small_bank, resolve(ExpandConfig(seed=12), small_bank))
    art = small_bank.article_indices[a.target]
    train, val = set(art[a.split == TRAIN].tolist()), set(art[a.split == VAL].tolist())
    test = set(art[a.split == TEST].tolist())
    assert train and val and test and not train & val and not train & test and not val & test
    n_articles = len(train | val | test)
    # Each article's side is its own hash draw: the fractions hold in expectation (binomial).
    assert abs(len(train) - 0.8 * n_articles) <= 3 * np.sqrt(0.16 * n_articles)
    assert a.meta["train_articles"] == len(train) and a.meta["val_articles"] == len(val)
    assert a.meta["test_articles"] == len(test)
    np.testing.assert_array_equal(a.split, b.split)
    assert (a.split != other.split).any()
    np.testing.assert_array_equal(a.target, other.target)  # the seed moves only the split


# ---------------------------------------------------------------------------------------------
# per-bank defaults and the CLI


def test_per_bank_defaults(small_bank, long_bank):
    short = resolve(ExpandConfig(), small_bank)
    assert (short.context_len, short.stride, short.max_per_seq) == (8, 1, 1000)
    assert defaults_for(small_bank)["bank_kind"] == "short-article"
    long = resolve(ExpandConfig(), long_bank)
    assert (long.context_len, long.stride, long.max_per_seq) == (100, 32, 30)
    assert defaults_for(long_bank)["bank_kind"] == "long-article"
    assert resolve(ExpandConfig(stride=5), long_bank).stride == 5  # a set flag wins


def test_cli_writes_pairs_and_manifest(tmp_path, small_bank, small_bank_path):
    out = tmp_path / "p.npz"
    proc = _run("--bank", str(small_bank_path), "--out", str(out), "--target-pairs", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stdout
    pairs = load_pairs(out, small_bank)
    m = json.loads(out.with_suffix(".json").read_text())
    assert m == pairs.meta
    assert m["pairs"] == len(pairs) == m["train_pairs"] + m["val_pairs"] + m["test_pairs"]
    assert m["config"]["stride"] == 1 and m["bank_kind"] == "short-article"
    assert m["retried"] is False and m["bank_fingerprint"] == small_bank.fingerprint()
    hist = {int(k): v for k, v in m["context_length_histogram"].items()}
    assert sum(hist.values()) == len(pairs) and max(hist) <= 8
    assert hist == dict(zip(*np.unique(pairs.lengths, return_counts=True), strict=True))


def test_cli_shortfall_and_auto_retry(tmp_path, long_bank_path):
    out = tmp_path / "p.npz"
    proc = _run("--bank", str(long_bank_path), "--out", str(out), "--target-pairs", "5000")
    assert proc.returncode == 0, proc.stderr
    assert "short of --target-pairs 5,000" in proc.stdout and "--auto-retry" in proc.stdout
    first = json.loads(out.with_suffix(".json").read_text())
    assert first["retried"] is False and first["config"]["stride"] == 32

    proc = _run("--bank", str(long_bank_path), "--out", str(out), "--target-pairs", "5000",
                "--auto-retry")
    assert proc.returncode == 0, proc.stderr
    assert f"retrying with --stride {RETRY_STRIDE} --max-per-seq {RETRY_MAX_PER_SEQ}" \
        in proc.stdout
    assert "after the retry" in proc.stdout  # still short of 5,000 on 6,000 rows
    retried = json.loads(out.with_suffix(".json").read_text())
    assert retried["retried"] is True and retried["config"]["stride"] == RETRY_STRIDE
    assert retried["config"]["max_per_seq"] == RETRY_MAX_PER_SEQ
    assert retried["pairs"] > first["pairs"]


def test_cli_shortfall_when_every_window_is_used(tmp_path, small_bank_path):
    # Short articles at stride 1 with no article capped: the checklist's retry cannot help.
    proc = _run("--bank", str(small_bank_path), "--out", str(tmp_path / "p.npz"),
                "--target-pairs", "1000000", "--auto-retry")
    assert proc.returncode == 0, proc.stderr
    assert "Every window of every article is already used" in proc.stdout
    assert "retrying" not in proc.stdout and "--auto-retry does it" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--bank", "MISSING"], "no such file"),
    (["--stride", "0"], "--stride must be >= 1"),
    (["--train-split", "1.0"], "--train-split / --test-split: split fractions"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, small_bank_path, args, message):
    args = [str(tmp_path / "nope.npz") if a == "MISSING" else a for a in args]
    if "--bank" not in args:
        args += ["--bank", str(small_bank_path)]
    proc = _run(*args, "--out", str(tmp_path / "p.npz"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "p.npz").exists()


def test_duplicated_context_never_lands_on_two_sides():
    """Sentences repeated across articles: a held-out pair whose context equals a train context
    is dropped and counted; no article changes side, and pre-flight's leakage check passes."""
    from cascade.split import row_sides
    from training.preflight import check_leakage

    bank = _bank([5] * 150, dim=16, seed=4)
    cfg = resolve(ExpandConfig(seed=3), bank)
    starts, _ = bank.article_bounds()
    sides = row_sides(bank, split_spec(bank, cfg))
    art_side = sides[starts]
    train_art = np.flatnonzero(art_side == TRAIN)
    held_art = np.flatnonzero(art_side != TRAIN)
    assert len(held_art) >= 6
    a = starts[train_art[0]]
    for b in starts[held_art[:3]]:  # the same first sentence (a one-row context)
        bank.vectors[b] = bank.vectors[a]
    for b in starts[held_art[3:6]]:  # the same first two sentences
        bank.vectors[b:b + 2] = bank.vectors[a:a + 2]
    pairs = expand_pairs(bank, cfg)

    train_ctx = {bank.vectors[s:e].tobytes() for s, e in
                 zip(pairs.ctx_start[pairs.split == TRAIN], pairs.ctx_end[pairs.split == TRAIN],
                     strict=True)}
    held = pairs.split != TRAIN
    assert not any(bank.vectors[s:e].tobytes() in train_ctx
                   for s, e in zip(pairs.ctx_start[held], pairs.ctx_end[held], strict=True))
    dropped = pairs.meta["duplicate_context_pairs_dropped"]
    assert sum(dropped.values()) >= 3 and set(dropped) == {"val", "test"}
    assert pairs.meta["duplicate_context_first"] is not None
    # Every pair keeps its article's side (a pure function of the article key and the seed).
    assert np.array_equal(pairs.split, sides[pairs.target])
    assert check_leakage(pairs, bank).status == "pass"
    # Held-out pairs of those articles whose context differs from every train context stay.
    kept_from = set(bank.article_indices[pairs.target[held]].tolist())
    assert {int(bank.article_indices[b]) for b in starts[held_art[:6]]} <= kept_from


def test_no_duplicate_contexts_changes_nothing(small_bank):
    """On a bank whose pairs pass pre-flight, the drop is a no-op: every window is kept."""
    pairs = expand_pairs(small_bank, resolve(ExpandConfig(seed=7), small_bank))
    m = pairs.meta
    assert m["duplicate_context_pairs_dropped"] == {"val": 0, "test": 0}
    assert m["duplicate_context_first"] is None
    assert len(pairs) == m["windows_before_cap"] - m["near_duplicate_targets_dropped"]
