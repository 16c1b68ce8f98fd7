"""One evaluation of stage-1 queries against a split: recalls, MRR, CIs and the margin Δ.

The trainer, the post-mortem and the benchmarks all call `evaluate`, so a number means the same
thing wherever it is printed.
"""

from __future__ import annotations

import numpy as np

from cascade.bank import Bank
from cascade.index import search_batched
from cascade.metrics import recall_report, target_ranks
from cascade.negatives import DUP_THRESHOLD, clean_negatives, separation_margin
from cascade.pairs import Pairs

KS = (10, 100, 500, 1000)
MARGIN_NEGATIVES = 16


def evaluate(q: np.ndarray, pairs: Pairs, bank: Bank, index, ks: tuple[int, ...] = KS,
             margin_negatives: int = MARGIN_NEGATIVES,
             dup_threshold: float = DUP_THRESHOLD) -> tuple[dict, np.ndarray]:
    """(P, D) unit queries for `pairs` -> (metrics, ranks (P,)), context rows excluded."""
    k = max(max(ks), margin_negatives + 32)
    D, I = search_batched(index, q, k, pairs.ctx_start, pairs.ctx_end)
    ranks = target_ranks(I, pairs.target)
    # Pairs of one article are correlated: CIs resample articles (the target's).
    metrics = recall_report(ranks, ks, clusters=bank.article_indices[pairs.target])
    negs = clean_negatives(q, D[:, :margin_negatives + 32], I[:, :margin_negatives + 32],
                           bank.vectors, pairs.target, bank.article_indices, margin_negatives,
                           threshold=dup_threshold)
    metrics.update(separation_margin(q, bank.vectors[pairs.target], negs.cos))
    metrics.update({"raw_top16_positive_rate": negs.positive_rate,
                    "raw_top16_same_article_rate": negs.same_article_rate,
                    "raw_top16_near_dup_rate": negs.near_dup_rate})
    return metrics, ranks
