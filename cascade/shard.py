"""Stage 1 split by rows across servers: the rows each shard holds, reading only those rows from
the bank file, and the exact merge of the shards' top-K lists.

A bank too large for one machine is cut into S contiguous row ranges (`shard_bounds`). Shard s
reads rows [lo, hi) alone (`load_bank_rows`: straight from their offset in the uncompressed
`.npz` member into one array, so it never holds the whole bank) and searches them with an
ordinary `Stage1(bank, rows=(lo, hi, n))`, which answers in the bank's global row ids and applies
the same context exclusion as the unsharded Stage1: context rows by id, and rows within cos
DUP_COS of a context vector. Both rules look at one row at a time, so every shard drops exactly
its part of what the whole bank drops.

`merge_topk` merges the shards' answers in FAISS's own order for exact search (score descending,
equal scores with the larger row id first: FAISS's heaps keep the larger id on a tie, also at the
K-th place), so with exact indexes the merged top-K is the unsharded top-K row for row. An ANN
index per shard is merged by the same rule but, like any ANN index, only approximates it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from cascade.bank import (
    _BLOCK,
    NORM_TOLERANCE,
    Bank,
    BankError,
    _file_stamp,
    npz_member,
    sidecar_path,
    validate,
)

# The columns a shard needs; texts and cpe ids stay with the front, which names the hits.
SHARD_KEYS = ("vectors", "article_indices", "chunk_indices", "tmd_codes")


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """[lo, hi) of each of `shards` contiguous row ranges covering n rows, sizes within one."""
    if not 1 <= shards <= n:
        raise ValueError(f"shards must be in [1, {n}] (the bank's rows), got {shards}")
    return [(s * n // shards, (s + 1) * n // shards) for s in range(shards)]


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The top-k (D, I) of the union of per-shard (D (B, K_s), I (B, K_s)) lists in global row
    ids, ordered as FAISS orders exact results: score descending, the larger id first on a tie;
    -1 ids (padding, score -inf) last, and padding to k when fewer exist."""
    D = np.concatenate([np.asarray(p[0], np.float32) for p in parts], axis=1)
    I = np.concatenate([np.asarray(p[1], np.int64) for p in parts], axis=1)
    D = np.where(I < 0, -np.inf, D).astype(np.float32)
    order = np.lexsort((-I, -D), axis=1)[:, :k]  # last key first: -D, then -I
    D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
    if I.shape[1] < k:
        pad = ((0, 0), (0, k - I.shape[1]))
        D = np.pad(D, pad, constant_values=-np.inf)
        I = np.pad(I, pad, constant_values=-1)
    return D, I


# ---------------------------------------------------------------------------------------------
# reading a row range of a bank file


def bank_rows(path: str | Path) -> int:
    """The number of rows of a bank file, read from its header (nothing loaded)."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as z:
            return int(npz_member(path, z, "vectors")[1][0])
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise BankError(f"{path}: not a readable bank .npz with key 'vectors' ({e})") from None


def load_bank_rows(path: str | Path, lo: int, hi: int) -> Bank:
    """Rows [lo, hi) of the bank at `path`, validated like `load_bank`, reading only those rows
    (peak memory: the range, not the bank). Its `fingerprint()` is the whole bank's, what
    deploy.json and checkpoints pin; `meta["rows"]` is [lo, hi, n]."""
    path = str(path)
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            names = {Path(name).stem for name in z.namelist()}
            n = None
            for key in SHARD_KEYS:
                if key not in names:
                    if key == "tmd_codes":
                        continue
                    raise BankError(f"{path}: missing key '{key}'")
                dtype, shape, offset = npz_member(path, z, key)
                n = shape[0] if n is None else n
                if not 0 <= lo < hi <= n:
                    raise BankError(f"{path}: rows [{lo}, {hi}) are not inside [0, {n})")
                arrays[key] = _read_rows(path, dtype, shape, offset, lo, hi)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise BankError(f"{path}: not a readable bank .npz ({e})") from None
    meta = _sidecar(path)
    where = f"{path} rows [{lo}, {hi})"
    bank = validate(Bank(**arrays, meta=meta, path=path), source=where, normalize=False)
    _check_unit(bank.vectors, where, lo)
    bank.meta = {**meta, "rows": [lo, hi, n]}
    bank._fingerprint = whole_fingerprint(path, meta)
    return bank


def _read_rows(path: str, dtype: np.dtype, shape: tuple, offset: int, lo: int, hi: int
               ) -> np.ndarray:
    """Rows [lo, hi) of the C-order array stored at `offset`, read into one new array (no
    memory map, whose pages would count in the process's resident memory beside the copy)."""
    out = np.empty((hi - lo, *shape[1:]), dtype)
    row = out[0].nbytes if len(out) else 0
    with open(path, "rb") as f:
        f.seek(offset + lo * row)
        got = f.readinto(memoryview(out).cast("B"))
    if got != out.nbytes:
        raise BankError(f"{path}: truncated (rows [{lo}, {hi}) need {out.nbytes} bytes at "
                        f"{offset + lo * row}, read {got})")
    return out


def _sidecar(path: str) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise BankError(f"{side}: sidecar is not valid JSON ({e})") from None


def _check_unit(v: np.ndarray, where: str, lo: int) -> None:
    """Shards need unit rows in the file (every bank save_bank wrote has them): load_bank
    normalizes whole 65536-row blocks, which a shard cannot reproduce from its rows alone."""
    for b in range(0, len(v), _BLOCK):
        block = v[b:b + _BLOCK]
        off = np.flatnonzero(np.abs(np.sqrt(np.einsum("ij,ij->i", block, block)) - 1.0)
                             > NORM_TOLERANCE)
        if len(off):
            raise BankError(f"{where}: row {lo + b + int(off[0])} is not unit length; a shard "
                            f"needs a normalized bank file (load_bank + save_bank writes one)")


def whole_fingerprint(path: str, meta: dict | None = None) -> str:
    """The fingerprint `load_bank(path).fingerprint()` gives, without holding the bank: the
    sidecar's when it was computed from this very file, else hashed block by block (the rows
    must be unit, as load_bank leaves them)."""
    meta = _sidecar(path) if meta is None else meta
    if meta.get("fingerprint_of") == _file_stamp(path) and meta.get("fingerprint"):
        return meta["fingerprint"]
    with zipfile.ZipFile(path) as z:
        dtype, shape, offset = npz_member(path, z, "vectors")
    h = hashlib.sha256()
    h.update(f"{np.dtype(np.float32).str}{tuple(shape)}".encode())
    for lo in range(0, shape[0], _BLOCK):
        block = _read_rows(path, dtype, shape, offset, lo, min(lo + _BLOCK, shape[0]))
        block = block.astype(np.float32, copy=False)
        _check_unit(block, path, lo)
        h.update(memoryview(np.ascontiguousarray(block)).cast("B"))
    return "sha256:" + h.hexdigest()
