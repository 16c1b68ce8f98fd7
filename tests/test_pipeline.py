"""The in-process cascade from deploy.json: stage by stage, one context or a batch, its pins,
and cascade_eval's table and strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade.deploy import DeployError
from cascade.pipeline import Cascade, ContextRows
from tests.test_lvm import cfg_for, setup  # noqa: F401  (the fixture)
from training.train_lvm import train


@pytest.fixture(scope="module")
def cascade_dir(setup):  # noqa: F811
    root, bank, pairs = setup
    train(cfg_for(root, "pipe", epochs=1, require_gain=False))
    return root, bank, pairs


def test_cascade_chains_the_stages(cascade_dir):
    root, bank, pairs = cascade_dir
    cascade = Cascade.from_deploy(root / "deploy.json")
    assert cascade.config.k_stage1 == 60
    rows = [np.arange(s, e) for s, e in zip(pairs.ctx_start[:5], pairs.ctx_end[:5], strict=True)]
    res = cascade.search(ContextRows(rows))
    assert res.stage1_kind == "heuristic" and set(res.stages) == {"stage1", "lvm", "tmd"}
    assert res.ids.shape == (5, 10) and res.stages["stage1"].ids.shape == (5, 60)
    assert res.stages["lvm"].ids.shape == (5, 50) and res.stages["tmd"].ids.shape == (5, 10)
    for b in range(5):
        assert set(res.stages["lvm"].ids[b]) <= set(res.stages["stage1"].ids[b])
        assert set(res.ids[b]) <= set(res.stages["lvm"].ids[b])
        assert not np.isin(res.ids[b], rows[b]).any()
    assert all(st.seconds > 0 for st in res.stages.values())
    # The LVM's prediction, computed beside stage 1, gives what rerank computes by itself.
    vectors = [bank.vectors[r] for r in rows]
    alone = cascade.lvm.rerank(vectors, res.stages["stage1"].ids, res.stages["stage1"].scores, 50)
    assert np.array_equal(alone.ids, res.stages["lvm"].ids)
    assert np.allclose(alone.scores, res.stages["lvm"].scores, rtol=0, atol=1e-6)
    # Raw vectors, one context, with the chunks' codes given: the same answer as by rows.
    one = cascade.search(bank.vectors[rows[2]], k=5, context_codes=[bank.tmd_codes[rows[2]]])
    assert np.array_equal(one.ids[0], res.ids[2, :5])
    tagged = cascade.search(bank.vectors[rows[2]])  # codes tagged from the vectors instead
    assert tagged.ids.shape == (1, 10)
    n = len(rows[2])
    with pytest.raises(ValueError, match=f"context_codes 0: {n + 1} codes for {n} chunks"):
        cascade.search(bank.vectors[rows[2]], context_codes=[np.zeros(n + 1, np.int64)])
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\]"):
        cascade.search(bank.vectors[rows[0]], k=11)


def test_a_tampered_lvm_is_refused(cascade_dir, tmp_path):
    root, _, _ = cascade_dir
    deploy = json.loads((root / "deploy.json").read_text())
    deploy["lvm"]["sha256"] = "sha256:" + "2" * 64
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(deploy))
    with pytest.raises(DeployError, match="lvm.checkpoint.*deploy.json pins sha256:2222"):
        Cascade.from_deploy(path)


def test_cascade_eval_writes_a_table_and_strict_json(cascade_dir, capsys):
    from benchmarks import cascade_eval

    root, _, pairs = cascade_dir
    out = root / "cascade_eval.json"
    assert cascade_eval.main(["--deploy", str(root / "deploy.json"), "--pairs",
                              str(root / "pairs.npz"), "--split", "test",
                              "--latency-contexts", "20", "--batch", "8",
                              "--out", str(out)]) == 0
    report = json.loads(out.read_text(), parse_constant=pytest.fail)  # strict: no NaN
    # The synthetic bank has no texts: that form is left out and the report says so; vectors
    # (what texts become) lead.
    assert report["forms"] == ["vectors", "rows", "ablated"] and report["n"] == len(pairs.test())
    assert "no texts" in report["notes"]["texts"]
    assert report["headline"]["form"] == "vectors" and report["headline"]["stage"] == "tmd"
    for form in report["forms"]:
        q = report["quality"][form]
        assert list(q) == ["stage1", "lvm", "tmd"]
        assert q["stage1"]["recall@60"]["value"] >= q["stage1"]["hit@10"]["value"]
        for stage, previous in (("lvm", "stage1"), ("tmd", "lvm")):
            for key, base in (("vs_stage1", "stage1"), ("vs_previous", previous)):
                d = q[stage][key]["hit@10"]
                assert d["diff"] == pytest.approx(q[stage]["hit@10"]["value"]
                                                  - q[base]["hit@10"]["value"], abs=1e-6)
            lo, hi = q[stage]["hit@10"]["ci95"]
            assert lo <= q[stage]["hit@10"]["value"] <= hi
    dup = report["notes"]["near_duplicates"]
    assert dup["dup_cos"] == report["config"]["dup_cos"] and 0 <= dup["hits_removed"]
    lat = report["latency"]
    assert lat["single"]["stage1"]["calls"] == 20 and lat["batch"]["total"]["calls"] == 2
    # The machine's speed on the reference operations, measured in the same run.
    ref = report["reference"]
    assert set(ref["ms"]) == set(ref["issue_ms"]) and ref["ms"]["flat_ip_1_thread"] > 0
    printed = capsys.readouterr().out
    assert "Hit@10" in printed and "x this machine's IndexFlatIP search" in printed


def test_recall_benchmark_adds_the_cascade_row(cascade_dir, capsys):
    """benchmarks.recall scores the cascade's final top-10 through the serving path: the same
    Hit@10 as cascade_eval's last stage, and no Recall@K past its list's 10 rows."""
    from benchmarks import cascade_eval, recall

    root, bank, pairs = cascade_dir
    out = root / "recall.json"
    assert recall.main(["--bank", str(bank.path), "--pairs", str(root / "pairs.npz"),
                        "--deploy", str(root / "deploy.json"), "--out", str(out)]) == 0
    report = json.loads(out.read_text(), parse_constant=pytest.fail)
    cascade = Cascade.from_deploy(root / "deploy.json")
    for form in ("vectors", "rows"):
        name = f"cascade top-10 (stage1 -> lvm -> tmd), {form}"
        row = report["methods"][name]
        assert row["recall@50"] is None and row["recall@50_ci95"] is None
        ranks = cascade_eval.stage_ranks(cascade, pairs.test(), form, bank.vectors)
        assert row["recall@10"] == pytest.approx(100 * float(((ranks["tmd"] >= 0)
                                                             & (ranks["tmd"] < 10)).mean()))
        assert set(report["vs_heuristic"][name]) == {"recall@10"}
    assert "| cascade top-10" in capsys.readouterr().out
    # On val (where the LVM's head was fitted) the row is left out, with a note saying so.
    assert recall.main(["--bank", str(bank.path), "--pairs", str(root / "pairs.npz"),
                        "--deploy", str(root / "deploy.json"), "--split", "val",
                        "--out", str(out)]) == 0
    assert not any(m.startswith("cascade") for m in json.loads(out.read_text())["methods"])
    assert "scored on the test split only" in capsys.readouterr().err


def test_an_lvm_fitted_on_the_reported_articles_is_refused(cascade_dir):
    """An LVM whose split puts test articles of these pairs on its train/val side would be
    scored on articles it was fitted on."""
    from cascade.lvm import LvmError
    from cascade.split import TEST, SplitSpec

    root, _, pairs = cascade_dir
    cascade = Cascade.from_deploy(root / "deploy.json")
    cascade.lvm.check_reported_on(pairs, TEST)  # its own split: fine
    spec = pairs.split_spec.to_dict()
    cascade.lvm.split = SplitSpec.from_dict({**spec, "seed": spec["seed"] + 1})
    with pytest.raises(LvmError, match="test pairs .* articles it was fitted on"):
        cascade.lvm.check_reported_on(pairs, TEST)
    cascade.lvm.split = None
    with pytest.raises(LvmError, match="records no article split"):
        cascade.lvm.check_reported_on(pairs, TEST)


def test_the_ablated_form_strikes_the_targets_article_but_the_target(cascade_dir):
    from benchmarks.cascade_eval import strike_article

    root, bank, pairs = cascade_dir
    cascade = Cascade.from_deploy(root / "deploy.json")
    test = pairs.test().subset(np.arange(20))
    rows = [np.arange(s, e) for s, e in zip(test.ctx_start, test.ctx_end, strict=True)]
    seen = {}

    def keep(res):
        seen["before"] = res
        seen["after"] = strike_article(bank, test.target)(res)
        return seen["after"]

    cascade.search(ContextRows(rows), after_stage1=keep)
    before, after = seen["before"], seen["after"]
    art = bank.article_indices
    for b, t in enumerate(test.target):
        ids = after.ids[b][after.ids[b] >= 0]
        assert not ((art[ids] == art[t]) & (ids != t)).any()
        expected = [i for i in before.ids[b] if i >= 0 and (art[i] != art[t] or i == t)]
        assert list(ids) == expected  # the rest keeps its order and its scores
        assert np.isneginf(after.scores[b][len(ids):]).all()


def test_stage3_takes_the_w_tuned_for_the_contexts_lane_source(cascade_dir):
    """Rows: lanes from the bank's codes, w = tmd_w; vectors: lanes tagged from the vectors,
    w = tmd_w_tagged. With 1 and 0, rows put every in-lane candidate first and vectors keep
    the LVM's order."""
    from cascade.tmd import unpack

    root, bank, pairs = cascade_dir
    cascade = Cascade.from_deploy(root / "deploy.json")
    cascade.config.tmd_w, cascade.config.tmd_w_tagged = 1.0, 0.0
    test = pairs.test().subset(np.arange(40))
    rows = [np.arange(s, e) for s, e in zip(test.ctx_start, test.ctx_end, strict=True)]
    by_vectors = cascade.search([bank.vectors[r] for r in rows])
    assert np.array_equal(by_vectors.ids, by_vectors.stages["lvm"].ids[:, :10])
    by_rows = cascade.search(ContextRows(rows))
    lanes = cascade.context_lanes([bank.vectors[r] for r in rows], rows, None)
    assert lanes.source == "codes"
    in_lane = unpack(bank.tmd_codes[by_rows.ids])[0] == unpack(lanes.codes)[0][:, None]
    assert (np.diff(in_lane.astype(int), axis=1) <= 0).all()  # in-lane rows first
    assert not np.array_equal(by_rows.ids, by_rows.stages["lvm"].ids[:, :10])
    # A deploy.json from before the split (tmd_w only) serves vector contexts with w = 0.
    from cascade.deploy import CascadeConfig
    assert CascadeConfig.from_dict({"tmd_w": 0.5}).tmd_w_for("tagged") == 0.0
