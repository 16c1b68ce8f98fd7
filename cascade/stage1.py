"""Stage 1 as one object: a query (the v4 tower or a heuristic) and the FAISS index over the bank.

The trainer's evaluation, the gate, the post-mortem, the benchmarks and serving all go through
`Stage1`, so a stage-1 number is computed one way. It takes contexts three ways:

- `search(vectors)`: raw context vectors, any (L, D) array (new text never seen in the bank), one
  or a list; bank rows that repeat a context vector (cos >= `dup_cos`: exact duplicates by
  default, near-duplicates when deploy.json lowers it) are left out of the results, so a user who
  sends the chunks they just read never gets them, or the bank's versions of them, back;
- `search(ContextRows(...))`: bank row ids, one context or a list; those rows are left out;
- `search_pairs(pairs)`: the context windows [ctx_start, ctx_end) of a pairs file, batched, the
  window left out: what evaluation and mining use.

A shard of a bank split across servers is a Stage1 over a row range (`rows=(lo, hi, n)`, the
bank holding rows [lo, hi) only; see `cascade/shard.py`): it answers in global row ids, takes the
queries from its caller (`search(contexts, k, queries=...)`, since it cannot form a query from
rows it does not hold), and leaves out the context's rows and duplicates among its own rows.

The index comes from a FAISS `index_factory` string. "Flat" (the default) is exact search by
FAISS's brute-force kernel over the bank array in place: no copy of the bank and nothing saved.
Any other string is built once, saved beside the bank with the fingerprint of what it indexes,
and loaded on the next start; it is rebuilt only when the bank or the string changes.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from cascade.bank import Bank, atomic_write, load_bank, vectors_fingerprint
from cascade.checkpoint import load_towers
from cascade.context import (
    ContextRows,
    check_queries,
    check_rows,
    check_vectors,
    pad_left_aligned,
)
from cascade.deploy import (
    EXACT_PREFILTERS,
    MIN_CONTAINMENT,
    CascadeConfig,
    DeployError,
    check_ann_record,
    check_pinned,
    read_deploy,
    resolve,
)
from cascade.device import module_device
from cascade.evaluation import KS, MARGIN_NEGATIVES, evaluate
from cascade.index import ExactIndex, RescoredIndex, drop_rows, search_batched
from cascade.infer import GruQuery
from cascade.negatives import DUP_THRESHOLD
from cascade.pairs import Pairs
from cascade.query import DEFAULT_ALPHA, exp_weighted, heuristic_queries, last_vector
from cascade.result import StageResult
from cascade.threads import apply_faiss_threads
from cascade.tower_batches import encode_docs, encode_queries
from cascade.towers import DocTower, GRUTower, QueryTower

EXACT = "Flat"
DUP_COS = CascadeConfig.dup_cos  # the default: a row this close to a context vector is that chunk
HEURISTICS = ("exp_weighted", "last_vector", "mean")
# The exact index's prefilter (CascadeConfig.exact_prefilter) as it was once given, in its
# params: "Flat|prefilter=none" still reads so (benchmarks.index's --index strings); "" leaves
# it to `exact_prefilter`.
EXACT_PARAMS = {"": None, **{f"prefilter={v}": v for v in EXACT_PREFILTERS}}
# An ANN index's candidates rescored exactly from the bank, unless index_params says
# "shortlist=N" (training.tune_index picks it on val with the index's own parameters).
SHORTLIST = 1000
NO_INDEX = "none"  # Stage1(index=NO_INDEX): no index opened (a process that never searches)
ADD_BLOCK = 65536  # rows added to an ANN index per call: bounds the float copy of a mapped bank


def split_params(params: str) -> tuple[str, int]:
    """"nprobe=64,shortlist=1500" -> ("nprobe=64", 1500): FAISS's search parameters, and how
    many ANN candidates `RescoredIndex` rescores exactly (SHORTLIST when not given)."""
    faiss_params, shortlist = [], SHORTLIST
    for part in filter(None, (p.strip() for p in params.split(","))):
        name, _, value = part.partition("=")
        if name.strip() == "shortlist":
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"index_params {params!r}: shortlist must be an integer >= 1")
            shortlist = int(value)
        else:
            faiss_params.append(part)
    return ",".join(faiss_params), shortlist


def open_index(vectors: np.ndarray, factory: str = EXACT, params: str = "",
               cache: str | Path | None = None, fingerprint: str | None = None,
               progress: bool = False, exact_prefilter: str = "int8"):
    """The index over unit (N, D) `vectors` that `factory` names, inner product.

    "Flat" is exact over `vectors` in place, one context's query scanned through an 8-bit copy
    first unless `exact_prefilter` is "none" (CascadeConfig.exact_prefilter; `params`
    "prefilter=int8|none" says the same, see EXACT_PARAMS). Anything else is an ANN index whose
    shortlist is rescored exactly from `vectors` (cascade.index.RescoredIndex; `params`
    "shortlist=N" beside FAISS's own, e.g. "nprobe=64,shortlist=1000"). It is loaded from
    `cache` when its sidecar names the same fingerprint and factory string, else built
    (`build_ann`) and saved there atomically; a cached index is memory-mapped (IVF lists, flat
    codes), so the processes of one machine share its pages."""
    if factory == EXACT:
        if params not in EXACT_PARAMS:
            raise ValueError(f"index_params {params!r}: the exact index takes "
                             f"{' or '.join(repr(p) for p in EXACT_PARAMS)}")
        if exact_prefilter not in EXACT_PREFILTERS:
            raise ValueError(f"exact_prefilter {exact_prefilter!r}: one of "
                             f"{', '.join(EXACT_PREFILTERS)}")
        return ExactIndex(vectors, prefilter=(EXACT_PARAMS[params] or exact_prefilter) == "int8")
    faiss_params, shortlist = split_params(params)
    fingerprint = fingerprint or vectors_fingerprint(vectors)
    side = Path(f"{cache}.json") if cache else None
    index = read_cached_index(cache, factory, fingerprint) if cache else None
    if index is None:
        t0 = time.perf_counter()
        index = build_ann(vectors, factory, progress=progress)
        meta = {"index_factory": factory, "fingerprint": fingerprint,
                "build_seconds": round(time.perf_counter() - t0, 2)}
        if cache:
            tmp = f"{cache}.{os.getpid()}.tmp"  # written whole, then renamed: never half a file
            try:
                faiss.write_index(index, tmp)
                os.replace(tmp, cache)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            atomic_write(side, lambda f: f.write(json.dumps(meta).encode()))
            index = read_cached_index(cache, factory, fingerprint)  # mapped: one copy per machine
    if faiss_params:
        try:
            faiss.ParameterSpace().set_index_parameters(index, faiss_params)
        except RuntimeError as e:
            raise ValueError(f"index_params {params!r} do not apply to {factory!r} "
                             f"({str(e).splitlines()[-1][:160]})") from None
    return RescoredIndex(index, vectors, shortlist)


def read_cached_index(cache: str | Path, factory: str, fingerprint: str):
    """The index saved at `cache` when its sidecar names `factory` and `fingerprint` (else
    None: a moved bank or another string means rebuilding), memory-mapped where FAISS can:
    an IVF index's inverted lists (IO_FLAG_MMAP), other indexes' flat codes (IO_FLAG_MMAP_IFC)."""
    side = Path(f"{cache}.json")
    if not (Path(cache).exists() and side.exists()):
        return None
    try:
        meta = json.loads(side.read_text())
        if (meta.get("index_factory"), meta.get("fingerprint")) != (factory, fingerprint):
            return None
        flags = faiss.IO_FLAG_MMAP if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC
        return faiss.read_index(str(cache), flags)
    except (json.JSONDecodeError, RuntimeError):
        return None  # a damaged cache is rebuilt, not trusted


def cached_build_seconds(cache: str | Path) -> float | None:
    """The build time the cache's sidecar recorded (None for an older or missing sidecar)."""
    try:
        return json.loads(Path(f"{cache}.json").read_text()).get("build_seconds")
    except (OSError, json.JSONDecodeError):
        return None


def build_ann(vectors: np.ndarray, factory: str, seed: int = 0, progress: bool = False):
    """A FAISS index `factory` over unit (N, D) `vectors` (inner product): trained on a sample
    (k-means and codebooks converge long before all rows), rows added in blocks from the
    (mapped) bank, every core busy (OpenMP), tqdm progress when `progress`."""
    n, d = vectors.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"index_factory {factory!r} is not a FAISS index string "
                         f"({str(e).splitlines()[-1][:160]})") from None
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.cp.seed = seed
                ivf.verbose = progress  # k-means iterations
            size = min(n, max(100_000, 64 * ivf.nlist) if ivf is not None else 100_000)
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else slice(None)
            index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
            if ivf is not None:
                ivf.verbose = False
        bar = tqdm(total=n, unit="row", desc=f"add to {factory}", disable=not progress)
        for lo in range(0, n, ADD_BLOCK):
            index.add(np.ascontiguousarray(vectors[lo:lo + ADD_BLOCK], dtype=np.float32))
            bar.update(min(ADD_BLOCK, n - lo))
        bar.close()
    finally:
        faiss.omp_set_num_threads(before)
    return index


def index_cache_path(bank: Bank, factory: str, doc_tag: str = "") -> Path | None:
    """Beside the bank: <bank stem>.<factory slug>[.<doc tower tag>].faiss; None for an
    in-memory bank or the exact index (which keeps nothing)."""
    if factory == EXACT or not bank.path:
        return None
    slug = re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")
    path = Path(bank.path)
    return path.with_name(f"{path.stem}.{slug}{'.' + doc_tag if doc_tag else ''}.faiss")


class Stage1:
    """Query formation + FAISS search, the context's own rows left out."""

    def __init__(self, bank: Bank, *, query: QueryTower | None = None,
                 doc: DocTower | None = None, doc_vectors: np.ndarray | None = None,
                 heuristic: str = "exp_weighted",
                 alpha: float = DEFAULT_ALPHA, kind: str | None = None, reason: str = "",
                 index_factory: str = EXACT, index_params: str = "", max_context: int = 512,
                 exact_prefilter: str = "int8", index=None,
                 rows: tuple[int, int, int] | None = None, dup_cos: float = DUP_COS):
        if query is None and heuristic not in HEURISTICS:
            raise ValueError(f"unknown heuristic {heuristic!r} ({', '.join(HEURISTICS)})")
        # The bank's rows are rows [row_start, row_end) of a bank of total_rows (a shard).
        self.row_start, self.row_end, self.total_rows = rows or (0, bank.n, bank.n)
        if self.row_end - self.row_start != bank.n or not \
                0 <= self.row_start < self.row_end <= self.total_rows:
            raise ValueError(f"rows {rows}: a bank of {bank.n} rows cannot be rows [lo, hi) of "
                             f"{self.total_rows}")
        self.bank = bank
        self.query = query  # a training tower stays in its mode: encode_queries sets eval
        self.heuristic = None if query is not None else heuristic
        self.alpha = float(alpha)
        self.kind = kind or ("v4" if query is not None else
                             "heuristic" if heuristic == "exp_weighted" else heuristic)
        self.reason = reason
        self.dim = bank.dim
        self.max_context = int(max_context)
        self.dup_cos = float(dup_cos)
        self.index_factory = index_factory
        if doc_vectors is None:
            doc_vectors = encode_docs(doc, bank.vectors) if doc is not None else bank.vectors
        self.doc_vectors = doc_vectors  # what the index holds (the bank itself: identity tower)
        if index is NO_INDEX:
            index = None
        elif index is None:
            identity = self.doc_vectors is bank.vectors
            tag = ("" if identity else "doc") + (f"rows{self.row_start}-{self.row_end}"
                                                  if self.sharded else "")
            # A shard's bank carries the whole bank's fingerprint: its cache names its rows.
            fingerprint = (bank.fingerprint() + (f"[{self.row_start}:{self.row_end}]"
                                                 if self.sharded else "")) if identity else None
            index = open_index(self.doc_vectors, index_factory, index_params,
                               index_cache_path(bank, index_factory, tag), fingerprint,
                               exact_prefilter=exact_prefilter)
        self.index = index
        self.checkpoint: str | None = None  # the query tower's checkpoint, when trained
        # A frozen NumPy copy of a GRU query tower loaded from a checkpoint onto the CPU: forms
        # serving's queries at a third of the torch forward's time (cascade.infer).
        self.fast_query: GruQuery | None = None

    def prepare(self) -> None:
        """Build what the index builds on first use (the exact index's 8-bit copy), so a
        server's first search costs what every other does."""
        if isinstance(self.index, ExactIndex):
            _ = self.index.prefilter

    @property
    def sharded(self) -> bool:
        """True for a shard: this Stage1 holds part of the bank's rows."""
        return self.bank.n != self.total_rows

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path, bank: Bank, device="cpu", **kw) -> Stage1:
        """A trained query tower (and its doc tower) from a checkpoint pinned to `bank`, its
        towers on `device` (batches go there; search stays on the CPU)."""
        query, doc, _ = load_towers(path, bank.fingerprint(), device)
        stage1 = cls(bank, query=query, doc=None if doc.is_identity else doc, **kw)
        stage1.checkpoint = str(path)
        if isinstance(query, GRUTower) and module_device(query).type == "cpu":
            stage1.fast_query = GruQuery(query)
        return stage1

    @classmethod
    def from_deploy(cls, deploy_path, *, bank: Bank | None = None,
                    config: CascadeConfig | None = None, shard: tuple[int, int] | None = None,
                    device="cpu", min_containment: float = MIN_CONTAINMENT,
                    with_index: bool = True) -> Stage1:
        """What deploy.json chose: v4 (its checkpoint, sha256 checked) or the heuristic; its
        towers on `device`. `shard=(s, S)`: shard s of S, reading only its rows of the bank.
        The bank's vectors are memory-mapped (one copy per machine). An approximate index is
        refused unless deploy.json records its containment >= `min_containment`, measured on
        this bank (cascade.deploy.check_ann_record). `with_index=False`: no index at all, for
        a process that only forms queries or checks contexts (the LVM server)."""
        from cascade.shard import bank_rows, load_bank_rows, shard_bounds

        deploy = read_deploy(deploy_path)
        cfg = config or CascadeConfig.from_dict(deploy.get("cascade"), f"{deploy_path}: cascade")
        rows = None
        if bank is None:
            bank_path = resolve(deploy_path, deploy["bank"])
            if not bank_path.exists():
                raise DeployError(f"{deploy_path}: 'bank' names {deploy['bank']}, which does "
                                  f"not exist")
            if shard is None:
                bank = load_bank(bank_path, mmap=True)
            else:
                n = bank_rows(bank_path)
                lo, hi = shard_bounds(n, shard[1])[shard[0]]
                bank, rows = load_bank_rows(bank_path, lo, hi), (lo, hi, n)
        if bank.fingerprint() != deploy["bank_fingerprint"]:
            raise DeployError(f"{deploy_path}: bank {bank.path} has fingerprint "
                              f"{bank.fingerprint()[:19]}..., deploy.json pins "
                              f"{str(deploy['bank_fingerprint'])[:19]}...")
        if cfg.index_factory != EXACT and with_index:
            check_ann_record(deploy_path, deploy, cfg, bank.fingerprint(), min_containment)
        common = {"kind": deploy["stage1"], "reason": deploy.get("reason", ""),
                  "index_factory": cfg.index_factory, "index_params": cfg.index_params,
                  "exact_prefilter": cfg.exact_prefilter,
                  "max_context": cfg.max_context, "rows": rows, "dup_cos": cfg.dup_cos,
                  "index": None if with_index else NO_INDEX}
        if deploy["stage1"] == "v4":
            if "checkpoint_sha256" not in deploy:
                raise DeployError(f"{deploy_path}: missing key 'checkpoint_sha256'")
            ckpt = check_pinned(deploy_path, "checkpoint", deploy.get("checkpoint"),
                                deploy["checkpoint_sha256"])
            return cls.from_checkpoint(ckpt, bank, device, **common)
        h = deploy.get("heuristic") or {}
        return cls(bank, heuristic=h.get("kind", "exp_weighted"),
                   alpha=h.get("alpha", DEFAULT_ALPHA), **common)

    # -- pairs: evaluation and mining -------------------------------------------------------

    def pair_queries(self, pairs: Pairs) -> np.ndarray:
        """(P, D) unit queries for the context windows of `pairs`."""
        self.check_whole("pairs")
        if self.query is not None:
            return encode_queries(self.query, self.bank.vectors, pairs)
        return heuristic_queries(self.bank.vectors, pairs, self.heuristic, self.alpha)

    def search_pairs(self, pairs: Pairs, k: int, q: np.ndarray | None = None,
                     exclude: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(queries, D, I) top-k for every pair, its context window left out (`exclude`)."""
        self.check_whole("pairs")
        apply_faiss_threads()
        q = self.pair_queries(pairs) if q is None else q
        if not exclude:
            D, I = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
            return q, np.where(I < 0, -np.inf, D).astype(np.float32), I
        D, I = search_batched(self.index, q, k, pairs.ctx_start, pairs.ctx_end)
        return q, D, I

    def evaluate(self, pairs: Pairs, ks: tuple[int, ...] = KS,
                 margin_negatives: int = MARGIN_NEGATIVES,
                 dup_threshold: float = DUP_THRESHOLD) -> tuple[dict, np.ndarray]:
        """Recalls, MRR, CIs and the margin Δ on `pairs` -> (metrics, ranks (P,))."""
        return evaluate(self.pair_queries(pairs), pairs, self.doc_bank, self.index, ks,
                        margin_negatives, dup_threshold)

    @property
    def doc_bank(self) -> Bank:
        """The bank as the index sees it (the bank itself when the doc tower is the identity)."""
        if self.doc_vectors is self.bank.vectors:
            return self.bank
        return Bank(self.doc_vectors, self.bank.article_indices, self.bank.chunk_indices,
                    path=self.bank.path, _fingerprint=self.bank.fingerprint())

    def check_whole(self, what: str) -> None:
        if self.sharded:
            raise ValueError(f"{what}: this Stage1 is a shard (rows [{self.row_start}, "
                             f"{self.row_end}) of {self.total_rows}); evaluation and mining "
                             f"need the whole bank")

    # -- serving ----------------------------------------------------------------------------

    def check_k(self, k: int) -> int:
        n = self.total_rows
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in [1, {n}] (the bank's rows), got {k!r}")
        return int(k)

    def contexts(self, contexts, need_vectors: bool = True
                 ) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
        """Validated contexts -> (unit vectors per context, bank rows per context or None).
        Rows come with their vectors unless `need_vectors` is False (then None): a shard holds
        only its own rows' vectors."""
        if isinstance(contexts, ContextRows):
            rows = check_rows(contexts.rows, self.total_rows, self.max_context)
            if not need_vectors:
                return None, rows
            if self.sharded:
                raise ValueError(f"contexts given as rows: this shard holds rows "
                                 f"[{self.row_start}, {self.row_end}) of {self.total_rows} "
                                 f"only and cannot form their query; send the queries too")
            return [self.bank.vectors[r] for r in rows], rows
        return check_vectors(contexts, self.dim, self.max_context), None

    def queries(self, vectors: list[np.ndarray]) -> np.ndarray:
        """(B, D) unit queries for a list of (L, D) unit contexts."""
        keep = self.query.cfg.max_len if self.query is not None else None
        ctx, mask = pad_left_aligned(vectors, keep)
        if self.fast_query is not None:
            return self.fast_query(ctx, mask)
        if self.query is not None:
            device = module_device(self.query)
            with torch.inference_mode():
                return self.query(torch.from_numpy(ctx).to(device),
                                  torch.from_numpy(mask).to(device)).cpu().numpy()
        if self.heuristic == "exp_weighted":
            return exp_weighted(ctx, mask, self.alpha)
        return last_vector(ctx, mask)

    def search(self, contexts, k: int = 500, queries: np.ndarray | None = None) -> StageResult:
        """Top-k bank rows for one context or a batch (see the module doc), context left out.
        `queries` (B, D): the contexts' queries formed by the caller (what a shard is sent)."""
        t0 = time.perf_counter()
        k = self.check_k(k)
        if queries is None:
            vectors, rows = self.contexts(contexts)
            return self.search_checked(vectors, rows, k, t0)
        vectors, rows = self.contexts(contexts, need_vectors=False)
        q = check_queries(queries, len(rows if rows is not None else vectors), self.dim)
        D, I = self.search_excluding(q, vectors, rows, k)
        return StageResult(I, D, time.perf_counter() - t0)

    def search_checked(self, vectors: list[np.ndarray], rows: list[np.ndarray] | None, k: int,
                       t0: float | None = None) -> StageResult:
        """`search` on contexts `contexts()` already checked (the cascade checks once)."""
        t0 = time.perf_counter() if t0 is None else t0
        q = self.queries(vectors)
        D, I = self.search_excluding(q, vectors, rows, k)
        return StageResult(I, D, time.perf_counter() - t0)

    def search_excluding(self, q: np.ndarray, vectors: list[np.ndarray] | None,
                         rows: list[np.ndarray] | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search k + margin and drop the context's rows (given) or its duplicates (vectors);
        widen the search for a query that lost more rows than the margin allowed. Ids are the
        bank's global rows (a shard's local ids + row_start)."""
        apply_faiss_threads()  # this may be a server's or a pool's thread
        n = self.bank.n
        extra = max(len(c) for c in (rows if rows is not None else vectors)) + 8
        while True:
            fetch = min(k + extra, n)
            D, I = self.index.search(np.ascontiguousarray(q, dtype=np.float32), fetch)
            G = np.where(I >= 0, I + self.row_start, -1) if self.row_start else I
            drop = (context_row_mask(G, rows) if rows is not None
                    else duplicate_mask(I, D, q, self.bank.vectors, vectors,
                                        self.doc_vectors is self.bank.vectors, self.dup_cos))
            if fetch == n or ((~drop & (I >= 0)).sum(axis=1) >= k).all():
                return drop_rows(D, G, drop, k)
            extra *= 4


def context_row_mask(I: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """(B, K) True where I[b, j] is one of context b's rows."""
    width = max(len(r) for r in rows)
    padded = np.full((len(rows), width), -2, np.int64)
    for b, r in enumerate(rows):
        padded[b, :len(r)] = r
    return (I[:, :, None] == padded[:, None, :]).any(axis=2)


def duplicate_mask(I: np.ndarray, D: np.ndarray, q: np.ndarray, bank_vectors: np.ndarray,
                   vectors: list[np.ndarray], scores_are_bank_cos: bool,
                   threshold: float = DUP_COS) -> np.ndarray:
    """(B, K) True where bank row I[b, j] equals a vector of context b (cos >= threshold).

    A bank row u with cos(u, v) >= threshold lies within r = sqrt(2 (1 - threshold)) of v, so
    its score q.u is within r of q.v: when the scores are cosines to the bank rows themselves
    (identity doc tower), only candidates scored that close to some q.v are checked."""
    radius = float(np.sqrt(2 * (1 - threshold))) + 1e-4
    drop = np.zeros(I.shape, bool)
    for b, v in enumerate(vectors):
        valid = I[b] >= 0
        if scores_are_bank_cos:
            near = np.abs(D[b][:, None] - (v @ q[b])[None, :]).min(axis=1) <= radius
            cols = np.flatnonzero(near & valid)
        else:
            cols = np.flatnonzero(valid)
        if len(cols):
            drop[b, cols] = (bank_vectors[I[b, cols]] @ v.T).max(axis=1) >= threshold
    return drop
