"""Data-parallel training: 2 gloo ranks under torchrun against one process on the same data,
and a SIGKILL of one rank followed by --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cascade import checkpoint as ck
from cascade.bank import save_bank
from cascade.pairs import load_pairs, save_pairs
from training.config import load_config
from training.expand_pairs import ExpandConfig, expand_pairs
from training.synth_bank import SynthConfig, synth_bank
from training.train_v4 import train

# A trainable doc tower, so the gradient that flows through the gathered positives to the other
# rank's doc tower matters; mining in epochs 2-3, so sharded mining is compared too.
TINY = {"bs": 32, "accum": 2, "epochs": 3, "lr": 3e-3, "lr_min": 1e-4, "memory_bank_size": 256,
        "mine_schedule": "0-1:none;2-3:4@0.0-0.99", "index": "flat", "threads": 1,
        "eval_ks": [10, 100], "select_metric": "recall@100", "checkpoint_every": 10,
        "model": {"hidden": 16, "max_len": 6, "doc": "mlp"},
        "gates": {"metric": "recall@100", "mid_epoch": 2, "mid": 50.0, "success": 90.0,
                  "partial": 60.0},
        "abort": {"margin": -1.0}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    bank = synth_bank(SynthConfig(n=1500, dim=16, mean_chunks=10, topics=3, seed=3))
    save_bank(bank, root / "bank.npz")
    save_pairs(expand_pairs(bank, ExpandConfig(context_len=6, stride=1, max_per_seq=100,
                                               seed=1)), root / "pairs.npz")
    (root / "cfg.yaml").write_text(yaml.safe_dump(
        {**TINY, "bank": str(root / "bank.npz"), "pairs": str(root / "pairs.npz"),
         "log_dir": str(root / "logs")}))
    return root


def torchrun(root: Path, out: str, *extra: str) -> subprocess.Popen:
    # The train set (1,128 pairs) is not a multiple of bs: the last micro-batch is short.
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "training.train_v4", "--config",
                             str(root / "cfg.yaml"), "--out", str(root / out), "--device",
                             "cpu", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)


def history(root: Path, out: str) -> list[dict]:
    return json.loads((root / out / "history.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(data):
    proc = torchrun(data, "ddp")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return data, out


def test_two_gloo_ranks_match_one_process(ddp_run):
    data, out = ddp_run
    assert "on cpu x 2 processes (DDP)" in out
    single = load_config(data / "cfg.yaml", {"out": str(data / "single"), "device": "cpu"})
    gate_one = train(single)
    one, two = history(data, "single"), history(data, "ddp")
    val_pairs = len(load_pairs(data / "pairs.npz").val())
    # Tolerance: the two runs add the same float32 terms in another order (each rank's loss
    # and backward over half a micro-batch, then the gradient all-reduce), ~1e-7 relative per
    # step; over 54 steps the loss agrees to ~1e-5 here. Recall counts queries: a target at
    # the rank-k boundary may flip, so one query's worth of recall is allowed.
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "nce", "margin_penalty"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["epoch"], key)
        assert b["mrr"] == pytest.approx(a["mrr"], abs=1e-3)
        for key in ("recall@10", "recall@100"):
            assert abs(b[key] - a[key]) <= 100.0 / val_pairs + 1e-9, key
    assert two[1]["mined_per_pair"] == pytest.approx(one[1]["mined_per_pair"], abs=0.01)
    gate = json.loads((data / "ddp" / "gate.json").read_text())
    assert gate["verdict"] == gate_one["verdict"] and gate["split"] == "test"
    state = ck.load_checkpoint(data / "ddp" / "checkpoints" / "last.pt")
    ts = state[ck.TRAIN_STATE]
    assert ts["world_size"] == 2 and len(ts["rank_rng"]) == 2


def test_resume_with_another_world_size_is_refused(ddp_run):
    data, _ = ddp_run
    cfg = load_config(data / "cfg.yaml", {"out": str(data / "ddp"), "device": "cpu"})
    with pytest.raises(ck.CheckpointError, match=r"trained by 2 process\(es\), this run has 1; "
                                                 r"resume with the same count \(torchrun "
                                                 r"--nproc_per_node 2\)"):
        train(cfg, resume=True)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_sigkill_of_one_rank_then_resume_matches(ddp_run):
    data, _ = ddp_run
    proc = torchrun(data, "killed")
    killed_history = data / "killed" / "history.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # epoch 1 on disk: kill rank 1 during epoch 2
        if killed_history.exists() and len(json.loads(killed_history.read_text() or "[]")) >= 1:
            break
        time.sleep(0.05)
    rank0 = int((data / "killed" / "train.pid").read_text())
    (rank1,) = [p for p in _children(proc.pid) if p != rank0]
    os.kill(rank1, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert len(json.loads(killed_history.read_text())) < 3, "finished before the kill"
    resumed = torchrun(data, "killed", "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "Resumed from" in out
    a, b = history(data, "ddp"), history(data, "killed")
    assert [h["epoch"] for h in b] == [1, 2, 3]
    for ha, hb in zip(a, b, strict=True):
        for key in ("loss", "recall@10", "recall@100", "mrr", "margin"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-6, abs=1e-9), (ha["epoch"], key)
    ga = json.loads((data / "ddp" / "gate.json").read_text())
    gb = json.loads((data / "killed" / "gate.json").read_text())
    assert gb["value"] == ga["value"] and gb["best_epoch"] == ga["best_epoch"]
