"""Stage-1 methods by name, side by side: a trained checkpoint, a heuristic query formation, or
the oracle (the target itself). Training's final gate, its checklist and the recall and
long-context benchmarks all score methods through these, so they agree by construction.

A method is (kind, source): ("checkpoint", path), a heuristic ("exp_weighted", "last_vector",
"mean") with its alpha (None: the default), or ("oracle", None).
"""

from __future__ import annotations

import numpy as np

from cascade.bank import Bank
from cascade.checkpoint import load_towers
from cascade.evaluation import evaluate
from cascade.index import build_index
from cascade.pairs import Pairs
from cascade.query import DEFAULT_ALPHA, heuristic_queries
from cascade.stage1 import Stage1
from cascade.tower_batches import encode_docs, encode_queries


def method_queries(kind: str, source, bank: Bank, pairs: Pairs, device="cpu"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(queries, doc vectors) for one method: a checkpoint (source: its path; its towers run on
    `device`), a heuristic (source: its alpha, or None for the default), or the oracle."""
    if kind == "checkpoint":
        query, doc, _ = load_towers(source, bank.fingerprint(), device)
        return encode_queries(query, bank.vectors, pairs), encode_docs(doc, bank.vectors)
    if kind == "oracle":  # the target itself: the ceiling any stage 1 could reach
        return bank.vectors[pairs.target], bank.vectors
    alpha = DEFAULT_ALPHA if source is None else float(source)
    return heuristic_queries(bank.vectors, pairs, kind, alpha), bank.vectors


def method_stage1(kind: str, source, bank: Bank, device="cpu") -> Stage1:
    """Stage 1 for one method over an exact index: a checkpoint's towers (encoding on
    `device`) or a heuristic."""
    if kind == "checkpoint":
        return Stage1.from_checkpoint(source, bank, device=device)
    alpha = DEFAULT_ALPHA if source is None else float(source)
    return Stage1(bank, heuristic=kind, alpha=alpha)


def compare_methods(bank: Bank, pairs: Pairs, methods: dict[str, tuple], ks: tuple[int, ...],
                    device="cpu") -> tuple[dict, dict]:
    """Evaluate each method on `pairs` with exact search: -> ({name: metrics}, {name: ranks}).

    Methods are ("checkpoint", path), ("exp_weighted" | "last_vector", None), or ("oracle",
    None): the target itself as the query, the ceiling any stage 1 could reach."""
    table, ranks = {}, {}
    for name, (kind, source) in methods.items():
        if kind == "oracle":
            table[name], ranks[name] = evaluate(bank.vectors[pairs.target], pairs, bank,
                                                build_index(bank.vectors, "flat"), ks)
        else:
            table[name], ranks[name] = method_stage1(kind, source, bank, device).evaluate(
                pairs, ks)
    return table, ranks
