"""The NumPy copy of the GRU query tower computes what the torch tower computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.context import pad_left_aligned
from cascade.infer import GruQuery
from cascade.towers import TowerConfig, build_towers


def trained_like(cfg: TowerConfig, seed: int = 0):
    """A tower with every weight random (an untrained residual tower's output layer is zero,
    which would hide a wrong GRU)."""
    torch.manual_seed(seed)
    tower, _ = build_towers(cfg)
    with torch.no_grad():
        for p in tower.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return tower.eval()


def contexts(lengths, dim=16, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        v = rng.normal(size=(n, dim)).astype(np.float32)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


@pytest.mark.parametrize("layers,residual", [(1, True), (2, True), (1, False)])
def test_numpy_tower_equals_torch_tower(layers, residual):
    cfg = TowerConfig(dim=16, hidden=24, layers=layers, residual=residual, max_len=6)
    tower = trained_like(cfg)
    fast = GruQuery(tower)
    # One context, then a batch with padding (lengths differ) and contexts longer than max_len.
    for batch in (contexts([3]), contexts([1, 4, 6, 2, 9], seed=2)):
        ctx, mask = pad_left_aligned(batch, cfg.max_len)
        with torch.inference_mode():
            want = tower(torch.from_numpy(ctx), torch.from_numpy(mask)).numpy()
        got = fast(ctx, mask)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_only_a_gru_tower_is_copied():
    tower, _ = build_towers(TowerConfig(kind="mean_mlp", dim=16, hidden=24))
    with pytest.raises(TypeError, match="GRUTower"):
        GruQuery(tower)


def test_numpy_lvm_features_equal_the_torch_features(small_bank):
    """Every feature (adjacency ones too), for a batch with contexts of different lengths and
    candidate lists padded with -1, including candidates of the same article and successors."""
    from cascade.infer import BankArrays, lvm_features
    from cascade.lvm import FEATURES, BankStructure, Lvm, LvmConfig

    cfg = LvmConfig(dim=small_bank.dim, hidden=24, max_len=4, features=list(FEATURES))
    model = Lvm(cfg).eval()
    bs = BankStructure(small_bank)
    rng = np.random.default_rng(3)
    rows = [np.arange(100, 103), np.arange(500, 501), np.arange(900, 906)]
    ctx, mask = pad_left_aligned([small_bank.vectors[r] for r in rows])
    k = 40
    ids = np.stack([np.concatenate([np.arange(r[-1] + 1, r[-1] + 11),  # the article's next rows
                                    rng.choice(small_bank.n, k - 10, replace=False)])
                    for r in rows]).astype(np.int64)
    ids[1, -7:] = -1  # fewer candidates than k
    s1 = np.sort(rng.uniform(0.1, 0.9, size=ids.shape).astype(np.float32), axis=1)[:, ::-1]
    s1 = np.where(ids >= 0, s1, -np.inf).astype(np.float32)
    with torch.inference_mode():
        pred = model.predict(torch.from_numpy(ctx), torch.from_numpy(mask))
        want = model.features(bs, torch.from_numpy(ctx), torch.from_numpy(mask),
                              torch.from_numpy(ids), torch.from_numpy(s1), pred).numpy()
    got = lvm_features(BankArrays.of(bs), cfg, ctx, mask, ids, s1, pred.numpy())
    assert got.shape == want.shape == (3, k, len(FEATURES)) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert (got[1, -7:] == 0).all()
