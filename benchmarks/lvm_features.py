"""Which LVM features help: the head cross-fitted on val for feature sets, one predictor.

    python -m benchmarks.lvm_features --run runs/wikipedia_vital_bank/lvm

Reads the run's config.yaml (deploy.json, pairs) and its trained predictor (best.pt); computes
every feature once for val's stage-1 candidates and fits the head on each feature set with the
same k-fold cross-fitting by article as `make train-lvm`, so each number is a val estimate on
contexts neither the head nor stage 1 trained on. The test split is not read. Table + JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from benchmarks.common import created, save_report
from cascade.bank import load_bank
from cascade.deploy import read_deploy
from cascade.lvm import (
    ADJACENCY,
    CONFIG,
    CONTENT,
    FEATURES,
    MODEL,
    STRUCTURE,
    BankStructure,
    Lvm,
    LvmConfig,
    load_lvm_state,
)
from cascade.lvm_head import all_features, cross_fit, ranks_by, stage1_candidates
from cascade.metrics import hit_percent
from cascade.pairs import load_pairs
from cascade.stage1 import Stage1
from training.train_lvm import load_train_config  # the run's config.yaml, as train-lvm read it

SETS = {
    "stage-1 score + rank": ["s1", "log_rank"],
    "content": list(CONTENT),
    "content - pred": [f for f in CONTENT if f != "pred"],
    "content + structure (default)": list(CONTENT + STRUCTURE),
    "content + structure + adjacency (lookup on bank contexts)": list(FEATURES),
    "stage-1 + adjacency": ["s1", "log_rank", *ADJACENCY],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lvm_features",
                                description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/wikipedia_vital_bank/lvm", help="make train-lvm's out")
    p.add_argument("--out", default="benchmarks/results/lvm_features.json")
    args = p.parse_args(argv)
    run = Path(args.run)
    cfg = load_train_config(str(run / "config.yaml"), {})
    deploy = read_deploy(cfg.deploy)
    bank = load_bank(deploy["bank"])
    val = load_pairs(cfg.pairs, bank).val()
    stage1 = Stage1.from_deploy(cfg.deploy, bank=bank)
    va = stage1_candidates(stage1, val, cfg.k)
    state = load_lvm_state(run / "checkpoints" / "best.pt", bank.fingerprint())
    predictor = {k[len("predictor."):]: v for k, v in state[MODEL].items()
                 if k.startswith("predictor.")}

    def model_for(features: list[str]) -> Lvm:
        m = Lvm(LvmConfig.from_dict({**state[CONFIG], "features": features}))
        m.predictor.load_state_dict(predictor)
        return m.eval()

    feats = all_features(model_for(list(FEATURES)), BankStructure(bank), bank, va)
    s1 = va.ranks
    rows = {"stage 1 alone": {f"hit@{k}": hit_percent(s1, k) for k in (1, 5, 10, 50)}}
    for name, subset in SETS.items():
        cols = torch.tensor([FEATURES.index(f) for f in subset])
        logits = cross_fit(model_for(subset), feats[..., cols], va, bank, cfg)[0]
        r, _, _ = ranks_by(logits, va)
        rows[name] = {f"hit@{k}": hit_percent(r, k) for k in (1, 5, 10, 50)}
        print(f"  {name}: Hit@10 {rows[name]['hit@10']:.2f}", file=sys.stderr, flush=True)
    print(f"val split, {len(val):,} contexts, stage 1 = {stage1.kind}, top-{cfg.k}; heads "
          f"{cfg.folds}-fold cross-fitted by article")
    print(f"{'features':<60}{'Hit@1':>8}{'Hit@5':>8}{'Hit@10':>8}{'Hit@50':>8}")
    for name, m in rows.items():
        print(f"{name:<60}" + "".join(f"{m[f'hit@{k}']:8.2f}" for k in (1, 5, 10, 50)))
    report = {"benchmark": "lvm_features", "created": created(),
        "run": str(run), "split": "val", "n": len(val),
        "stage1_kind": stage1.kind, "k": cfg.k, "sets": SETS, "results": rows,
        "train_config": dataclasses.asdict(cfg)}
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

