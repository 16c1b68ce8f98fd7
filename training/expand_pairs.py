"""Checklist step 2: expand next-chunk training pairs from a bank, split by article.

    python -m training.expand_pairs --bank artifacts/wikipedia_vital_bank.npz \
        --out artifacts/twotower/pairs_v4.npz --target-pairs 50000 --seed 42

Per article, a pair's target is a chunk and its context the up-to `--context-len` chunks before
it; targets are taken every `--stride` chunks from `--min-context` on, at most `--max-per-seq` per
article (evenly spread). A pair whose target nearly duplicates (cos > 0.999) an earlier kept
target is dropped. Train, val and test hold disjoint articles, and an article's side is a
function of its stable key and --seed alone (cascade.split), so every pairs file of a bank
agrees. A val/test pair whose context holds exactly the vectors of a train pair's context
(sentences repeated across articles) is dropped, counted in the manifest: pre-flight's leakage
check, which uses the same test, would block it. Unset flags take per-bank defaults: short
articles (median < 32 chunks, e.g. the default bank) use stride 1 and context 8, long ones the
checklist's stride 32 / cap 30 / context 100.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from cascade.bank import Bank, BankError, load_bank, write_json
from cascade.index import build_index
from cascade.pairs import Pairs, save_pairs
from cascade.split import SIDE_NAMES, TRAIN, SplitSpec, key_kind, row_sides
from training.preflight import duplicate_contexts

log = logging.getLogger(__name__)

NEAR_DUP_COS = 0.999
SHORT_FRACTION = 0.9  # fewer than 90% of --target-pairs counts as short (checklist: < 45k of 50k)
RETRY_STRIDE, RETRY_MAX_PER_SEQ = 25, 40  # the checklist's aggressive retry


@dataclass
class ExpandConfig:
    context_len: int | None = None  # max context chunks; None = per-bank default (8 or 100)
    stride: int | None = None  # chunks between consecutive targets; None = per-bank (1 or 32)
    max_per_seq: int | None = None  # pairs per article cap; None = per-bank (1000 or 30)
    min_context: int = 1  # fewest context chunks a pair may have
    target_pairs: int = 50_000  # how many pairs we hope for; fewer is reported, not an error
    train_split: float = 0.8  # fraction of articles in train
    test_split: float = 0.1  # fraction in test (the final gate); val gets the rest
    seed: int = 42  # seed of the article split (a hash of seed and article key)


def defaults_for(bank: Bank) -> dict:
    starts, ends = bank.article_bounds()
    median = float(np.median(ends - starts))
    if median < 32:
        return {"context_len": 8, "stride": 1, "max_per_seq": 1000, "bank_kind": "short-article"}
    return {"context_len": 100, "stride": 32, "max_per_seq": 30, "bank_kind": "long-article"}


def resolve(cfg: ExpandConfig, bank: Bank) -> ExpandConfig:
    d = defaults_for(bank)
    return ExpandConfig(**{**asdict(cfg), **{k: d[k] for k in ("context_len", "stride",
                                                                 "max_per_seq")
                                             if getattr(cfg, k) is None}})


def candidate_targets(bank: Bank, cfg: ExpandConfig) -> tuple[np.ndarray, dict]:
    """Target rows of every window, article by article, in bank order."""
    starts, ends = bank.article_bounds()
    lengths = ends - starts
    # Targets at chunk positions min_context, min_context + stride, ... < length.
    n_full = np.maximum(0, -(-(lengths - cfg.min_context) // cfg.stride))
    n_keep = np.minimum(n_full, cfg.max_per_seq)
    article_of = np.repeat(np.arange(len(starts)), n_keep)
    j = np.arange(int(n_keep.sum())) - np.repeat(np.cumsum(n_keep) - n_keep, n_keep)
    # Evenly spread the kept windows over an article when the cap bites.
    k = (j * n_full[article_of]) // np.maximum(n_keep[article_of], 1)
    targets = starts[article_of] + cfg.min_context + k * cfg.stride
    stats = {
        "articles": int(len(starts)),
        "articles_too_short": int((lengths < cfg.min_context + 1).sum()),
        "articles_capped": int((n_full > cfg.max_per_seq).sum()),
        "windows_before_cap": int(n_full.sum()),
    }
    return targets.astype(np.int64), stats


# Up to this many targets the near-duplicate search is exact (a flat index: quadratic, ~11 s at
# 50k x 384, ~40 min at 750k); above, an IVF range search probing NEAR_DUP_NPROBE lists. Pairs
# this close (distance < 0.045) share a list or a neighbouring one: on random 384-d data, the
# worst case for IVF, 4 probes found 2,000 of 2,000 planted pairs at 200k rows; 8 keep a margin
# and cost half of 16 (the search dominates: ~2 min for 750k targets on 2 cores).
NEAR_DUP_EXACT_MAX = 50_000
NEAR_DUP_NPROBE = 8


def near_duplicate_mask(vectors: np.ndarray, threshold: float = NEAR_DUP_COS,
                        exact_max: int = NEAR_DUP_EXACT_MAX) -> np.ndarray:
    """True for each row with cos > threshold to an earlier row that is kept: (M, D) -> (M,).

    Rows are kept greedily in order, so a row whose only near-duplicate was itself dropped stays.
    """
    if len(vectors) <= exact_max:
        index = faiss.IndexFlatIP(vectors.shape[1])  # range search needs a real faiss index
        index.add(vectors)
    else:
        index = build_index(vectors, "ivf", nprobe=NEAR_DUP_NPROBE)
    lims, _, ids = index.range_search(vectors, threshold)
    owner = np.repeat(np.arange(len(vectors)), np.diff(lims).astype(np.int64))
    dup = np.zeros(len(vectors), dtype=bool)
    # The search is vectorized; this loop only visits rows that have an earlier near-duplicate
    # (a handful per thousand on real banks), in order, so each sees its predecessors' verdicts.
    for row in np.unique(owner[ids < owner]):
        earlier = ids[lims[row]:lims[row + 1]]
        dup[row] = bool((~dup[earlier[earlier < row]]).any())
    return dup


def split_spec(bank: Bank, cfg: ExpandConfig) -> SplitSpec:
    """The article split of `cfg` on `bank`, keyed by the most stable key the bank has."""
    return SplitSpec(seed=cfg.seed, train=cfg.train_split, test=cfg.test_split,
                     key=key_kind(bank))


def expand_pairs(bank: Bank, cfg: ExpandConfig) -> Pairs:
    """Build pairs from `bank` with a resolved `cfg`; counts go into `pairs.meta`."""
    targets, stats = candidate_targets(bank, cfg)
    dup = near_duplicate_mask(bank.vectors[targets]) if len(targets) else np.zeros(0, bool)
    targets = targets[~dup]
    articles = bank.article_indices[targets]
    first_row = _article_start_of(bank, targets)
    ctx_start = np.maximum(first_row, targets - cfg.context_len)
    spec = split_spec(bank, cfg)
    split = row_split = row_sides(bank, spec)[targets]
    # Real corpora repeat sentences ("Return a new ..."), so a val/test context can hold exactly
    # the vectors of a train context, which pre-flight's leakage check blocks. Such pairs are
    # dropped; no article changes side, and a bank without them gets the same arrays.
    dup_ctx = duplicate_held_out_contexts(bank, ctx_start, targets, split)
    example = ([int(ctx_start[dup_ctx][0]), int(targets[dup_ctx][0])] if dup_ctx.any()
               else None)
    targets, ctx_start, split = targets[~dup_ctx], ctx_start[~dup_ctx], split[~dup_ctx]
    articles = articles[~dup_ctx]
    lengths = targets - ctx_start
    hist = np.bincount(lengths, minlength=cfg.context_len + 1)
    meta = {
        "config": asdict(cfg),
        "bank": bank.path,
        "bank_fingerprint": bank.fingerprint(),
        "pairs": int(len(targets)),
        "split": spec.to_dict(),
        **{f"{name}_pairs": int((split == side).sum()) for side, name in SIDE_NAMES.items()},
        **{f"{name}_articles": int(len(np.unique(articles[split == side])))
           for side, name in SIDE_NAMES.items()},
        "near_duplicate_targets_dropped": int(dup.sum()),
        "near_duplicate_search": ("exact" if len(dup) <= NEAR_DUP_EXACT_MAX
                                  else f"ivf, nprobe {NEAR_DUP_NPROBE}"),
        "duplicate_context_pairs_dropped": {
            name: int((dup_ctx & (row_split == side)).sum())
            for side, name in SIDE_NAMES.items() if side != TRAIN},
        "duplicate_context_rule": DUPLICATE_CONTEXT_RULE,
        "duplicate_context_first": example,  # [ctx_start, target] of the first dropped pair
        **stats,
        "context_length_histogram": {str(i): int(c) for i, c in enumerate(hist) if c},
        "mean_context_length": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
    }
    return Pairs(ctx_start, targets.copy(), targets, split, bank.fingerprint(), meta)


DUPLICATE_CONTEXT_RULE = ("a val/test pair whose context holds the same vectors (byte for "
                          "byte, in order) as a train pair's context is dropped: pre-flight's "
                          "leakage check would block it; articles keep their sides")


def duplicate_held_out_contexts(bank: Bank, ctx_start: np.ndarray, targets: np.ndarray,
                                split: np.ndarray) -> np.ndarray:
    """(P,) True for each val/test pair whose context equals a train pair's (pre-flight's own
    test, `training.preflight.duplicate_contexts`)."""
    held = split != TRAIN
    dup = np.zeros(len(targets), bool)
    if not held.any() or held.all():
        return dup
    candidates = Pairs(ctx_start, targets.copy(), targets, split)
    dup[held] = duplicate_contexts(bank.vectors, candidates.subset(np.flatnonzero(~held)),
                                   candidates.subset(np.flatnonzero(held)))
    return dup


def _article_start_of(bank: Bank, rows: np.ndarray) -> np.ndarray:
    starts, _ = bank.article_bounds()
    return starts[np.searchsorted(starts, rows, side="right") - 1]


def shortfall_advice(pairs: Pairs, cfg: ExpandConfig) -> str:
    """The checklist's advice for a short expansion, limited to the levers that can still help."""
    head = f"only {len(pairs):,} pairs, short of --target-pairs {cfg.target_pairs:,}."
    if cfg.stride == 1 and not pairs.meta["articles_capped"]:
        return (f"{head} Every window of every article is already used (stride 1, no article "
                f"capped): only more articles give more pairs (ingest a larger corpus)")
    levers = []
    if cfg.stride > 1:
        levers.append(f"lower --stride (now {cfg.stride})")
    if pairs.meta["articles_capped"]:
        levers.append(f"raise --max-per-seq (now {cfg.max_per_seq}; "
                      f"{pairs.meta['articles_capped']:,} articles capped)")
    retry = ""
    if cfg.stride > RETRY_STRIDE or cfg.max_per_seq < RETRY_MAX_PER_SEQ:
        retry = (f" (the checklist's retry is --stride {RETRY_STRIDE} --max-per-seq "
                 f"{RETRY_MAX_PER_SEQ}; --auto-retry does it)")
    return f"{head} To get more: {', '.join(levers)}, or ingest more articles{retry}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = ExpandConfig()
    p = argparse.ArgumentParser(prog="python -m training.expand_pairs",
                                description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="artifacts/wikipedia_vital_bank.npz", help="bank .npz")
    p.add_argument("--out", default="artifacts/twotower/pairs_v4.npz",
                   help="pairs .npz (a manifest .json is written beside it)")
    counts = {  # ExpandConfig's counts (None: the bank's own default, see `resolve`)
        "context_len": "most context chunks per pair (default per bank: 8 short, 100 long)",
        "stride": "chunks between consecutive targets (default per bank: 1 or 32)",
        "max_per_seq": "pairs per article at most (default per bank: 1000 or 30)",
        "min_context": "fewest context chunks a pair may have (default 1)",
        "target_pairs": "pairs hoped for; fewer is reported with advice (default 50000)",
    }
    for name, text in counts.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=text)
    p.add_argument("--train-split", type=float, default=d.train_split,
                   help=f"fraction of articles in train (default {d.train_split})")
    p.add_argument("--test-split", type=float, default=d.test_split,
                   help=f"fraction of articles in test, judged by the final gate only "
                        f"(default {d.test_split}); val gets the rest")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the article split: with the same seed, every pairs file of a "
                        "bank puts each article on the same side")
    p.add_argument("--auto-retry", action="store_true",
                   help=f"if short, retry once with --stride {RETRY_STRIDE} --max-per-seq "
                        f"{RETRY_MAX_PER_SEQ}")
    return p.parse_args(argv)


def expand_with_retry(bank, cfg: ExpandConfig, auto_retry: bool
                      ) -> tuple[Pairs, ExpandConfig, bool, int]:
    """Expand; when short and --auto-retry, once more with the checklist's retry settings.
    -> (pairs, the settings that made them, whether it retried, the pairs before the retry)."""
    pairs = expand_pairs(bank, cfg)
    retried, before_retry = False, len(pairs)
    if len(pairs) < SHORT_FRACTION * cfg.target_pairs:
        print(f"warning: {shortfall_advice(pairs, cfg)}")
        if auto_retry and (cfg.stride > RETRY_STRIDE or cfg.max_per_seq < RETRY_MAX_PER_SEQ):
            cfg = ExpandConfig(**{**asdict(cfg), "stride": min(cfg.stride, RETRY_STRIDE),
                                  "max_per_seq": max(cfg.max_per_seq, RETRY_MAX_PER_SEQ)})
            print(f"retrying with --stride {cfg.stride} --max-per-seq {cfg.max_per_seq}")
            pairs, retried = expand_pairs(bank, cfg), True
            if len(pairs) < SHORT_FRACTION * cfg.target_pairs:
                print(f"warning: after the retry, {shortfall_advice(pairs, cfg)}")
    return pairs, cfg, retried, before_retry


def print_summary(out: str, cfg: ExpandConfig, m: dict, manifest_path: Path) -> None:
    sides = ", ".join(f"{name} {m[name + '_pairs']:,} from {m[name + '_articles']:,}"
                      for name in SIDE_NAMES.values())
    print(f"wrote {out}: {m['pairs']:,} pairs ({sides} articles; split key "
          f"{m['split']['key']}, seed {m['split']['seed']}) in {m['seconds']}s")
    print(f"  stride {cfg.stride}, context <= {cfg.context_len}, cap {cfg.max_per_seq}/article; "
          f"{m['articles_too_short']:,} articles too short, {m['articles_capped']:,} capped, "
          f"{m['near_duplicate_targets_dropped']:,} near-duplicate targets dropped; "
          f"mean context {m['mean_context_length']}")
    dropped = m["duplicate_context_pairs_dropped"]
    if sum(dropped.values()):
        s, t = m["duplicate_context_first"]
        print(f"  dropped {sum(dropped.values()):,} val/test pairs (val {dropped['val']:,}, "
              f"test {dropped['test']:,}) whose context equals a train context, as pre-flight's "
              f"leakage check would block them (repeated sentences across articles; first: "
              f"context [{s}, {t}) target {t}); no article changed side")
    print(f"  manifest {manifest_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in ("context_len", "stride", "max_per_seq", "min_context", "target_pairs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2
    try:
        SplitSpec(seed=args.seed, train=args.train_split, test=args.test_split).check()
    except ValueError as e:
        print(f"error: --train-split / --test-split: {e}", file=sys.stderr)
        return 2
    try:
        bank = load_bank(args.bank)
    except BankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    cfg = resolve(ExpandConfig(**{k: getattr(args, k) for k in asdict(ExpandConfig())}), bank)
    pairs, cfg, retried, before_retry = expand_with_retry(bank, cfg, args.auto_retry)
    pairs.meta.update({"retried": retried, "pairs_before_retry": before_retry,
                       "seconds": round(time.perf_counter() - t0, 2),
                       "bank_kind": defaults_for(bank)["bank_kind"], "out": args.out})
    save_pairs(pairs, args.out)
    manifest_path = Path(args.out).with_suffix(".json")
    write_json(manifest_path, pairs.meta)
    print_summary(args.out, cfg, pairs.meta, manifest_path)
    return 0
if __name__ == "__main__":
    sys.exit(main())
