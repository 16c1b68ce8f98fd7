"""Large banks: one mapped copy of the bank per machine, and an ANN stage 1 whose measured
containment is recorded in deploy.json and checked at start-up (small synthetic banks, real
FAISS, a real serving set on free ports)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cascade.bank import BankError, converted_path, load_bank, save_bank
from cascade.context import ContextRows
from cascade.deploy import DeployError
from cascade.memory import file_memory, process_memory
from cascade.pairs import load_pairs
from cascade.stage1 import Stage1, index_cache_path
from training import tune_index
from training.expand_pairs import ExpandConfig, expand_pairs, save_pairs
from training.synth_bank import SynthConfig, synth_bank

ANN = "IVF32,SQ8"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 6,000 x 384 bank (the encoder's dimension, as the front checks), its pairs, a
    heuristic deploy.json, and that deploy tuned to an ANN stage 1 by `python -m
    training.tune_index` with a size threshold below the bank's."""
    root = tmp_path_factory.mktemp("large")
    bank = synth_bank(SynthConfig(n=6000, dim=384, mean_chunks=10, topics=8, seed=3))
    save_bank(bank, root / "bank.npz")
    pairs = expand_pairs(bank, ExpandConfig(context_len=5, stride=1, max_per_seq=100,
                                            train_split=0.8, seed=1))
    save_pairs(pairs, root / "pairs.npz")
    exact = {"stage1": "heuristic", "checkpoint": None, "reason": "test",
             "heuristic": {"kind": "exp_weighted", "alpha": 0.1}, "bank": str(root / "bank.npz"),
             "bank_fingerprint": bank.fingerprint(), "cascade": {"k_stage1": 200}}
    (root / "exact.json").write_text(json.dumps(exact))
    (root / "deploy.json").write_text(json.dumps(exact))
    argv = ["--deploy", str(root / "deploy.json"), "--pairs", str(root / "pairs.npz"),
            "--index", ANN, "--queries", "300"]
    assert tune_index.main(argv) == 0  # below the size: stays exact, says so
    assert json.loads((root / "deploy.json").read_text()) == exact
    assert tune_index.main(argv + ["--exact-max-size", "1000"]) == 0
    return root, bank


def test_tune_index_records_containment_on_val_and_test(tuned):
    root, bank = tuned
    deploy = json.loads((root / "deploy.json").read_text())
    rec = deploy["stage1_index"]
    assert deploy["cascade"]["index_factory"] == ANN == rec["index_factory"]
    assert deploy["cascade"]["index_params"] == rec["index_params"]
    assert rec["containment"]["val"] >= 0.99 and rec["containment"]["test"] >= 0.99
    assert 0.9 <= rec["top10_equal_test"] <= 1.0  # scores exact: the top 10 rarely differs
    # the whole cascade over every test context, per form, against the exact stage 1's
    assert rec["cascade_contexts_test"] == len(load_pairs(root / "pairs.npz", bank).side("test"))
    eq = rec["cascade_top10_equal_test"]
    assert set(eq) == {"vectors", "rows"} and all(0.9 <= v <= 1.0 for v in eq.values())
    assert rec["tuned_on"] == "val" and rec["k"] == 200 and rec["bank_fingerprint"] == \
        bank.fingerprint() and rec["build_seconds"] >= 0 and rec["index_bytes"] > 0
    sweep = json.loads((root / "tune_index.json").read_text())["sweep"]
    assert any(r["containment_val"] < 0.99 for r in sweep)  # the sweep found the floor


def test_ann_scores_are_the_exact_scores_of_the_rows_returned(tuned):
    root, bank = tuned
    s1 = Stage1.from_deploy(root / "deploy.json")
    exact = Stage1.from_deploy(root / "exact.json")
    assert s1.index_factory == ANN and not s1.bank.vectors.flags.writeable
    starts, ends = bank.article_bounds()
    shares = []
    for s, e in list(zip(starts, ends, strict=True))[:20]:
        rows = np.arange(s, min(e - 1, s + 4))
        res = s1.search(ContextRows(rows), k=200)
        q = s1.queries([bank.vectors[rows]])[0]
        np.testing.assert_allclose(res.scores[0], bank.vectors[res.ids[0]] @ q, atol=1e-6)
        assert not np.isin(res.ids[0], rows).any()
        ref = exact.search(ContextRows(rows), k=200)
        common, a, b = np.intersect1d(res.ids[0], ref.ids[0], return_indices=True)
        np.testing.assert_allclose(res.scores[0][a], ref.scores[0][b], atol=1e-5)
        shares.append(len(common) / 200)
    assert np.mean(shares) >= 0.95  # tune_index measured >= 0.99 on 300 val contexts


def _with(root: Path, name: str, change) -> Path:
    deploy = json.loads((root / "deploy.json").read_text())
    change(deploy)
    path = root / f"{name}.json"
    path.write_text(json.dumps(deploy))
    return path


def test_an_ann_deploy_below_the_floor_or_on_a_moved_bank_is_refused(tuned):
    root, _ = tuned

    def low(d):
        d["stage1_index"]["containment"]["val"] = 0.93

    with pytest.raises(DeployError, match=r"containment@200 0.93 on val, below "
                                          r"stage1.min_containment 0.99"):
        Stage1.from_deploy(_with(root, "low", low))
    Stage1.from_deploy(_with(root, "low", low), min_containment=0.9)  # a lower floor passes

    def moved(d):
        d["stage1_index"]["bank_fingerprint"] = "sha256:" + "0" * 64

    with pytest.raises(DeployError, match="the bank is now .* \\(it moved\\)"):
        Stage1.from_deploy(_with(root, "moved", moved))

    def unmeasured(d):
        del d["stage1_index"]

    with pytest.raises(DeployError, match="records no measured containment"):
        Stage1.from_deploy(_with(root, "unmeasured", unmeasured))

    def other(d):
        d["cascade"]["index_params"] = "nprobe=1,shortlist=200"

    with pytest.raises(DeployError, match="containment was measured for"):
        Stage1.from_deploy(_with(root, "other", other))


def test_start_up_reuses_the_cached_index_mapped_and_a_moved_bank_rebuilds_it(tuned,
                                                                             tmp_path):
    root, bank = tuned
    cache = index_cache_path(load_bank(root / "bank.npz"), ANN)
    os.utime(cache, (1, 1))
    s1 = Stage1.from_deploy(root / "deploy.json")
    assert os.stat(cache).st_mtime == 1  # loaded, not rebuilt
    maps = Path("/proc/self/maps").read_text()
    assert str(cache) in maps  # IVF lists memory-mapped (IO_FLAG_MMAP): shared between processes
    del s1
    # A moved bank (another file content, same name): the cache no longer matches and is rebuilt.
    moved = tmp_path / "bank.npz"
    other = synth_bank(SynthConfig(n=6000, dim=384, mean_chunks=10, topics=8, seed=4))
    save_bank(other, moved)
    shutil.copy(cache, index_cache_path(load_bank(moved), ANN))
    shutil.copy(f"{cache}.json", f"{index_cache_path(load_bank(moved), ANN)}.json")
    from cascade.stage1 import open_index
    before = os.stat(index_cache_path(load_bank(moved), ANN)).st_mtime_ns
    mapped = load_bank(moved, mmap=True)
    open_index(mapped.vectors, ANN, "", index_cache_path(mapped, ANN), mapped.fingerprint())
    assert os.stat(index_cache_path(mapped, ANN)).st_mtime_ns != before
    side = json.loads(Path(f"{index_cache_path(mapped, ANN)}.json").read_text())
    assert side["fingerprint"] == other.fingerprint()


def test_a_compressed_bank_is_converted_once_and_mapped(tmp_path, caplog):
    bank = synth_bank(SynthConfig(n=500, dim=16, mean_chunks=5, seed=1))
    path = tmp_path / "c.npz"
    np.savez_compressed(path, vectors=bank.vectors, article_indices=bank.article_indices,
                        chunk_indices=bank.chunk_indices, tmd_codes=bank.tmd_codes)
    with caplog.at_level("WARNING"):
        mapped = load_bank(path, mmap=True)
    assert "writing" in caplog.text and str(converted_path(path)) in caplog.text
    assert mapped.fingerprint() == load_bank(path).fingerprint()
    assert not mapped.vectors.flags.writeable
    stamp = os.stat(converted_path(path)).st_mtime_ns
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_bank(path, mmap=True)
    assert caplog.text == "" and os.stat(converted_path(path)).st_mtime_ns == stamp
    (tmp_path / "ro").mkdir()
    shutil.copy(path, tmp_path / "ro" / "c.npz")
    os.chmod(tmp_path / "ro", 0o555)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            return  # root ignores the mode: nothing more to check
        with pytest.raises(BankError, match="cannot write the mappable copy"):
            load_bank(tmp_path / "ro" / "c.npz", mmap=True)
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_the_serving_set_shares_one_mapping_of_the_bank_and_the_index(tuned):
    """Two stage-1 and two LVM processes (and two TMD ones) of one serving set on an ANN
    deploy: each maps the bank file, and their PSS of it sums to about one copy, where RSS
    counts it once per process. The TMD servers do not map the bank's vectors at all."""
    from serving.harness import ServingSet, free_port

    root, bank = tuned
    data = {"deploy": str(root / "deploy.json"), "grace_seconds": 5.0,
            "front": {"addresses": [f"127.0.0.1:{free_port()}"], "metrics_port": 0,
                      "processes": 1}}
    for stage in ("stage1", "tmd"):
        data[stage] = {"addresses": [f"127.0.0.1:{free_port()}"], "metrics_port": 0,
                       "processes": 2}
    data["stage1"]["shards"] = [data["stage1"].pop("addresses")]
    config = root / "pss.yaml"
    config.write_text(yaml.safe_dump(data))
    s = ServingSet(config)
    try:
        with s.client() as client:
            starts, ends = bank.article_bounds()
            for st in starts[:5]:
                client.search_rows(list(range(st, st + 3)))
        from cascade.memory import descendants
        pids = [p for p in descendants(s.proc.pid) if p != s.proc.pid]
        bank_file = root / "bank.npz"
        cache = index_cache_path(load_bank(bank_file), ANN)
        per = {p: file_memory(p, bank_file) for p in pids}
        mapping = [m for m in per.values() if m["rss"] > 0]
        vector_bytes = bank.vectors.nbytes
        assert len(mapping) == 3  # two stage-1 processes and the front; the TMD ones read codes
        rss = sum(m["rss"] for m in mapping)
        pss = sum(m["pss"] for m in mapping)
        assert rss >= 2 * vector_bytes * 0.9  # each process sees the whole bank resident...
        assert pss <= vector_bytes * 1.15  # ...but the machine holds it once
        index = [file_memory(p, cache) for p in pids]
        assert sum(1 for m in index if m["size"] > 0) == 2  # both stage-1 processes map it
        assert sum(m["pss"] for m in index) <= os.path.getsize(cache) * 1.05
        assert all(process_memory(p)["pss"] > 0 for p in pids)
    finally:
        s.stop()
