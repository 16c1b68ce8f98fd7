"""A FIFO memory bank of recent doc vectors (detached) and their bank rows, used as negatives.

With a trainable doc tower the stored vectors go stale as the tower moves, and the model learns to
run away from its own past outputs (on the default bank val Recall@10 fell from 46% to 8% in seven
epochs); `refresh` re-encodes the stored rows with the current tower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class MemoryBank:
    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu"):
        self.size = size
        self.vectors = torch.zeros(size, dim, device=device)
        self.rows = torch.full((size,), -1, dtype=torch.long, device=device)
        self.ptr = 0
        self.filled = 0

    def push(self, vectors: torch.Tensor, rows: torch.Tensor) -> None:
        if self.size == 0:
            return
        vectors, rows = vectors.detach()[-self.size:], rows[-self.size:]
        idx = (self.ptr + torch.arange(len(rows), device=self.rows.device)) % self.size
        self.vectors[idx] = vectors.to(self.vectors.dtype)  # bf16 under autocast
        self.rows[idx] = rows.to(self.rows.device)
        self.ptr = int((self.ptr + len(rows)) % self.size)
        self.filled = min(self.size, self.filled + len(rows))

    def refresh(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the stored vectors by encode(rows) (no gradient): (M,) rows -> (M, D)."""
        if self.filled:
            with torch.no_grad():
                self.vectors[:self.filled] = encode(self.rows[:self.filled])

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vectors[:self.filled], self.rows[:self.filled]

    def state_dict(self) -> dict:
        return {"vectors": self.vectors[:self.filled].clone(),
                "rows": self.rows[:self.filled].clone(), "ptr": self.ptr, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"memory bank size {state['size']} in the checkpoint, {self.size} "
                             f"in the config")
        n = len(state["rows"])
        self.vectors[:n] = state["vectors"]
        self.rows[:n] = state["rows"]
        self.filled, self.ptr = n, int(state["ptr"])
