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

import numpy as np

from benchmarks.common import created, save_report
from cascade.bank import Bank, BankError, load_bank
from cascade.index import build_index, search_batched
from cascade.metrics import paired_difference, recall_report, target_ranks
from cascade.pairs import Pairs, PairsError, context_windows, load_pairs
from cascade.query import DEFAULT_ALPHA, heuristic_queries
from cascade.tagger import DomainCentroids, bank_centroids
from cascade.tmd import pack, unpack
from cascade.tmd_rerank import DEFAULT_MATCH_WEIGHTS, DEFAULT_W_GRID, TmdReranker, pair_lanes

PARTS = {"domain": (1.0, 0.0, 0.0), "task": (0.0, 1.0, 0.0), "modifier": (0.0, 0.0, 1.0)}
# Match weights tried on val, the library's default first (it wins ties).
CONFIGS = {"domain only": DEFAULT_MATCH_WEIGHTS, "blend": (0.6, 0.25, 0.15),
           "task only": PARTS["task"], "modifier only": PARTS["modifier"]}


def candidates(bank: Bank, pairs: Pairs, k: int, alpha: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 (exp-weighted heuristic, exact, context excluded): (ids, scores) (P, k)."""
    q = heuristic_queries(bank.vectors, pairs, "exp_weighted", alpha)
    scores, ids = search_batched(build_index(bank.vectors, "flat"), q, k, pairs.ctx_start,
                                 pairs.ctx_end)
    return ids, scores


def vector_lanes(bank: Bank, pairs: Pairs, lanes: np.ndarray,
                 centroids: DomainCentroids) -> np.ndarray:
    """`lanes` with the domain re-tagged from each context's mean vector alone (the path of a
    context of new text, whose chunks have no bank codes); task and modifier kept (the rules on
    the context's texts give the bank's)."""
    rows, mask = context_windows(pairs)
    means = np.einsum("pl,pld->pd", mask.astype(np.float32), bank.vectors[rows])
    domain = centroids.predict(means / np.linalg.norm(means, axis=1, keepdims=True))
    _, task, modifier = unpack(lanes)
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
    hit = f"hit@{args.keep}"
    fits = {}
    for name, weights in CONFIGS.items():
        w, table = TmdReranker(codes, 0.0, weights).fit_w(v_lanes, v_ids, v_scores, val.target,
                                                          grid, keep=args.keep)
        fits[name] = {"match_weights": list(weights), "best_w": w, "grid": table,
                      f"val_{hit}": max(r[hit] for r in table)}
    chosen = max(fits, key=lambda n: fits[n][f"val_{hit}"])  # first of equals: the default
    best_w = fits[chosen]["best_w"]
    reranker = TmdReranker(codes, w=best_w, match_weights=CONFIGS[chosen])
    rates = match_rates(codes, v_lanes, v_ids, val.target)

    # 2. judge on test: w = 0 (stage 1's own order) against the fitted w
    test = pairs.test()
    t_ids, t_scores = candidates(bank, test, args.candidates, args.alpha)
    t_lanes = pair_lanes(codes, test)
    clusters = bank.article_indices[test.target]
    centroids = bank_centroids(args.bank, bank.meta)
    runs = {"w=0 (stage 1's order)": (reranker, 0.0, t_lanes),
            f"{chosen}, w={best_w:g} (chosen on val)": (reranker, best_w, t_lanes)}
    for name in ("domain only", "blend"):  # shown for transparency when not the chosen one
        if name != chosen:
            runs[f"{name}, w={fits[name]['best_w']:g} (not chosen)"] = (
                TmdReranker(codes, 0.0, CONFIGS[name]), fits[name]["best_w"], t_lanes)
    agreement, vector_fit = None, None
    if centroids is not None:
        # New-text contexts: the lane's domain from the context's vectors; its own w, on val.
        w_vec, table = reranker.fit_w(vector_lanes(bank, val, v_lanes, centroids), v_ids,
                                      v_scores, val.target, grid, keep=args.keep)
        vector_fit = {"best_w": w_vec, "grid": table}
        v_lanes_test = vector_lanes(bank, test, t_lanes, centroids)
        agreement = 100 * float((unpack(v_lanes_test)[0] == unpack(t_lanes)[0]).mean())
        runs[f"{chosen}, w={best_w:g}, lane domain from the context's vectors"] = (
            reranker, best_w, v_lanes_test)
        runs[f"{chosen}, w={w_vec:g} (fitted on val with vector lanes), lane from vectors"] = (
            reranker, w_vec, v_lanes_test)
    ranks = {}
    for label, (r, w, lanes) in runs.items():
        ids, _ = r.rerank(lanes, t_ids, t_scores, args.keep, w=w)
        ranks[label] = target_ranks(ids, test.target)
    reports = {label: recall_report(r, ks, clusters=clusters) for label, r in ranks.items()}
    labels = list(ranks)
    diffs = {label: paired_difference(ranks[label], ranks[labels[0]], args.keep,
                                      clusters=clusters) for label in labels[1:]}
    diff = diffs[labels[1]]
    stage1_recall = recall_report(target_ranks(t_ids, test.target), (args.candidates,),
                                  clusters=clusters)

    # 3. print and save
    print(f"bank {args.bank} ({bank.n:,} rows), stage 1 = exp-weighted heuristic "
          f"(alpha {args.alpha}), exact, context rows excluded; top {args.candidates} -> "
          f"{args.keep}")
    print(f"val ({len(val):,} contexts): w grid -> Hit@{args.keep}, per match-weight setting")
    for name, f in fits.items():
        print(f"  {name:<14s} {tuple(f['match_weights'])}: best w {f['best_w']:g} -> "
              f"{f[f'val_{hit}']:.2f}   " + " ".join(f"{r['w']:g}:{r[hit]:.2f}"
                                                    for r in f["grid"][::2]))
    print(f"  chosen: {chosen}, w = {best_w:g} (best val Hit@{args.keep}; w ties to the smaller)")
    print("  lane match, % of targets vs % of other candidates: "
          + ", ".join(f"{n} {r['target']:.1f} vs {r['other_candidates']:.1f}"
                      for n, r in rates.items()))
    print(f"test ({len(test):,} contexts, {len(np.unique(clusters)):,} articles; CIs resample "
          f"articles): stage-1 Recall@{args.candidates} "
          f"{stage1_recall[f'recall@{args.candidates}']:.2f}")
    for label, rep in reports.items():
        ci = rep[f"recall@{args.keep}_ci95"]
        print(f"  {label}\n      " + "  ".join(f"Hit@{k} {rep[f'recall@{k}']:.2f}" for k in ks)
              + f"  (Hit@{args.keep} 95% CI {ci[0]:.2f}-{ci[1]:.2f})  MRR@{args.keep} "
              f"{rep['mrr']:.4f}")
        if label in diffs:
            d = diffs[label]
            print(f"      vs w=0: Hit@{args.keep} {d['diff']:+.2f} points (95% CI "
                  f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})"
                  + (" significant" if d["significant"] else ""))
    if agreement is not None:
        print(f"  (the context's vectors give the bank codes' lane domain for {agreement:.1f}% "
              f"of test contexts)")
    verdict = ("helps" if diff["significant"] and diff["diff"] > 0 else
               "hurts" if diff["significant"] else "makes no significant difference")
    print(f"verdict: TMD ({chosen}, w={best_w:g}) {verdict} on test")

    report = {"benchmark": "tmd_eval", "created": created(),
              "bank": args.bank, "bank_fingerprint": bank.fingerprint(), "pairs": args.pairs,
              "stage1": {"heuristic": "exp_weighted", "alpha": args.alpha, "index": "flat",
                         "context_rows_excluded": True, "candidates": args.candidates,
                         "test_recall": stage1_recall},
              "keep": args.keep,
              "val": {"n": len(val), "fits": fits, "chosen": chosen, "best_w": best_w,
                      "match_weights": list(CONFIGS[chosen]), "lane_match_rates": rates},
              "test": {"n": len(test), "articles": int(len(np.unique(clusters))),
                       "reports": reports, "vs_w0": diffs, "verdict": verdict,
                       "vector_lane_domain_agreement": agreement,
                       "vector_lane_val_fit": vector_fit}}
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
