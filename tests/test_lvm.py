"""The LVM reranker: features against numpy, one batched op, the trainer end to end with an
exact --resume, and the errors bad candidates get."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cascade.bank import save_bank
from cascade.lvm import (
    FEATURES,
    BankStructure,
    Lvm,
    LvmConfig,
    LvmReranker,
    load_lvm_state,
)
from cascade.pairs import save_pairs
from cascade.pipeline import Cascade
from cascade.stage1 import ContextRows, Stage1, pad_left_aligned
from training.config import CONFIG_DIR, ConfigError
from training.expand_pairs import ExpandConfig, expand_pairs
from training.synth_bank import SynthConfig, synth_bank
from training.train_lvm import load_train_config, lvm_gate, train

CUDA = torch.cuda.is_available()
TINY = {"k": 60, "epochs": 2, "bs": 64, "negatives": 16, "head_steps": 40, "threads": 1,
        "model": {"hidden": 16, "max_len": 4, "head_hidden": 8}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 1,200-row bank, its pairs, and a deploy.json choosing the heuristic."""
    root = tmp_path_factory.mktemp("lvm")
    bank = synth_bank(SynthConfig(n=1200, dim=16, mean_chunks=8, topics=3, seed=5))
    save_bank(bank, root / "bank.npz")
    pairs = expand_pairs(bank, ExpandConfig(context_len=5, stride=1, max_per_seq=100,
                                            train_split=0.8, seed=1))
    save_pairs(pairs, root / "pairs.npz")
    (root / "deploy.json").write_text(json.dumps({
        "stage1": "heuristic", "checkpoint": None, "reason": "test",
        "heuristic": {"kind": "exp_weighted", "alpha": 0.1}, "bank": str(root / "bank.npz"),
        "bank_fingerprint": bank.fingerprint()}))
    return root, bank, pairs


def cfg_for(root, out, **extra):
    return load_train_config(None, {**TINY, "deploy": str(root / "deploy.json"),
                                    "pairs": str(root / "pairs.npz"), "out": str(root / out),
                                    "log_dir": str(root / "logs"), **extra})


def test_shipped_lvm_config_loads():
    cfg = load_train_config(CONFIG_DIR / "lvm_default.yaml", {})
    assert cfg.k == 500 and "prev_last" not in cfg.model.features


@pytest.mark.parametrize("override,message", [
    ({"negatives": 600}, "'negatives' .* must be < 'k'"),
    ({"model": {"features": ["s1", "magic"]}}, r"lvm.features: \['magic'\]"),
    ({"epochs": 0}, "'epochs' must be > 0"),
])
def test_bad_config_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, override)


def test_features_match_numpy_and_batching_changes_nothing(small_bank):
    torch.manual_seed(0)
    model = Lvm(LvmConfig(dim=32, hidden=8, max_len=4, features=list(FEATURES))).eval()
    bs = BankStructure(small_bank)
    rows = [np.arange(40, 46), np.arange(101, 103), np.arange(500, 509)]
    res = Stage1(small_bank).search(ContextRows(rows), k=50)
    from cascade.context import pad_left_aligned
    ctx, mask = pad_left_aligned([small_bank.vectors[r] for r in rows])
    with torch.no_grad():
        f = model.features(bs, torch.from_numpy(ctx), torch.from_numpy(mask),
                           torch.from_numpy(res.ids), torch.from_numpy(res.scores)).numpy()
    assert f.shape == (3, 50, len(FEATURES))
    col = {name: i for i, name in enumerate(FEATURES)}
    V, art, chunk = small_bank.vectors, small_bank.article_indices, small_bank.chunk_indices
    for b, r in enumerate(rows):
        ids = res.ids[b]
        np.testing.assert_allclose(f[b, :, col["last"]], V[ids] @ V[r[-1]], atol=1e-5)
        np.testing.assert_allclose(f[b, :, col["ctx_max"]], (V[ids] @ V[r].T).max(1),
                                   atol=1e-5)
        np.testing.assert_allclose(f[b, :, col["s1"]], res.scores[b], atol=1e-6)
        count = (art[ids][:, None] == art[ids][None, :]).sum(1)
        np.testing.assert_allclose(f[b, :, col["same_article"]], np.log(count), atol=1e-5)
        assert np.array_equal(f[b, :, col["is_first"]], (chunk[ids] == 0).astype(np.float32))
        succ = [res.scores[b][list(ids).index(i + 1)] if (i + 1 in ids and i + 1 < len(art)
                and art[i + 1] == art[i]) else 0.0 for i in ids]
        np.testing.assert_allclose(f[b, :, col["succ_s1"]], succ, atol=1e-6)
        prev = [float(V[i - 1] @ V[r[-1]]) if chunk[i] > 0 else 0.0 for i in ids]
        np.testing.assert_allclose(f[b, :, col["prev_last"]], prev, atol=1e-5)
        with torch.no_grad():  # the same context alone: padding of the batch changed nothing
            one = model.features(bs, torch.from_numpy(V[r][None]),
                                 torch.ones(1, len(r), dtype=torch.bool),
                                 torch.from_numpy(ids[None]),
                                 torch.from_numpy(res.scores[b][None])).numpy()
        np.testing.assert_allclose(one[0], f[b], atol=1e-5)


def test_train_writes_the_lvm_and_resume_is_exact(setup):
    root, bank, pairs = setup
    result = train(cfg_for(root, "full"))
    assert result["val_pairs"] == len(pairs.val())
    assert set(result["lvm_cross_fitted"]) == {"hit@1", "hit@5", "hit@10", "hit@50"}
    # On this tiny bank the LVM's val gain is within the CI: the gate keeps it out of the
    # deploy, and deploy.json says why.
    gate = result["gate"]["val_hit@10_vs_stage1"]
    assert set(gate) == {"rows", "vectors"} and not all(d["ci95"][0] > 0 for d in gate.values())
    deploy = json.loads((root / "deploy.json").read_text())
    assert "lvm" not in deploy and deploy["lvm_gate"]["passed"] is False
    assert "does not beat stage 1 on val" in deploy["lvm_gate"]["reason"]
    assert Cascade.from_deploy(root / "deploy.json").lvm is None
    # require_gain: false names it anyway, and the verdict stays on record.
    train(cfg_for(root, "full", require_gain=False))
    deploy = json.loads((root / "deploy.json").read_text())
    assert deploy["lvm"]["checkpoint"] == str(root / "full" / "lvm.pt")
    assert deploy["lvm_gate"] == {**deploy["lvm_gate"], "passed": False, "deployed": True}
    assert train(cfg_for(root, "cut"), stop_after=1) is None
    with pytest.raises(ConfigError, match="--resume with other settings"):
        train(cfg_for(root, "cut", lr=5e-3), resume=True)
    train(cfg_for(root, "cut"), resume=True)
    a = load_lvm_state(root / "full" / "lvm.pt")["model"]
    b = load_lvm_state(root / "cut" / "lvm.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = json.loads((root / "cut" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    # The feature ablation reads the run and writes strict JSON, one row per feature set.
    from benchmarks import lvm_features
    out = root / "features.json"
    assert lvm_features.main(["--run", str(root / "full"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert set(rows) == {"stage 1 alone", *lvm_features.SETS}
    assert rows["stage 1 alone"]["hit@10"] == pytest.approx(result["stage1"]["hit@10"])


def test_the_stage2_gate_needs_a_gain_beyond_the_ci_in_every_form():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(200), 5)
    s1 = np.where(rng.random(1000) < 0.5, 3, 20)  # Hit@10 50%
    better = np.where(rng.random(1000) < 0.8, 0, 20)  # Hit@10 ~80%
    assert lvm_gate({"rows": (s1, better), "vectors": (s1, better)}, clusters)["passed"]
    # As good as stage 1 on vectors (same ranks): no gain there, so no deploy.
    gate = lvm_gate({"rows": (s1, better), "vectors": (s1, s1)}, clusters)
    assert not gate["passed"] and "vectors form" in gate["reason"]
    worse = np.where(s1 == 3, 30, 20)  # loses every hit
    assert not lvm_gate({"rows": (s1, worse), "vectors": (s1, better)}, clusters)["passed"]


def test_rerank_keeps_the_best_and_refuses_bad_candidates(setup):
    root, bank, _ = setup
    train(cfg_for(root, "rr", epochs=1))
    lvm = LvmReranker.load(root / "rr" / "lvm.pt", bank)
    rows = [np.arange(10, 14), np.arange(50, 52)]
    s1 = Stage1(bank).search(ContextRows(rows), k=60)
    ctx = [bank.vectors[r] for r in rows]
    out = lvm.rerank(ctx, s1.ids, s1.scores, keep=20)
    assert out.ids.shape == (2, 20) and (np.diff(out.scores, axis=1) <= 0).all()
    for b in range(2):
        assert set(out.ids[b]) <= set(s1.ids[b])
    logits = lvm.logits(ctx, s1.ids, s1.scores).numpy()
    # The served predictor (a NumPy copy) predicts what the torch predictor does.
    assert lvm.fast_predict is not None
    with torch.inference_mode():
        want = lvm.model.predict(*map(torch.from_numpy, pad_left_aligned(ctx)))
    np.testing.assert_allclose(lvm.predict(ctx).numpy(), want.numpy(), atol=2e-6)
    best = np.take_along_axis(s1.ids, np.argsort(-logits, axis=1, kind="stable")[:, :20], 1)
    assert np.array_equal(np.sort(best, 1), np.sort(out.ids, 1))
    bad_ids = s1.ids.copy()
    bad_ids[1, 3] = bank.n
    nan = s1.scores.copy()
    nan[0, 0] = np.nan
    for call, message in [
        (lambda: lvm.rerank(ctx, s1.ids, s1.scores, keep=61), r"keep must be .* \[1, 60\]"),
        (lambda: lvm.rerank(ctx, bad_ids, s1.scores), "row 1 position 3: id 1200 is out of"),
        (lambda: lvm.rerank(ctx, s1.ids, nan), "NaN"),
        (lambda: lvm.rerank(ctx[:1], s1.ids, s1.scores), "2 rows for 1 contexts"),
        (lambda: lvm.rerank(ctx, s1.ids, s1.scores[:, :5]), r"must both be \(B, K\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="does not match the pinned"):
        LvmReranker.load(root / "rr" / "lvm.pt", bank, sha256="sha256:" + "0" * 64)


def test_a_bad_device_is_refused_in_one_line(setup, capsys):
    from training.train_lvm import main

    root, _, _ = setup
    assert main(["--deploy", str(root / "deploy.json"), "--pairs", str(root / "pairs.npz"),
                 "--out", str(root / "nodevice"), "--log-dir", str(root / "logs"),
                 "--device", "gpu"]) == 2
    assert "--device 'gpu': expected auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    assert not (root / "nodevice" / "checkpoints" / "last.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_training_saves_cpu_tensors_resumes_exactly_and_reranks_as_on_cpu(setup):
    root, bank, pairs = setup
    train(cfg_for(root, "cuda_full", device="cuda"))
    assert train(cfg_for(root, "cuda_cut", device="cuda"), stop_after=1) is None
    last = torch.load(root / "cuda_cut" / "checkpoints" / "last.pt", weights_only=True)
    for part in (last["model"], last["optimizer"]["state"][0]):
        assert all(v.device.type == "cpu" for v in part.values() if isinstance(v, torch.Tensor))
    train(cfg_for(root, "cuda_cut", device="cuda"), resume=True)
    a = load_lvm_state(root / "cuda_full" / "lvm.pt")["model"]
    b = load_lvm_state(root / "cuda_cut" / "lvm.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact resume on the same device
    rows = [np.arange(40, 46), np.arange(101, 103)]
    res = Stage1(bank).search(ContextRows(rows), k=50)
    ctx = [bank.vectors[r] for r in rows]
    on_gpu = LvmReranker.load(root / "cuda_full" / "lvm.pt", bank, device="cuda")
    on_cpu = LvmReranker.load(root / "cuda_full" / "lvm.pt", bank)
    g, c = on_gpu.rerank(ctx, res.ids, res.scores, 10), on_cpu.rerank(ctx, res.ids, res.scores, 10)
    # float32 on both, summed in other orders: scores within 1e-4, so the order only differs
    # between candidates closer than that.
    np.testing.assert_allclose(g.scores, c.scores, atol=1e-4)
