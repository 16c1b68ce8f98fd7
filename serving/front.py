"""The cascade front: `Cascade.Search` chains the stage servers as the in-process cascade chains
its stages, and adds the hits' bank data (text, cpe id, article, position).

Stage 1 may be split by rows across shard servers (`stage1.shards`): the front forms each query
once, sends it to every shard in parallel and merges their top-K exactly (cascade.shard). Forming
the query here, not on each shard, costs one tower pass instead of S, lets a shard answer a
context given as rows it does not hold, and has every shard score the very same vector, so the
merge compares like with like even when the shards run on different hardware.

Stage 1 is required: when every shard is down the call fails with UNAVAILABLE. A shard that is
down or overloaded while others answer leaves its rows unsearched: the answer is the merge of the
shards that answered, flagged `degraded` with the shard and its rows, as a reranker that is down,
overloaded or past its share of the deadline is skipped and flagged instead of failing the call.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from serving import metrics
from serving.batcher import Batcher
from serving.config import ServingConfig
from serving.convert import (
    candidates_from_proto,
    candidates_to_proto,
    context_kind,
    vectors_from_proto,
    vectors_to_proto,
)
from serving.protos import pb, rpc
from serving.stages import guarded

log = logging.getLogger("serving")

# Stage-1 errors passed on as they are: the caller's input, or the caller's own deadline.
_PASS_ON = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED)


def stage_channel(cfg: ServingConfig, name: str, addresses: list[str] | None = None
                  ) -> grpc.Channel:
    """One channel over all of a stage's replicas (or the given ones: a stage-1 shard's),
    balanced per call (gRPC round_robin)."""
    from serving.server import channel_credentials, message_options

    target = "ipv4:" + ",".join(addresses or cfg.server(name).addresses)
    options = message_options(cfg) + [("grpc.lb_policy_name", "round_robin")]
    creds = channel_credentials(cfg.tls)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)


def _why(stage: str, err: grpc.RpcError, share_ms: float) -> str:
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{stage} missed its deadline share ({share_ms:.3g} ms)"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"{stage} overloaded ({err.details()})"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{stage} unavailable ({err.details()})"
    return f"{stage} failed: {code.name} {err.details()}"


class CascadeServicer(rpc.CascadeServicer):
    name = "front"

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.cascade = None

    @property
    def loaded(self) -> bool:
        return self.cascade is not None

    def load(self) -> None:
        from cascade.device import resolve_device
        from cascade.pipeline import Cascade
        from cascade.shard import shard_bounds

        # The front checks contexts with the library before any stage sees them, forms stage
        # 1's queries, computes the TMD lanes of contexts, embeds texts, and holds the bank's
        # texts and ids for the hits.
        # Stage 1's index only where this process searches it (in_process).
        self.cascade = Cascade.from_deploy(
            self.cfg.deploy, device=resolve_device(self.cfg.device),
            min_containment=self.cfg.stage1.min_containment,
            stage1_index=self.cfg.front.stages == "in_process")
        try:
            self.cascade.embed(["load the encoder before reporting SERVING"])
        except ValueError as e:  # a bank of another encoder's dimension (e.g. a 768-d scale
            # bank beside MiniLM): it serves vector and row contexts; texts are refused
            log.warning("front: %s: text contexts will be refused", e)
        if self.cfg.front.stages == "in_process":  # no stage servers to call
            self.cascade.stage1.prepare()  # what stage 1 builds on first use, before SERVING
            f = self.cfg.front
            self.batcher = Batcher("front", self.run_batch, f.max_batch, f.max_wait_ms)
            return
        # The work beside stage 1 (Cascade.beside_stage1) of every call in flight.
        self.beside = ThreadPoolExecutor(self.cfg.front.workers, thread_name_prefix="beside")
        shards = self.cfg.stage1.shards
        self.shards = [rpc.Stage1Stub(stage_channel(self.cfg, "stage1", a)) for a in shards]
        self.bounds = shard_bounds(self.cascade.bank.n, len(shards))
        self.lvm = (rpc.LvmRerankerStub(stage_channel(self.cfg, "lvm"))
                    if self.cascade.lvm is not None else None)
        self.tmd = (rpc.TmdRerankerStub(stage_channel(self.cfg, "tmd"))
                    if self.cascade.tmd is not None else None)

    def describe(self) -> str:
        s1 = self.cascade.stage1
        return (f" stage 1 = {s1.kind}" + (f" ({s1.reason})" if s1.kind != "v4" else "")
                + ("; every stage in this process" if self.cfg.front.stages == "in_process"
                   else ""))

    # -- the call ------------------------------------------------------------------------------

    @guarded
    def Search(self, request, context):
        t0 = time.perf_counter()
        deadline_s = context.time_remaining()
        if deadline_s is None or deadline_s > 1e6:  # the caller set none
            deadline_s = self.cfg.front.deadline_ms / 1000
        end = t0 + deadline_s
        k = self.check_k(request.k)
        stage_ms: dict[str, float] = {}
        ctx, vectors, rows = self.stage_context(request.context, stage_ms)
        if self.cfg.front.stages == "in_process":
            return self.search_in_process(vectors, rows, k, stage_ms, t0, context)

        degraded: list[str] = []
        ranking, kind, reason, beside = self.call_stage1(ctx, vectors, rows, end, stage_ms,
                                                         degraded, context)
        pred, lanes = beside.result()
        cfg, share = self.cascade.config, self.cfg.front
        if self.lvm is not None:
            ranking = self.rerank("lvm", self.lvm.Rerank, pb.LvmRequest(
                contexts=[ctx], candidates=ranking, keep=min(cfg.k_lvm, len(ranking[0].ids)),
                predictions=None if pred is None else vectors_to_proto(pred.cpu().numpy())),
                end, deadline_s * share.lvm_share, stage_ms, degraded) or ranking
        if self.tmd is not None:
            ranking = self.rerank("tmd", self.tmd.Rerank, pb.TmdRequest(
                query_codes=lanes.tolist(), candidates=ranking,
                keep=min(cfg.k_tmd, len(ranking[0].ids))),
                end, deadline_s * share.tmd_share, stage_ms, degraded) or ranking
        stage_ms["total"] = 1000 * (time.perf_counter() - t0)
        return pb.SearchResponse(hits=self.hits(ranking[0], k), stage1=kind,
                                 stage1_reason=reason, stage_ms=stage_ms,
                                 degraded=bool(degraded), degraded_reason="; ".join(degraded))

    def search_in_process(self, vectors: list[np.ndarray], rows: list[np.ndarray] | None,
                          k: int, stage_ms: dict, t0: float, context) -> pb.SearchResponse:
        """`front.stages: in_process`: the library's cascade in this process, no stage calls
        (so nothing to degrade: a failure is the call's). Concurrent calls of one form (rows or
        vectors) share one batched search (front.max_batch)."""
        ids, scores, stages = self.batcher.submit((vectors, rows, k), rows is None, context)
        for name, seconds in stages.items():
            stage_ms[name] = 1000 * seconds
            metrics.STAGE.labels(name).observe(seconds)
        stage_ms["total"] = 1000 * (time.perf_counter() - t0)
        s1 = self.cascade.stage1
        return pb.SearchResponse(hits=self.hits(candidates_to_proto(ids[None], scores[None])[0],
                                                k),
                                 stage1=s1.kind, stage1_reason=s1.reason, stage_ms=stage_ms)

    def run_batch(self, calls: list[tuple]) -> list[tuple]:
        """One `Cascade.search` of the calls' contexts with their largest k: each call's
        (ids, scores, seconds per stage of the batch), cut to its k."""
        from cascade.stage1 import ContextRows

        k = max(c[2] for c in calls)
        if calls[0][1] is None:
            res = self.cascade.search([v for c in calls for v in c[0]], k)
        else:
            res = self.cascade.search(ContextRows([r for c in calls for r in c[1]]), k)
        stages = {name: st.seconds for name, st in res.stages.items()}
        return [(res.ids[b, :c[2]], res.scores[b, :c[2]], stages) for b, c in enumerate(calls)]

    def check_k(self, k: int) -> int:
        """As Cascade.search: 0 (proto3's unset) is its default, min(k_tmd, last_k)."""
        last_k = self.cascade.last_k
        k = k or min(self.cascade.config.k_tmd, last_k)
        if not 1 <= k <= last_k:
            raise ValueError(f"k must be an integer in [1, {last_k}] (the last stage's K), "
                             f"got {k}")
        return k

    def stage_context(self, msg, stage_ms: dict):
        """The request's context as the stages take it (texts embedded here), and the library's
        checked (vectors, rows) of it: a bad input is refused before any stage works on it."""
        from cascade.stage1 import ContextRows

        kind = context_kind(msg, "context", ("vectors", "texts", "rows"))
        if kind == "texts":
            texts = list(msg.texts.texts)
            self.check_texts(texts)
            t = time.perf_counter()
            embedded = self.cascade.embed(texts)
            stage_ms["embed"] = 1000 * (time.perf_counter() - t)
            metrics.STAGE.labels("embed").observe(stage_ms["embed"] / 1000)
            msg = pb.Context(vectors=vectors_to_proto(embedded))
        if msg.WhichOneof("kind") == "rows":
            vectors, rows = self.cascade.stage1.contexts(
                ContextRows(np.asarray(msg.rows.rows, np.int64)))
        else:
            vectors, rows = self.cascade.stage1.contexts(
                vectors_from_proto(msg.vectors, "context.vectors"))
        return msg, vectors, rows

    def check_texts(self, texts: list[str]) -> None:
        f = self.cfg.front
        if not texts:
            raise ValueError("context.texts: empty (no text given)")
        if len(texts) > f.max_texts:
            raise ValueError(f"context.texts: {len(texts)} texts, more than the maximum "
                             f"{f.max_texts} (front.max_texts)")
        most = self.cascade.stage1.max_context  # checked again after embedding; fail cheap
        if len(texts) > most:
            raise ValueError(f"context.texts: {len(texts)} chunks, longer than the configured "
                             f"maximum {most} (cascade.max_context)")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"context.texts[{i}]: empty text")
            if len(t) > f.max_text_chars:
                raise ValueError(f"context.texts[{i}]: {len(t)} characters, more than the "
                                 f"maximum {f.max_text_chars} (front.max_text_chars)")

    def call_stage1(self, ctx: pb.Context, vectors: list[np.ndarray],
                    rows: list[np.ndarray] | None, end: float, stage_ms: dict,
                    degraded: list[str], context):
        """Stage 1's top k_stage1: the query formed here, every shard searched in parallel,
        their answers merged; a shard that fails while others answer is named in `degraded`.
        Also returns the future of the work beside stage 1 (Cascade.beside_stage1: the LVM's
        prediction and the TMD lanes read only the context), started once the query is formed
        (not before: the two would share the CPU) and done while the shards search."""
        from cascade.shard import merge_topk

        k1 = min(self.cascade.config.k_stage1, self.cascade.bank.n)
        t = time.perf_counter()
        queries = vectors_to_proto(self.cascade.stage1.queries(vectors))
        request = pb.Stage1Request(contexts=[ctx], k=k1, queries=queries)
        calls = [stub.Search.future(request, timeout=max(end - time.perf_counter(), 0.001))
                 for stub in self.shards]
        beside = self.beside.submit(self.cascade.beside_stage1, vectors, rows, None)
        parts, failed, answered, answer = [], [], [], None
        for s, call in enumerate(calls):
            try:
                resp = call.result()
            except grpc.RpcError as e:
                if e.code() in _PASS_ON:
                    context.abort(e.code(), f"stage 1: {e.details()}")
                failed.append((s, e))
                continue
            if (resp.row_start, resp.row_end) != self.bounds[s]:
                failed.append((s, f"holds rows [{resp.row_start}, {resp.row_end}), the config's "
                                  f"{len(self.shards)} shards give it {list(self.bounds[s])}"))
                continue
            ids, scores = candidates_from_proto(resp.results, "stage 1 results")
            parts.append((scores, ids))
            answered.append(resp)
            answer = resp
        if answer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stage 1 cannot answer: " + "; ".join(
                self.shard_failure(s, e) for s, e in failed))
        for s, e in failed:
            why = self.shard_failure(s, e) + (f": rows [{self.bounds[s][0]}, "
                                              f"{self.bounds[s][1]}) not searched")
            degraded.append(why)
            metrics.DEGRADED.labels("stage1", e.code().name if isinstance(e, grpc.RpcError)
                                    else "MISCONFIGURED").inc()
            log.warning("degraded: %s", why)
        D, I = merge_topk(parts, k1)
        stage_ms["stage1"] = 1000 * (time.perf_counter() - t)
        # The servers' own time (the slowest shard's): the rest of a step is the round trip.
        stage_ms["stage1_server"] = 1000 * max(r.seconds for r in answered)
        metrics.STAGE.labels("stage1").observe(stage_ms["stage1"] / 1000)
        return candidates_to_proto(I, D), answer.kind, answer.reason, beside

    def shard_failure(self, s: int, e) -> str:
        """'stage1 shard s of S (addresses) <why>'; one shard is just 'stage 1 (addresses)'."""
        shards = self.cfg.stage1.shards
        where = (f"stage 1 ({', '.join(shards[s])})" if len(shards) == 1 else
                 f"stage1 shard {s} of {len(shards)} ({', '.join(shards[s])})")
        if isinstance(e, str):
            return f"{where} {e}"
        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return f"{where} overloaded ({e.details()})"
        return f"{where} unavailable: {e.code().name} {e.details()}"

    def rerank(self, stage: str, call, request, end: float, share_s: float, stage_ms: dict,
               degraded: list[str]):
        """The reranker's candidates, or None (and a reason in `degraded`) when it failed."""
        t = time.perf_counter()
        timeout = min(share_s, end - t)
        try:
            resp = call(request, timeout=max(timeout, 0.001))
        except grpc.RpcError as e:
            why = _why(stage, e, 1000 * timeout)
            degraded.append(why)
            metrics.DEGRADED.labels(stage, e.code().name).inc()
            log.warning("degraded: %s", why)
            return None
        stage_ms[stage] = 1000 * (time.perf_counter() - t)
        stage_ms[f"{stage}_server"] = 1000 * resp.seconds
        metrics.STAGE.labels(stage).observe(stage_ms[stage] / 1000)
        return resp.results

    def hits(self, cands: pb.Candidates, k: int) -> list[pb.Hit]:
        bank = self.cascade.bank
        out = []
        for row, score in zip(list(cands.ids)[:k], list(cands.scores)[:k], strict=True):
            if row < 0:  # padding: fewer candidates than k
                break
            out.append(pb.Hit(
                row=row, score=score, text=bank.text(row) or "",
                cpe_id="" if bank.cpe_ids is None else str(bank.cpe_ids[row]),
                article=int(bank.article_indices[row]), position=int(bank.chunk_indices[row])))
        return out
