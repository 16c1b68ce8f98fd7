"""Does the TMD reranker help? Stage 3 on stage-1 candidates: w fitted on val, judged on test.

    python -m benchmarks.tmd_eval --bank artifacts/wikipedia_vital_bank.npz \
        --pairs artifacts/twotower/wikipedia_vital_bank/pairs_v4.npz

Stage 1 is the exp-weighted heuristic with exact search, context rows excluded; its top
`--candidates` (50, what stage 2 hands stage 3) are reranked to the top `--keep` (10). The weight
w is grid-searched on val contexts for Hit@keep (ties to the smaller w); the test split then
gives Hit@1/5/keep and MRR@keep at w = 0 (stage 1's own order) and at the chosen w, with
article-clustered bootstrap CIs and a paired difference. The match weights are chosen on val
too, among the documented default and each code part alone. Also printed: how often the
target's code matches the context's lane, part by part, beside the other candidates (val), and
the chosen setting with the lane's domain tagged from the context's vectors alone (test), the
path of a context of new text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from benchmarks.common import created, save_report
from cascade.bank import Bank, BankError, load_bank
from cascade.index import build_index
from cascade.lvm_head import stage1_candidates
from cascade.metrics import paired_difference, recall_report, target_ranks
from cascade.pairs import Pairs, PairsError, load_pairs
from cascade.query import DEFAULT_ALPHA
from cascade.stage1 import Stage1
from cascade.tagger import DomainCentroids, bank_centroids
from cascade.tmd import pack, unpack
from cascade.tmd_rerank import (
    DEFAULT_MATCH_WEIGHTS,
    DEFAULT_W_GRID,
    TmdReranker,
    pair_lanes,
    pair_tagged_lanes,
)

PARTS = {"domain": (1.0, 0.0, 0.0), "task": (0.0, 1.0, 0.0), "modifier": (0.0, 0.0, 1.0)}
# Match weights tried on val, the library's default first (it wins ties).
CONFIGS = {"domain only": DEFAULT_MATCH_WEIGHTS, "blend": (0.6, 0.25, 0.15),
           "task only": PARTS["task"], "modifier only": PARTS["modifier"]}


@dataclass
class Split:
    """One split's stage-1 candidates and the lanes of its contexts from the bank's codes."""
    pairs: Pairs
    ids: np.ndarray  # (P, candidates) stage 1's top, context rows excluded
    scores: np.ndarray
    lanes: np.ndarray  # (P,) packed query codes


def candidates(bank: Bank, pairs: Pairs, k: int, alpha: float, codes: np.ndarray) -> Split:
    """Stage 1 (the library's, exp-weighted heuristic over an exact flat index, context rows
    excluded): its top k for every pair, and the pairs' lanes."""
    stage1 = Stage1(bank, heuristic="exp_weighted", alpha=alpha,
                    index=build_index(bank.vectors, "flat"))
    found = stage1_candidates(stage1, pairs, k)
    return Split(pairs, found.ids, found.scores, pair_lanes(codes, pairs))


def vector_lanes(bank: Bank, split: Split, centroids: DomainCentroids) -> np.ndarray:
    """The split's lanes with the domain tagged from each context's vectors alone, as serving
    tags a context of new text (`pair_tagged_lanes`: `tag_context` on each context); task and
    modifier kept (the rules on the context's texts give the bank's)."""
    domain = unpack(pair_tagged_lanes(bank.vectors, split.pairs, centroids).codes)[0]
    _, task, modifier = unpack(split.lanes)
    return pack(domain, task, modifier).astype(np.int64)


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


def fit_on_val(codes: np.ndarray, val: Split, grid: tuple[float, ...], keep: int) -> dict:
    """w grid-searched for Hit@keep under each match-weight setting; the best setting chosen
    (the first of equals: the library's default)."""
    hit = f"hit@{keep}"
    fits = {}
    for name, weights in CONFIGS.items():
        w, table = TmdReranker(codes, 0.0, weights).fit_w(val.lanes, val.ids, val.scores,
                                                          val.pairs.target, grid, keep=keep)
        fits[name] = {"match_weights": list(weights), "best_w": w, "grid": table,
                      f"val_{hit}": max(r[hit] for r in table)}
    chosen = max(fits, key=lambda n: fits[n][f"val_{hit}"])
    return {"n": len(val.pairs), "fits": fits, "chosen": chosen,
            "best_w": fits[chosen]["best_w"], "match_weights": list(CONFIGS[chosen]),
            "lane_match_rates": match_rates(codes, val.lanes, val.ids, val.pairs.target)}


def test_runs(bank: Bank, codes: np.ndarray, val: Split, test: Split, fitted: dict,
              centroids: DomainCentroids | None, grid: tuple[float, ...], keep: int
              ) -> tuple[dict, dict]:
    """The settings judged on test, {label: (reranker, w, lanes)}: w = 0 (stage 1's order)
    first, the chosen one, the unchosen of domain-only and blend, and with the bank's
    `centroids` the lanes tagged from the contexts' vectors (with the chosen w, and with a w
    fitted on val with such lanes); and what the vector lanes add to the test report."""
    chosen, best_w = fitted["chosen"], fitted["best_w"]
    reranker = TmdReranker(codes, w=best_w, match_weights=CONFIGS[chosen])
    runs = {"w=0 (stage 1's order)": (reranker, 0.0, test.lanes),
            f"{chosen}, w={best_w:g} (chosen on val)": (reranker, best_w, test.lanes)}
    for name in ("domain only", "blend"):  # shown for transparency when not the chosen one
        if name != chosen:
            w = fitted["fits"][name]["best_w"]
            runs[f"{name}, w={w:g} (not chosen)"] = (TmdReranker(codes, 0.0, CONFIGS[name]), w,
                                                     test.lanes)
    if centroids is None:
        return runs, {"vector_lane_domain_agreement": None, "vector_lane_val_fit": None}
    # New-text contexts: the lane's domain from the context's vectors; its own w, on val.
    w_vec, table = reranker.fit_w(vector_lanes(bank, val, centroids), val.ids, val.scores,
                                  val.pairs.target, grid, keep=keep)
    lanes = vector_lanes(bank, test, centroids)
    runs[f"{chosen}, w={best_w:g}, lane domain from the context's vectors"] = (
        reranker, best_w, lanes)
    runs[f"{chosen}, w={w_vec:g} (fitted on val with vector lanes), lane from vectors"] = (
        reranker, w_vec, lanes)
    agreement = 100 * float((unpack(lanes)[0] == unpack(test.lanes)[0]).mean())
    return runs, {"vector_lane_domain_agreement": agreement,
                  "vector_lane_val_fit": {"best_w": w_vec, "grid": table}}


def judge_on_test(bank: Bank, test: Split, runs: dict, extra: dict, keep: int,
                  n_candidates: int) -> tuple[dict, dict]:
    """Hit@1/5/keep and MRR@keep of each run on test, article-clustered CIs, each run against
    the first (w = 0) paired -> (the test report, stage 1's Recall@candidates)."""
    ks = tuple(k for k in (1, 5) if k < keep) + (keep,)
    target = test.pairs.target
    clusters = bank.article_indices[target]
    ranks = {}
    for label, (r, w, lanes) in runs.items():
        ids, _ = r.rerank(lanes, test.ids, test.scores, keep, w=w)
        ranks[label] = target_ranks(ids, target)
    reports = {label: recall_report(r, ks, clusters=clusters) for label, r in ranks.items()}
    labels = list(ranks)
    diffs = {label: paired_difference(ranks[label], ranks[labels[0]], keep, clusters=clusters)
             for label in labels[1:]}
    diff = diffs[labels[1]]
    stage1_recall = recall_report(target_ranks(test.ids, target), (n_candidates,),
                                  clusters=clusters)
    verdict = ("helps" if diff["significant"] and diff["diff"] > 0 else
               "hurts" if diff["significant"] else "makes no significant difference")
    return {"n": len(test.pairs), "articles": int(len(np.unique(clusters))), "reports": reports,
            "vs_w0": diffs, "verdict": verdict, **extra}, stage1_recall


def print_results(args, bank: Bank, fitted: dict, judged: dict, stage1_recall: dict) -> None:
    hit, keep = f"hit@{args.keep}", args.keep
    chosen, best_w = fitted["chosen"], fitted["best_w"]
    print(f"bank {args.bank} ({bank.n:,} rows), stage 1 = exp-weighted heuristic "
          f"(alpha {args.alpha}), exact, context rows excluded; top {args.candidates} -> "
          f"{keep}")
    print(f"val ({fitted['n']:,} contexts): w grid -> Hit@{keep}, per match-weight setting")
    for name, f in fitted["fits"].items():
        print(f"  {name:<14s} {tuple(f['match_weights'])}: best w {f['best_w']:g} -> "
              f"{f[f'val_{hit}']:.2f}   " + " ".join(f"{r['w']:g}:{r[hit]:.2f}"
                                                    for r in f["grid"][::2]))
    print(f"  chosen: {chosen}, w = {best_w:g} (best val Hit@{keep}; w ties to the smaller)")
    print("  lane match, % of targets vs % of other candidates: "
          + ", ".join(f"{n} {r['target']:.1f} vs {r['other_candidates']:.1f}"
                      for n, r in fitted["lane_match_rates"].items()))
    print(f"test ({judged['n']:,} contexts, {judged['articles']:,} articles; CIs resample "
          f"articles): stage-1 Recall@{args.candidates} "
          f"{stage1_recall[f'recall@{args.candidates}']:.2f}")
    ks = tuple(k for k in (1, 5) if k < keep) + (keep,)
    for label, rep in judged["reports"].items():
        ci = rep[f"recall@{keep}_ci95"]
        print(f"  {label}\n      " + "  ".join(f"Hit@{k} {rep[f'recall@{k}']:.2f}" for k in ks)
              + f"  (Hit@{keep} 95% CI {ci[0]:.2f}-{ci[1]:.2f})  MRR@{keep} "
              f"{rep['mrr']:.4f}")
        if label in judged["vs_w0"]:
            d = judged["vs_w0"][label]
            print(f"      vs w=0: Hit@{keep} {d['diff']:+.2f} points (95% CI "
                  f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})"
                  + (" significant" if d["significant"] else ""))
    if judged["vector_lane_domain_agreement"] is not None:
        print(f"  (the context's vectors give the bank codes' lane domain for "
              f"{judged['vector_lane_domain_agreement']:.1f}% of test contexts)")
    print(f"verdict: TMD ({chosen}, w={best_w:g}) {judged['verdict']} on test")


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
    val = candidates(bank, pairs.val(), args.candidates, args.alpha, codes)
    fitted = fit_on_val(codes, val, grid, args.keep)
    test = candidates(bank, pairs.test(), args.candidates, args.alpha, codes)
    runs, extra = test_runs(bank, codes, val, test, fitted, bank_centroids(args.bank, bank.meta),
                            grid, args.keep)
    judged, stage1_recall = judge_on_test(bank, test, runs, extra, args.keep, args.candidates)
    print_results(args, bank, fitted, judged, stage1_recall)
    save_report(args.out, {
        "benchmark": "tmd_eval", "created": created(), "bank": args.bank,
        "bank_fingerprint": bank.fingerprint(), "pairs": args.pairs,
        "stage1": {"heuristic": "exp_weighted", "alpha": args.alpha, "index": "flat",
                   "context_rows_excluded": True, "candidates": args.candidates,
                   "test_recall": stage1_recall},
        "keep": args.keep, "val": fitted, "test": judged})
    return 0


if __name__ == "__main__":
    sys.exit(main())
