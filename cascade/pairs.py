"""Training pairs as index windows into a bank, split by article.

A pair is (context = bank rows [ctx_start, ctx_end), target = a bank row). Windows, not vector
copies: 50k pairs of 100-vector 768-d contexts are 15 GB as floats and under 1 MB as indices.
The file pins the fingerprint of the bank it indexes, so it cannot be used against another bank.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascade.bank import Bank, atomic_write, open_npz
from cascade.split import TEST, TRAIN, VAL, SplitSpec

FORMAT_VERSION = 1
KEYS = ("ctx_start", "ctx_end", "target", "split")
_ROW_MAX = np.iinfo(np.int64).max


class PairsError(ValueError):
    """A pairs file that is malformed or belongs to another bank; the message names what."""


@dataclass
class Pairs:
    ctx_start: np.ndarray  # (P,) int64, first context row
    ctx_end: np.ndarray  # (P,) int64, one past the last context row
    target: np.ndarray  # (P,) int64, the row to retrieve
    split: np.ndarray  # (P,) uint8, TRAIN, VAL or TEST (cascade.split)
    bank_fingerprint: str = ""
    meta: dict = field(default_factory=dict)
    path: str | None = None

    def __len__(self) -> int:
        return int(len(self.target))

    @property
    def lengths(self) -> np.ndarray:
        return self.ctx_end - self.ctx_start

    def subset(self, rows: np.ndarray) -> Pairs:
        return Pairs(self.ctx_start[rows], self.ctx_end[rows], self.target[rows],
                     self.split[rows], self.bank_fingerprint, self.meta, self.path)

    def train(self) -> Pairs:
        return self.subset(np.flatnonzero(self.split == TRAIN))

    def val(self) -> Pairs:
        return self.subset(np.flatnonzero(self.split == VAL))

    def test(self) -> Pairs:
        return self.subset(np.flatnonzero(self.split == TEST))

    def side(self, name: str) -> Pairs:
        """The pairs of one split by name: train, val or test."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r} (train, val or test)")
        return getattr(self, name)()

    @property
    def split_spec(self) -> SplitSpec | None:
        """The article split these pairs were drawn with (None for pairs of the old format)."""
        spec = self.meta.get("split")
        return SplitSpec.from_dict(spec) if isinstance(spec, dict) else None

    def articles(self, bank: Bank) -> np.ndarray:
        """(P,) the article of each pair's target: the cluster of its CI."""
        return bank.article_indices[self.target]


WINDOW_BATCH_FLOATS = 1 << 24  # bound one gathered (B, L, D) context batch to 64 MB


def window_batch(max_len: int, dim: int, most: int = 1024) -> int:
    """How many context windows of up to max_len x dim floats to gather at once."""
    return int(min(most, max(16, WINDOW_BATCH_FLOATS // max(1, max_len * dim))))


def context_windows(pairs: Pairs, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The last `max_len` context rows of each pair, left-aligned: rows (P, L) and mask (P, L).

    Padding slots hold row 0 and mask False; L = max_len or the longest context.
    """
    lengths = pairs.lengths if max_len is None else np.minimum(pairs.lengths, max_len)
    width = int(lengths.max()) if len(lengths) else 0
    offsets = np.arange(width)
    start = pairs.ctx_end - lengths
    mask = offsets[None, :] < lengths[:, None]
    rows = np.where(mask, start[:, None] + offsets[None, :], 0)
    return rows.astype(np.int64), mask


def check_against_bank(pairs: Pairs, bank: Bank, source: str = "pairs") -> None:
    """Refuse pairs built from another bank or indexing outside it."""
    if pairs.bank_fingerprint and pairs.bank_fingerprint != bank.fingerprint():
        raise PairsError(f"{source}: built from another bank (pairs pin "
                         f"{pairs.bank_fingerprint[:19]}..., bank {bank.path} is "
                         f"{bank.fingerprint()[:19]}...)")
    for key in ("ctx_start", "ctx_end", "target"):
        col = getattr(pairs, key)
        limit = bank.n + (key == "ctx_end")
        bad = np.flatnonzero((col < 0) | (col >= limit))
        if len(bad):
            raise PairsError(f"{source}: key '{key}' row {bad[0]}: bank row {col[bad[0]]} is "
                             f"outside the bank's {bank.n} rows")


def load_pairs(path: str | os.PathLike, bank: Bank | None = None) -> Pairs:
    """Load a pairs `.npz`; with `bank`, also check it was built from that bank."""
    path = str(path)
    with open_npz(path, KEYS, PairsError, "a pairs file") as npz:
        try:
            cols = {k: npz[k] for k in KEYS}
            fingerprint = str(npz["bank_fingerprint"]) if "bank_fingerprint" in npz.files else ""
            meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
        except ValueError as e:  # an object array (needs pickle) or a corrupt meta JSON
            raise PairsError(f"{path}: unreadable content ({str(e).splitlines()[0][:200]})"
                             ) from None
    n = len(cols["target"])
    for key, col in cols.items():
        if col.ndim != 1 or len(col) != n:
            raise PairsError(f"{path}: key '{key}' has shape {col.shape}, expected ({n},)")
        if not np.issubdtype(col.dtype, np.integer):
            raise PairsError(f"{path}: key '{key}' must be integers, got dtype {col.dtype}")
    # Range checks on the stored values, before the casts below can wrap them (256 -> uint8 0).
    for key, hi in (("ctx_start", _ROW_MAX), ("ctx_end", _ROW_MAX), ("target", _ROW_MAX),
                    ("split", TEST)):
        col = cols[key]
        bad = np.flatnonzero((col < 0) | (col > hi))
        if len(bad):
            what = "(0 = train, 1 = val, 2 = test)" if key == "split" else "is not a bank row"
            raise PairsError(f"{path}: key '{key}' row {bad[0]}: value {col[bad[0]]} {what}")
    pairs = Pairs(cols["ctx_start"].astype(np.int64), cols["ctx_end"].astype(np.int64),
                  cols["target"].astype(np.int64), cols["split"].astype(np.uint8),
                  fingerprint, meta, path)
    empty = np.flatnonzero(pairs.ctx_end <= pairs.ctx_start)
    if len(empty):
        raise PairsError(f"{path}: key 'ctx_end' row {empty[0]}: empty context "
                         f"[{pairs.ctx_start[empty[0]]}, {pairs.ctx_end[empty[0]]})")
    if bank is not None:
        check_against_bank(pairs, bank, source=path)
    return pairs


def save_pairs(pairs: Pairs, path: str | os.PathLike) -> None:
    """Write pairs atomically; `pairs.meta` travels inside the file as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ctx_start": pairs.ctx_start, "ctx_end": pairs.ctx_end, "target": pairs.target,
              "split": pairs.split, "bank_fingerprint": np.array(pairs.bank_fingerprint),
              "meta": np.array(json.dumps(pairs.meta))}
    atomic_write(path, lambda f: np.savez(f, **arrays))
    pairs.path = str(path)

