"""The v4 trainer: config, LR schedule, loss masking, memory bank, checkpoints, resume, abort."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cascade import checkpoint as ck
from cascade.bank import save_bank
from cascade.pairs import save_pairs
from training.config import CONFIG_DIR, ConfigError, load_config
from training.expand_pairs import ExpandConfig, expand_pairs
from training.losses import contrastive_loss
from training.memory_bank import MemoryBank
from training.synth_bank import SynthConfig, synth_bank
from training.train_v4 import EXIT_ABORT, lr_at, train

TINY = {"bs": 32, "accum": 2, "epochs": 4, "lr": 3e-3, "lr_min": 1e-4, "memory_bank_size": 256,
        "mine_schedule": "0-2:none;3-4:4@0.0-0.99", "index": "flat", "threads": 1,
        "eval_ks": [10, 100], "select_metric": "recall@100", "checkpoint_every": 2,
        "model": {"hidden": 16, "max_len": 6},
        "gates": {"metric": "recall@100", "mid_epoch": 2, "mid": 50.0, "success": 90.0,
                  "partial": 60.0},
        "abort": {"margin": -1.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1,500-row synthetic bank and its pairs on disk."""
    root = tmp_path_factory.mktemp("tiny")
    bank = synth_bank(SynthConfig(n=1500, dim=16, mean_chunks=10, topics=3, seed=3))
    save_bank(bank, root / "bank.npz")
    pairs = expand_pairs(bank, ExpandConfig(context_len=6, stride=1, max_per_seq=100,
                                            train_split=0.8, seed=1))
    save_pairs(pairs, root / "pairs.npz")
    return root


def tiny_cfg(root: Path, out: str, **extra):
    overrides = {**TINY, "bank": str(root / "bank.npz"), "pairs": str(root / "pairs.npz"),
                 "out": str(root / out), "log_dir": str(root / "logs"), **extra}
    return load_config(None, overrides)


def test_every_shipped_yaml_loads():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.name.startswith(("profile_", "lvm_")):  # lvm_*: tests/test_lvm.py
            continue
        cfg = load_config(path)
        assert cfg.epochs > 0, path


@pytest.mark.parametrize("text,message", [
    ("epochs: 3\nlearning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("epochs: three\n", "epochs: expected int"),
    ("model: {kind: gru, hiden: 3}\n", "unknown key 'hiden'"),
    ("model: {kind: lstm}\n", "model.kind is 'lstm'"),
    ("model: {doc: tied}\n", "model.doc is 'tied'"),
    ("model: {kind: transformer, hidden: 30, heads: 4}\n", "multiple of model.heads"),
    ("model: {dropout: 1.5}\n", "model.dropout must be in"),
    ("model: {hidden: 0}\n", "model.hidden must be >= 1"),
    ("model: gru\n", "model: expected a mapping"),
    ("- epochs\n- 3\n", "expected a mapping of settings at the top level"),
])
def test_config_file_refused(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


@pytest.mark.parametrize("overrides,message", [
    ({"gates": {"metric": "mrr"}}, "'gates.metric' is 'mrr'"),
    ({"select_metric": "recall@7"}, "'select_metric' is 'recall@7'"),
    ({"abort": {"patience": 0}}, "'abort.patience' must be >= 1"),
    ({"gates": {"success": 40.0, "partial": 55.0}}, "partial <= success"),
    ({"gates": {"success": 0.6, "partial": 0.4, "mid": 0.35}},
     "percents .55.0 means 55%., not fractions"),
    ({"lr": 1e-4, "lr_min": 1e-3}, "lr_min"),
])
def test_config_values_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_best_checkpoint_may_be_selected_by_mrr():
    assert load_config(None, {"select_metric": "mrr"}).select_metric == "mrr"


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 1e-3, 1e-5, 10) == pytest.approx(1e-4)
    assert lr_at(9, 100, 1e-3, 1e-5, 10) == pytest.approx(1e-3)
    assert lr_at(10, 100, 1e-3, 1e-5, 10) == pytest.approx(1e-3)
    assert lr_at(55, 100, 1e-3, 1e-5, 10) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(100, 100, 1e-3, 1e-5, 10) == pytest.approx(1e-5)
    steps = [lr_at(s, 100, 1e-3, 1e-5, 0) for s in range(100)]
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False))


def test_loss_masks_positive_and_context_negatives():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    pos = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    pos_rows = torch.tensor([10, 20])
    ctx_start, ctx_end = torch.tensor([5, 15]), torch.tensor([10, 20])
    # Memory: a copy of query 0's positive (row 10), a row in query 1's context (17), and q0's
    # own direction as an unrelated row (99): only row 99 may count as a negative for query 0.
    memory = torch.stack([pos[0], pos[1], q[0]])
    memory_rows = torch.tensor([10, 17, 99])
    hard = torch.stack([torch.stack([q[0], pos[0]]), torch.stack([q[1], q[1]])])
    hard_rows = torch.tensor([[8, 10], [-1, 18]])  # all are positive / context / padding
    out = contrastive_loss(q, pos, pos_rows, ctx_start, ctx_end, memory, memory_rows, hard,
                           hard_rows, tau=0.1, margin=0.03, margin_weight=1.0)
    # Brute force: query 0's negatives are pos[1] (in-batch), memory row 17 and 99.
    negs0 = torch.stack([pos[1], pos[1], q[0]])
    logits0 = torch.cat([(q[0] @ pos[0]).view(1), negs0 @ q[0]]) / 0.1
    # Query 1's negatives: pos[0] (in-batch), memory rows 10 and 99 (17 is in its context).
    negs1 = torch.stack([pos[0], pos[0], q[0]])
    logits1 = torch.cat([(q[1] @ pos[1]).view(1), negs1 @ q[1]]) / 0.1
    expected = (-torch.log_softmax(logits0, 0)[0] - torch.log_softmax(logits1, 0)[0]) / 2
    assert float(out["nce"]) == pytest.approx(float(expected), rel=1e-5)


def test_memory_bank_fifo_and_state():
    mb = MemoryBank(4, 2)
    mb.push(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    mb.push(2 * torch.ones(3, 2), torch.tensor([4, 5, 6]))
    vectors, rows = mb.get()
    assert sorted(rows.tolist()) == [3, 4, 5, 6] and len(vectors) == 4
    other = MemoryBank(4, 2)
    other.load_state_dict(mb.state_dict())
    assert other.get()[1].tolist() == rows.tolist() and other.ptr == mb.ptr


def test_training_run_writes_history_checkpoints_and_gate(tiny):
    cfg = tiny_cfg(tiny, "run")
    result = train(cfg)
    out = Path(cfg.out)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # The checklist's "quick metrics" snippet works on the file.
    latest = history[-1]
    line = f"Epoch {latest['epoch']}: R@100={latest['recall@100']:.2f}%, Δ={latest['margin']:.4f}"
    assert line.startswith("Epoch 4: R@100=") and isinstance(latest["margin"], float)
    assert history[2]["mined_per_pair"] > 0 and "mined_per_pair" not in history[0]
    for name in ("best.pt", "last.pt", "epoch_002.pt", "epoch_004.pt"):
        state = torch.load(out / "checkpoints" / name, weights_only=True)
        assert state[ck.FORMAT] == ck.FORMAT_VERSION and state[ck.MODEL_CONFIG]["dim"] == 16
    query, _, state = ck.load_towers(out / "checkpoints" / "best.pt")
    assert state[ck.EPOCH] == result["best_epoch"]
    gate = json.loads((out / "gate.json").read_text())
    assert gate["verdict"] in ("success", "partial", "data_wall")
    assert set(gate["methods"]) == {"v4", "heuristic", "last-vector", "oracle"}
    assert gate["mid_gate"]["epoch"] == 2 and "vs_heuristic" in gate
    assert (out / "config.yaml").exists() and (out / "report.md").exists()
    log = next((tiny / "logs").glob("twotower_v4_*.log")).read_text()
    assert "Epoch 4/4" in log and "Recall@100" in log and "Separation Δ" in log
    # Training learned something: v4 beats the near-uniform heuristic on this bank (test split,
    # judged once; best.pt was selected on val).
    assert gate["split"] == "test" and gate["test_pairs"] == gate["methods"]["v4"]["n"]
    assert gate["methods"]["v4"]["recall@100"] > gate["methods"]["heuristic"]["recall@100"]
    assert gate["vs_heuristic"]["recall@100"]["ci_method"] == "article bootstrap"


def test_abort_saves_abort_checkpoint_and_exits_3(tiny):
    args = ["--bank", str(tiny / "bank.npz"), "--pairs", str(tiny / "pairs.npz"),
            "--out", str(tiny / "abort_run"), "--log-dir", str(tiny / "logs"),
            "--config", str(_write_cfg(tiny, "abort.yaml",
                                       {**TINY, "epochs": 3,
                                        "abort": {"margin": 5.0, "patience": 2,
                                                  "after_epoch": 0}}))]
    r = subprocess.run([sys.executable, "-m", "training.train_v4", *args], capture_output=True,
                       text=True)
    assert r.returncode == EXIT_ABORT, r.stderr[-2000:]
    assert "ABORT" in r.stdout and "Tighten the cos window" in r.stdout
    assert (tiny / "abort_run" / "checkpoints" / "abort.pt").exists()
    gate = json.loads((tiny / "abort_run" / "gate.json").read_text())
    assert gate["verdict"] == "aborted" and gate["epoch"] == 2 and gate["stage1"] == "heuristic"


def _write_cfg(root: Path, name: str, data: dict) -> Path:
    import yaml

    path = root / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("flag,value,message", [
    ("--mine-schedule", "0-2:none;4-4:4@0.1-0.9", "gap before segment 2"),
    ("--mine-schedule", "0-2:none", "are not covered"),
    ("--pairs", "/nonexistent/pairs.npz", "no such file"),
])
def test_bad_input_refused_before_training(tiny, flag, value, message):
    out = tiny / f"refused_{abs(hash(value))}"
    args = {"--bank": str(tiny / "bank.npz"), "--pairs": str(tiny / "pairs.npz"),
            "--out": str(out), "--log-dir": str(tiny / "logs"), "--epochs": "4",
            "--mine-schedule": TINY["mine_schedule"], flag: value}
    r = subprocess.run([sys.executable, "-m", "training.train_v4",
                        *[x for kv in args.items() for x in kv]], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (out / "checkpoints" / "last.pt").exists()


def test_pairs_from_another_bank_refused(tiny, tmp_path):
    other = synth_bank(SynthConfig(n=1500, dim=16, mean_chunks=10, topics=3, seed=99))
    save_bank(other, tmp_path / "other.npz")
    r = subprocess.run([sys.executable, "-m", "training.train_v4", "--bank",
                        str(tmp_path / "other.npz"), "--pairs", str(tiny / "pairs.npz"),
                        "--out", str(tmp_path / "run"), "--log-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "built from another bank" in r.stderr


def test_init_from_continues_from_a_checkpoint(tiny):
    first = tiny_cfg(tiny, "init_a", epochs=2, mine_schedule="0-2:none")
    train(first)
    second = tiny_cfg(tiny, "init_b", epochs=1, mine_schedule="0-1:none", lr=1e-9, lr_min=0.0)
    train(second, init_from=str(Path(first.out) / "checkpoints" / "best.pt"))
    a = json.loads((Path(first.out) / "history.json").read_text())
    b = json.loads((Path(second.out) / "history.json").read_text())
    # With a ~zero learning rate the continued model evaluates like the one it started from.
    assert b[0]["mrr"] == pytest.approx(max(a, key=lambda h: h["recall@100"])["mrr"], abs=0.02)


def test_checkpoints_of_another_split_are_refused_as_baseline_and_init(tiny, tmp_path):
    """A checkpoint records its article split; comparing with it (or continuing from it) on
    pairs whose val/test articles it trained on is refused, here and in pre-flight."""
    first = tiny_cfg(tiny, "split_a", epochs=1, mine_schedule="0-1:none")
    train(first)
    best = Path(first.out) / "checkpoints" / "best.pt"
    assert ck.split_spec_of(torch.load(best, weights_only=True)).seed == 1
    bank = synth_bank(SynthConfig(n=1500, dim=16, mean_chunks=10, topics=3, seed=3))
    moved = expand_pairs(bank, ExpandConfig(context_len=6, stride=1, max_per_seq=100, seed=2))
    save_pairs(moved, tmp_path / "moved.npz")
    cfg = tiny_cfg(tiny, "split_b", pairs=str(tmp_path / "moved.npz"), epochs=1,
                   mine_schedule="0-1:none")
    with pytest.raises(ck.CheckpointError, match="are train articles of that checkpoint"):
        train(cfg, baselines={"v3": str(best)})
    with pytest.raises(ck.CheckpointError, match="--init-from .* train articles"):
        train(cfg, init_from=str(best))
    assert not (Path(cfg.out) / "checkpoints" / "last.pt").exists()
    from training.preflight import run_preflight

    checks = {r.name: r for r in run_preflight(moved, bank, sample=100, checkpoints=[str(best)])}
    assert checks["checkpoint_leakage"].status == "blocker"
    assert "are train articles of" in checks["checkpoint_leakage"].detail
    # The same checkpoint against pairs of its own split (any stride) passes.
    same = expand_pairs(bank, ExpandConfig(context_len=3, stride=2, max_per_seq=100, seed=1))
    checks = {r.name: r for r in run_preflight(same, bank, sample=100, checkpoints=[str(best)])}
    assert checks["checkpoint_leakage"].status == "pass"


GPU = [pytest.mark.gpu,
       pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("doc,device", [("identity", "cpu"), ("mlp", "cpu"),
                                        pytest.param("identity", "cuda", marks=GPU),
                                        pytest.param("mlp", "cuda", marks=GPU)])
def test_sigkill_then_resume_matches_uninterrupted_run(tiny, doc, device):
    """Kill the run mid-training with SIGKILL, --resume it, and get the same results (also with
    a trainable doc tower, whose memory bank is re-encoded every step; also on a GPU)."""
    data, tiny = tiny, tiny / f"sigkill_{doc}_{device}"  # the shared bank and pairs
    tiny.mkdir()
    cfg_path = _write_cfg(tiny, "resume.yaml", {**TINY, "epochs": 5,
                                                "mine_schedule": "0-1:none;2-5:4@0.0-0.99",
                                                "model": {**TINY["model"], "doc": doc}})
    common = ["--config", str(cfg_path), "--bank", str(data / "bank.npz"), "--pairs",
              str(data / "pairs.npz"), "--log-dir", str(tiny / "logs"), "--device", device]
    cmd = [sys.executable, "-m", "training.train_v4", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(cmd + ["--out", str(tiny / "straight")], capture_output=True,
                              text=True, env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_out = tiny / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed_out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    history = killed_out / "history.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once epoch 2 is on disk, i.e. mid-way through epoch 3
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads(history.read_text()))
    assert done < 5, "the run finished before it could be killed"
    resumed = subprocess.run(cmd + ["--out", str(killed_out), "--resume"], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from {killed_out / 'checkpoints' / 'last.pt'} after epoch" in resumed.stdout

    a = json.loads((tiny / "straight" / "history.json").read_text())
    b = json.loads(history.read_text())
    assert [h["epoch"] for h in b] == [1, 2, 3, 4, 5]
    for ha, hb in zip(a, b, strict=True):
        for key in ("recall@10", "recall@100", "mrr", "margin", "loss"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-6, abs=1e-9), (ha["epoch"], key)
    ga = json.loads((tiny / "straight" / "gate.json").read_text())
    gb = json.loads((killed_out / "gate.json").read_text())
    assert gb["value"] == ga["value"] and gb["best_epoch"] == ga["best_epoch"]
    assert not math.isnan(gb["value"])


def test_gate_falls_back_to_heuristic_without_a_significant_win():
    import numpy as np

    from training.config import GateConfig
    from training.gates import decide

    gates = GateConfig(metric="recall@500", success=55.0, partial=40.0)
    rng = np.random.default_rng(0)
    heuristic = np.where(rng.random(400) < 0.6, rng.integers(0, 500, 400), -1)
    same = decide(60.0, heuristic.copy(), heuristic, gates, [10, 500])
    assert same["verdict"] == "success" and not same["beats_heuristic"]
    assert same["stage1"] == "heuristic"
    assert "Serve the exp-weighted heuristic" in same["actions"][0]
    better = decide(60.0, np.zeros(400, dtype=int), heuristic, gates, [10, 500])
    assert better["stage1"] == "v4" and better["vs_heuristic"]["recall@500"]["diff"] > 0
    wall = decide(30.0, np.zeros(400, dtype=int), heuristic, gates, [10, 500])
    assert wall["verdict"] == "data_wall" and wall["stage1"] == "heuristic"


@pytest.mark.parametrize("model", [{"kind": "mean_mlp", "hidden": 16, "max_len": 6},
                                   {"kind": "transformer", "hidden": 16, "heads": 2,
                                    "max_len": 6},
                                   {"kind": "gru", "hidden": 16, "max_len": 6, "doc": "mlp"}])
def test_other_towers_train_and_reload(tiny, model):
    name = f"kind_{model['kind']}_{model.get('doc', 'identity')}"
    cfg = tiny_cfg(tiny, name, epochs=2, mine_schedule="0-1:none;2-2:4@0.0-0.99", model=model)
    gate = train(cfg)
    assert gate["verdict"] in ("success", "partial", "data_wall")
    query, doc, state = ck.load_towers(Path(cfg.out) / "checkpoints" / "best.pt")
    assert state[ck.MODEL_CONFIG]["kind"] == model["kind"]
    assert doc.is_identity == (model.get("doc", "identity") == "identity")
    assert gate["methods"]["v4"]["recall@100"] > 0


def test_resume_with_other_settings_is_refused(tiny):
    cfg = tiny_cfg(tiny, "resume_cfg", epochs=1, mine_schedule="0-1:none")
    train(cfg)
    changed = tiny_cfg(tiny, "resume_cfg", epochs=1, mine_schedule="0-1:none", lr=cfg.lr * 2)
    with pytest.raises(ConfigError, match=r"--resume with other settings .*\(lr: "):
        train(changed, resume=True)
    # The interrupted run's own settings (plus a new log directory) resume fine.
    same = tiny_cfg(tiny, "resume_cfg", epochs=1, mine_schedule="0-1:none",
                    log_dir=str(tiny / "other_logs"))
    assert train(same, resume=True)["verdict"]


def test_monitor_reports_epoch_recall_margin_and_liveness(tiny, capsys):
    from training import monitor

    cfg = tiny_cfg(tiny, "monitored", epochs=1, mine_schedule="0-1:none",
                   eval_ks=[10, 100, 500], select_metric="recall@500",
                   gates={**TINY["gates"], "metric": "recall@500"})
    train(cfg)
    capsys.readouterr()  # the training log
    run = Path(cfg.out)
    last = json.loads((run / "history.json").read_text())[-1]
    # train.pid names this (finished) training's process: this test process, which is alive.
    assert monitor.main(["--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Epoch 1: R@500={last['recall@500']:.2f}%, Δ={last['margin']:.4f}")
    assert f"running (pid {os.getpid()})" in out and "verdict " in out
    # A pid that is gone reads as not running.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run / "train.pid").write_text(dead)
    assert monitor.main(["--run", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["alive"] is False and status["epoch"] == 1 and status["pid"] == int(dead)
    assert monitor.main(["--run", str(tiny / "no_such_run")]) == 2


def test_mining_never_returns_the_positive_its_duplicates_or_context(tiny):
    import dataclasses

    import numpy as np

    from cascade.bank import load_bank
    from cascade.pairs import load_pairs
    from cascade.stage1 import Stage1
    from cascade.towers import TowerConfig, build_towers
    from training.curriculum import parse_schedule
    from training.mining import mine

    bank = load_bank(tiny / "bank.npz")
    vectors = bank.vectors.copy()
    train_pairs = load_pairs(tiny / "pairs.npz", bank).train()
    # Plant a near-duplicate of the first pair's positive in another article.
    other = int(np.flatnonzero(bank.article_indices != bank.article_indices[
        train_pairs.target[0]])[-1])
    vectors[other] = vectors[train_pairs.target[0]] + 1e-3
    vectors[other] /= np.linalg.norm(vectors[other])
    query, _ = build_towers(TowerConfig(dim=16, hidden=16, max_len=6))
    # 40 of a pool of 64: deep enough that the planted duplicate would be kept if not filtered.
    (segment,) = parse_schedule("0-1:40@0.1-0.95")
    planted = dataclasses.replace(bank, vectors=vectors, _fingerprint=None)
    negs = mine(Stage1(planted, query=query), train_pairs, segment, 0.98, 64)
    assert negs.rows.shape == (len(train_pairs), 40) and (negs.rows >= 0).any()
    for i in range(len(train_pairs)):
        rows = negs.rows[i][negs.rows[i] >= 0]
        assert train_pairs.target[i] not in rows
        assert not ((rows >= train_pairs.ctx_start[i]) & (rows < train_pairs.ctx_end[i])).any()
        assert (vectors[rows] @ vectors[train_pairs.target[i]] <= 0.98).all()
        cos = negs.cos[i][negs.rows[i] >= 0]
        assert ((cos >= 0.1 - 1e-6) & (cos <= 0.95 + 1e-6)).all()
    assert other not in negs.rows[0]


def test_memory_bank_follows_a_trainable_doc_tower(tiny):
    """Stale memory vectors from a moving doc tower made the model run from its own past outputs
    (val Recall@10 46% -> 8% on the default bank): after each step they are re-encoded."""
    import numpy as np

    from cascade.bank import load_bank

    cfg = tiny_cfg(tiny, "doc_mlp_memory", epochs=1, mine_schedule="0-1:none",
                   model={"hidden": 16, "max_len": 6, "doc": "mlp"})
    train(cfg)
    state = torch.load(Path(cfg.out) / "checkpoints" / "last.pt", weights_only=True)
    memory = state[ck.TRAIN_STATE]["memory"]
    assert len(memory["rows"]) == 256
    _, doc, _ = ck.load_towers(Path(cfg.out) / "checkpoints" / "last.pt")
    assert not doc.is_identity
    bank = load_bank(tiny / "bank.npz")
    with torch.no_grad():
        current = doc(torch.from_numpy(bank.vectors[memory["rows"].numpy()]))
    assert torch.allclose(memory["vectors"], current, atol=1e-5)
    # The tower did move: the memory is not simply the raw bank vectors.
    assert not np.allclose(memory["vectors"].numpy(), bank.vectors[memory["rows"].numpy()],
                           atol=1e-3)


@pytest.mark.parametrize("value,status", [(35.0, "pass"), (34.9, "watch"), (30.0, "watch"),
                                          (29.9, "fail")])
def test_mid_gate_bands(value, status):
    from training.config import GateConfig
    from training.gates import mid_gate

    assert mid_gate(value, GateConfig(mid=35.0))["status"] == status


@pytest.mark.parametrize("value,verdict", [(55.0, "success"), (54.9, "partial"), (40.0, "partial"),
                                           (39.9, "data_wall")])
def test_final_verdict_thresholds(value, verdict):
    from training.config import GateConfig
    from training.gates import ACTIONS, final_verdict

    assert final_verdict(value, GateConfig(success=55.0, partial=40.0)) == verdict
    assert ACTIONS[verdict]



def test_reported_recall_is_exact_whatever_index_mines(tiny):
    """cfg.index picks the mining index; the epoch eval and the final gate always search
    exactly, so an approximate IVF index cannot lower the reported numbers."""
    flat = train(tiny_cfg(tiny, "mine_flat", epochs=1, mine_schedule="0-1:none"))
    ivf = train(tiny_cfg(tiny, "mine_ivf", epochs=1, mine_schedule="0-1:none",
                         index="ivf_sq8"))
    for method in ("heuristic", "last-vector", "oracle", "v4"):
        assert ivf["methods"][method] == flat["methods"][method], method
    a = json.loads((tiny / "mine_flat" / "history.json").read_text())[0]
    b = json.loads((tiny / "mine_ivf" / "history.json").read_text())[0]
    assert a["recall@10"] == b["recall@10"] and a["mrr"] == b["mrr"]
