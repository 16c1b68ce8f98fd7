"""benchmarks.latency end to end on a small synthetic bank: real servers, real clients."""

from __future__ import annotations

import json

from benchmarks import latency


def test_latency_benchmark_reports_the_curve_and_where_the_cpu_goes(tmp_path, capsys):
    out = tmp_path / "latency.json"
    rc = latency.main(["--synthetic", "2000", "--clients", "1,2", "--seconds", "0.5",
                       "--n", "10", "--layouts", "single,in_process", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())  # strict JSON
    single = report["layouts"]["single"]
    assert single["one_search"]["errors"] == 0 and single["one_search"]["p50_ms"] > 0
    assert {"stage1_server", "lvm_server", "tmd_server"} <= set(
        single["one_search"]["front_median_ms"])
    for point in single["curve"]:
        assert point["searches"] > 0 and not point["errors"]
        cpu = point["cpu_ms_per_search"]
        assert set(cpu) == {"front", "stage1", "lvm", "tmd", "clients"}
        # every server worked for the searches (Linux /proc; None only where it is missing)
        assert all(v is None or v > 0 for v in cpu.values()), cpu
    # every stage in the front: one server, its batches counted
    (point,) = report["layouts"]["in_process"]["curve"]
    assert point["searches"] > 0 and not point["errors"]
    assert set(point["cpu_ms_per_search"]) == {"front", "clients"}
    assert point["mean_batch"]["front"] >= 1
    assert report["in_process"]["p50_ms"] > 0
    ref = report["in_process"]["reference"]["ms"]
    assert ref["flat_ip_1_thread"] > 0 and ref["matmul_argpartition"] > 0
    printed = capsys.readouterr().out
    assert "CPU ms per search" in printed
    assert "one search (in_process), p50" in printed and "the issue's reference" in printed


def test_an_unknown_layout_is_refused_in_one_line_before_anything_starts(capsys, tmp_path):
    out = tmp_path / "latency.json"
    assert latency.main(["--layouts", "single,bogus", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["latency: unknown layout 'bogus' (--layouts takes single, reuseport, "
                   "replicas, mixed, in_process)"]
    assert not out.exists()


def test_bench_index_refuses_unknown_exact_parameters_in_one_line(capsys, tmp_path):
    from benchmarks import index
    from cascade.bank import save_bank
    from training.expand_pairs import ExpandConfig, expand_pairs, save_pairs
    from training.synth_bank import SynthConfig, synth_bank

    bank = synth_bank(SynthConfig(n=400, dim=16, mean_chunks=8, topics=2, seed=3))
    save_bank(bank, tmp_path / "bank.npz")
    save_pairs(expand_pairs(bank, ExpandConfig(context_len=3, stride=1, max_per_seq=50,
                                               train_split=0.8, seed=1)),
               tmp_path / "pairs.npz")
    out = tmp_path / "index.json"
    rc = index.main(["--bank", str(tmp_path / "bank.npz"), "--pairs", str(tmp_path / "pairs.npz"),
                     "--index", "Flat|prefilter=bogus", "--out", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --index 'Flat|prefilter=bogus': the exact index takes no parameters "
                   "but 'prefilter=int8' or 'prefilter=none'"]
