"""The bank: ordered chunk vectors of articles, and its `.npz` + sidecar `.json` format.

A bank row is one chunk. An article's rows are contiguous and in chunk order, so "the next chunk"
of row r is row r + 1 when both belong to the same article. Keys follow the original system's
banks: `vectors`, `article_indices`, `chunk_indices` (required), `concept_texts`, `cpe_ids`,
`tmd_codes` (optional). Vectors are kept L2-normalized float32, any dimension.

    python -m cascade.bank PATH        # validate and print a summary; exit 2 on an invalid bank
    python -m cascade.bank convert ORIGINAL.npz OUT.npz --trust-pickle
                                       # a bank saved by the original system (object
                                       # arrays): cascade.bank.original
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascade.tmd import CODE_MAX, LAYOUT

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("vectors", "article_indices", "chunk_indices")
OPTIONAL_KEYS = ("concept_texts", "cpe_ids", "tmd_codes")
TMD_MAX = CODE_MAX  # tmd_codes are [0, TMD_MAX): cascade.tmd's layout
NORM_TOLERANCE = 1e-3
# Row blocks for the checks that would otherwise allocate an (N, D) temporary.
_BLOCK = 65536


class BankError(ValueError):
    """A bank that breaks the format; the message names the file, the key and the first bad row."""


@dataclass
class Bank:
    vectors: np.ndarray  # (N, D) float32, unit rows
    article_indices: np.ndarray  # (N,) int64, article id of each row
    chunk_indices: np.ndarray  # (N,) int64, position of the row in its article
    concept_texts: np.ndarray | None = None  # (N,) str
    cpe_ids: np.ndarray | None = None  # (N,)
    tmd_codes: np.ndarray | None = None  # (N,) uint16
    meta: dict = field(default_factory=dict)  # the sidecar JSON, if any
    path: str | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def article_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of each article's run of rows, in row order; ends are exclusive."""
        return article_runs(self.article_indices)

    def fingerprint(self) -> str:
        """sha256 of the (normalized) vectors and their shape: what pairs and checkpoints pin."""
        if self._fingerprint is None:
            self._fingerprint = vectors_fingerprint(self.vectors)
        return self._fingerprint

    def text(self, row: int) -> str | None:
        if self.concept_texts is None:
            return None
        text = self.concept_texts[row]
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def article_runs(article_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal values in `article_indices` (N,)."""
    n = len(article_indices)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(article_indices[1:] != article_indices[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    ends = np.concatenate([change, [n]]).astype(np.int64)
    return starts, ends


def vectors_fingerprint(vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{vectors.dtype.str}{tuple(vectors.shape)}".encode())
    h.update(memoryview(np.ascontiguousarray(vectors)).cast("B"))
    return "sha256:" + h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


# ---------------------------------------------------------------------------------------------
# validation


def validate(bank: Bank, source: str = "bank", normalize: bool = True) -> Bank:
    """Check every rule of the format, raising BankError at the first broken one.

    Unnormalized vectors are normalized in place (with a logged notice) when `normalize`.
    """
    v = bank.vectors
    if not isinstance(v, np.ndarray) or v.ndim != 2:
        raise BankError(f"{source}: key 'vectors' must be a 2-d array (N, D), got shape "
                        f"{getattr(v, 'shape', None)}")
    if not np.issubdtype(v.dtype, np.floating):
        raise BankError(f"{source}: key 'vectors' must be float32, got dtype {v.dtype}")
    if v.dtype != np.float32:
        log.warning("%s: converting 'vectors' from %s to float32", source, v.dtype)
        bank.vectors = v = v.astype(np.float32)
    n, d = v.shape
    if n == 0 or d == 0:
        raise BankError(f"{source}: key 'vectors' is empty (shape {v.shape})")

    bank.article_indices = _int_column(bank.article_indices, "article_indices", n, source)
    bank.chunk_indices = _int_column(bank.chunk_indices, "chunk_indices", n, source)
    _check_finite_and_nonzero(v, source)
    _check_article_order(bank.article_indices, bank.chunk_indices, source)

    if bank.concept_texts is not None:
        t = bank.concept_texts
        _check_length(t, "concept_texts", n, source)
        if t.dtype.kind not in "US":
            raise BankError(f"{source}: key 'concept_texts' must be strings, got dtype {t.dtype}")
    if bank.cpe_ids is not None:
        _check_length(bank.cpe_ids, "cpe_ids", n, source)
        if bank.cpe_ids.dtype.kind == "O":
            raise BankError(f"{source}: key 'cpe_ids' is an object array; save it as str or int")
    if bank.tmd_codes is not None:
        codes = _int_column(bank.tmd_codes, "tmd_codes", n, source)
        bad = np.flatnonzero((codes < 0) | (codes >= TMD_MAX))
        if len(bad):
            raise BankError(f"{source}: key 'tmd_codes' row {bad[0]}: value {codes[bad[0]]} "
                            f"outside [0, {TMD_MAX}) ({LAYOUT})")
        bank.tmd_codes = codes.astype(np.uint16)

    if normalize and normalize_rows(v, source):
        # The vectors now differ from the file's: a fingerprint cached for the file is not theirs.
        bank.meta.pop("fingerprint_of", None)
    return bank


def _check_length(a: np.ndarray, key: str, n: int, source: str) -> None:
    if a.ndim != 1 or a.shape[0] != n:
        raise BankError(f"{source}: key '{key}' has shape {a.shape}, expected ({n},) to match "
                        f"'vectors'")


def _int_column(a: np.ndarray, key: str, n: int, source: str) -> np.ndarray:
    a = np.asarray(a)
    _check_length(a, key, n, source)
    if not np.issubdtype(a.dtype, np.integer):
        raise BankError(f"{source}: key '{key}' must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _check_finite_and_nonzero(v: np.ndarray, source: str) -> None:
    for lo in range(0, v.shape[0], _BLOCK):
        block = v[lo:lo + _BLOCK]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = lo + int(np.argmin(finite))
            raise BankError(f"{source}: key 'vectors' row {row} holds NaN or inf")
        zero = ~block.any(axis=1)
        if zero.any():
            row = lo + int(np.argmax(zero))
            raise BankError(f"{source}: key 'vectors' row {row} has zero norm")


def _check_article_order(articles: np.ndarray, chunks: np.ndarray, source: str) -> None:
    starts, ends = article_runs(articles)
    run_articles = articles[starts]
    order = np.argsort(run_articles, kind="stable")
    dup = np.flatnonzero(run_articles[order][1:] == run_articles[order][:-1])
    if len(dup):
        first, second = order[dup[0]], order[dup[0] + 1]
        a = run_articles[first]
        raise BankError(
            f"{source}: key 'article_indices' row {starts[second]}: article {a} is split into "
            f"non-contiguous runs (rows {starts[first]}-{ends[first] - 1} and "
            f"{starts[second]}-{ends[second] - 1}); an article's rows must be contiguous")
    same_article = articles[1:] == articles[:-1]
    backwards = np.flatnonzero(same_article & (chunks[1:] <= chunks[:-1]))
    if len(backwards):
        row = int(backwards[0]) + 1
        raise BankError(
            f"{source}: key 'chunk_indices' row {row}: chunk {chunks[row]} follows chunk "
            f"{chunks[row - 1]} of article {articles[row]}; an article's chunks must be in "
            f"increasing order")


def normalize_rows(v: np.ndarray, source: str = "bank") -> int:
    """L2-normalize (N, D) float32 rows in place, block by block, logging when anything changed;
    returns how many rows changed."""
    changed = 0
    for lo in range(0, v.shape[0], _BLOCK):
        block = v[lo:lo + _BLOCK]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            changed += int(off.sum())
            block /= norms[:, None]
    if changed:
        log.warning("%s: %d of %d vectors were not unit length; normalized them", source,
                    changed, v.shape[0])
    return changed


# ---------------------------------------------------------------------------------------------
# load / save


def open_npz(path: str, required: tuple[str, ...], error: type[ValueError], what: str
             ) -> np.lib.npyio.NpzFile:
    """Open an `.npz` without pickle, refusing a missing file, a non-archive or a missing key."""
    if not os.path.exists(path):
        raise error(f"{path}: no such file")
    if os.path.isdir(path):
        raise error(f"{path}: is a directory, not an .npz file")
    if not zipfile.is_zipfile(path):
        raise error(f"{path}: not an .npz file (not a zip archive)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise error(f"{path}: not a readable .npz file ({e})") from None
    missing = [k for k in required if k not in npz.files]
    if missing:
        npz.close()
        raise error(f"{path}: missing key '{missing[0]}' ({what} needs {', '.join(required)}; "
                    f"found {', '.join(npz.files) or 'none'})")
    return npz


def load_bank(path: str | os.PathLike, normalize: bool = True, mmap: bool = False) -> Bank:
    """Load and validate a bank `.npz` (and its sidecar `.json`, if present).

    `mmap=True` (serving): `vectors` is a read-only memory map of the file (`map_vectors`), so
    every process of a machine shares one copy in the page cache; the rows must be unit."""
    path = str(path)
    with open_npz(path, REQUIRED_KEYS, BankError, "a bank") as npz:
        arrays = {"vectors": map_vectors(path)} if mmap else {}
        for key in REQUIRED_KEYS + OPTIONAL_KEYS:
            if key in npz.files and key not in arrays:
                try:
                    arrays[key] = npz[key]
                except ValueError:
                    # Unpickling runs code stored in the file: never by default.
                    raise BankError(
                        f"{path}: key '{key}' holds Python objects, readable only with pickle "
                        f"(a bank saved by the original system?). Convert it once: python -m "
                        f"cascade.bank convert {path} OUT.npz --trust-pickle") from None
    meta = {}
    side = sidecar_path(path)
    if side.exists():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise BankError(f"{side}: sidecar is not valid JSON ({e})") from None
    bank = validate(Bank(**arrays, meta=meta, path=path), source=path,
                    normalize=normalize and not mmap)
    if mmap:
        converted = _converted_meta(path)
        if converted is not None:  # the mapped copy's own fingerprint (normalized on writing)
            bank._fingerprint = converted["fingerprint"]
            return bank
    # Hashing a large bank's vectors takes seconds on every load: the sidecar keeps the
    # fingerprint with the size and mtime of the file it was computed from.
    if meta.get("fingerprint_of") == _file_stamp(path) and meta.get("fingerprint"):
        bank._fingerprint = meta["fingerprint"]
    return bank


# ---------------------------------------------------------------------------------------------
# one copy per machine: the vectors memory-mapped


def npz_member(path: str, z: zipfile.ZipFile, key: str) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, byte offset of the data in the file) of `key`.npy, stored uncompressed."""
    info = z.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise BankError(f"{path}: key '{key}' is compressed; a shard reads its rows through a "
                        f"memory map and needs the bank saved uncompressed (np.savez, as "
                        f"save_bank writes it)")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        header = f.tell()
    if fortran or dtype.hasobject:
        raise BankError(f"{path}: key '{key}' is not a plain C-order array; load it with "
                        f"load_bank")
    with open(path, "rb") as raw:  # the local header's own lengths (zip64 extras differ)
        raw.seek(info.header_offset)
        local = struct.unpack(zipfile.structFileHeader, raw.read(zipfile.sizeFileHeader))
    start = (info.header_offset + zipfile.sizeFileHeader + local[zipfile._FH_FILENAME_LENGTH]
             + local[zipfile._FH_EXTRA_FIELD_LENGTH])
    return dtype, shape, start + header


def converted_path(path: str | os.PathLike) -> Path:
    """Where `map_vectors` writes the mappable copy of a bank it cannot map in place."""
    path = Path(path)
    return path.with_name(f"{path.stem}.vectors.npy")


def _converted_meta(path: str) -> dict | None:
    """The sidecar of the converted copy when it was made from this very bank file."""
    side = converted_path(path).with_suffix(".json")
    if not (side.exists() and converted_path(path).exists()):
        return None
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    return meta if meta.get("converted_from") == _file_stamp(path) else None


def map_vectors(path: str | os.PathLike) -> np.ndarray:
    """The bank's `vectors` as a read-only memory map: the pages live once in the page cache,
    whatever the number of processes reading them (their PSS shares them).

    An uncompressed float32 member (what `save_bank` writes) is mapped where it lies in the
    `.npz`. Anything else (a compressed `.npz`, another dtype, rows not unit) is converted once
    into `<stem>.vectors.npy` beside the bank (unit float32 rows, stamped with the bank file's
    size and mtime) and that file is mapped from then on.

    Inside a zip the data starts at an arbitrary byte offset, so the map is not float-aligned:
    gather rows with fancy indexing (`v[rows]`), never `np.take`, whose unaligned path is
    ~1000x slower (9 s for 343 rows of 768 floats, measured)."""
    path = str(path)
    if _converted_meta(path) is not None:
        return np.load(converted_path(path), mmap_mode="r").view(np.ndarray)
    try:
        with zipfile.ZipFile(path) as z:
            dtype, shape, offset = npz_member(path, z, "vectors")
        if dtype == np.float32 and len(shape) == 2 and shape[0] and shape[1]:
            v = np.memmap(path, dtype=np.float32, mode="r", shape=tuple(shape), offset=offset)
            if _first_not_unit(v) is None:
                return v.view(np.ndarray)  # a plain array over the map: slices stay arrays
    except BankError:
        pass  # compressed or not a plain array: converted below
    out = converted_path(path)
    log.warning("%s: its vectors cannot be memory-mapped as stored (compressed, not float32 or "
                "not unit rows); writing %s once (unit float32), which every server maps "
                "read-only from now on", path, out)
    bank = load_bank(path)  # validated and normalized, in memory this once
    try:
        atomic_write(out, lambda f: np.save(f, bank.vectors))
        write_json(out.with_suffix(".json"), {"converted_from": _file_stamp(path),
                                              "fingerprint": bank.fingerprint()})
    except OSError as e:
        raise BankError(f"{path}: cannot write the mappable copy {out} ({e.strerror}); copy the "
                        f"bank to a writable folder, or re-save it with save_bank") from None
    return np.load(out, mmap_mode="r").view(np.ndarray)


def _first_not_unit(v: np.ndarray) -> int | None:
    for lo in range(0, v.shape[0], _BLOCK):
        block = v[lo:lo + _BLOCK]
        off = np.flatnonzero(np.abs(np.sqrt(np.einsum("ij,ij->i", block, block)) - 1.0)
                             > NORM_TOLERANCE)
        if len(off):
            return lo + int(off[0])
    return None


def load_columns(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Some of a bank's small columns (e.g. `tmd_codes`), checked as `load_bank` checks them,
    without reading its vectors; a key the bank lacks is left out."""
    path = str(path)
    with open_npz(path, ("vectors",), BankError, "a bank") as npz:
        with zipfile.ZipFile(path) as z, z.open("vectors.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            n = int(read(f)[0][0])
        cols = {k: npz[k] for k in keys if k in npz.files}
    for key, col in cols.items():
        cols[key] = _int_column(col, key, n, path) if key != "concept_texts" else col
    if "tmd_codes" in cols:
        codes = cols["tmd_codes"]
        bad = np.flatnonzero((codes < 0) | (codes >= TMD_MAX))
        if len(bad):
            raise BankError(f"{path}: key 'tmd_codes' row {bad[0]}: value {codes[bad[0]]} "
                            f"outside [0, {TMD_MAX})")
        cols["tmd_codes"] = codes.astype(np.uint16)
    return cols


def _file_stamp(path: str | os.PathLike) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save_bank(bank: Bank, path: str | os.PathLike, meta: dict | None = None) -> dict:
    """Write `path` (.npz) and its sidecar .json atomically; return the sidecar dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"vectors": bank.vectors, "article_indices": bank.article_indices,
              "chunk_indices": bank.chunk_indices}
    for key in OPTIONAL_KEYS:
        value = getattr(bank, key)
        if value is not None:
            arrays[key] = value
    if bank.concept_texts is not None and bank.concept_texts.dtype.kind == "U":
        # numpy's str arrays take 4 bytes per character, padded to the longest text; UTF-8
        # bytes take a quarter of that. Bank.text() decodes either.
        arrays["concept_texts"] = np.char.encode(bank.concept_texts, "utf-8")
    atomic_write(path, lambda f: np.savez(f, **arrays))
    sidecar = dict(bank.meta)
    sidecar.update(meta or {})
    sidecar.update(summary(bank))
    sidecar["fingerprint_of"] = _file_stamp(path)
    sidecar["format_version"] = FORMAT_VERSION
    write_json(sidecar_path(path), sidecar)
    bank.meta, bank.path = sidecar, str(path)
    return sidecar


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(binary file) on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; give the file its usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def finite_json(obj):
    """A copy of `obj` that strict JSON readers accept: NaN and inf floats become None (null),
    numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj, indent: int | None = 2) -> str:
    """Strict JSON of `obj` (non-finite floats as null, never NaN/Infinity)."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write `obj` as strict JSON (see `json_text`) atomically."""
    text = json_text(obj, indent) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def sha256_file(path: str | os.PathLike) -> str:
    """"sha256:<hex>" of a file's bytes, read in 4 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def summary(bank: Bank) -> dict:
    starts, ends = bank.article_bounds()
    lengths = ends - starts
    return {
        "rows": bank.n,
        "dim": bank.dim,
        "articles": int(len(starts)),
        "chunks_per_article": {
            "min": int(lengths.min()), "mean": round(float(lengths.mean()), 3),
            "median": float(np.median(lengths)), "max": int(lengths.max()),
        },
        "single_chunk_articles": int((lengths < 2).sum()),
        "texts": bank.concept_texts is not None,
        "tmd_codes": bank.tmd_codes is not None,
        "cpe_ids": bank.cpe_ids is not None,
        "fingerprint": bank.fingerprint(),
    }
