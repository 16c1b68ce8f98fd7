"""Stage-1 recall on a bank's test split: trained checkpoints beside the heuristic baselines.

    python -m benchmarks.recall --bank artifacts/wikipedia_vital_bank.npz \
        --pairs artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz \
        --ckpt v4=runs/wikipedia_vital_bank/twotower_v4/checkpoints/best.pt \
        --ckpt v3=runs/wikipedia_vital_bank/twotower_v3_phase2/checkpoints/best.pt

Every method is scored by the same `cascade.evaluation.evaluate` the trainer uses (context rows
excluded, 95% CIs by a bootstrap over articles), and each checkpoint is compared with the
exp-weighted heuristic by a paired 95% CI, also resampling articles. The default split is test,
which no training step selected or tuned on; a checkpoint whose train articles include articles
of the scored split is refused. The heuristic is also scored the original way (context rows not excluded), the
protocol behind the original report's 38.96% Recall@500 on its 500k bank.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from cascade.bank import BankError, load_bank
from cascade.checkpoint import CheckpointError, check_split_of, load_checkpoint
from cascade.metrics import paired_difference, recall_report, target_ranks
from cascade.pairs import PairsError, load_pairs
from cascade.stage1 import Stage1
from training.report import compare_methods, methods_markdown

KS = (10, 50, 100, 500, 1000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recall",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="artifacts/wikipedia_vital_bank.npz", help="bank .npz")
    p.add_argument("--pairs", default="artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz",
                   help="pairs .npz whose split is scored")
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                   help="a trained checkpoint to score beside the heuristics (repeatable)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="which split (test: judged only, never selected on)")
    p.add_argument("--out", default="benchmarks/results/recall.json", help="results JSON")
    args = p.parse_args(argv)
    try:
        ckpts = dict(c.split("=", 1) if "=" in c else (Path(c).parent.parent.name, c)
                     for c in args.ckpt)
        bank = load_bank(args.bank)
        pairs = load_pairs(args.pairs, bank)
        split = pairs.side(args.split)
        if args.split != "train":
            for name, path in ckpts.items():
                check_split_of(load_checkpoint(path, bank.fingerprint()), path, pairs, bank,
                               f"--ckpt {name}")
        methods = {name: ("checkpoint", path) for name, path in ckpts.items()}
        methods.update({"heuristic": ("exp_weighted", None),
                        "last-vector": ("last_vector", None), "oracle": ("oracle", None)})
        table, ranks = compare_methods(bank, split, methods, KS)
    except (BankError, PairsError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # The original protocol: the heuristic's own context rows stay in the results.
    _, _, I = Stage1(bank).search_pairs(split, max(KS), exclude=False)
    table["heuristic (context not excluded)"] = recall_report(target_ranks(I, split.target), KS,
                                                              clusters=split.articles(bank))
    table["heuristic (context not excluded)"]["margin"] = float("nan")
    versus = {name: {f"recall@{k}": paired_difference(ranks[name], ranks["heuristic"], k,
                                                      split.articles(bank))
                     for k in (10, 500)} for name in ckpts}

    print(f"{args.split} split: {len(split):,} pairs from "
          f"{len(set(split.articles(bank).tolist())):,} articles, bank {args.bank} ({bank.n:,} x {bank.dim})")
    print(methods_markdown(table, KS))
    for name, comp in versus.items():
        for key, d in comp.items():
            verdict = "beats" if d["significant"] and d["diff"] > 0 else "does not beat"
            print(f"{name} {verdict} the heuristic on {key}: {d['diff']:+.2f} points "
                  f"(95% CI {d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})")
    report = {"benchmark": "recall", "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "bank": args.bank, "bank_fingerprint": bank.fingerprint(), "pairs": args.pairs,
              "split": args.split, "n": len(split), "methods": table, "vs_heuristic": versus,
              "checkpoints": ckpts}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
