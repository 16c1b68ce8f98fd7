"""The in-process cascade from deploy.json: stage by stage, one context or a batch, its pins,
and cascade_eval's table and strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade.deploy import DeployError
from cascade.pipeline import Cascade, ContextRows
from tests.test_lvm import cfg_for, setup  # noqa: F401  (the fixture)
from training.train_lvm import train


@pytest.fixture(scope="module")
def cascade_dir(setup):  # noqa: F811
    root, bank, pairs = setup
    train(cfg_for(root, "pipe", epochs=1))
    return root, bank, pairs


def test_cascade_chains_the_stages(cascade_dir):
    root, bank, pairs = cascade_dir
    cascade = Cascade.from_deploy(root / "deploy.json")
    assert cascade.config.k_stage1 == 60
    rows = [np.arange(s, e) for s, e in zip(pairs.ctx_start[:5], pairs.ctx_end[:5], strict=True)]
    res = cascade.search(ContextRows(rows))
    assert res.stage1_kind == "heuristic" and set(res.stages) == {"stage1", "lvm"}
    assert res.ids.shape == (5, 10) and res.stages["stage1"].ids.shape == (5, 60)
    assert res.stages["lvm"].ids.shape == (5, 50)
    for b in range(5):
        assert set(res.stages["lvm"].ids[b]) <= set(res.stages["stage1"].ids[b])
        assert not np.isin(res.ids[b], rows[b]).any()
    assert all(st.seconds > 0 for st in res.stages.values())
    one = cascade.search(bank.vectors[rows[2]], k=5)  # raw vectors, one context
    assert np.array_equal(one.ids[0], res.ids[2, :5])
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\]"):
        cascade.search(bank.vectors[rows[0]], k=11)


def test_a_tampered_lvm_is_refused(cascade_dir, tmp_path):
    root, _, _ = cascade_dir
    deploy = json.loads((root / "deploy.json").read_text())
    deploy["lvm"]["sha256"] = "sha256:" + "2" * 64
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(deploy))
    with pytest.raises(DeployError, match="lvm.checkpoint.*deploy.json pins sha256:2222"):
        Cascade.from_deploy(path)
