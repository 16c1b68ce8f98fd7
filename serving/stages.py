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

from cascade.tmd import DOMAINS
from serving.batcher import Batcher
from serving.config import ServingConfig
from serving.proto_arrays import (
    candidates_from_proto,
    candidates_to_proto,
    context_kind,
    vectors_from_proto,
)
from serving.protos import pb, rpc
from serving.swap import Deploys, Loaded, NotHeld, deploy_id, same_bank

log = logging.getLogger("serving")


def guarded(method):
    """Calls before loading -> UNAVAILABLE; the library's ValueError -> INVALID_ARGUMENT; a
    deploy this server does not hold -> FAILED_PRECONDITION; anything else unexpected ->
    INTERNAL with a short message (logged with its traceback, counted as INTERNAL)."""

    @functools.wraps(method)
    def call(self, request, context):
        if not self.loaded:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: still loading")
        try:
            return method(self, request, context)
        except NotHeld as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name}: {e}")
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:
            if context.code() is not None:  # context.abort's own exception: already answered
                raise
            log.exception("%s: unexpected error", self.name)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"{self.name}: internal error ({type(e).__name__}: {e})"[:300])

    return call


def warm_cascade(cascade) -> None:
    """One search of a context of bank rows through every stage the cascade has, so what the
    library builds on first use (the exact index's 8-bit copy, torch's first pass) is built
    before the cascade takes calls."""
    from cascade.context import ContextRows

    cascade.stage1.prepare()
    cascade.search(ContextRows([np.arange(min(2, cascade.bank.n - 1))]), k=1)


def warm_reranker(cascade) -> None:
    """One LVM rerank of two bank rows (a reranker's cascade opens no stage-1 index), so
    torch's first pass is done before the server takes calls."""
    if cascade.lvm is not None:
        n = min(2, cascade.bank.n)
        ids = np.arange(n, dtype=np.int64)[None]
        cascade.lvm.rerank([np.asarray(cascade.bank.vectors[:1])], ids,
                           np.zeros(ids.shape, np.float32), 1)


def stage_contexts(msgs, field: str = "contexts"):
    """repeated Context (all vectors or all rows) -> a list of (L, D) arrays or ContextRows."""
    from cascade.context import ContextRows

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
    model: object = None  # the Stage1 of the deploy the call named

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
    model: object = None  # the Cascade of the deploy the call named


def _joined(parts: list) -> list | None:
    """The calls' lists of contexts as one list (None when the calls have none)."""
    return None if parts[0] is None else [x for p in parts for x in p]


class _Stage:
    name = "stage"

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.deploys = Deploys()

    @property
    def loaded(self) -> bool:
        return self.deploys.live is not None

    @property
    def cascade(self):
        """The live deploy's model."""
        return self.deploys.live.model

    def batcher_for(self) -> Batcher:
        sc = self.cfg.server(self.name)
        return Batcher(self.name, self.run_batch, sc.max_batch, sc.max_wait_ms)

    def load(self) -> None:
        self.deploys.put(Loaded(deploy_id(self.cfg.deploy), self.build(None)))

    def reload(self) -> str:
        """Swap to what deploy.json names now (SIGHUP), keeping the one before for the calls
        that still name it; raises (and keeps the live deploy) when it does not load. -> the
        deploy id now served."""
        with self.deploys.swapping:
            new_id = deploy_id(self.cfg.deploy)
            if new_id != self.deploys.live.id:
                self.deploys.put(Loaded(new_id, self.build(self.cascade)))
            return new_id

    def build(self, old):
        # A reranker loads the cascade deploy.json names (sha256s checked) and serves its part:
        # the bank's vectors are memory-mapped (one copy per machine) and stage 1's index is
        # not opened (a reranker never searches), so the stages cannot disagree on what was
        # deployed and the bank costs nothing per process.
        from cascade.device import resolve_device
        from cascade.pipeline import Cascade
        bank = same_bank(self.cfg.deploy, old.bank if old is not None else None)
        cascade = Cascade.from_deploy(self.cfg.deploy, bank=bank,
                                      device=resolve_device(self.cfg.device), stage1_index=False)
        self.check(cascade)
        warm_reranker(cascade)
        return cascade

    def check(self, cascade) -> None:
        """Refuses a cascade this server cannot serve its part of."""

    def describe(self) -> str:
        return f" deploy {self.deploys.live.id}"


class Stage1Servicer(_Stage, rpc.Stage1Servicer):
    """Stage 1 over the whole bank, or shard `shard` of the config's stage1.shards: that shard's
    rows only (cascade.shard), answering in the bank's row ids."""
    name = "stage1"

    def __init__(self, cfg: ServingConfig, shard: int = 0):
        super().__init__(cfg)
        self.shard = shard
        self.batcher = self.batcher_for()

    def build(self, old):
        from cascade.context import ContextRows
        from cascade.device import resolve_device
        from cascade.stage1 import Stage1

        shards = len(self.cfg.stage1.shards)
        bank = same_bank(self.cfg.deploy, old.bank if old is not None and shards == 1 else None)
        stage1 = Stage1.from_deploy(self.cfg.deploy, bank=bank,
                                    shard=(self.shard, shards) if shards > 1 else None,
                                    device=resolve_device(self.cfg.device),
                                    min_containment=self.cfg.stage1.min_containment)
        if old is not None and (stage1.row_start, stage1.row_end) != (old.row_start,
                                                                       old.row_end):
            raise ValueError(f"{self.cfg.deploy}: its bank gives this server rows "
                             f"[{stage1.row_start}, {stage1.row_end}), the served one "
                             f"[{old.row_start}, {old.row_end}): a new bank needs a restart")
        stage1.prepare()  # loaded before SERVING: no first-call build
        size = self.cfg.stage1.exact_max_size
        if stage1.index_factory == "Flat" and stage1.bank.n * stage1.bank.dim > size:
            log.warning("stage1: exact search over %d x %d rows, above stage1.exact_max_size "
                        "%d: slow; python -m training.tune_index --deploy %s chooses an ANN "
                        "index", stage1.bank.n, stage1.bank.dim, size, self.cfg.deploy)
        if not stage1.sharded:
            stage1.search(ContextRows([np.arange(min(2, stage1.bank.n - 1))]), 1)
        return stage1

    def describe(self) -> str:
        s1 = self.cascade
        shard = (f", shard {self.shard} of {len(self.cfg.stage1.shards)}: rows "
                 f"[{s1.row_start}, {s1.row_end})" if s1.sharded else "")
        return (f" deploy {self.deploys.live.id}: stage 1 = {s1.kind}"
                + (f" ({s1.reason})" if s1.kind != "v4" else "") + shard)

    @guarded
    def Search(self, request, context):
        t0 = time.perf_counter()
        d = self.deploys.get(request.deploy)
        call = self.check_call(request, d.model)
        ids, scores = self.batcher.submit(
            call, (d.id, call.rows is None, call.queries is None), context)
        s1 = d.model
        return pb.Stage1Response(results=candidates_to_proto(ids, scores), kind=s1.kind,
                                 reason=s1.reason, seconds=time.perf_counter() - t0,
                                 row_start=s1.row_start, row_end=s1.row_end, deploy=d.id)

    def check_call(self, request, s1) -> _Search:
        """One call checked as `Stage1.search` checks it (ValueError naming what is wrong)."""
        k = s1.check_k(request.k)
        contexts = stage_contexts(request.contexts)
        if not request.HasField("queries"):
            vectors, rows = s1.contexts(contexts)
            return _Search(k, vectors, rows, None, s1)
        from cascade.context import check_queries
        vectors, rows = s1.contexts(contexts, need_vectors=False)
        queries = check_queries(vectors_from_proto(request.queries, "queries"),
                                len(rows if rows is not None else vectors), s1.dim)
        return _Search(k, vectors, rows, queries, s1)

    def run_batch(self, calls: list[_Search]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`Stage1.search` of calls of one form at once, with their largest k: (ids, scores)
        of each call, cut to its k (exact search: the top k are the top max-k's first k)."""
        s1 = calls[0].model  # one deploy per batch (the batch key)
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

    def check(self, cascade) -> None:
        if cascade.lvm is None:
            raise ValueError(f"{self.cfg.deploy}: names no LVM checkpoint ('lvm'); run "
                             f"`make train-lvm`, or leave the lvm server out")

    @guarded
    def Rerank(self, request, context):
        t0 = time.perf_counter()
        from cascade.lvm import check_candidates
        d = self.deploys.get(request.deploy)
        cascade = d.model
        vectors, _ = cascade.stage1.contexts(stage_contexts(request.contexts))
        ids, scores = candidates_from_proto(request.candidates, "candidates")
        ids, scores = check_candidates(ids, scores, len(vectors), cascade.bank.n,
                                       request.keep)
        pred = None
        if request.HasField("predictions"):
            from cascade.context import check_queries

            pred = check_queries(vectors_from_proto(request.predictions, "predictions"),
                                 len(vectors), cascade.bank.dim, "predictions")
        call = _Rerank(vectors, ids, scores, request.keep, pred, cascade)
        # One deploy and candidate width per batch, and calls with predictions apart.
        ids, scores = self.batcher.submit(call, (d.id, ids.shape[1], pred is None), context)
        return pb.RerankResponse(results=candidates_to_proto(ids, scores),
                                 seconds=time.perf_counter() - t0, deploy=d.id)

    def run_batch(self, calls: list[_Rerank]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`LvmReranker.rerank` of calls with as many candidates each at once, keeping their
        largest keep: each call's rows, cut to its keep."""
        import torch

        lvm = calls[0].model.lvm  # one deploy per batch (the batch key)
        pred = (None if calls[0].pred is None else
                torch.from_numpy(np.concatenate([c.pred for c in calls])).to(lvm.device))
        result = lvm.rerank(
            [v for c in calls for v in c.vectors], np.concatenate([c.ids for c in calls]),
            np.concatenate([c.scores for c in calls]), keep=max(c.keep for c in calls),
            pred=pred)
        out, at = [], 0
        for c in calls:
            n = len(c.ids)
            out.append((result.ids[at:at + n, :c.keep], result.scores[at:at + n, :c.keep]))
            at += n
        return out


_LANE_SOURCES = {pb.LANE_SOURCE_CODES: "codes", pb.LANE_SOURCE_TAGGED: "tagged"}


class TmdServicer(_Stage, rpc.TmdRerankerServicer):
    name = "tmd"

    def build(self, old):
        """(the TMD reranker over the bank's codes, the cascade's config: w per lane source);
        nothing else of the bank is read."""
        from cascade.pipeline import tmd_from_deploy

        stage = tmd_from_deploy(self.cfg.deploy)
        if stage is None:
            raise ValueError(f"{self.cfg.deploy}: its bank has no TMD codes, so the cascade "
                             f"has no TMD stage; leave the tmd server out")
        return stage

    @guarded
    def Rerank(self, request, context):
        t0 = time.perf_counter()
        d = self.deploys.get(request.deploy)
        ids, scores = candidates_from_proto(request.candidates, "candidates")
        codes = np.asarray(request.query_codes, dtype=np.int64)
        if len(codes) != len(ids):
            raise ValueError(f"query_codes: {len(codes)} codes for {len(ids)} candidate lists")
        source = _LANE_SOURCES.get(request.lane_source)
        if source is None:
            raise ValueError("lane_source: must be LANE_SOURCE_CODES or LANE_SOURCE_TAGGED (the "
                             "blend weight is tuned for each)")
        probs = None
        if request.domain_probs:
            probs = np.asarray(request.domain_probs, np.float32)
            if len(probs) != len(ids) * len(DOMAINS):
                raise ValueError(f"domain_probs: {len(probs)} values for {len(ids)} contexts "
                                 f"(expected {len(DOMAINS)} per context)")
            probs = probs.reshape(len(ids), len(DOMAINS))
        tmd, config = d.model
        ids, scores = tmd.rerank(codes, ids, scores, keep=request.keep,
                                 w=config.tmd_w_for(source), domain_probs=probs)
        return pb.RerankResponse(results=candidates_to_proto(ids, scores),
                                 seconds=time.perf_counter() - t0, deploy=d.id)
