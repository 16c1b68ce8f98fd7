"""The article split: a pure function of (article key, seed, fractions), shared by every pairs
file of a bank; and the leakage check against a checkpoint's split."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.bank import Bank
from cascade.split import (
    TEST,
    TRAIN,
    VAL,
    SplitSpec,
    article_keys,
    key_kind,
    key_sides,
    leaked_rows,
    row_sides,
)
from training.expand_pairs import ExpandConfig, expand_pairs


def _sides_by_article(bank, pairs) -> dict[int, int]:
    arts = bank.article_indices[pairs.target]
    out: dict[int, int] = {}
    for a, s in zip(arts.tolist(), pairs.split.tolist(), strict=True):
        assert out.setdefault(a, s) == s, f"article {a} on two sides in one file"
    return out


def test_pair_files_of_different_strides_agree_on_every_article(small_bank):
    dense = expand_pairs(small_bank, ExpandConfig(context_len=8, stride=1, max_per_seq=1000))
    sparse = expand_pairs(small_bank, ExpandConfig(context_len=4, stride=3, max_per_seq=2,
                                                   min_context=2))
    a, b = _sides_by_article(small_bank, dense), _sides_by_article(small_bank, sparse)
    shared = set(a) & set(b)
    assert len(shared) > 50 and len(set(b) - set(a)) == 0
    assert all(a[k] == b[k] for k in shared)
    assert {TRAIN, VAL, TEST} <= set(a.values())
    assert dense.meta["split"] == sparse.meta["split"]
    # Another seed moves articles: the seed is part of the function.
    other = expand_pairs(small_bank, ExpandConfig(context_len=8, stride=1, max_per_seq=1000, seed=7))
    c = _sides_by_article(small_bank, other)
    assert any(a[k] != c[k] for k in a)


def test_side_depends_on_the_key_not_on_the_other_articles():
    keys = np.array([f"id:Article {i}" for i in range(5000)], dtype=object)
    spec = SplitSpec(seed=42, train=0.8, test=0.1)
    full = key_sides(keys, spec)
    some = np.r_[0:5000:7]
    assert np.array_equal(key_sides(keys[some], spec), full[some])
    fractions = np.bincount(full, minlength=3) / len(full)
    assert fractions == pytest.approx([0.8, 0.1, 0.1], abs=0.02)


def test_article_ids_from_cpe_ids_are_the_key_when_the_bank_has_them():
    v = np.eye(6, 4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]] + 0.1
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    bank = Bank(v, np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 1]),
                cpe_ids=np.array(["Paris:0", "Paris:1", "Rome:0", "Rome:1", "a:b:0", "a:b:1"]),
                meta={"cpe_id_format": "<article id>:<chunk index>"})
    assert key_kind(bank) == "article_id"
    _, keys = article_keys(bank)
    assert list(keys) == ["id:Paris", "id:Rome", "id:a:b"]
    # The same article at another index of another bank gets the same side.
    moved = Bank(v[2:4], np.array([5, 5]), np.array([0, 1]), cpe_ids=np.array(["Rome:0", "Rome:1"]),
                 meta=bank.meta)
    spec = SplitSpec(key="article_id")
    assert row_sides(moved, spec)[0] == row_sides(bank, spec)[2]
    bank.meta = {}
    assert key_kind(bank) == "article_index"


def test_leaked_rows_finds_val_test_pairs_a_checkpoint_trained_on(small_bank):
    pairs = expand_pairs(small_bank, ExpandConfig(context_len=8, stride=1, max_per_seq=1000, seed=42))
    assert len(leaked_rows(small_bank, pairs.target, pairs.split, pairs.split_spec)) == 0
    other = SplitSpec(seed=1, key=pairs.split_spec.key)
    leaked = leaked_rows(small_bank, pairs.target, pairs.split, other)
    assert len(leaked) > 0
    assert (pairs.split[leaked] != TRAIN).all()
    assert (row_sides(small_bank, other)[pairs.target[leaked]] == TRAIN).all()


@pytest.mark.parametrize("train,test", [(0.9, 0.1), (0.0, 0.1), (0.8, 0.0), (1.2, 0.1)])
def test_fractions_that_leave_a_side_empty_are_refused(train, test):
    with pytest.raises(ValueError, match="fractions"):
        SplitSpec(train=train, test=test).check()
