"""Devices: --device names, bf16 only on cuda, checkpoints saved with CPU tensors; and, where a
CUDA GPU is present (`pytest -m gpu`), training on it: exact against itself, close to the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cascade import checkpoint as ck
from cascade.bank import save_bank
from cascade.device import autocast, check_amp, resolve_device, to_cpu
from cascade.pairs import save_pairs
from training.config import ConfigError, load_config
from training.expand_pairs import ExpandConfig, expand_pairs
from training.synth_bank import SynthConfig, synth_bank
from training.train_v4 import train

CUDA = torch.cuda.is_available()
TINY = {"bs": 32, "accum": 2, "epochs": 2, "lr": 3e-3, "lr_min": 1e-4, "memory_bank_size": 256,
        "mine_schedule": "0-1:none;2-2:4@0.0-0.99", "index": "flat", "threads": 1,
        "eval_ks": [10, 100], "select_metric": "recall@100", "checkpoint_every": 2,
        "model": {"hidden": 16, "max_len": 6},
        "gates": {"metric": "recall@100", "mid_epoch": 2, "mid": 50.0, "success": 90.0,
                  "partial": 60.0},
        "abort": {"margin": -1.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_device")
    bank = synth_bank(SynthConfig(n=1500, dim=16, mean_chunks=10, topics=3, seed=3))
    save_bank(bank, root / "bank.npz")
    save_pairs(expand_pairs(bank, ExpandConfig(context_len=6, stride=1, max_per_seq=100,
                                               seed=1)), root / "pairs.npz")
    return root


def cfg_for(root: Path, out: str, **extra):
    return load_config(None, {**TINY, "bank": str(root / "bank.npz"),
                              "pairs": str(root / "pairs.npz"), "out": str(root / out),
                              "log_dir": str(root / "logs"), **extra})


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "cuda0", "", "tpu"])
def test_bad_device_names_are_refused_in_one_line(name):
    with pytest.raises(ValueError, match=r"--device .*: expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if CUDA else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device(name)


def test_bf16_only_on_cuda():
    with pytest.raises(ValueError, match="--amp bf16 needs --device cuda"):
        check_amp("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="--amp 'fp8'"):
        check_amp("fp8", torch.device("cpu"))
    check_amp("off", torch.device("cpu"))
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), "off"):
        assert (x @ x).dtype == torch.float32


def test_trainer_refuses_bf16_on_cpu_before_writing_anything(tiny):
    out = tiny / "bf16_cpu"
    r = subprocess.run([sys.executable, "-m", "training.train_v4", "--bank",
                        str(tiny / "bank.npz"), "--pairs", str(tiny / "pairs.npz"), "--out",
                        str(out), "--log-dir", str(tiny / "logs"), "--device", "cpu", "--amp",
                        "bf16"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --amp bf16 needs --device cuda (got cpu); on cpu training runs in float32"]
    assert not out.exists()
    with pytest.raises(ConfigError, match="'amp' is 'fp16'"):
        load_config(None, {"amp": "fp16"})


def test_checkpoint_tensors_are_saved_on_cpu(tmp_path):
    state = {"w": torch.ones(2), "nested": [{"x": torch.zeros(1)}, (torch.ones(1), 3)], "n": 1}
    assert to_cpu(state)["nested"][1][1] == 3
    ck.save_checkpoint(tmp_path / "a.pt", state)
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert back["w"].device.type == "cpu" and back[ck.FORMAT] == ck.FORMAT_VERSION


def _history(cfg) -> list[dict]:
    return json.loads((Path(cfg.out) / "history.json").read_text())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("doc", ["identity", "mlp"])
def test_cuda_training_saves_cpu_checkpoints_and_matches_cpu(tiny, doc):
    model = {**TINY["model"], "doc": doc}
    on_gpu = cfg_for(tiny, f"cuda_{doc}", device="cuda", model=model)
    on_cpu = cfg_for(tiny, f"cpu_{doc}", device="cpu", model=model)
    gate_gpu, gate_cpu = train(on_gpu), train(on_cpu)
    for name in ("best.pt", "last.pt"):
        # Loadable on a CPU-only machine: every tensor is a CPU tensor.
        state = torch.load(Path(on_gpu.out) / "checkpoints" / name, weights_only=True)
        parts = [state[ck.QUERY_TOWER], state[ck.DOC_TOWER]]
        if name == "last.pt":
            parts.append(state[ck.TRAIN_STATE]["memory"])
        for part in parts:
            for v in part.values():
                assert not isinstance(v, torch.Tensor) or v.device.type == "cpu"
    query, _, _ = ck.load_towers(Path(on_gpu.out) / "checkpoints" / "best.pt")
    assert next(query.parameters()).device.type == "cpu"
    # cuda and cpu kernels sum in other orders (float32 rounding, ~1e-6 per step); over two
    # epochs of 20 steps that moves the loss by far less than 1e-3 and a recall by a few
    # queries at most (one query of ~250 val pairs is 0.4 points).
    for a, b in zip(_history(on_gpu), _history(on_cpu), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
        assert abs(a["recall@100"] - b["recall@100"]) <= 2.0
    assert abs(gate_gpu["methods"]["v4"]["recall@100"]
               - gate_cpu["methods"]["v4"]["recall@100"]) <= 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_run_is_reproducible_and_bf16_stays_close(tiny):
    a = cfg_for(tiny, "cuda_a", device="cuda")
    b = cfg_for(tiny, "cuda_b", device="cuda")
    train(a)
    train(b)
    for ha, hb in zip(_history(a), _history(b), strict=True):
        for key in ("loss", "recall@10", "recall@100", "mrr", "margin"):
            assert ha[key] == hb[key], key
    half = cfg_for(tiny, "cuda_bf16", device="cuda", amp="bf16")
    train(half)
    # bf16 keeps 8 bits of mantissa: cosines move by ~1e-2, so logits at tau 0.05 by ~0.2;
    # the model still learns the same thing, recall within a few points.
    for ha, hb in zip(_history(a), _history(half), strict=True):
        assert hb["loss"] == pytest.approx(ha["loss"], rel=0.05)
        assert abs(hb["recall@100"] - ha["recall@100"]) <= 5.0
