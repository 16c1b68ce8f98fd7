"""Does the TMD reranker help? Stage 3 on stage-1 candidates: w fitted on val, judged on test.

    python -m benchmarks.tmd_eval --bank artifacts/wikipedia_vital_bank.npz \
        --pairs artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz

Stage 1 is the exp-weighted heuristic with exact search, context rows excluded; its top
`--candidates` (50, what stage 2 hands stage 3) are reranked to the top `--keep` (10). The weight
w is grid-searched on val contexts for Hit@keep (ties to the smaller w); the test split then
gives Hit@1/5/keep and MRR@keep at w = 0 (stage 1's own order) and at the chosen w, with
article-clustered bootstrap CIs and a paired difference. Also printed, on val: how often the
target's code matches the context's lane, part by part, beside the other candidates (the signal
TMD could add), and w fitted with each part alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade.bank import Bank, BankError, atomic_write, load_bank
from cascade.index import build_index, search_batched
from cascade.metrics import mrr, paired_difference, recall_report, target_ranks
from cascade.pairs import Pairs, PairsError, load_pairs
from cascade.query import DEFAULT_ALPHA, heuristic_queries
from cascade.tmd import unpack
from cascade.tmd_rerank import DEFAULT_MATCH_WEIGHTS, DEFAULT_W_GRID, TmdReranker, pair_lanes

PARTS = {"domain": (1.0, 0.0, 0.0), "task": (0.0, 1.0, 0.0), "modifier": (0.0, 0.0, 1.0)}


def candidates(bank: Bank, pairs: Pairs, k: int, alpha: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 (exp-weighted heuristic, exact, context excluded): (ids, scores) (P, k)."""
    q = heuristic_queries(bank.vectors, pairs, "exp_weighted", alpha)
    scores, ids = search_batched(build_index(bank.vectors, "flat"), q, k, pairs.ctx_start,
                                 pairs.ctx_end)
    return ids, scores


def match_rates(codes: np.ndarray, lanes: np.ndarray, ids: np.ndarray,
                target: np.ndarray) -> dict:
    """Percent of targets, and of the other real candidates, whose code part equals the lane's."""
    parts_c = unpack(codes[np.maximum(ids, 0)])
    parts_q = unpack(lanes)
    parts_t = unpack(codes[target])
    is_target = ids == target[:, None]
    others = (ids >= 0) & ~is_target
    out = {}
    for name, c, q, t in zip(PARTS, parts_c, parts_q, parts_t, strict=True):
        same = c == q[:, None]
        out[name] = {"target": 100 * float((t == q).mean()),
                     "other_candidates": 100 * float(same[others].mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tmd_eval",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="artifacts/wikipedia_vital_bank.npz",
                   help="bank .npz with tmd_codes")
    p.add_argument("--pairs", default="artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz",
                   help="pairs .npz of that bank (val fits w, test reports)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help="decay of the exp-weighted heuristic (stage 1)")
    p.add_argument("--candidates", type=int, default=50, help="stage-1 candidates per context")
    p.add_argument("--keep", type=int, default=10, help="what stage 3 keeps (Hit@keep is fitted)")
    p.add_argument("--grid", default=",".join(str(w) for w in DEFAULT_W_GRID),
                   help="comma-separated w values to try")
    p.add_argument("--out", default="benchmarks/results/tmd_eval.json", help="results JSON")
    args = p.parse_args(argv)
    try:
        grid = tuple(float(w) for w in args.grid.split(","))
        bank = load_bank(args.bank)
        pairs = load_pairs(args.pairs, bank)
        if bank.tmd_codes is None:
            raise BankError(f"{args.bank}: no key 'tmd_codes' (make data tags the bank)")
    except (BankError, PairsError, ValueError) as e:
        print(f"tmd_eval: error: {e}", file=sys.stderr)
        return 2
    codes = bank.tmd_codes.astype(np.int64)
    ks = tuple(k for k in (1, 5) if k < args.keep) + (args.keep,)

    # 1. fit w on val
    val = pairs.val()
    v_ids, v_scores = candidates(bank, val, args.candidates, args.alpha)
    v_lanes = pair_lanes(codes, val)
    reranker = TmdReranker(codes, w=0.0, match_weights=DEFAULT_MATCH_WEIGHTS)
    best_w, table = reranker.fit_w(v_lanes, v_ids, v_scores, val.target, grid, keep=args.keep)
    single = {}
    for name, weights in PARTS.items():
        w, t = TmdReranker(codes, 0.0, weights).fit_w(v_lanes, v_ids, v_scores, val.target,
                                                      grid, keep=args.keep)
        single[name] = {"best_w": w, f"val_hit@{args.keep}": max(r[f"hit@{args.keep}"]
                                                                for r in t)}
    rates = match_rates(codes, v_lanes, v_ids, val.target)

    # 2. judge on test: w = 0 (stage 1's own order) against the fitted w
    test = pairs.test()
    t_ids, t_scores = candidates(bank, test, args.candidates, args.alpha)
    t_lanes = pair_lanes(codes, test)
    clusters = bank.article_indices[test.target]
    ranks = {}
    for label, w in (("w=0", 0.0), (f"w={best_w:g}", best_w)):
        ids, _ = reranker.rerank(t_lanes, t_ids, t_scores, args.keep, w=w)
        ranks[label] = target_ranks(ids, test.target)
    reports = {label: {**recall_report(r, ks, clusters=clusters),
                       f"mrr@{args.keep}": mrr(r)} for label, r in ranks.items()}
    labels = list(ranks)
    diff = paired_difference(ranks[labels[1]], ranks[labels[0]], args.keep, clusters=clusters)
    stage1_recall = recall_report(target_ranks(t_ids, test.target), (args.candidates,),
                                  clusters=clusters)

    # 3. print and save
    print(f"bank {args.bank} ({bank.n:,} rows), stage 1 = exp-weighted heuristic "
          f"(alpha {args.alpha}), exact, context rows excluded; top {args.candidates} -> "
          f"{args.keep}")
    print(f"val ({len(val):,} contexts): w grid -> Hit@{args.keep}")
    print("  " + "  ".join(f"{r['w']:g}:{r[f'hit@{args.keep}']:.2f}" for r in table))
    print(f"  chosen w = {best_w:g} (ties to the smaller w); each part alone: "
          + ", ".join(f"{n} w={s['best_w']:g} ({s[f'val_hit@{args.keep}']:.2f})"
                      for n, s in single.items()))
    print("  lane match, % of targets vs % of other candidates: "
          + ", ".join(f"{n} {r['target']:.1f} vs {r['other_candidates']:.1f}"
                      for n, r in rates.items()))
    print(f"test ({len(test):,} contexts, {len(np.unique(clusters)):,} articles; CIs resample "
          f"articles): stage-1 Recall@{args.candidates} "
          f"{stage1_recall[f'recall@{args.candidates}']:.2f}")
    for label, rep in reports.items():
        ci = rep[f"recall@{args.keep}_ci95"]
        print(f"  {label:<8s} " + "  ".join(f"Hit@{k} {rep[f'recall@{k}']:.2f}" for k in ks)
              + f"  (Hit@{args.keep} 95% CI {ci[0]:.2f}-{ci[1]:.2f})  MRR@{args.keep} "
              f"{rep[f'mrr@{args.keep}']:.4f}")
    verdict = ("helps" if diff["significant"] and diff["diff"] > 0 else
               "hurts" if diff["significant"] else "makes no significant difference")
    print(f"  TMD at w={best_w:g} {verdict}: Hit@{args.keep} {diff['diff']:+.2f} points "
          f"(95% CI {diff['ci95'][0]:+.2f} to {diff['ci95'][1]:+.2f})")

    report = {"benchmark": "tmd_eval", "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "bank": args.bank, "bank_fingerprint": bank.fingerprint(), "pairs": args.pairs,
              "stage1": {"heuristic": "exp_weighted", "alpha": args.alpha, "index": "flat",
                         "context_rows_excluded": True, "candidates": args.candidates,
                         "test_recall": stage1_recall},
              "keep": args.keep, "match_weights": list(DEFAULT_MATCH_WEIGHTS),
              "val": {"n": len(val), "grid": table, "best_w": best_w, "single_part": single,
                      "lane_match_rates": rates},
              "test": {"n": len(test), "articles": int(len(np.unique(clusters))),
                       "reports": reports, "paired_difference": diff, "verdict": verdict}}
    text = json.dumps(report, indent=2, allow_nan=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
