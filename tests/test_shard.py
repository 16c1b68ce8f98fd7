"""Stage 1 split by rows: shard bounds, reading a row range of a bank file, the exact merge, and
3 real gRPC shard servers + the front on 127.0.0.1 answering as the unsharded Stage1, row for
row, for contexts given as rows and as vectors; a shard down degrades, all down is UNAVAILABLE."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.bank import BankError, load_bank, save_bank
from cascade.context import ContextRows
from cascade.shard import bank_rows, load_bank_rows, merge_topk, shard_bounds, whole_fingerprint
from cascade.stage1 import Stage1
from serving.config import ConfigError, ServingConfig, load_config
from serving.harness import ServingSet, free_port
from serving.protos import pb, rpc
from training.synth_bank import SynthConfig, synth_bank

N, DIM, K = 3000, 384, 100
# Copies across shard boundaries (3 shards: [0, 1000), [1000, 2000), [2000, 3000)): equal
# scores that only the tie rule orders, and duplicates of a context vector on other shards.
COPIES = ((5, 1200), (5, 2500), (700, 2999), (1500, 10), (1501, 11))


def make_bank():
    bank = synth_bank(SynthConfig(n=N, dim=DIM, mean_chunks=6, topics=3, seed=11))
    for src, dst in COPIES:
        bank.vectors[dst] = bank.vectors[src]
    bank.tmd_codes = None  # no TMD stage: the set is the shards and the front
    return bank


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    bank = make_bank()
    save_bank(bank, root / "bank.npz")
    return root, load_bank(root / "bank.npz")


def shard_stage1s(path, shards: int) -> list[Stage1]:
    return [Stage1(load_bank_rows(path, lo, hi), rows=(lo, hi, N))
            for lo, hi in shard_bounds(N, shards)]


CONTEXTS = ([4, 5, 6], [1499, 1500, 1501], [698, 699, 700], [10, 11], [2997, 2998, 2999])


# ---------------------------------------------------------------------------------------------
# the library


def test_shard_bounds_cover_the_rows_in_order():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(7, 1) == [(0, 7)]
    with pytest.raises(ValueError, match="shards must be in"):
        shard_bounds(3, 4)


def test_merge_topk_is_brute_force_with_faiss_tie_order():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(4, 90)).astype(np.float32)  # many ties
    ids = np.tile(rng.permutation(90), (4, 1))
    parts = [(scores[:, lo:hi], ids[:, lo:hi]) for lo, hi in ((0, 30), (30, 45), (45, 90))]
    parts[1] = (np.pad(parts[1][0], ((0, 0), (0, 3)), constant_values=-np.inf),
                np.pad(parts[1][1], ((0, 0), (0, 3)), constant_values=-1))  # padded shard
    D, I = merge_topk(parts, 40)
    for b in range(4):
        best = sorted(zip(scores[b], ids[b], strict=True), key=lambda t: (-t[0], -t[1]))[:40]
        assert I[b].tolist() == [int(i) for _, i in best]
        assert D[b].tolist() == [float(s) for s, _ in best]
    D, I = merge_topk(parts, 100)  # more than exist: padded
    assert (I[:, 90:] == -1).all() and np.isneginf(D[:, 90:]).all()


def test_load_bank_rows_reads_the_range_and_pins_the_whole_bank(banked, tmp_path):
    root, bank = banked
    part = load_bank_rows(root / "bank.npz", 1000, 2000)
    assert np.array_equal(part.vectors, bank.vectors[1000:2000])
    assert np.array_equal(part.article_indices, bank.article_indices[1000:2000])
    assert part.fingerprint() == bank.fingerprint() and part.meta["rows"] == [1000, 2000, N]
    assert bank_rows(root / "bank.npz") == N
    # Without the sidecar's cached fingerprint it is hashed from the file, and agrees.
    assert whole_fingerprint(str(root / "bank.npz"), {}) == bank.fingerprint()
    squeezed = tmp_path / "compressed.npz"
    np.savez_compressed(squeezed, vectors=bank.vectors, article_indices=bank.article_indices,
                        chunk_indices=bank.chunk_indices)
    with pytest.raises(BankError, match="compressed"):
        load_bank_rows(squeezed, 0, 10)
    with pytest.raises(BankError, match="not inside"):
        load_bank_rows(root / "bank.npz", 2000, N + 1)


def test_three_shards_merge_to_the_unsharded_answer(banked):
    root, bank = banked
    whole = Stage1(bank)
    shards = shard_stage1s(root / "bank.npz", 3)
    for ctx in CONTEXTS:
        for contexts in (ContextRows(np.array(ctx)), [bank.vectors[ctx]]):
            expected = whole.search(contexts, k=K)
            vectors, _ = whole.contexts(contexts)
            q = whole.queries(vectors)
            parts = [s.search(contexts, k=K, queries=q) for s in shards]
            D, I = merge_topk([(p.scores, p.ids) for p in parts], K)
            assert I.tolist() == expected.ids.tolist(), ctx
            assert np.array_equal(D, expected.scores)
    # The ties and the exclusions were exercised: copies of row 5 tie with the context's own
    # row-5 query neighbours; by vectors, row 5's copies on shards 1 and 2 are left out.
    by_rows = whole.search(ContextRows(np.array([4, 5, 6])), k=K).ids[0]
    by_vectors = whole.search([bank.vectors[[4, 5, 6]]], k=K).ids[0]
    assert {1200, 2500} <= set(by_rows) and not {1200, 2500} & set(by_vectors)


def test_a_shard_refuses_what_needs_the_whole_bank(banked):
    root, _ = banked
    shard = shard_stage1s(root / "bank.npz", 3)[1]
    with pytest.raises(ValueError, match="send the queries too"):
        shard.search(ContextRows(np.array([4, 5])), k=5)
    with pytest.raises(ValueError, match=r"queries: expected shape \(1, 384\)"):
        shard.search(ContextRows(np.array([4, 5])), k=5, queries=np.ones((2, DIM)))
    with pytest.raises(ValueError, match="out of range"):
        shard.search(ContextRows(np.array([N])), k=5, queries=np.ones((1, DIM)))
    from cascade.pairs import Pairs
    with pytest.raises(ValueError, match="evaluation and mining need the whole bank"):
        shard.search_pairs(Pairs.__new__(Pairs), k=5)


def test_the_config_lists_shards_of_replicas(tmp_path):
    assert ServingConfig().stage1.shards == [["127.0.0.1:50061"]]  # default: one shard
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"stage1": {"shards": [["h:1", "h:2"], ["h:3"]]}}))
    assert load_config(path).stage1.addresses == ["h:1", "h:2", "h:3"]
    for bad, message in (([], "at least one shard"), ([["h:1"], []], "at least one shard"),
                         ([["h"]], "is not host:port"), (["h:1"], r"shards\[0\]: expected")):
        path.write_text(yaml.safe_dump({"stage1": {"shards": bad}}))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


# ---------------------------------------------------------------------------------------------
# 3 shard servers and the front


@pytest.fixture(scope="module")
def sharded_set(banked):
    root, bank = banked
    (root / "deploy.json").write_text(json.dumps({
        "stage1": "heuristic", "checkpoint": None, "reason": "sharding test",
        "heuristic": {"kind": "exp_weighted", "alpha": 0.1}, "bank": str(root / "bank.npz"),
        "bank_fingerprint": bank.fingerprint(), "cascade": {"k_stage1": K}}))
    one = {"metrics_port": 0, "processes": 1}
    data = {"deploy": str(root / "deploy.json"),
            "front": {**one, "addresses": [f"127.0.0.1:{free_port()}"],
                      "metrics_port": free_port()},
            "stage1": {**one, "shards": [[f"127.0.0.1:{free_port()}"] for _ in range(3)]},
            "lvm": {**one, "addresses": [f"127.0.0.1:{free_port()}"]},
            "tmd": {**one, "addresses": [f"127.0.0.1:{free_port()}"]},
            # A killed shard stays down (no restart): the tests below see a shard down.
            "supervisor": {"max_restarts": 0, "pid_file": str(root / "sharded.pid")}}
    config = root / "sharded.yaml"
    config.write_text(yaml.safe_dump(data))
    s = ServingSet(config)
    yield s
    s.stop()


def stage1_pid(serving: ServingSet, address: str) -> int:
    line = next(x for x in serving.lines if x.startswith("stage1") and address in x)
    return int(line.split("(pid ")[1].split(")")[0])


def test_the_sharded_set_answers_as_the_unsharded_stage1(sharded_set, banked):
    _, bank = banked
    whole = Stage1(bank)
    assert sum(x.startswith("stage1") for x in sharded_set.lines) == 3
    assert any("shard 2 of 3: rows [2000, 3000)" in x for x in sharded_set.lines)
    with sharded_set.client() as client:
        for ctx in CONTEXTS:
            for r, expected in ((client.search_rows(ctx, k=K),
                                 whole.search(ContextRows(np.array(ctx)), k=K)),
                                (client.search_vectors(bank.vectors[ctx], k=K),
                                 whole.search([bank.vectors[ctx]], k=K))):
                assert [h.row for h in r.hits] == expected.ids[0].tolist(), ctx
                np.testing.assert_array_equal([h.score for h in r.hits], expected.scores[0])
                assert not r.degraded and r.stage1 == "heuristic"


def test_shard_servers_health_rows_and_refusals(sharded_set):
    for s, addresses in enumerate(sharded_set.cfg.stage1.shards):
        with grpc.insecure_channel(addresses[0]) as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="cascade.v1.Stage1"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = rpc.Stage1Stub(ch)
            q = (np.ones((1, DIM)) / np.sqrt(DIM)).astype("<f4")
            r = stub.Search(pb.Stage1Request(
                contexts=[pb.Context(rows=pb.Rows(rows=[1, 2]))], k=7,
                queries=pb.Vectors(data=q.tobytes(), dim=DIM)), timeout=10)
            assert (r.row_start, r.row_end) == shard_bounds(N, 3)[s]
            assert all(r.row_start <= i < r.row_end for i in r.results[0].ids)
            with pytest.raises(grpc.RpcError) as e:  # rows without a query: it cannot form one
                stub.Search(pb.Stage1Request(contexts=[pb.Context(rows=pb.Rows(rows=[1]))],
                                             k=7), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "send the queries too" in e.value.details()


def test_a_shard_down_degrades_naming_its_rows_then_all_down_is_unavailable(sharded_set,
                                                                             banked):
    root, bank = banked
    shards = sharded_set.cfg.stage1.shards
    os.kill(stage1_pid(sharded_set, shards[1][0]), signal.SIGKILL)
    s0, _, s2 = shard_stage1s(root / "bank.npz", 3)
    whole = Stage1(bank)
    ctx = [4, 5, 6]
    q = whole.queries(whole.contexts(ContextRows(np.array(ctx)))[0])
    parts = [s.search(ContextRows(np.array(ctx)), k=K, queries=q) for s in (s0, s2)]
    _, expected = merge_topk([(p.scores, p.ids) for p in parts], K)
    with sharded_set.client(retries=0) as client:
        r = client.search_rows(ctx, k=K, timeout=10)
        assert r.degraded and "stage1 shard 1 of 3" in r.degraded_reason
        assert "rows [1000, 2000) not searched" in r.degraded_reason
        assert [h.row for h in r.hits] == expected[0].tolist()
        url = f"http://127.0.0.1:{sharded_set.cfg.front.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'cascade_degraded_total{cause="UNAVAILABLE",stage="stage1"}' in text
        for s in (0, 2):
            os.kill(stage1_pid(sharded_set, shards[s][0]), signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as e:
            client.search_rows(ctx, k=K, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stage 1 cannot answer" in e.value.details() and "shard 2 of 3" in e.value.details()
