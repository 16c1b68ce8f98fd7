"""Pairs as index windows: round trip, one test per load refusal, context windows vs a loop."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.bank import Bank
from cascade.pairs import (
    KEYS,
    TRAIN,
    VAL,
    Pairs,
    PairsError,
    context_windows,
    load_pairs,
    save_pairs,
)


def make_pairs(bank: Bank, max_ctx: int = 8, seed: int = 0) -> Pairs:
    """Every next-chunk pair of every article, context up to `max_ctx`, split by article."""
    starts, ends = bank.article_bounds()
    rows = [(max(s, t - max_ctx), t, t)
            for s, e in zip(starts, ends, strict=True) for t in range(s + 1, e)]
    ctx_start, ctx_end, target = (np.array(c, np.int64) for c in zip(*rows, strict=True))
    is_val = np.random.default_rng(seed).random(len(starts)) < 0.2
    split = np.where(is_val[bank.article_indices[target]], VAL, TRAIN).astype(np.uint8)
    return Pairs(ctx_start, ctx_end, target, split, bank.fingerprint(), {"made_by": "test"})


@pytest.fixture(scope="module")
def pairs(small_bank):
    return make_pairs(small_bank)


def _arrays(pairs: Pairs) -> dict:
    return {"ctx_start": pairs.ctx_start.copy(), "ctx_end": pairs.ctx_end.copy(),
            "target": pairs.target.copy(), "split": pairs.split.copy(),
            "bank_fingerprint": np.array(pairs.bank_fingerprint)}


def _write(tmp_path, arrays, name="pairs.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_round_trip(tmp_path, small_bank, pairs):
    save_pairs(pairs, tmp_path / "sub" / "p.npz")
    loaded = load_pairs(tmp_path / "sub" / "p.npz", small_bank)
    for key in KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(pairs, key))
    assert loaded.ctx_start.dtype == np.int64 and loaded.split.dtype == np.uint8
    assert loaded.meta == {"made_by": "test"}
    assert loaded.bank_fingerprint == small_bank.fingerprint()
    assert loaded.path == str(tmp_path / "sub" / "p.npz")
    assert not list((tmp_path / "sub").glob(".*.tmp")), "atomic write left a temp file"
    assert len(loaded.train()) + len(loaded.val()) == len(pairs)
    assert (loaded.val().split == VAL).all() and (loaded.train().split == TRAIN).all()


@pytest.mark.parametrize("key", KEYS)
def test_refuses_missing_key(tmp_path, pairs, key):
    arrays = _arrays(pairs)
    del arrays[key]
    with pytest.raises(PairsError, match=f"missing key '{key}'"):
        load_pairs(_write(tmp_path, arrays))


def test_refuses_missing_file(tmp_path):
    with pytest.raises(PairsError, match="no such file"):
        load_pairs(tmp_path / "nope.npz")


@pytest.mark.parametrize("key", ["ctx_start", "target"])
def test_refuses_float_dtype(tmp_path, pairs, key):
    arrays = _arrays(pairs)
    arrays[key] = arrays[key].astype(np.float32)
    with pytest.raises(PairsError, match=f"key '{key}' must be integers"):
        load_pairs(_write(tmp_path, arrays))


def test_refuses_wrong_length(tmp_path, pairs):
    arrays = _arrays(pairs)
    arrays["split"] = arrays["split"][:-1]
    with pytest.raises(PairsError, match="key 'split' has shape"):
        load_pairs(_write(tmp_path, arrays))


def test_refuses_empty_context(tmp_path, pairs):
    arrays = _arrays(pairs)
    arrays["ctx_end"][5] = arrays["ctx_start"][5]
    with pytest.raises(PairsError, match="key 'ctx_end' row 5: empty context"):
        load_pairs(_write(tmp_path, arrays))


@pytest.mark.parametrize("value", [3, 255, 256, -1])
def test_refuses_bad_split(tmp_path, pairs, value):
    arrays = _arrays(pairs)
    arrays["split"] = arrays["split"].astype(np.int64)  # 256 must not wrap to 0 (train)
    arrays["split"][7] = value
    with pytest.raises(PairsError, match=f"key 'split' row 7: value {value}"):
        load_pairs(_write(tmp_path, arrays))


def test_refuses_negative_rows_without_bank(tmp_path, pairs):
    arrays = _arrays(pairs)
    arrays["ctx_start"][3] = -2
    with pytest.raises(PairsError, match="key 'ctx_start' row 3"):
        load_pairs(_write(tmp_path, arrays))


@pytest.mark.parametrize("key,offset", [("target", 0), ("ctx_end", 1), ("ctx_start", 0)])
def test_refuses_rows_outside_bank(tmp_path, small_bank, pairs, key, offset):
    arrays = _arrays(pairs)
    arrays[key][11] = small_bank.n + offset
    if key == "ctx_start":
        arrays["ctx_end"][11] = small_bank.n + 1
    path = _write(tmp_path, arrays)
    load_pairs(path)  # without a bank there is nothing to check the rows against
    with pytest.raises(PairsError, match=f"key '{key}' row 11"):
        load_pairs(path, small_bank)


def test_ctx_end_may_equal_bank_size(tmp_path, small_bank, pairs):
    arrays = _arrays(pairs)
    arrays["ctx_start"][0], arrays["ctx_end"][0] = small_bank.n - 2, small_bank.n
    load_pairs(_write(tmp_path, arrays), small_bank)


def test_refuses_another_banks_pairs(tmp_path, small_bank, pairs):
    other = Bank(vectors=small_bank.vectors[::-1].copy(),
                 article_indices=small_bank.article_indices,
                 chunk_indices=small_bank.chunk_indices)
    path = _write(tmp_path, _arrays(pairs))
    load_pairs(path, small_bank)
    with pytest.raises(PairsError, match="built from another bank"):
        load_pairs(path, other)


def _windows_loop(pairs: Pairs, max_len: int | None):
    out = []
    for s, e in zip(pairs.ctx_start, pairs.ctx_end, strict=True):
        rows = list(range(s, e))
        out.append(rows if max_len is None else rows[-max_len:])
    return out


@pytest.mark.parametrize("max_len", [None, 1, 3, 8, 50])
def test_context_windows_vs_loop(pairs, max_len):
    rows, mask = context_windows(pairs, max_len)
    expected = _windows_loop(pairs, max_len)
    width = max(len(r) for r in expected)
    assert rows.shape == mask.shape == (len(pairs), width)
    assert rows.dtype == np.int64 and mask.dtype == bool
    for i, exp in enumerate(expected):
        assert rows[i, :len(exp)].tolist() == exp
        assert mask[i].tolist() == [True] * len(exp) + [False] * (width - len(exp))
        assert (rows[i, len(exp):] == 0).all()


def test_context_windows_empty():
    empty = Pairs(*(np.zeros(0, np.int64) for _ in range(3)), np.zeros(0, np.uint8))
    rows, mask = context_windows(empty, 4)
    assert rows.shape[0] == mask.shape[0] == 0
