"""Checklist step 3: pre-flight checks on a bank and its pairs before a v4 run; blockers stop it.

    python -m training.preflight --pairs artifacts/twotower/pairs_v4.npz \
        --bank artifacts/wikipedia_vital_bank.npz \
        --mine-schedule "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96" \
        --filter-threshold 0.98 --expansion-args '{"stride": 32, "max_per_seq": 30}' \
        --manifest-out artifacts/twotower/pairs_v4_manifest.json

Seven checks, each pass / warning / blocker: data sanity, leakage (shared articles, overlapping
windows and exact duplicate vectors across splits), checkpoint leakage (no val/test article is a
train article of a checkpoint given with --ckpt), doc-space alignment, the curriculum schedule,
the hard-negative filter threshold and what it would drop, and the reproducibility manifest.
They print as a table and go to `--results-out` as JSON. Exit 0 when green or warnings only,
1 on any blocker, 2 (one line on stderr) when an input cannot be used at all: a missing file, a
wrong key, pairs built from another bank, unreadable flags.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cascade.bank import Bank, BankError, load_bank, sha256_file, write_json
from cascade.checkpoint import CheckpointError, load_checkpoint, split_spec_of
from cascade.index import build_index, search
from cascade.metrics import alignment
from cascade.negatives import clean_negatives
from cascade.pairs import (
    KEYS,
    TEST,
    TRAIN,
    VAL,
    Pairs,
    PairsError,
    check_against_bank,
    context_windows,
    load_pairs,
)
from cascade.query import heuristic_queries
from cascade.split import SIDE_NAMES, leaked_rows
from training.config import FILTER_MIN, ConfigError, check_value
from training.curriculum import ScheduleError, check_covers, format_schedule, parse_schedule

DEFAULT_SCHEDULE = "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"  # the checklist's curriculum
DEFAULT_FILTER_THRESHOLD = 0.98  # drop candidates with cos > this to the positive
DEFAULT_EPOCHS = 30
DEFAULT_SAMPLE = 2000  # bank rows for the alignment check (all pairs among them)
FILTER_SAMPLE_SHARE = 4  # the filter check searches sample / 4 train pairs (64 candidates each)
FILTER_LAX = 0.995  # above this, too lax to catch near-duplicates: warning
MIN_EVAL_PAIRS = 50  # fewer val/test pairs, or pairs from fewer articles, than this: blocker
MIN_EVAL_ARTICLES = 10
ALIGN_WARN = 0.10  # |mean cos| between random rows above this: recommend whitening
SEARCH_K = 64  # candidates per query for the filter check
MANIFEST_VERSION = 1
REPO_DIR = Path(__file__).resolve().parent.parent

PASS, WARNING, BLOCKER = "pass", "warning", "blocker"
_HASH_BLOCK = 16384  # bank rows hashed per step
_SEARCH_BATCH = 1024  # queries per search step (each step streams the whole bank)


@dataclass
class CheckResult:
    name: str
    status: str  # pass | warning | blocker
    detail: str  # one line for the table
    values: dict = field(default_factory=dict)  # the numbers behind it, for the JSON


# ---------------------------------------------------------------------------------------------
# remedies: every blocker says which command or flag fixes it


def expand_command(pairs: Pairs, bank: Bank) -> str:
    """The command that re-expands these pairs from this bank (training.expand_pairs writes
    pairs that pass the data and leakage checks)."""
    return (f"python -m training.expand_pairs --bank {bank.path or '<bank.npz>'} "
            f"--out {pairs.path or '<pairs.npz>'}")


def reexpand(pairs: Pairs, bank: Bank, why: str) -> str:
    return f"re-expand them with `{expand_command(pairs, bank)}` ({why})"


# ---------------------------------------------------------------------------------------------
# 1. data sanity


def check_sanity(pairs: Pairs, bank: Bank) -> CheckResult:
    """Shapes, bounds, target right after a one-article context, both splits non-empty."""
    cols = [np.asarray(getattr(pairs, k)) for k in KEYS]
    p = len(cols[2])
    for key, col in zip(KEYS, cols, strict=True):
        if col.ndim != 1 or len(col) != p:
            return CheckResult("data_sanity", BLOCKER,
                               f"key '{key}' has shape {col.shape}, expected ({p},): "
                               + reexpand(pairs, bank, "it writes every key alike"))
    s, e, t, split = cols
    n, art = bank.n, bank.article_indices
    out = (s < 0) | (s >= n) | (e < 1) | (e > n) | (t < 0) | (t >= n)
    ok = ~out
    s0, e0, t0 = (np.where(ok, c, 0) for c in (s, e - 1, t))
    empty = ok & (e <= s)
    violations = {  # name -> (mask, what the first bad pair shows)
        "out_of_bounds": (out, f"indexes outside the bank's {n} rows"),
        "empty_context": (empty, "has an empty context"),
        "bad_split": ((split != TRAIN) & (split != VAL) & (split != TEST),
                      "has a split that is not 0 (train), 1 (val) or 2 (test)"),
        "target_not_after_context": (ok & ~empty & (t != e), "has target != ctx_end"),
        "crosses_article": (ok & ~empty & ((art[s0] != art[t0]) | (art[e0] != art[t0])),
                            "has a context and target not all in one article"),
    }
    problems = []
    for name, (mask, what) in violations.items():
        if mask.any():
            i = int(np.argmax(mask))
            where = f"pair {i} ({_split_name(split[i])}) context [{s[i]}, {e[i]}) target {t[i]}"
            if name == "crosses_article":
                where += f" (articles {art[s0[i]]}..{art[e0[i]]} -> {art[t0[i]]})"
            problems.append(f"{int(mask.sum()):,} pairs {name.replace('_', ' ')}: first {where} "
                            f"{what}: " + reexpand(pairs, bank, "it writes no such pair"))
    if pairs.bank_fingerprint and pairs.bank_fingerprint != bank.fingerprint():
        problems.insert(0, f"pairs pin bank {pairs.bank_fingerprint[:19]}..., this bank is "
                           f"{bank.fingerprint()[:19]}...: "
                        + reexpand(pairs, bank, "from this bank"))
    values = {"pairs": p, "bank_rows": n, "dim": bank.dim,
              **{k: int(m.sum()) for k, (m, _) in violations.items()}}
    values.update(_counts(pairs, bank, ok))
    for name in SIDE_NAMES.values():
        if values[f"{name}_pairs"] == 0:
            problems.append(f"the {name} split is empty: " + reexpand(
                pairs, bank, "--train-split and --test-split set the article fractions, the "
                "default 0.8 / 0.1 leaves 0.1 to val") + ", or ingest more articles (make "
                "data CORPUS=...)")
    # The splits that select (val) and judge (test) by article-resampled CIs need enough pairs
    # and articles (a 2-article corpus gave 1 val pair, passed, and the gate meant nothing).
    for name in ("val", "test"):
        n_pairs, n_articles = values[f"{name}_pairs"], values[f"{name}_articles"]
        if n_pairs and (n_pairs < MIN_EVAL_PAIRS or n_articles < MIN_EVAL_ARTICLES):
            problems.append(f"the {name} split has {n_pairs:,} pairs from {n_articles:,} "
                            f"articles, too few for a confidence interval to mean anything "
                            f"(need >= {MIN_EVAL_PAIRS} pairs from >= {MIN_EVAL_ARTICLES} "
                            f"articles): ingest more articles (make data CORPUS=<a larger "
                            f"corpus>), or give val and test a larger share of them ("
                            f"--train-split / --test-split of `{expand_command(pairs, bank)}`)")
    if problems:
        return CheckResult("data_sanity", BLOCKER, "; ".join(problems), values)
    sides = ", ".join(f"{name} {values[name + '_pairs']:,} ({values[name + '_articles']:,} "
                      f"articles)" for name in SIDE_NAMES.values())
    detail = (f"{p:,} pairs: {sides}; "
              f"context {values['context_min']}-{values['context_max']} rows "
              f"(mean {values['context_mean']})")
    if not pairs.bank_fingerprint:
        return CheckResult("data_sanity", WARNING, detail + "; the pairs pin no bank fingerprint",
                           values)
    return CheckResult("data_sanity", PASS, detail, values)


def _split_name(value) -> str:
    return SIDE_NAMES.get(int(value), f"split {value}")


def _counts(pairs: Pairs, bank: Bank, ok: np.ndarray) -> dict:
    lengths = pairs.ctx_end - pairs.ctx_start
    art = bank.article_indices
    return {
        **{f"{name}_pairs": int((pairs.split == side).sum()) for side, name in SIDE_NAMES.items()},
        **{f"{name}_articles": int(len(np.unique(art[pairs.target[(pairs.split == side) & ok]])))
           for side, name in SIDE_NAMES.items()},
        "context_min": int(lengths.min()) if len(lengths) else 0,
        "context_max": int(lengths.max()) if len(lengths) else 0,
        "context_mean": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
    }


def indices_usable(sanity: CheckResult) -> bool:
    """Whether the pairs can index the bank at all (the later checks need it)."""
    v = sanity.values
    return bool(v) and v["out_of_bounds"] == 0 and v["empty_context"] == 0


# ---------------------------------------------------------------------------------------------
# 2. leakage


def row_hashes(vectors: np.ndarray, seed: int = 0, progress: bool = False) -> np.ndarray:
    """(N, D) -> (N,) uint64 multilinear hash of each row's bytes: equal rows, equal hashes."""
    v = np.ascontiguousarray(vectors)
    words = v.view(np.uint64) if v.shape[1] * v.itemsize % 8 == 0 else v.view(f"u{v.itemsize}")
    coef = np.random.default_rng(seed).integers(1, 2**63, size=words.shape[1], dtype=np.uint64)
    coef |= np.uint64(1)
    out = np.empty(len(v), np.uint64)
    for lo in tqdm(range(0, len(v), _HASH_BLOCK), desc="hash rows", unit="block",
                   disable=not progress):
        block = words[lo:lo + _HASH_BLOCK].astype(np.uint64, copy=False)
        out[lo:lo + _HASH_BLOCK] = (block * coef).sum(axis=1)  # wraps mod 2**64, as intended
    return out


def window_hashes(row_hash: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(P,) uint64 hash of each window's rows [start, end) in order, by a rolling polynomial."""
    base = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64
    n = len(row_hash)
    powers = np.cumprod(np.full(n + 1, base, np.uint64)) * np.uint64(pow(base, -1, 2**64))
    inverse = np.cumprod(np.full(n + 1, pow(base, -1, 2**64), np.uint64)) * np.uint64(base)
    prefix = np.concatenate([[np.uint64(0)], np.cumsum(row_hash * powers[:n], dtype=np.uint64)])
    lengths = (end - start).astype(np.uint64)
    return (prefix[end] - prefix[start]) * inverse[start] + lengths * np.uint64(0xBF58476D1CE4E5B9)


def _hash_matches(h_train: np.ndarray, h_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(val positions, train positions) of val hashes found among the train hashes."""
    if len(h_train) == 0 or len(h_val) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(h_train, kind="stable")
    sorted_h = h_train[order]
    pos = np.minimum(np.searchsorted(sorted_h, h_val), len(sorted_h) - 1)
    hit = sorted_h[pos] == h_val
    # One train candidate per val hash: a second train row with the same hash but other bytes
    # would need a 64-bit collision on top of the first; we accept missing that.
    return np.flatnonzero(hit), order[pos[hit]]


def _same_windows(words: np.ndarray, a: Pairs, b: Pairs, batch: int = 256) -> np.ndarray:
    """(M,) whether a's and b's contexts hold byte-identical vectors, pair by pair."""
    same = a.lengths == b.lengths
    candidates = np.flatnonzero(same)
    for lo in range(0, len(candidates), batch):
        sl = candidates[lo:lo + batch]
        ra, mask = context_windows(a.subset(sl))  # equal lengths: equal masks and widths
        rb, _ = context_windows(b.subset(sl))
        same[sl] = ((words[ra] == words[rb]).all(axis=2) | ~mask).all(axis=1)
    return same


def duplicate_contexts(vectors: np.ndarray, tr: Pairs, va: Pairs,
                       row_hash: np.ndarray | None = None) -> np.ndarray:
    """(V,) whether each of va's contexts holds the same vectors, byte for byte and in order, as
    one of tr's contexts. The leakage check's test; training.expand_pairs drops the val/test
    pairs it finds, so the two agree on what a duplicate is."""
    words = vectors.view(f"u{vectors.itemsize}")
    row_hash = row_hashes(vectors) if row_hash is None else row_hash
    vi, ti = _hash_matches(window_hashes(row_hash, tr.ctx_start, tr.ctx_end),
                           window_hashes(row_hash, va.ctx_start, va.ctx_end))
    dup_context = np.zeros(len(va), bool)
    dup_context[vi[_same_windows(words, va.subset(vi), tr.subset(ti))]] = True
    return dup_context


def _duplicates(vectors: np.ndarray, tr: Pairs, va: Pairs, progress: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """(V,) masks: val pairs whose target vector / context equals a train pair's, byte for byte.

    Hashes find the candidates; the bytes decide, so only exact duplicates count.
    """
    words = vectors.view(f"u{vectors.itemsize}")
    row_hash = row_hashes(vectors, progress=progress)
    vi, ti = _hash_matches(row_hash[tr.target], row_hash[va.target])
    dup_target = np.zeros(len(va), bool)
    dup_target[vi[(words[va.target[vi]] == words[tr.target[ti]]).all(axis=1)]] = True
    return dup_target, duplicate_contexts(vectors, tr, va, row_hash)


def check_leakage(pairs: Pairs, bank: Bank, progress: bool = False) -> CheckResult:
    """Articles on both sides, held-out (val + test) windows overlapping train windows, exact
    duplicate vectors across them. "val" below means held out: val and test alike."""
    art, n = bank.article_indices, bank.n
    held_out = np.flatnonzero(pairs.split != TRAIN)
    tr, va = pairs.train(), pairs.subset(held_out)
    lo_t, hi_t = np.minimum(tr.ctx_start, tr.target), np.maximum(tr.ctx_end - 1, tr.target)
    lo_v, hi_v = np.minimum(va.ctx_start, va.target), np.maximum(va.ctx_end - 1, va.target)
    # 1. articles on both sides
    shared = np.intersect1d(np.union1d(art[lo_t], art[hi_t]), np.union1d(art[lo_v], art[hi_v]))
    # 2. val windows [lo, hi] touching a row some train window covers (difference array, cumsum)
    diff = np.bincount(lo_t, minlength=n + 1) - np.bincount(hi_t + 1, minlength=n + 1)
    covered = np.cumsum(diff[:n]) > 0
    prefix = np.concatenate([[0], np.cumsum(covered)])
    overlap = prefix[hi_v + 1] - prefix[lo_v] > 0
    # 3. exact duplicate target vectors and context windows across the splits
    dup_target, dup_context = _duplicates(bank.vectors, tr, va, progress)

    values = {"shared_articles": int(len(shared)), "overlapping_val_windows": int(overlap.sum()),
              "duplicate_val_targets": int(dup_target.sum()),
              "duplicate_val_contexts": int(dup_context.sum()),
              "train_pairs": len(tr), "val_pairs": len(va)}
    val_rows = held_out
    problems = []
    if len(shared):
        problems.append(f"{len(shared):,} articles in train and val/test (first: article "
                        f"{shared[0]}): " + reexpand(pairs, bank, "it splits by article"))
    for key, mask, what, fix in (
            ("overlapping_val_windows", overlap, "overlap train windows",
             "it splits by article, so no window crosses sides"),
            ("duplicate_val_targets", dup_target, "have a target vector equal to a train "
                                                  "target's",
             "it drops near-duplicate targets bank-wide"),
            ("duplicate_val_contexts", dup_context, "have a context equal to a train context",
             "it drops the val/test pairs whose context equals a train context")):
        if mask.any():
            i = int(np.argmax(mask))
            problems.append(f"{values[key]:,} val/test pairs {what} (first: pair {val_rows[i]}, "
                            f"context [{va.ctx_start[i]}, {va.ctx_end[i]}) target "
                            f"{va.target[i]}): " + reexpand(pairs, bank, fix))
    if problems:
        return CheckResult("leakage", BLOCKER, "; ".join(problems), values)
    return CheckResult("leakage", PASS, "no shared articles, no overlapping windows, no exact "
                       "duplicate targets or contexts across train and val/test", values)


def retrain_command(pairs: Pairs) -> str:
    """The command that trains a checkpoint on these pairs (and so on their split)."""
    return f"python -m training.train_v4 --pairs {pairs.path or '<pairs.npz>'} --out <run>"


def check_checkpoint_leakage(pairs: Pairs, bank: Bank, checkpoints: list[str]) -> CheckResult:
    """The val/test articles of these pairs are not train articles of a checkpoint that will be
    compared with (a baseline) or continued from (--init-from, --resume): scoring a model on
    articles it trained on flatters it."""
    values: dict = {"checkpoints": {}}
    problems = []
    for path in checkpoints:
        try:
            spec = split_spec_of(load_checkpoint(path, bank.fingerprint()))
        except CheckpointError as e:
            problems.append(f"{e}: leave out --ckpt {path}, or retrain it on this bank "
                            f"(python -m training.train_v4 --bank {bank.path or '<bank.npz>'} "
                            f"--pairs {pairs.path or '<pairs.npz>'} --out <run>)")
            continue
        if spec is None:
            problems.append(f"{path} records no article split (trained before splits were "
                            f"pinned): retrain it on pairs of this bank ("
                            f"{retrain_command(pairs)}), or leave out --ckpt {path}")
            continue
        leaked = leaked_rows(bank, pairs.target, pairs.split, spec)
        arts = np.unique(bank.article_indices[pairs.target[leaked]])
        values["checkpoints"][path] = {"split": spec.to_dict(), "leaked_pairs": int(len(leaked)),
                                       "leaked_articles": int(len(arts))}
        if len(leaked):
            problems.append(f"{len(leaked):,} val/test pairs ({len(arts):,} articles) are train "
                            f"articles of {path} (its split: seed {spec.seed}, key {spec.key}, "
                            f"train {spec.train}, test {spec.test}): retrain it with this split "
                            f"({retrain_command(pairs)}), or leave out --ckpt {path}")
    if problems:
        return CheckResult("checkpoint_leakage", BLOCKER, "; ".join(problems), values)
    detail = (f"no val/test article of these pairs is a train article of {len(checkpoints)} "
              f"checkpoint(s)" if checkpoints else "no checkpoint to compare (none given)")
    return CheckResult("checkpoint_leakage", PASS, detail, values)


# ---------------------------------------------------------------------------------------------
# 3. doc-space alignment


def check_alignment(vectors: np.ndarray, sample: int, rng: np.random.Generator) -> CheckResult:
    """Mean and std of cos over all pairs among `sample` random rows; whiten if |mean| is big."""
    n = len(vectors)
    if n < 2:
        return CheckResult("alignment", WARNING, f"only {n} bank row(s): nothing to measure")
    values = alignment(vectors, sample, rng)
    mean = values["mean_cos"]
    detail = (f"cos between random rows {mean:.3f} +- {values['std_cos']:.3f} over "
              f"{values['pairs']:,} row pairs")
    if abs(mean) > ALIGN_WARN:
        return CheckResult("alignment", WARNING, f"{detail}: |mean| > {ALIGN_WARN}, a common "
                           f"component dominates; whitening recommended (subtract the mean "
                           f"vector, renormalize)", values)
    return CheckResult("alignment", PASS, f"{detail}: no whitening needed", values)


# ---------------------------------------------------------------------------------------------
# 4. curriculum schedule


def check_schedule(schedule: str, epochs: int) -> CheckResult:
    """Parse the mining schedule and check it covers every epoch of the run."""
    try:
        segments = parse_schedule(schedule)
        check_covers(segments, epochs)
    except ScheduleError as e:
        return CheckResult("schedule", BLOCKER, f"{e}: fix --mine-schedule (FIRST-LAST:none|"
                           f"COUNT@COS_MIN-COS_MAX;... covering epochs 1-{epochs}) or --epochs",
                           {"schedule": schedule, "epochs": epochs})
    values = {"schedule": format_schedule(segments), "epochs": epochs,
              "segments": [asdict(s) for s in segments]}
    mining = [s for s in segments if s.count]
    detail = (f"{values['schedule']} covers {epochs} epochs; " + (
        f"mining from epoch {mining[0].first}, up to {max(s.count for s in mining)} negatives"
        if mining else "no mining at all"))
    if segments[-1].last > epochs:
        return CheckResult("schedule", WARNING, f"{detail}; epochs {epochs + 1}-"
                           f"{segments[-1].last} are past the run's end", values)
    return CheckResult("schedule", PASS, detail, values)


# ---------------------------------------------------------------------------------------------
# 5. hard-negative filter


def check_filter(pairs: Pairs, bank: Bank, threshold: float, queries: int,
                 rng: np.random.Generator, progress: bool = False) -> CheckResult:
    """Judge the threshold and measure what it drops from the top-64 of sampled train pairs."""
    try:  # the trainer's own check of the value
        check_value("filter_threshold", threshold)
        valid = True
    except ConfigError as e:
        valid, problem = False, str(e).removeprefix("config: ")
    fix = f"pass --filter-threshold in ({FILTER_MIN}, 1), e.g. {DEFAULT_FILTER_THRESHOLD}"
    if not valid:
        status, verdict = BLOCKER, (f"{problem} (at or below {FILTER_MIN} it drops genuine hard "
                                    f"negatives): {fix}")
    elif threshold >= 1.0:
        status, verdict = BLOCKER, (f"threshold {threshold} turns the filter off (the v3 "
                                    f"recipe); the v4 curriculum needs it below 1: {fix}")
    elif threshold > FILTER_LAX:
        status, verdict = WARNING, (f"threshold {threshold} > {FILTER_LAX} is too lax to catch "
                                    f"near-duplicates of the positive")
    else:
        status, verdict = PASS, f"threshold {threshold}"
    values = {"threshold": threshold, "k": SEARCH_K}
    train = pairs.train()
    if len(train) == 0:
        return CheckResult("hard_negative_filter", status, f"{verdict}; no train pairs to sample",
                           values)
    pick = np.sort(rng.choice(len(train), size=min(queries, len(train)), replace=False))
    sub = train.subset(pick)
    q = heuristic_queries(bank.vectors, sub)
    index = build_index(bank.vectors, "flat")  # exact: cheaper than training IVF for a sample
    parts = [search(index, q[lo:lo + _SEARCH_BATCH], SEARCH_K, sub.ctx_start[lo:lo + _SEARCH_BATCH],
                    sub.ctx_end[lo:lo + _SEARCH_BATCH])
             for lo in tqdm(range(0, len(q), _SEARCH_BATCH), desc="filter search", unit="batch",
                            disable=not progress)]
    D, I = np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])
    neg = clean_negatives(q, D, I, bank.vectors, sub.target, bank.article_indices, n=SEARCH_K,
                          threshold=threshold)
    values.update({"sampled_train_pairs": len(sub), "dropped_fraction": neg.dropped_fraction,
                   "positive_rate": neg.positive_rate, "near_dup_rate": neg.near_dup_rate,
                   "same_article_rate": neg.same_article_rate})
    return CheckResult("hard_negative_filter", status, (
        f"{verdict}: would drop {100 * neg.dropped_fraction:.2f}% of the top-{SEARCH_K} candidates "
        f"of {len(sub):,} train pairs (positive in {100 * neg.positive_rate:.1f}% of lists, "
        f"near-duplicates of it in {100 * neg.near_dup_rate:.3f}% of slots)"), values)


# ---------------------------------------------------------------------------------------------
# the library entry


def run_preflight(pairs: Pairs, bank: Bank, schedule: str = DEFAULT_SCHEDULE,
                  filter_threshold: float = DEFAULT_FILTER_THRESHOLD, epochs: int = DEFAULT_EPOCHS,
                  sample: int = DEFAULT_SAMPLE, seed: int = 42, progress: bool = False,
                  checkpoints: list[str] | None = None) -> list[CheckResult]:
    """Checks 1-5 on in-memory pairs and bank; `write_manifest` is check 6."""
    results = []

    def timed(fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        result.values["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(result)
        return result

    sanity = timed(check_sanity, pairs, bank)
    usable = indices_usable(sanity)
    not_run = ("not run: the pairs do not index the bank (see data_sanity): "
               + reexpand(pairs, bank, "from this bank"))
    if usable:
        timed(check_leakage, pairs, bank, progress)
        timed(check_checkpoint_leakage, pairs, bank, list(checkpoints or []))
    else:
        results.append(CheckResult("leakage", BLOCKER, not_run))
        results.append(CheckResult("checkpoint_leakage", BLOCKER, not_run))
    timed(check_alignment, bank.vectors, sample, np.random.default_rng([seed, 3]))
    timed(check_schedule, schedule, epochs)
    if usable:
        timed(check_filter, pairs, bank, filter_threshold, max(1, sample // FILTER_SAMPLE_SHARE),
              np.random.default_rng([seed, 5]), progress)
    else:
        results.append(CheckResult("hard_negative_filter", BLOCKER, not_run))
    return results


# ---------------------------------------------------------------------------------------------
# 6. manifest


def git_commit(cwd: str | Path = REPO_DIR) -> str | None:
    """HEAD of the checkout at `cwd`, with "-dirty" when it has changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True,
                                text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if status.strip() else "")


def write_manifest(path: str | Path, pairs: Pairs, bank: Bank, results: list[CheckResult],
                   schedule: str, filter_threshold: float, expansion_args: dict | None
                   ) -> CheckResult:
    """Write the reproducibility manifest atomically; the result is check 6."""
    try:
        schedule_out = format_schedule(parse_schedule(schedule))
    except ScheduleError:
        schedule_out = schedule  # kept verbatim; the schedule check already blocks it
    commit = git_commit()
    sanity = next((r.values for r in results if r.name == "data_sanity"), {})
    count_keys = ("pairs", *(f"{s}_{c}" for c in ("pairs", "articles")
                             for s in SIDE_NAMES.values()))
    checks = {r.name: r.status for r in results}
    warnings = []
    if commit is None:
        warnings.append("no git commit (not a git checkout)")
    if expansion_args is None:
        warnings.append("expansion args unknown (pass --expansion-args)")
    checks["manifest"] = WARNING if warnings else PASS
    manifest = {
        "format_version": MANIFEST_VERSION,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "pairs": {"path": pairs.path, "bank_fingerprint": pairs.bank_fingerprint or None,
                  "sha256": sha256_file(pairs.path) if pairs.path else None},
        "bank": {"path": bank.path, "fingerprint": bank.fingerprint(),
                 "sha256": sha256_file(bank.path) if bank.path else None,
                 "rows": bank.n, "dim": bank.dim},
        "expansion_args": expansion_args,
        "split": pairs.meta.get("split"),
        "mine_schedule": schedule_out,
        "filter_threshold": filter_threshold,
        "counts": {k: sanity.get(k) for k in count_keys},
        "checks": checks,
        "go": all(s != BLOCKER for s in checks.values()),
    }
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, manifest)
    except OSError as e:
        return CheckResult("manifest", BLOCKER, f"cannot write {path}: {e}: pass --manifest-out "
                           f"a writable path", manifest)
    detail = f"wrote {path} (commit {commit or 'unknown'})"
    return CheckResult("manifest", checks["manifest"], "; ".join([detail, *warnings]), manifest)


# ---------------------------------------------------------------------------------------------
# the driver


def format_table(results: list[CheckResult]) -> str:
    width = max(len("check"), *(len(r.name) for r in results))
    lines = [f"{'check':<{width}}  {'status':<7}  detail"]
    lines += [f"{r.name:<{width}}  {r.status:<7}  {r.detail}" for r in results]
    return "\n".join(lines)


def _expansion_args(text: str | None, pairs: Pairs) -> dict | None:
    if text is None:
        return pairs.meta.get("config")
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--expansion-args is not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise ValueError(f"--expansion-args must be a JSON object, got {text!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.preflight",
                                description=__doc__.split("\n")[0])
    p.add_argument("--pairs", default="artifacts/twotower/pairs_v4.npz", help="pairs .npz")
    p.add_argument("--bank", default="artifacts/wikipedia_vital_bank.npz", help="bank .npz")
    p.add_argument("--mine-schedule", default=DEFAULT_SCHEDULE,
                   help="hard-negative curriculum, FIRST-LAST:none|COUNT@COS_MIN-COS_MAX;...")
    p.add_argument("--filter-threshold", type=float, default=DEFAULT_FILTER_THRESHOLD,
                   help=f"near-duplicate filter on cos to the positive; must be > {FILTER_MIN}")
    p.add_argument("--expansion-args", default=None,
                   help="JSON object of the expansion settings (default: the pairs' own config)")
    p.add_argument("--manifest-out", default=None,
                   help="manifest JSON (default: <pairs stem>_manifest.json beside the pairs)")
    p.add_argument("--results-out", default=None,
                   help="check results JSON (default: preflight_results.json beside the pairs)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help="epochs the schedule must cover")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"bank rows for the alignment check; sample/{FILTER_SAMPLE_SHARE} train "
                        f"pairs for the filter check")
    p.add_argument("--seed", type=int, default=42, help="seed of the sampled checks")
    p.add_argument("--ckpt", action="append", default=[], metavar="CKPT",
                   help="a checkpoint that will be compared with or continued from (repeat): "
                        "blocker if a val/test article of these pairs was one of its train "
                        "articles")
    args = p.parse_args(argv)
    pairs_path = Path(args.pairs)
    manifest_out = args.manifest_out or pairs_path.with_name(f"{pairs_path.stem}_manifest.json")
    results_out = Path(args.results_out or pairs_path.with_name("preflight_results.json"))

    t0 = time.perf_counter()
    try:
        if args.epochs < 1 or args.sample < 2:
            raise ValueError(f"need --epochs >= 1 and --sample >= 2, got {args.epochs} and "
                             f"{args.sample}")
        bank = load_bank(args.bank)
        pairs = load_pairs(args.pairs)
        # The fingerprint only (no pairs passed): rows out of bounds are data_sanity's blocker.
        check_against_bank(pairs.subset(np.zeros(0, np.int64)), bank, source=args.pairs)
        expansion_args = _expansion_args(args.expansion_args, pairs)
    except (BankError, PairsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results = run_preflight(pairs, bank, args.mine_schedule, args.filter_threshold, args.epochs,
                            args.sample, args.seed, progress=sys.stderr.isatty(),
                            checkpoints=args.ckpt)
    results.append(write_manifest(manifest_out, pairs, bank, results, args.mine_schedule,
                                  args.filter_threshold, expansion_args))
    try:
        results_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(results_out, [asdict(r) for r in results])
    except OSError as e:
        print(f"error: cannot write {results_out}: {e}", file=sys.stderr)
        return 2

    print(format_table(results))
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARNING, BLOCKER)}
    go = counts[BLOCKER] == 0
    print(f"\n{counts[PASS]} pass, {counts[WARNING]} warning(s), {counts[BLOCKER]} blocker(s) in "
          f"{time.perf_counter() - t0:.1f}s: {'GO' if go else 'NO-GO'} (results {results_out})")
    return 0 if go else 1


if __name__ == "__main__":
    sys.exit(main())
