"""InfoNCE over in-batch, memory-bank and hard negatives, plus a margin penalty in cosine units."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def excluded(ids: torch.Tensor, pos: torch.Tensor, ctx_start: torch.Tensor,
             ctx_end: torch.Tensor) -> torch.Tensor:
    """(B, K) True where candidate row `ids` is the pair's positive or one of its context rows."""
    return ((ids == pos[:, None]) | ((ids >= ctx_start[:, None]) & (ids < ctx_end[:, None]))
            | (ids < 0))


def contrastive_loss(q: torch.Tensor, pos: torch.Tensor, pos_rows: torch.Tensor,
                     ctx_start: torch.Tensor, ctx_end: torch.Tensor,
                     memory: torch.Tensor | None, memory_rows: torch.Tensor | None,
                     hard: torch.Tensor | None, hard_rows: torch.Tensor | None,
                     tau: float, margin: float, margin_weight: float,
                     offset: int = 0) -> dict[str, torch.Tensor]:
    """q (b, D) unit queries whose positives are pos[offset:offset + b] of pos (B, D) unit
    (B = b, offset 0 in one process; under data parallelism pos holds every rank's positives);
    pos_rows (B,); ctx_start, ctx_end (b,); memory (M, D); hard (b, n, D) with rows -1 where
    absent.

    Negatives equal to a pair's positive or inside its context are masked, so the loss never
    pushes the query away from its own answer or from rows that retrieval excludes anyway.
    """
    b, n_pos = len(q), len(pos)
    own = torch.arange(b, device=q.device) + offset  # each query's positive among pos
    own_rows = pos_rows[own]
    diag = F.one_hot(own, n_pos).bool()
    sims = [q @ pos.T]  # (b, B): the positive at column own
    masks = [excluded(pos_rows[None, :].expand(b, n_pos), own_rows, ctx_start, ctx_end) & ~diag]
    if memory is not None and len(memory):
        sims.append(q @ memory.T)
        masks.append(excluded(memory_rows[None, :].expand(b, -1), own_rows, ctx_start, ctx_end))
    if hard is not None and hard.shape[1]:
        sims.append(torch.einsum("bd,bnd->bn", q, hard))
        masks.append(excluded(hard_rows, own_rows, ctx_start, ctx_end))
    sim = torch.cat(sims, dim=1)
    mask = torch.cat(masks, dim=1)
    logits = (sim / tau).masked_fill(mask, float("-inf"))
    nce = F.cross_entropy(logits, own)

    # Margin penalty on the hardest remaining negative, in cosine units (not logits).
    cos_pos = sim[torch.arange(b, device=q.device), own]
    neg = sim.masked_fill(mask | F.pad(diag, (0, sim.shape[1] - n_pos)), float("-inf"))
    hardest = neg.max(dim=1).values
    has_neg = torch.isfinite(hardest)
    gap = cos_pos[has_neg] - hardest[has_neg]
    penalty = F.relu(margin - gap).mean() if has_neg.any() else sim.new_zeros(())
    return {"loss": nce + margin_weight * penalty, "nce": nce.detach(),
            "margin_penalty": penalty.detach(), "cos_pos": cos_pos.mean().detach(),
            "cos_hardest": hardest[has_neg].mean().detach() if has_neg.any()
            else sim.new_zeros(())}
