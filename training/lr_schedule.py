"""The learning-rate schedule both trainers step by: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, lr: float, lr_min: float, warmup: int = 0) -> float:
    """Learning rate at optimizer step `step` (0-based) of `total`."""
    # 1) linear warmup to lr
    if step < warmup:
        return lr * (step + 1) / warmup
    # 2) cosine decay from lr to lr_min over the remaining steps
    progress = (step - warmup) / max(1, total - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
