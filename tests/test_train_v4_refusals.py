"""What the trainer refuses, and what a refused, aborted or killed run leaves behind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cascade import checkpoint as ck
from cascade.bank import json_text, load_bank, save_bank, write_json
from cascade.pairs import save_pairs
from training.config import ConfigError, load_config
from training.expand_pairs import ExpandConfig, expand_pairs
from training.synth_bank import SynthConfig, synth_bank
from training.train_v4 import EXIT_ABORT, EXIT_BAD_INPUT

# A 2-epoch run on a 600-row bank: seconds, not minutes.
QUICK = {"bs": 32, "accum": 2, "epochs": 2, "lr": 3e-3, "lr_min": 1e-4, "memory_bank_size": 64,
         "mine_schedule": "0-2:none", "index": "flat", "threads": 1, "eval_ks": [10, 100],
         "select_metric": "recall@100", "checkpoint_every": 1,
         "model": {"hidden": 8, "max_len": 4},
         "gates": {"metric": "recall@100", "mid_epoch": 1, "mid": 50.0, "success": 90.0,
                   "partial": 60.0},
         "abort": {"margin": -1.0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    bank = synth_bank(SynthConfig(n=600, dim=8, mean_chunks=10, topics=3, seed=5))
    save_bank(bank, root / "bank.npz")
    # The same article split, other windows: what re-expanding with other settings gives.
    for name, stride in (("pairs.npz", 1), ("other_pairs.npz", 2)):
        save_pairs(expand_pairs(bank, ExpandConfig(context_len=4, stride=stride, max_per_seq=100,
                                                   seed=1)), root / name)
    (root / "quick.yaml").write_text(yaml.safe_dump(QUICK))
    return root


def cli_args(data: Path, out: Path, *extra: str, config: Path | None = None) -> list[str]:
    return ["--config", str(config or data / "quick.yaml"), "--bank", str(data / "bank.npz"),
            "--pairs", str(data / "pairs.npz"), "--out", str(out),
            "--log-dir", str(out.parent / f"{out.name}_logs"), *extra]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(capsys, data: Path, out: Path, *extra: str, config: Path | None = None) -> Run:
    """`python -m training.train_v4 ...`, in this process (a subprocess costs a torch import)."""
    from training.train_v4 import main

    capsys.readouterr()
    rc = main(cli_args(data, out, *extra, config=config))
    captured = capsys.readouterr()
    return Run(rc, captured.out, captured.err)


# ---------------------------------------------------------------------------------------------
# refused before anything exists


@pytest.mark.parametrize("flag,value,message", [
    ("--tau", "nan", "'tau' is nan; it must be a finite number > 0"),
    ("--tau", "inf", "'tau' is inf"),
    ("--margin", "nan", "'margin' is nan"),
    ("--wd", "nan", "'wd' is nan"),
    ("--wd", "-1", "'wd' must be >= 0, got -1.0"),
    ("--lr=-inf", None, "'lr' is -inf"),
    ("--bs", "0", "'bs' must be >= 1"),
    ("--seed", "-3", "'seed' must be >= 0"),
    ("--memory-bank-size", "-1", "'memory_bank_size' must be >= 0"),
    # The trainer and pre-flight share one range: at or below 0.95 the filter drops genuine
    # hard negatives (the trainer used to accept anything in (0, 1]).
    ("--filter-threshold", "0.5", "'filter_threshold' must be in (0.95, 1], got 0.5"),
    ("--filter-threshold", "nan", "'filter_threshold' is nan"),
])
def test_bad_number_refused_in_one_line_leaving_no_files(data, tmp_path, capsys, flag, value,
                                                         message):
    from training.train_v4 import main

    out = tmp_path / "run"
    assert main(cli_args(data, out, flag, *([value] if value else []))) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0, err
    assert list(tmp_path.iterdir()) == []  # no run directory, no log directory, no pid file


@pytest.mark.parametrize("text,message", [
    ("epochs: 2\ntau: 0.05\nepochs: 3\n", "duplicate key 'epochs' .line 3."),
    ("model:\n  hidden: 8\n  hidden: 16\n", "duplicate key 'hidden' .line 3."),
    ("", "empty config"),
    ("# only a comment\n", "empty config"),
    ("{}\n", "empty config"),
    ("tau: .nan\n", "'tau' is nan"),
    ("gates: {mid: .inf}\n", "'gates.mid' is inf"),
    ("model: {alpha: .nan}\n", "'model.alpha' is nan"),
])
def test_yaml_refused(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(bad)
    assert str(bad) in str(e.value) or "config:" in str(e.value)


def test_refused_yaml_run_leaves_no_files(data, tmp_path, capsys):
    cfg = tmp_path / "inputs" / "dup.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump(QUICK) + "epochs: 5\n")
    out = tmp_path / "run"
    r = run_cli(capsys, data, out, config=cfg)
    assert r.returncode == EXIT_BAD_INPUT and "duplicate key 'epochs'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


@pytest.mark.parametrize("flag,value,message", [
    ("--pairs", "/nonexistent/pairs.npz", "no such file"),
    ("--mine-schedule", "0-1:none", "are not covered"),
    ("--init-from", "/nonexistent/best.pt", "no such checkpoint"),
])
def test_run_refused_on_its_inputs_leaves_no_files(data, tmp_path, capsys, flag, value, message):
    from training.train_v4 import main

    assert main(cli_args(data, tmp_path / "run", flag, value)) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no checkpoints/, train.pid or 0-byte log


# ---------------------------------------------------------------------------------------------
# resume


def test_resume_after_an_abort_is_refused(data, tmp_path, capsys):
    cfg = tmp_path / "abort.yaml"
    cfg.write_text(yaml.safe_dump({**QUICK, "abort": {"margin": 5.0, "patience": 1,
                                                      "after_epoch": 0}}))
    out = tmp_path / "run"
    first = run_cli(capsys, data, out, config=cfg)
    assert first.returncode == EXIT_ABORT, first.stderr[-2000:]
    history = (out / "history.json").read_text()
    assert len(json.loads(history)) == 1
    again = run_cli(capsys, data, out, "--resume", config=cfg)
    assert again.returncode == EXIT_BAD_INPUT
    assert "was aborted" in again.stderr and "new --out" in again.stderr
    assert again.stderr.strip().count("\n") == 0
    assert (out / "history.json").read_text() == history  # not one more epoch
    # A fresh (not --resume) run into the same directory replaces the aborted one.
    fresh = run_cli(capsys, data, out)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert not (out / "checkpoints" / "abort.pt").exists()
    assert json.loads((out / "gate.json").read_text())["verdict"] != "aborted"


def test_resume_with_other_pairs_is_refused(data, tmp_path, capsys):
    """Same path, other content (the checklist re-expanding pairs under a resume)."""
    pairs = tmp_path / "pairs.npz"
    pairs.write_bytes((data / "pairs.npz").read_bytes())
    out = tmp_path / "run"
    r = run_cli(capsys, data, out, "--pairs", str(pairs), "--epochs", "1", "--mine-schedule",
                "0-1:none")
    assert r.returncode == 0, r.stderr[-2000:]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state[ck.PAIRS_FINGERPRINT].startswith("sha256:")
    pairs.write_bytes((data / "other_pairs.npz").read_bytes())
    again = run_cli(capsys, data, out, "--pairs", str(pairs), "--epochs", "1", "--mine-schedule",
                    "0-1:none", "--resume")
    assert again.returncode == EXIT_BAD_INPUT
    assert "--resume with other pairs than the interrupted run" in again.stderr
    # Its own pairs resume fine.
    pairs.write_bytes((data / "pairs.npz").read_bytes())
    ok = run_cli(capsys, data, out, "--pairs", str(pairs), "--epochs", "1", "--mine-schedule",
                 "0-1:none", "--resume")
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_stale_temp_files_of_the_run_are_removed(data, tmp_path, capsys):
    out = tmp_path / "run"
    first = run_cli(capsys, data, out, "--epochs", "1", "--mine-schedule", "0-1:none")
    assert first.returncode == 0, first.stderr[-2000:]
    # What SIGKILL during atomic writes leaves behind (mkstemp names, mode 0600).
    stale = [out / "checkpoints" / ".last.pt.k2j4_x9a.tmp", out / "checkpoints" /
             ".best.pt.abc123.tmp", out / "checkpoints" / ".epoch_001.pt.q1w2e3.tmp",
             out / ".history.json.zz9x8c.tmp", out / ".gate.json.p0o9i8.tmp"]
    foreign = [out / ".notes.txt.a1b2c3.tmp", out / "checkpoints" / ".mine.bin.d4e5f6.tmp"]
    for f in stale + foreign:
        f.write_bytes(b"partial")
        f.chmod(0o600)
    r = run_cli(capsys, data, out, "--epochs", "1", "--mine-schedule", "0-1:none", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [f for f in stale if f.exists()] == []
    assert all(f.exists() for f in foreign)  # not this run's: left alone
    assert "Removed 5 file(s)" in r.stdout


# ---------------------------------------------------------------------------------------------
# what checkpoints and JSON hold


def test_checkpoints_name_the_epoch_metric_apart_from_the_best(data, tmp_path):
    from training.train_v4 import train

    cfg = load_config(data / "quick.yaml", {
        "bank": str(data / "bank.npz"), "pairs": str(data / "pairs.npz"),
        "out": str(tmp_path / "run"), "log_dir": str(tmp_path / "logs"), "epochs": 3,
        "mine_schedule": "0-3:none", "select_metric": "mrr"})
    train(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for h in history:
        state = torch.load(tmp_path / "run" / "checkpoints" / f"epoch_{h['epoch']:03d}.pt",
                           weights_only=True)
        assert state[ck.EPOCH_METRIC] == {"name": "mrr", "value": h["mrr"]}
        assert state[ck.BEST_METRIC] == pytest.approx(
            max(round(x["mrr"], 6) for x in history[:h["epoch"]]))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last[ck.EPOCH_METRIC]["value"] == history[-1]["mrr"]


def test_json_is_strict():
    obj = {"a": float("nan"), "b": [np.float32("inf"), -float("inf"), 1.5], "c": (np.int64(3),)}
    assert json.loads(json_text(obj)) == {"a": None, "b": [None, None, 1.5], "c": [3]}


def test_written_json_has_no_nan(tmp_path):
    write_json(tmp_path / "x.json", {"margin": float("nan")})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))


def test_verify_sha256_names_a_changed_file(tmp_path):
    from cascade.bank import sha256_file

    f = tmp_path / "best.pt"
    f.write_bytes(b"weights")
    pin = sha256_file(f)
    ck.verify_sha256(f, pin)
    f.write_bytes(b"other weights")
    with pytest.raises(ValueError, match=f"{f}: sha256 .* is not the pinned"):
        ck.verify_sha256(f, pin)
    with pytest.raises(ValueError, match="no such file"):
        ck.verify_sha256(tmp_path / "gone.pt", pin)


def test_bank_fingerprint_comes_from_the_sidecar_while_the_file_is_unchanged(tmp_path):
    import os

    bank = synth_bank(SynthConfig(n=300, dim=8, mean_chunks=10, topics=2, seed=1))
    save_bank(bank, tmp_path / "b.npz")
    real = load_bank(tmp_path / "b.npz").fingerprint()
    side = tmp_path / "b.json"
    meta = json.loads(side.read_text())
    assert meta["fingerprint"] == real and meta["fingerprint_of"]["size"] > 0
    # A sidecar recording the file's size and mtime is trusted (no rehash of a large bank)...
    meta["fingerprint"] = "sha256:" + "0" * 64
    side.write_text(json.dumps(meta))
    assert load_bank(tmp_path / "b.npz").fingerprint() == meta["fingerprint"]
    # ...and a file changed since (other mtime) is hashed again.
    st = os.stat(tmp_path / "b.npz")
    os.utime(tmp_path / "b.npz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_bank(tmp_path / "b.npz").fingerprint() == real


@pytest.mark.parametrize("schedule,epoch,expected", [
    ("0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96", 12,
     ["11-30:16@0.84-0.96 -> 11-30:16@0.84-0.94", "11-30:16@0.84-0.96 -> 11-30:8@0.84-0.96"]),
    ("0-2:none;3-4:4@0.3-0.95;5-6:8@0.3-0.97", 2,  # no mining yet: the next segment's window
     ["3-4:4@0.3-0.95 -> 3-4:4@0.3-0.93", "3-4:4@0.3-0.95 -> 3-4:2@0.3-0.95"]),
    ("0-6:none", 4, ["mines no hard negatives"]),
])
def test_abort_advice_names_the_windows_of_the_schedule_in_use(schedule, epoch, expected):
    from training.curriculum import parse_schedule
    from training.gates import abort_advice

    advice = abort_advice(parse_schedule(schedule), epoch, tau=0.07)
    text = " ".join(advice)
    assert all(e in text for e in expected), advice
    assert "--tau 0.07 -> 0.063" in text
    if "0.84" not in schedule:  # never the checklist's own windows for another schedule
        assert "0.84" not in text and "16 -> 8" not in text


# ---------------------------------------------------------------------------------------------
# the monitor shows the current run only


def test_monitor_a_zombie_is_not_running_and_an_older_verdict_is_not_shown(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from training import monitor

    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "gate.json", {"verdict": "success", "stage1": "v4"})  # a previous run's
    st = os.stat(run / "gate.json")
    os.utime(run / "gate.json", ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped until wait()
    try:
        deadline = time.time() + 60
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        (run / "train.pid").write_text(str(child.pid))
        s = monitor.status(run)
        assert s["alive"] is False and s["pid"] == child.pid
        assert "verdict" not in s
    finally:
        child.wait()
    write_json(run / "gate.json", {"verdict": "partial", "stage1": "v4"})  # this run's
    assert monitor.status(run)["verdict"] == "partial"


def test_monitor_finds_the_run_of_a_profile_and_the_bg_hint_names_it(tmp_path, monkeypatch,
                                                                     capsys):
    import subprocess

    from training import monitor

    monkeypatch.chdir(tmp_path)
    assert monitor.main(["--profile", "smoke"]) == 2
    assert "runs/synth_smoke_bank/twotower_v4: no such run directory" in capsys.readouterr().err
    assert monitor.main(["--profile", "smoke", "--bank", "artifacts/mine.npz"]) == 2
    assert "runs/mine/twotower_v4: no such run" in capsys.readouterr().err
    repo = Path(__file__).resolve().parents[1]
    hint = subprocess.run(["make", "-n", "train-v4-bg", "PROFILE=smoke"], cwd=repo,
                          capture_output=True, text=True).stdout
    assert "or make monitor PROFILE=smoke\"" in hint
    monitor_cmd = subprocess.run(["make", "-n", "monitor", "PROFILE=smoke"], cwd=repo,
                                 capture_output=True, text=True).stdout
    assert "training.monitor --profile smoke" in monitor_cmd


def test_recall_benchmark_clamps_k_to_the_bank_and_writes_strict_json(data, tmp_path, capsys):
    from benchmarks import recall

    out = tmp_path / "recall.json"
    assert recall.main(["--bank", str(data / "bank.npz"), "--pairs", str(data / "pairs.npz"),
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))
    heuristic = report["methods"]["exp-weighted a=0.1 (heuristic)"]
    # A 600-row bank: the search asks for at most 600 rows, so recall@1000 is every row.
    assert heuristic["recall@1000"] == 100.0
