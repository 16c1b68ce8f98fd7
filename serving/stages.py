"""The stage servicers: Stage1 (context -> top-K rows), LvmReranker, TmdReranker.

Each only converts messages to the library's types, calls `cascade/`, and converts back. The
library raises ValueError naming what is wrong with an input; that becomes INVALID_ARGUMENT.

Each call is checked by the library on its own, then handed to the stage's batcher
(serving.batcher): concurrent calls of the same form run as one batched library call, with the
largest k (keep) among them, and each caller gets its own rows back, cut to its own k.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np

from serving.batcher import Batcher
from serving.config import ServingConfig
from serving.convert import (
    candidates_from_proto,
    candidates_to_proto,
    context_kind,
    vectors_from_proto,
)
from serving.protos import pb, rpc

log = logging.getLogger("serving")


def guarded(method):
    """Calls before loading -> UNAVAILABLE; the library's ValueError -> INVALID_ARGUMENT."""

    @functools.wraps(method)
    def call(self, request, context):
        if not self.loaded:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: still loading")
        try:
            return method(self, request, context)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    return call


def stage_contexts(msgs, field: str = "contexts"):
    """repeated Context (all vectors or all rows) -> a list of (L, D) arrays or ContextRows."""
    from cascade.stage1 import ContextRows

    if not msgs:
        raise ValueError(f"{field}: empty (no context given)")
    kinds = {context_kind(c, f"{field}[{i}]", ("vectors", "rows")) for i, c in enumerate(msgs)}
    if len(kinds) > 1:
        raise ValueError(f"{field}: a mix of vectors and rows; send one form per call")
    if kinds == {"rows"}:
        return ContextRows([np.asarray(c.rows.rows, dtype=np.int64) for c in msgs])
    return [vectors_from_proto(c.vectors, f"{field}[{i}].vectors") for i, c in enumerate(msgs)]


@dataclass
class _Search:
    """A checked stage-1 call: contexts as unit vectors and/or bank rows, queries if sent."""
    k: int
    vectors: list[np.ndarray] | None
    rows: list[np.ndarray] | None
    queries: np.ndarray | None

    @property
    def size(self) -> int:
        return len(self.rows if self.rows is not None else self.vectors)


@dataclass
class _Rerank:
    """A checked LVM call: unit context vectors, candidates (B, K), keep, and the LVM's
    predictions (B, D) when the caller sent them."""
    vectors: list[np.ndarray]
    ids: np.ndarray
    scores: np.ndarray
    keep: int
    pred: np.ndarray | None = None


def _joined(parts: list) -> list | None:
    """The calls' lists of contexts as one list (None when the calls have none)."""
    return None if parts[0] is None else [x for p in parts for x in p]


class _Stage:
    name = "stage"

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.cascade = None

    @property
    def loaded(self) -> bool:
        return self.cascade is not None

    def batcher_for(self) -> Batcher:
        sc = self.cfg.server(self.name)
        return Batcher(self.name, self.run_batch, sc.max_batch, sc.max_wait_ms)

    def load(self) -> None:
        # A reranker loads the cascade deploy.json names (sha256s checked) and serves its part:
        # the bank's vectors are memory-mapped (one copy per machine) and stage 1's index is
        # not opened (a reranker never searches), so the stages cannot disagree on what was
        # deployed and the bank costs nothing per process.
        from cascade.device import resolve_device
        from cascade.pipeline import Cascade
        self.cascade = Cascade.from_deploy(self.cfg.deploy, device=resolve_device(self.cfg.device),
                                           stage1_index=False)

    def describe(self) -> str:
        return ""


class Stage1Servicer(_Stage, rpc.Stage1Servicer):
    """Stage 1 over the whole bank, or shard `shard` of the config's stage1.shards: that shard's
    rows only (cascade.shard), answering in the bank's row ids."""
    name = "stage1"

    def __init__(self, cfg: ServingConfig, shard: int = 0):
        super().__init__(cfg)
        self.shard = shard
        self.stage1 = None
        self.batcher = self.batcher_for()

    @property
    def loaded(self) -> bool:
        return self.stage1 is not None

    def load(self) -> None:
        from cascade.device import resolve_device
        from cascade.stage1 import Stage1

        shards = len(self.cfg.stage1.shards)
        self.stage1 = Stage1.from_deploy(self.cfg.deploy,
                                         shard=(self.shard, shards) if shards > 1 else None,
                                         device=resolve_device(self.cfg.device),
                                         min_containment=self.cfg.stage1.min_containment)
        self.stage1.prepare()  # loaded before SERVING: no first-call build
        bank, size = self.stage1.bank, self.cfg.stage1.exact_max_size
        if self.stage1.index_factory == "Flat" and bank.n * bank.dim > size:
            log.warning("stage1: exact search over %d x %d rows, above stage1.exact_max_size "
                        "%d: slow; python -m training.tune_index --deploy %s chooses an ANN "
                        "index", bank.n, bank.dim, size, self.cfg.deploy)

    def describe(self) -> str:
        s1 = self.stage1
        shard = (f", shard {self.shard} of {len(self.cfg.stage1.shards)}: rows "
                 f"[{s1.row_start}, {s1.row_end})" if s1.sharded else "")
        return f" stage 1 = {s1.kind}" + (f" ({s1.reason})" if s1.kind != "v4" else "") + shard

    @guarded
    def Search(self, request, context):
        t0 = time.perf_counter()
        call = self.check(request)
        ids, scores = self.batcher.submit(call, (call.rows is None, call.queries is None),
                                          context)
        s1 = self.stage1
        return pb.Stage1Response(results=candidates_to_proto(ids, scores), kind=s1.kind,
                                 reason=s1.reason, seconds=time.perf_counter() - t0,
                                 row_start=s1.row_start, row_end=s1.row_end)

    def check(self, request) -> _Search:
        """One call checked as `Stage1.search` checks it (ValueError naming what is wrong)."""
        s1 = self.stage1
        k = s1.check_k(request.k)
        contexts = stage_contexts(request.contexts)
        if not request.HasField("queries"):
            vectors, rows = s1.contexts(contexts)
            return _Search(k, vectors, rows, None)
        from cascade.stage1 import check_queries
        vectors, rows = s1.contexts(contexts, need_vectors=False)
        queries = check_queries(vectors_from_proto(request.queries, "queries"),
                                len(rows if rows is not None else vectors), s1.dim)
        return _Search(k, vectors, rows, queries)

    def run_batch(self, calls: list[_Search]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`Stage1.search` of calls of one form at once, with their largest k: (ids, scores)
        of each call, cut to its k (exact search: the top k are the top max-k's first k)."""
        s1 = self.stage1
        vectors = _joined([c.vectors for c in calls])
        rows = _joined([c.rows for c in calls])
        q = (s1.queries(vectors) if calls[0].queries is None else
             np.concatenate([c.queries for c in calls]))
        D, I = s1.search_excluding(q, vectors, rows, max(c.k for c in calls))
        out, at = [], 0
        for c in calls:
            out.append((I[at:at + c.size, :c.k], D[at:at + c.size, :c.k]))
            at += c.size
        return out


class LvmServicer(_Stage, rpc.LvmRerankerServicer):
    name = "lvm"

    def __init__(self, cfg: ServingConfig):
        super().__init__(cfg)
        self.batcher = self.batcher_for()

    def load(self) -> None:
        super().load()
        if self.cascade.lvm is None:
            raise ValueError(f"{self.cfg.deploy}: names no LVM checkpoint ('lvm'); run "
                             f"`make train-lvm`, or leave the lvm server out")

    @guarded
    def Rerank(self, request, context):
        t0 = time.perf_counter()
        from cascade.lvm import check_candidates
        vectors, _ = self.cascade.stage1.contexts(stage_contexts(request.contexts))
        ids, scores = candidates_from_proto(request.candidates, "candidates")
        ids, scores = check_candidates(ids, scores, len(vectors), self.cascade.bank.n,
                                       request.keep)
        pred = None
        if request.HasField("predictions"):
            from cascade.stage1 import check_queries

            pred = check_queries(vectors_from_proto(request.predictions, "predictions"),
                                 len(vectors), self.cascade.bank.dim, "predictions")
        call = _Rerank(vectors, ids, scores, request.keep, pred)
        # One candidate width per batch, and calls with predictions apart from those without.
        ids, scores = self.batcher.submit(call, (ids.shape[1], pred is None), context)
        return pb.RerankResponse(results=candidates_to_proto(ids, scores),
                                 seconds=time.perf_counter() - t0)

    def run_batch(self, calls: list[_Rerank]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`LvmReranker.rerank` of calls with as many candidates each at once, keeping their
        largest keep: each call's rows, cut to its keep."""
        import torch

        pred = (None if calls[0].pred is None else
                torch.from_numpy(np.concatenate([c.pred for c in calls])).to(
                    self.cascade.lvm.device))
        result = self.cascade.lvm.rerank(
            [v for c in calls for v in c.vectors], np.concatenate([c.ids for c in calls]),
            np.concatenate([c.scores for c in calls]), keep=max(c.keep for c in calls),
            pred=pred)
        out, at = [], 0
        for c in calls:
            n = len(c.ids)
            out.append((result.ids[at:at + n, :c.keep], result.scores[at:at + n, :c.keep]))
            at += n
        return out


class TmdServicer(_Stage, rpc.TmdRerankerServicer):
    name = "tmd"
    tmd = None

    @property
    def loaded(self) -> bool:
        return self.tmd is not None

    def load(self) -> None:
        from cascade.pipeline import tmd_from_deploy

        self.tmd = tmd_from_deploy(self.cfg.deploy)  # the bank's TMD codes, nothing else
        if self.tmd is None:
            raise ValueError(f"{self.cfg.deploy}: its bank has no TMD codes, so the cascade "
                             f"has no TMD stage; leave the tmd server out")

    @guarded
    def Rerank(self, request, context):
        t0 = time.perf_counter()
        ids, scores = candidates_from_proto(request.candidates, "candidates")
        codes = np.asarray(request.query_codes, dtype=np.int64)
        if len(codes) != len(ids):
            raise ValueError(f"query_codes: {len(codes)} codes for {len(ids)} candidate lists")
        ids, scores = self.tmd.rerank(codes, ids, scores, keep=request.keep)
        return pb.RerankResponse(results=candidates_to_proto(ids, scores),
                                 seconds=time.perf_counter() - t0)
