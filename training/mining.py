"""Curriculum hard-negative mining: synchronous and deterministic, over the whole bank.

The original system mined asynchronously and every v4 run crashed before finishing an epoch.
Here mining is one blocking call at the start of a scheduled epoch, with the current model.
"""

from __future__ import annotations

from cascade.negatives import Negatives, clean_negatives
from cascade.pairs import Pairs
from cascade.stage1 import Stage1
from training.curriculum import Segment


def mine(stage1: Stage1, pairs: Pairs, segment: Segment, filter_threshold: float,
         pool: int) -> Negatives:
    """(P, segment.count) hard-negative rows for `pairs`: searched by stage 1 with the current
    query tower, kept inside [cos_min, cos_max], never the positive, a near-duplicate of it (cos >
    filter_threshold to the positive) or a context row; -1 where too few qualified."""
    q, D, I = stage1.search_pairs(pairs, max(pool, segment.count))
    return clean_negatives(q, D, I, stage1.doc_vectors, pairs.target,
                           stage1.bank.article_indices, segment.count,
                           threshold=filter_threshold, cos_min=segment.cos_min,
                           cos_max=segment.cos_max)
