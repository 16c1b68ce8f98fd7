"""Stage 3, the TMD reranker: keep the best `keep` of stage 2's candidates by a blend of the
stage-2 score and how well each candidate's TMD code matches the context's lane.

- **Query lane** (`context_lane`): the majority domain of the context's chunks (a tie goes to
  the domain seen most recently) and the task and modifier of the last chunk. The domain is a
  property of the article, so every chunk votes; the next sentence's role is likeliest to
  resemble the sentence just read, so only the last chunk speaks for task and modifier.
- **Lane similarity** between the query code q and a candidate's bank code c:
  `(w_d [d(q) == d(c)] + w_t [t(q) == t(c)] + w_m [m(q) == m(c)]) / (w_d + w_t + w_m)`, in [0, 1].
  Default weights: domain only (1, 0, 0), chosen on val (`python -m benchmarks.tmd_eval`,
  default bank, exp-weighted stage 1): domain only lifted val Hit@10 from 54.2 to 57.8; the
  a-priori blend (0.6, 0.25, 0.15) reached only 55.3, and task or modifier alone only lost
  (best w = 0). The next sentence matches the last one's task (17% of targets) and modifier
  (16%) *less* often than the other candidates do (26%, 21%): rhetorical roles change from one
  sentence to the next, so "same role as the last chunk" is the wrong lane for them.
  With domain only the lane is 0 or 1, so any w >= 0.5 puts every in-domain candidate first.
- **Score** = (1 - w) * normalized stage-2 score + w * lane similarity. Stage-2 scores are
  min-max normalized over each query's candidates (best 1, worst 0; all equal: all 1), so both
  terms span [0, 1] and w is the same trade-off whatever the spread of a query's raw scores:
  w = 0.2 lets a full lane match beat up to a fifth of that query's score range.
- w is fitted on val (`TmdReranker.fit_w`: the grid value with the best Hit@keep, ties to the
  smaller w), once per lane source (`Lanes.source`): lanes from TMD codes (the bank's codes of
  a context sent as rows) are right by construction, lanes tagged from a context's vectors are
  not, so each source gets its own w. w = 0 reproduces stage 2's order exactly.
- **Soft domains.** A tagged lane may carry P(domain) of its context (`Lanes.domain_probs`, from
  `cascade.tagger.DomainClassifier`): the domain term is then P(d(c)) instead of
  [d(q) == d(c)], so a confident tag acts as a code and an unsure one barely reorders.

Candidates padded with id -1 (fewer than K found) score -inf and stay last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.pairs import Pairs, context_windows
from cascade.tagger import DomainCentroids, DomainClassifier, tag_context
from cascade.tmd import DOMAIN_SHIFT, DOMAINS, check_codes, unpack

DEFAULT_MATCH_WEIGHTS = (1.0, 0.0, 0.0)  # domain, task, modifier: chosen on val (see above)
DEFAULT_W_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1


LANE_SOURCES = ("codes", "tagged")


@dataclass
class Lanes:
    """The query lanes of a batch of contexts and where they come from."""
    codes: np.ndarray  # (B,) packed query codes
    source: str  # "codes" (the bank's or the caller's TMD codes) or "tagged" (from vectors)
    domain_probs: np.ndarray | None = None  # (B, 16) P(domain) of tagged lanes; None: one-hot

    def __post_init__(self):
        if self.source not in LANE_SOURCES:
            raise ValueError(f"lane source {self.source!r}: expected one of {LANE_SOURCES}")


def context_lane(context_codes: np.ndarray) -> int:
    """The query code of one context's (L,) chunk codes, oldest first: majority domain (ties
    to the most recent), the last chunk's task and modifier."""
    codes = check_codes(context_codes, "context tmd codes")
    if codes.ndim != 1 or len(codes) == 0:
        raise ValueError(f"context tmd codes: expected a non-empty (L,) array, got shape "
                         f"{codes.shape}")
    return int(context_lanes(codes[None, :], np.ones((1, len(codes)), bool))[0])


def context_lanes(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`context_lane` of a batch: (B, L) left-aligned chunk codes and (B, L) bool mask -> (B,)."""
    codes = check_codes(codes, "context tmd codes")
    if codes.ndim != 2 or mask.shape != codes.shape:
        raise ValueError(f"context tmd codes: expected (B, L) codes and an equal mask, got "
                         f"{codes.shape} and {mask.shape}")
    lengths = mask.sum(axis=1)
    if (lengths == 0).any():
        raise ValueError(f"context tmd codes: context {int(np.argmin(lengths))} is empty")
    d, _, _ = unpack(codes)
    b, length = codes.shape
    rows = np.arange(b)[:, None].repeat(length, 1)
    votes = np.zeros((b, len(DOMAINS)), np.int64)
    np.add.at(votes, (rows, d), mask.astype(np.int64))
    latest = np.full((b, len(DOMAINS)), -1, np.int64)  # last position of each domain
    np.maximum.at(latest, (rows, d), np.where(mask, np.arange(length)[None, :], -1))
    # More votes win; among equal votes, the domain seen last.
    votes = votes * (length + 1) + latest + 1
    domain = votes.argmax(axis=1)
    last = codes[np.arange(len(codes)), lengths - 1]
    return ((domain << DOMAIN_SHIFT) | (last & ((1 << DOMAIN_SHIFT) - 1))).astype(np.int64)


def check_domain_probs(probs, batch: int) -> np.ndarray:
    """(B, 16) finite probabilities in [0, 1], one row per context; ValueError otherwise."""
    p = np.asarray(probs, np.float32)
    if p.shape != (batch, len(DOMAINS)):
        raise ValueError(f"domain_probs: expected shape ({batch}, {len(DOMAINS)}) (one row of "
                         f"{len(DOMAINS)} domains per context), got {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("domain_probs: every entry must be a probability in [0, 1]")
    return p


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Per-row min-max of (B, K) scores over the finite entries -> [0, 1]; -inf stays -inf; a
    row whose finite scores are all equal maps them to 1."""
    finite = np.isfinite(scores)
    lo = np.where(finite, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(finite, out, -np.inf).astype(np.float32)


class TmdReranker:
    """Stage 3 over a bank's (N,) TMD codes. `w` in [0, 1] weighs the lane similarity."""

    def __init__(self, bank_codes: np.ndarray, w: float,
                 match_weights: tuple[float, float, float] = DEFAULT_MATCH_WEIGHTS):
        codes = check_codes(bank_codes, "bank tmd codes")
        if codes.ndim != 1 or len(codes) == 0:
            raise ValueError(f"bank tmd codes: expected a non-empty (N,) array, got shape "
                             f"{codes.shape}")
        self.domain, self.task, self.modifier = unpack(codes)
        self.n = len(codes)
        mw = np.asarray(match_weights, np.float64)
        if mw.shape != (3,) or not np.isfinite(mw).all() or (mw < 0).any() or mw.sum() <= 0:
            raise ValueError(f"tmd match weights: expected 3 non-negative numbers (domain, "
                             f"task, modifier) with a positive sum, got {match_weights}")
        self.match_weights = mw / mw.sum()
        self.w = self._check_w(w)

    @staticmethod
    def _check_w(w: float) -> float:
        if not (np.isfinite(w) and 0.0 <= w <= 1.0):
            raise ValueError(f"tmd rerank weight w must be in [0, 1], got {w}")
        return float(w)

    def _check(self, query_codes: np.ndarray, cand_ids: np.ndarray, cand_scores: np.ndarray
               ) -> np.ndarray:
        q = check_codes(query_codes, "query tmd codes")
        if q.ndim != 1 or cand_ids.ndim != 2 or cand_scores.shape != cand_ids.shape or \
                len(q) != len(cand_ids):
            raise ValueError(f"tmd rerank: expected query codes (B,), candidate ids and scores "
                             f"(B, K); got {q.shape}, {cand_ids.shape}, {cand_scores.shape}")
        if not np.issubdtype(cand_ids.dtype, np.integer):
            raise ValueError(f"tmd rerank: candidate ids must be integers, got {cand_ids.dtype}")
        bad = np.flatnonzero(((cand_ids < -1) | (cand_ids >= self.n)).ravel())
        if len(bad):
            raise ValueError(f"tmd rerank: candidate id {cand_ids.flat[bad[0]]} (query "
                             f"{bad[0] // cand_ids.shape[1]}) outside [0, {self.n}) (-1 pads)")
        real = cand_ids >= 0
        if np.isnan(cand_scores).any() or not np.isfinite(cand_scores[real]).all():
            raise ValueError("tmd rerank: candidate scores must be finite (-inf only at id -1)")
        return q

    def lane_similarity(self, query_codes: np.ndarray, cand_ids: np.ndarray,
                        domain_probs: np.ndarray | None = None) -> np.ndarray:
        """(B,) query codes x (B, K) candidate rows -> (B, K) float32 in [0, 1]; 0 at id -1.
        `domain_probs` (B, 16): the domain term is P(candidate's domain) instead of a match."""
        qd, qt, qm = unpack(query_codes)
        ids = np.maximum(cand_ids, 0)
        wd, wt, wm = self.match_weights
        dom = self.domain[ids]
        same = (dom == qd[:, None]) if domain_probs is None else \
            np.take_along_axis(domain_probs, dom, axis=1)
        sim = (wd * same + wt * (self.task[ids] == qt[:, None])
               + wm * (self.modifier[ids] == qm[:, None]))
        return np.where(cand_ids >= 0, sim, 0.0).astype(np.float32)

    def scores(self, query_codes: np.ndarray, cand_ids: np.ndarray, cand_scores: np.ndarray,
               w: float | None = None, domain_probs: np.ndarray | None = None) -> np.ndarray:
        """(B, K) blended scores; -inf at padded candidates."""
        q = self._check(query_codes, cand_ids, cand_scores)
        w = self.w if w is None else self._check_w(w)
        if domain_probs is not None:
            domain_probs = check_domain_probs(domain_probs, len(q))
        real = cand_ids >= 0
        base = normalize_scores(np.where(real, cand_scores, -np.inf))
        base = np.where(real, base, 0.0)  # 0 * -inf would be NaN at w = 1
        blended = (1.0 - w) * base + w * self.lane_similarity(q, cand_ids, domain_probs)
        return np.where(real, blended, -np.inf).astype(np.float32)

    def rerank(self, query_codes: np.ndarray, cand_ids: np.ndarray, cand_scores: np.ndarray,
               keep: int, w: float | None = None, domain_probs: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The best `keep` candidates per query -> (ids (B, keep) int64, scores (B, keep)
        float32), by blended score, ties kept in stage-2 order."""
        cand_ids = np.asarray(cand_ids)
        cand_scores = np.asarray(cand_scores, np.float32)
        if cand_ids.ndim == 2 and not 1 <= keep <= cand_ids.shape[1]:
            raise ValueError(f"tmd rerank: keep must be in [1, {cand_ids.shape[1]}] (the "
                             f"candidates per query), got {keep}")
        s = self.scores(query_codes, cand_ids, cand_scores, w, domain_probs)
        order = np.argsort(-s, axis=1, kind="stable")[:, :keep]
        return (np.take_along_axis(cand_ids, order, axis=1).astype(np.int64),
                np.take_along_axis(s, order, axis=1))

    def fit_w(self, query_codes: np.ndarray, cand_ids: np.ndarray, cand_scores: np.ndarray,
              target_rows: np.ndarray, grid: tuple[float, ...] = DEFAULT_W_GRID, keep: int = 10,
              domain_probs: np.ndarray | None = None) -> tuple[float, list[dict]]:
        """The w of `grid` with the best Hit@keep (percent) of `target_rows` (B,) after
        reranking; ties go to the smaller w, so w = 0 wins unless the lane strictly helps.
        Fit it on val candidates. -> (best w, [{"w", "hit@keep"} for each w, ascending])."""
        target_rows = np.asarray(target_rows)
        if target_rows.shape != (len(cand_ids),):
            raise ValueError(f"tmd fit_w: expected (B,) = ({len(cand_ids)},) target rows, got "
                             f"{target_rows.shape}")
        if not len(grid):
            raise ValueError("tmd fit_w: empty grid")
        table = []
        best_w, best = None, -1.0
        for w in sorted(grid):
            ids, _ = self.rerank(query_codes, cand_ids, cand_scores, keep, w=w,
                                 domain_probs=domain_probs)
            hit = 100.0 * float((ids == target_rows[:, None]).any(axis=1).mean()) \
                if len(ids) else 0.0
            table.append({"w": float(w), f"hit@{keep}": hit})
            if hit > best:
                best_w, best = float(w), hit
        return best_w, table


def lanes_of_codes(codes: list[np.ndarray]) -> np.ndarray:
    """`context_lane` of each context's (L,) chunk codes -> (B,)."""
    width = max(len(c) for c in codes)
    padded = np.zeros((len(codes), width), np.int64)
    mask = np.zeros((len(codes), width), bool)
    for b, c in enumerate(codes):
        padded[b, :len(c)] = c
        mask[b, :len(c)] = True
    return context_lanes(padded, mask)


def tagged_lanes(vectors: list[np.ndarray], centroids: DomainCentroids | None,
                 classifier: DomainClassifier | None = None) -> Lanes:
    """Lanes of contexts sent as vectors: with `classifier`, the domain distribution of each
    context's mean vector (its most likely domain in the codes); else each chunk tagged by
    `tag_context` (the domain of the context's mean vector by the centroids; 0 without).
    Serving and the tuning of w on val both call this, so w is tuned on the lanes it serves."""
    if classifier is not None:
        probs = classifier.context_proba(vectors)
        return Lanes(probs.argmax(axis=1).astype(np.int64) << DOMAIN_SHIFT, "tagged", probs)
    return Lanes(lanes_of_codes([tag_context(v, centroids=centroids) for v in vectors]),
                 "tagged")


def pair_lanes(bank_codes: np.ndarray, pairs: Pairs) -> np.ndarray:
    """`context_lane` of every pair's context, from the bank's codes of its rows -> (P,)."""
    rows, mask = context_windows(pairs)
    return context_lanes(np.asarray(bank_codes, np.int64)[rows], mask)


def pair_tagged_lanes(vectors: np.ndarray, pairs: Pairs, centroids: DomainCentroids | None,
                      classifier: DomainClassifier | None = None) -> Lanes:
    """`tagged_lanes` of every pair's context as a vector client sends it."""
    return tagged_lanes([vectors[s:e] for s, e in zip(pairs.ctx_start, pairs.ctx_end,
                                                      strict=True)], centroids, classifier)
