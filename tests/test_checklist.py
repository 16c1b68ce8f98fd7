"""End to end: the whole checklist on the smoke profile (`make train-v4 PROFILE=smoke`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cascade import checkpoint as ck

REPO = Path(__file__).resolve().parent.parent


def test_smoke_checklist_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.checklist", "--profile", "smoke"],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                            "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    runs = tmp_path / "runs" / "synth_smoke_bank"
    for step in ("1. Phase-2 (v3) post-mortem", "2. Expand training pairs",
                 "3. v4 pre-flight checks", "4. v4 training", "5. Deploy decision"):
        assert step in r.stdout
    assert (runs / "twotower_v3_phase2" / "postmortem.json").exists()
    assert (tmp_path / "artifacts" / "twotower" / "synth_smoke_bank" /
            "preflight_results.json").exists()
    gate = json.loads((runs / "twotower_v4" / "gate.json").read_text())
    deploy = json.loads((runs / "deploy.json").read_text())
    assert deploy["stage1"] == gate["stage1"] in ("v4", "heuristic")
    assert deploy["verdict"] == gate["verdict"] and deploy["reason"]
    if deploy["checkpoint"]:  # the served checkpoint's bytes are pinned
        ck.verify_sha256(tmp_path / deploy["checkpoint"], deploy["checkpoint_sha256"])
    else:
        assert deploy["checkpoint_sha256"] is None
    # The log shows the exact command of every step, to reproduce the run by hand.
    assert "$ python -m training.expand_pairs --bank artifacts/synth_smoke_bank.npz" in r.stdout
    assert "$ python -m training.train_v4 --config smoke_v4.yaml" in r.stdout
    # The side-by-side table: v3, v4, heuristic, last-vector and oracle on the same split.
    assert set(gate["methods"]) == {"v4", "v3", "heuristic", "last-vector", "oracle"}
    assert "v3 " in r.stdout and "oracle" in r.stdout
    # A second run (--resume, as make train-v4 RESUME=1) finds the bank and the v3 baseline and
    # does not rebuild them, nor re-expand the pairs under the run it resumes.
    pairs = tmp_path / "artifacts" / "twotower" / "synth_smoke_bank" / "pairs_v4.npz"
    before = pairs.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "training.checklist", "--profile", "smoke",
                            "--resume"], cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:])
    assert "0. Bank" not in again.stdout and "1b. v3 baseline training" not in again.stdout
    assert "--resume: keeping" in again.stdout and pairs.stat().st_mtime_ns == before
    assert "Resumed from" in again.stdout


def test_named_bank_that_is_missing_is_refused_not_built(tmp_path):
    missing = tmp_path / "mine.npz"
    r = subprocess.run([sys.executable, "-m", "training.checklist", "--bank", str(missing)],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                            "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {missing}: no such bank") and r.stderr.count("\n") == 1
    assert not missing.exists() and not (tmp_path / "runs").exists()


def test_another_bank_with_shipped_gates_gets_a_note(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    bank = tmp_path / "other.npz"
    made = subprocess.run([sys.executable, "-m", "training.synth_bank", "--out", str(bank),
                           "--n", "4000", "--dim", "64", "--mean-chunks", "12", "--seed", "9"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    r = subprocess.run([sys.executable, "-m", "training.checklist", "--profile", "smoke",
                        "--bank", str(bank)], cwd=tmp_path, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "note: the gates of smoke_v4.yaml" in r.stdout
    assert f"for {bank}, set thresholds relative to the heuristic" in r.stdout
    assert (tmp_path / "runs" / "other" / "deploy.json").exists()
