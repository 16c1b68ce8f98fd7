"""Batched encoding of pairs' contexts (query tower) and bank rows (doc tower) to numpy.

Batches go to the device the tower lives on and come back to the CPU as float32 numpy (FAISS
searches on the CPU). Encoding is always float32, also when training used bf16 autocast.
"""

from __future__ import annotations

import numpy as np
import torch

from cascade.device import module_device
from cascade.pairs import Pairs, context_windows, window_batch
from cascade.towers import DocTower, QueryTower


def context_batch(vectors: np.ndarray, pairs: Pairs, max_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) float context tensor and (B, L) bool mask for the pairs' last max_len chunks."""
    rows, mask = context_windows(pairs, max_len)
    return torch.from_numpy(vectors[rows]), torch.from_numpy(mask)


@torch.no_grad()
def encode_queries(tower: QueryTower, vectors: np.ndarray, pairs: Pairs,
                   batch: int | None = None) -> np.ndarray:
    """Query vectors for every pair -> (P, D) float32."""
    batch = batch or window_batch(tower.cfg.max_len, vectors.shape[1])
    device = module_device(tower)
    was_training = tower.training
    tower.eval()
    out = np.empty((len(pairs), vectors.shape[1]), dtype=np.float32)
    for lo in range(0, len(pairs), batch):
        sub = pairs.subset(np.arange(lo, min(lo + batch, len(pairs))))
        ctx, mask = context_batch(vectors, sub, tower.cfg.max_len)
        out[lo:lo + len(sub)] = tower(ctx.to(device), mask.to(device)).cpu().numpy()
    tower.train(was_training)
    return out


@torch.no_grad()
def encode_docs(doc: DocTower, vectors: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Doc vectors for the bank -> (N, D); the identity tower returns `vectors` itself."""
    if doc.is_identity:
        return vectors
    device = module_device(doc)
    out = np.empty_like(vectors)
    for lo in range(0, len(vectors), batch):
        out[lo:lo + batch] = doc(torch.from_numpy(vectors[lo:lo + batch]).to(device)).cpu().numpy()
    return out
