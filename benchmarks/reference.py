"""The machine's speed on the operations the latency targets were set against, measured in the run.

The serving issue set its targets beside three figures measured on the machine of the day
(default bank, one query, k = 500): `IndexFlatIP.search` with one OpenMP thread 1.9 ms, NumPy
matmul + argpartition 3.0 ms, the v4 GRU tower on 8 context vectors with one torch thread 0.8 ms.
Shared machines differ by several times from day to day in memory bandwidth, so the latency
benchmarks measure the same three here, under the same load as their own figures: a target
reads against them, not against a number from another machine.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
import torch

# What the issue measured (ms): the figures the targets were set beside.
ISSUE_MS = {"flat_ip_1_thread": 1.9, "matmul_argpartition": 3.0, "gru_tower_8_chunks": 0.8}


def _median_ms(fn, n: int) -> float:
    """Median ms of fn(0), ..., fn(n - 1), after one warm-up call."""
    fn(0)
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 3)


def _flat_ms(bank: np.ndarray, queries: np.ndarray, k: int) -> float:
    flat = faiss.IndexFlatIP(bank.shape[1])  # a copy of the bank, freed on return
    flat.add(bank)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return _median_ms(lambda i: flat.search(queries[i][None], k), len(queries))
    finally:
        faiss.omp_set_num_threads(before)


def reference_ops(cascade, n: int = 30, k: int = 500, seed: int = 0) -> dict:
    """Median ms of the issue's three reference operations on `cascade`'s bank and query tower
    (None for the tower when stage 1 is a heuristic), one thread each; the issue's figures
    beside them."""
    bank = cascade.bank.vectors
    rng = np.random.default_rng(seed)
    queries = bank[rng.choice(len(bank), size=n, replace=False)]
    out = {"flat_ip_1_thread": _flat_ms(bank, queries, k),
           "matmul_argpartition": _median_ms(
               lambda i: np.argpartition(-(bank @ queries[i]), k)[:k], n)}
    tower = cascade.stage1.query
    if tower is None:
        out["gru_tower_8_chunks"] = None
    else:
        start = int(rng.integers(0, len(bank) - 8))
        ctx = torch.from_numpy(np.ascontiguousarray(bank[start:start + 8])[None])
        mask = torch.ones(1, 8, dtype=torch.bool)
        with torch.inference_mode():
            out["gru_tower_8_chunks"] = _median_ms(lambda i: tower(ctx, mask), n)
    return {"ms": out, "issue_ms": ISSUE_MS, "threads": torch.get_num_threads()}


def describe(ref: dict) -> str:
    names = {"flat_ip_1_thread": "IndexFlatIP, 1 thread",
             "matmul_argpartition": "NumPy matmul + argpartition",
             "gru_tower_8_chunks": "v4 GRU tower (torch), 8 chunks"}
    parts = [f"{names[key]} {'-' if ms is None else f'{ms:.2f}'} ms [{ref['issue_ms'][key]}]"
             for key, ms in ref["ms"].items()]
    return ("this machine on the issue's reference operations [the issue's figures]: "
            + "; ".join(parts))


def relative(name: str, ms: float, target_ms: float, ref: dict) -> str:
    """`ms` and its target, each as a multiple of the flat scan on its own machine."""
    here, there = ref["ms"]["flat_ip_1_thread"], ref["issue_ms"]["flat_ip_1_thread"]
    return (f"{name} {ms:.2f} ms = {ms / here:.2f}x this machine's IndexFlatIP search; the target "
            f"{target_ms:g} ms was {target_ms / there:.2f}x the issue's")
