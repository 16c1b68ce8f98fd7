"""What every stage returns: ranked bank rows, their scores, and the stage's own time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StageResult:
    ids: np.ndarray  # (B, K) int64 bank rows, best first; -1 pads when fewer than K exist
    scores: np.ndarray  # (B, K) float32, -inf at padding
    seconds: float  # this stage's wall time for the whole batch
