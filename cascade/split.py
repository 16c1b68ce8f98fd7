"""The article split: train / val / test as a pure function of a stable article key and a seed.

A split drawn by permuting whichever articles a pairs file holds moves between pair files of the
same bank (another stride or cap holds other articles, so the permutation differs): 427 of 938
val articles of one file were train articles of another. Here each article's side depends only
on (its key, the seed, the fractions), so every pairs file of a bank, and every bank that
holds the same article, puts it on the same side.

Sides: train (fitting), val (best-epoch selection, early stopping, any tuning), test (the final
gate, deploy.json, benchmarks, report). Nothing tunes on test.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from cascade.bank import Bank

TRAIN, VAL, TEST = 0, 1, 2
SIDE_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
SPLIT_VERSION = 2  # 1 was the per-file permutation with train/val only
ARTICLE_ID_FORMAT = "<article id>:<chunk index>"  # cpe_ids of banks built by training.ingest


@dataclass(frozen=True)
class SplitSpec:
    """What an article split is a function of; pairs and checkpoints record it."""

    seed: int = 42
    train: float = 0.8
    test: float = 0.1
    key: str = "article_id"  # "article_id" (from cpe_ids) or "article_index"
    version: int = SPLIT_VERSION

    @property
    def val(self) -> float:
        return round(1.0 - self.train - self.test, 10)

    def to_dict(self) -> dict:
        return {**asdict(self), "val": self.val}

    @classmethod
    def from_dict(cls, d: dict) -> SplitSpec:
        return cls(seed=int(d["seed"]), train=float(d["train"]), test=float(d["test"]),
                   key=str(d["key"]), version=int(d.get("version", 0)))

    def check(self) -> None:
        if not (0.0 < self.train < 1.0 and 0.0 < self.test < 1.0 and self.val > 0.0):
            raise ValueError(f"split fractions train {self.train} / val {self.val} / test "
                             f"{self.test}: each must be in (0, 1), summing to 1")


def key_kind(bank: Bank) -> str:
    """Which stable key the bank's articles have: their source id (from cpe_ids written as
    `<article id>:<chunk index>`), else only their index in the bank."""
    if bank.cpe_ids is not None and bank.meta.get("cpe_id_format") == ARTICLE_ID_FORMAT:
        return "article_id"
    return "article_index"


def article_keys(bank: Bank, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(article ids in row order of first appearance (A,), their keys (A,) str)."""
    kind = kind or key_kind(bank)
    starts, _ = bank.article_bounds()
    ids = bank.article_indices[starts]
    if kind == "article_id":
        if key_kind(bank) != "article_id":
            raise ValueError(f"{bank.path}: split key 'article_id' needs cpe_ids written as "
                             f"'{ARTICLE_ID_FORMAT}' (the bank's sidecar says which)")
        keys = []
        for row in starts:
            cpe = bank.cpe_ids[row]
            cpe = cpe.decode("utf-8") if isinstance(cpe, bytes) else str(cpe)
            keys.append("id:" + cpe.rsplit(":", 1)[0])
    elif kind == "article_index":
        keys = [f"index:{int(a)}" for a in ids]
    else:
        raise ValueError(f"unknown split key {kind!r} (article_id or article_index)")
    return ids, np.asarray(keys, dtype=object)


def key_sides(keys: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """(A,) str keys -> (A,) uint8 sides. A key's uniform draw is a hash of (seed, key)."""
    spec.check()
    u = np.fromiter((int.from_bytes(hashlib.blake2b(f"{spec.seed}\x00{k}".encode(),
                                                    digest_size=8).digest(), "big")
                     for k in keys), dtype=np.uint64, count=len(keys))
    u = u.astype(np.float64) / 2.0 ** 64
    return np.where(u < spec.train, TRAIN,
                    np.where(u < spec.train + spec.val, VAL, TEST)).astype(np.uint8)


def article_sides(bank: Bank, spec: SplitSpec) -> dict[int, int]:
    """{article id: side} for every article of the bank."""
    ids, keys = article_keys(bank, spec.key)
    return dict(zip(ids.tolist(), key_sides(keys, spec).tolist(), strict=True))


def row_sides(bank: Bank, spec: SplitSpec) -> np.ndarray:
    """(N,) the side of every bank row's article."""
    ids, keys = article_keys(bank, spec.key)
    sides = key_sides(keys, spec)
    starts, ends = bank.article_bounds()
    return np.repeat(sides, ends - starts)


def leaked_rows(bank: Bank, pair_targets: np.ndarray, pair_split: np.ndarray,
                trained: SplitSpec) -> np.ndarray:
    """Rows (indices into the pairs) of val/test pairs whose article is a *train* article under
    the split a checkpoint trained with: scoring that checkpoint on them would flatter it."""
    sides = row_sides(bank, trained)[pair_targets]
    return np.flatnonzero((pair_split != TRAIN) & (sides == TRAIN))
