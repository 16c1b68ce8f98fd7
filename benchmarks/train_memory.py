"""Peak memory of v4 training at scale: a synthetic 500k x 768 bank, 50k pairs of 100-vector
contexts (target: under 4 GB RSS).

    python -m benchmarks.train_memory                   # the target's sizes
    python -m benchmarks.train_memory --rows 50000      # a quick look

Builds the bank and pairs in a temp dir (or --work), then runs `python -m training.train_v4` in
a child process for one epoch that mines hard negatives over the whole bank (so the FAISS index,
the memory bank, mining and evaluation all happen) and reads the child's peak RSS from the OS.
Pairs are index windows, so memory does not grow with how many pairs an epoch processes: the
epoch is capped at --train-pairs (all 50k are loaded, validated, split and indexed) to keep the
run short on 2 cores. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import created, save_report
from cascade.bank import save_bank
from cascade.pairs import load_pairs, save_pairs
from training.expand_pairs import ExpandConfig, expand_pairs
from training.synth_bank import SynthConfig, synth_bank

LIMIT_GB = 4.0


def build_inputs(work: Path, rows: int, dim: int, pairs_wanted: int, context: int) -> dict:
    bank_path, pairs_path = work / "bank.npz", work / "pairs.npz"
    t0 = time.perf_counter()
    if not bank_path.exists():
        bank = synth_bank(SynthConfig(n=rows, dim=dim, mean_chunks=150, seed=0), progress=True)
        save_bank(bank, bank_path)
    else:
        from cascade.bank import load_bank
        bank = load_bank(bank_path)
    if not pairs_path.exists():
        # Stride chosen so the bank yields about the wanted number of full-context pairs.
        windows_per_article = max(1, pairs_wanted * 150 // rows)
        stride = max(1, (150 - context) // windows_per_article)
        pairs = expand_pairs(bank, ExpandConfig(context_len=context, stride=stride,
                                                max_per_seq=1000, min_context=context,
                                                target_pairs=pairs_wanted, seed=0))
        keep = np.sort(np.random.default_rng(0).choice(len(pairs), min(len(pairs), pairs_wanted),
                                                       replace=False))
        pairs = pairs.subset(keep)
        save_pairs(pairs, pairs_path)
    pairs = load_pairs(pairs_path)
    del bank
    return {"bank": str(bank_path), "pairs": str(pairs_path), "rows": rows, "dim": dim,
            "pairs_total": len(pairs), "context_len_mean": float(pairs.lengths.mean()),
            "build_s": round(time.perf_counter() - t0, 1)}


def run_training(work: Path, inputs: dict, train_pairs: int) -> dict:
    cmd = [sys.executable, "-m", "training.train_v4", "--config", "v4_checklist.yaml",
           "--bank", inputs["bank"], "--pairs", inputs["pairs"], "--out", str(work / "run"),
           "--log-dir", str(work / "logs"), "--epochs", "1", "--mine-schedule", "1-1:16@0-1",
           "--max-train-pairs", str(train_pairs), "--bs", "32", "--accum", "16"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    history = json.loads((work / "run" / "history.json").read_text())
    return {"peak_rss_gb": round(peak_kb / 1024 / 1024, 3), "train_s": round(seconds, 1),
            "pairs_per_s": round(history[-1]["pairs_per_s"], 1),
            "recall@500": history[-1]["recall@500"], "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_memory",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--pairs", type=int, default=50_000)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--train-pairs", type=int, default=512,
                   help="pairs the measured epoch trains on")
    p.add_argument("--work", default=None, help="keep bank/pairs/run here (default: a temp dir)")
    p.add_argument("--out", default="benchmarks/results/train_memory.json")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="train_memory_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        inputs = build_inputs(work, args.rows, args.dim, args.pairs, args.context)
        result = run_training(work, inputs, args.train_pairs)
    vectors_gb = args.rows * args.dim * 4 / 1024**3
    report = {"benchmark": "train_memory", "created": created(),
        "cpus": os.cpu_count(), **inputs, **result,
              "bank_vectors_gb": round(vectors_gb, 3), "limit_gb": LIMIT_GB,
              "within_limit": result["peak_rss_gb"] < LIMIT_GB, "train_pairs": args.train_pairs}
    print(f"{'bank':<22}{args.rows:,} x {args.dim} synthetic ({vectors_gb:.2f} GB of vectors)")
    print(f"{'pairs':<22}{inputs['pairs_total']:,} (mean context {inputs['context_len_mean']:.1f})")
    print(f"{'epoch':<22}{args.train_pairs:,} train pairs, 16 mined negatives, eval on val")
    print(f"{'peak RSS':<22}{result['peak_rss_gb']:.2f} GB (limit {LIMIT_GB} GB): "
          f"{'OK' if report['within_limit'] else 'OVER'}")
    print(f"{'training wall':<22}{result['train_s']:.0f} s ({result['pairs_per_s']:.0f} pairs/s)")
    save_report(args.out, report)
    return 0 if report["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
