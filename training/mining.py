"""Curriculum hard-negative mining: synchronous and deterministic, over the whole bank.

The original system mined asynchronously and every v4 run crashed before finishing an epoch.
Here mining is one blocking call at the start of a scheduled epoch, with the current model.
"""

from __future__ import annotations

import numpy as np

from cascade.encode import encode_queries
from cascade.index import search_batched
from cascade.negatives import Negatives, clean_negatives
from cascade.pairs import Pairs
from cascade.towers import QueryTower
from training.curriculum import Segment


def mine(tower: QueryTower, bank_vectors: np.ndarray, doc_vectors: np.ndarray, index,
         article_indices: np.ndarray, pairs: Pairs, segment: Segment, filter_threshold: float,
         pool: int) -> Negatives:
    """(P, segment.count) hard-negative rows for `pairs`: searched with the current query tower,
    kept inside [cos_min, cos_max], never the positive, a near-duplicate of it (cos >
    filter_threshold to the positive) or a context row; -1 where too few qualified."""
    q = encode_queries(tower, bank_vectors, pairs)
    return mine_with_queries(q, doc_vectors, index, article_indices, pairs, segment,
                             filter_threshold, pool)


def mine_with_queries(q: np.ndarray, doc_vectors: np.ndarray, index, article_indices: np.ndarray,
                      pairs: Pairs, segment: Segment, filter_threshold: float,
                      pool: int) -> Negatives:
    """`mine` from already encoded (P, D) queries (the trainer times encoding and search apart)."""
    D, I = search_batched(index, q, max(pool, segment.count), pairs.ctx_start, pairs.ctx_end)
    return clean_negatives(q, D, I, doc_vectors, pairs.target, article_indices, segment.count,
                           threshold=filter_threshold, cos_min=segment.cos_min,
                           cos_max=segment.cos_max)
