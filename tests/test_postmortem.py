"""The phase-2 post-mortem: findings on fresh towers, clean vs naive margin, verdicts, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascade import checkpoint as ck
from cascade.evaluation import KS, evaluate
from cascade.index import build_index, search
from cascade.metrics import alignment
from cascade.negatives import DUP_THRESHOLD
from cascade.pairs import save_pairs
from cascade.query import heuristic_queries
from cascade.towers import TowerConfig, build_towers
from training import postmortem as pm
from training.expand_pairs import ExpandConfig, expand_pairs, resolve
from training.synth_bank import SynthConfig, synth_bank


def _save_towers(path, bank, **model):
    cfg = TowerConfig(dim=bank.dim, hidden=32, **model)
    query, doc = build_towers(cfg)
    ck.save_checkpoint(path, {ck.QUERY_TOWER: query.state_dict(), ck.DOC_TOWER: doc.state_dict(),
                              ck.MODEL_CONFIG: cfg.to_dict(), ck.EPOCH: 0,
                              ck.BANK_FINGERPRINT: bank.fingerprint()})
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_bank, small_bank_path):
    """Pairs over the small bank, a fresh tower and a last-vector tower (alpha 50) checkpoint."""
    root = tmp_path_factory.mktemp("postmortem")
    pairs = expand_pairs(small_bank, resolve(ExpandConfig(seed=3), small_bank))
    save_pairs(pairs, root / "pairs.npz")
    fresh = _save_towers(root / "fresh" / "checkpoints" / "best.pt", small_bank)
    last = _save_towers(root / "last" / "checkpoints" / "best.pt", small_bank, alpha=50.0)
    return {"root": root, "bank": str(small_bank_path), "pairs": str(root / "pairs.npz"),
            "fresh": str(fresh), "last": str(last), "pairs_obj": pairs}


def _argv(run, ckpt=None, **extra):
    argv = ["--ckpt", ckpt or run["fresh"], "--pairs", run["pairs"], "--bank", run["bank"]]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def test_fresh_checkpoint_writes_every_finding(run, capsys):
    assert pm.main(_argv(run, sample=300)) == 0
    out = run["root"] / "fresh" / "postmortem.json"  # the run directory, not checkpoints/
    r = json.loads(out.read_text())
    assert r["settings"]["val_pairs"] == len(run["pairs_obj"].val())
    m = r["margin"]
    for key in ("margin", "pos_cos", "neg_cos"):
        assert np.isfinite(m["clean"][key]) and np.isfinite(m["naive"][key])
    assert m["understated_by"] == pytest.approx(m["clean"]["margin"] - m["naive"]["margin"])
    assert m["verdict"] == pm.margin_verdict(m["clean"]["margin"])
    nd = r["near_duplicates"]
    assert 0 <= nd["near_dup_rate_q_and_pos"] <= nd["near_dup_rate"] <= 1
    fn = r["false_negatives"]
    assert max(fn["positive_rate"], fn["same_article_rate"]) <= fn["union_rate"] <= 1
    assert fn["union_rate"] <= fn["positive_rate"] + fn["same_article_rate"] + 1e-9
    al = r["alignment"]
    assert al["sampled_rows"] == 300 and al["pairs"] == 300 * 299 // 2
    assert al["verdict"] == pm.alignment_verdict(al["mean_cos"]) and al["std_cos"] > 0
    for k in KS:
        lo, hi = r["recall"][f"recall@{k}_ci95"]
        assert lo <= r["recall"][f"recall@{k}"] <= hi
    assert 0 < r["recall"]["mrr"] <= 1
    assert set(r["verdicts"]) == {"margin", "near_duplicates", "alignment"}
    assert isinstance(r["recommendations"], list)
    assert r["inputs"]["ckpt"] == run["fresh"] and r["inputs"]["epoch"] == 0
    printed = capsys.readouterr().out
    assert "separation margin" in printed and "naive" in printed and str(out) in printed


def test_last_vector_model_margin_excludes_the_positive(run, small_bank):
    """The Done-when case: a model returning the last context vector finds the positive among
    its raw top-16; the naive margin counts it as a negative and reads lower than the clean one."""
    query, doc, _ = ck.load_towers(run["last"], small_bank.fingerprint())
    pairs = run["pairs_obj"]
    r = pm.run_postmortem(query, doc, small_bank, pairs, sample=200)
    val = pairs.val()
    q = heuristic_queries(small_bank.vectors, val, "last_vector")
    index = build_index(small_bank.vectors, "flat")
    D, I = search(index, q, 48, val.ctx_start, val.ctx_end)
    margin, negs = pm.margins(q, D, I, small_bank.vectors, val, small_bank.article_indices)

    # The tower's query is the last vector.
    assert r["margin"]["clean"]["pos_cos"] == pytest.approx(
        float(np.einsum("pd,pd->p", q, small_bank.vectors[val.target]).mean()), abs=1e-5)
    # The raw top-16 often holds the positive; the clean negatives never do, nor context rows.
    assert r["false_negatives"]["positive_rate"] > 0.2
    assert not (negs.rows == val.target[:, None]).any()
    assert not ((negs.rows >= val.ctx_start[:, None]) & (negs.rows < val.ctx_end[:, None])).any()
    assert r["margin"]["clean_negatives_holding_positive"] == 0
    assert r["margin"]["clean_negatives_holding_context"] == 0
    # Brute force: naive negatives are the raw top-16 with context masked, positive included.
    S = q @ small_bank.vectors.T
    for i, (s, e) in enumerate(zip(val.ctx_start, val.ctx_end, strict=True)):
        S[i, s:e] = -np.inf
    naive_neg = np.sort(S, axis=1)[:, ::-1][:, :16].mean()
    pos = S[np.arange(len(S)), val.target]
    assert r["margin"]["naive"]["margin"] == pytest.approx(pos.mean() - naive_neg, abs=1e-4)
    # The difference: counting the positive lowered the margin.
    clean, naive = r["margin"]["clean"]["margin"], r["margin"]["naive"]["margin"]
    assert naive < clean - 1e-3
    assert r["margin"]["understated_by"] == pytest.approx(clean - naive)
    assert margin["clean"]["margin"] == pytest.approx(clean, abs=1e-5)
    # The clean margin is the one training reports.
    metrics, _ = evaluate(q, val, small_bank, index)
    assert metrics["margin"] == pytest.approx(clean, abs=1e-5)
    assert metrics["raw_top16_positive_rate"] == r["false_negatives"]["positive_rate"]


@pytest.mark.parametrize("margin, verdict", [
    (-0.2, "collapsed"), (0.0, "collapsed"), (0.03, "collapsed"), (0.0499, "collapsed"),
    (0.05, "low"), (0.08, "low"), (0.0999, "low"), (0.10, "healthy"), (0.3, "healthy"),
    (float("nan"), "unknown")])
def test_margin_verdict(margin, verdict):
    assert pm.margin_verdict(margin) == verdict


@pytest.mark.parametrize("rate, verdict", [(0.0, "clean"), (0.01, "clean"),
                                           (0.02, "some impurity"), (0.05, "some impurity"),
                                           (0.051, "high")])
def test_dup_verdict(rate, verdict):
    assert pm.dup_verdict(rate) == verdict


def test_alignment_and_its_verdict():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 64)).astype(np.float32)
    iso = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = alignment(iso, 500, np.random.default_rng(0))
    assert abs(a["mean_cos"]) < 0.02 and pm.alignment_verdict(a["mean_cos"]) == "OK"
    shifted = iso + 0.6 * iso[0]  # a shared direction: anisotropic
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    a = alignment(shifted, 500, np.random.default_rng(0))
    assert a["mean_cos"] > 0.10 and pm.alignment_verdict(a["mean_cos"]) == "whitening"
    assert pm.alignment_verdict(-0.2) == "whitening"
    assert a["sampled_rows"] == 500
    assert alignment(iso, 5000, np.random.default_rng(0))["sampled_rows"] == 1000


def test_raw_top_rates_count_planted_duplicates(run, small_bank):
    """A planted near-duplicate of the positive, close to q too, is counted in both rates."""
    val = run["pairs_obj"].val().subset(np.arange(4))
    V = small_bank.vectors.copy()
    far = (val.target + len(V) // 2) % len(V)
    V[far[0]] = V[val.target[0]]  # duplicate of the positive, and q = positive below
    q = V[val.target].copy()
    I = np.stack([np.full(16, f) for f in far])
    I[:, 1] = val.target  # the positive is in every top-16
    r = pm.raw_top_rates(q, I, V, val, small_bank.article_indices, DUP_THRESHOLD)
    assert r["near_dup_rate"] == pytest.approx(15 / (4 * 16))  # 15 copies in row 0
    assert r["near_dup_rate_q_and_pos"] == r["near_dup_rate"]
    assert r["union_rate"] == 1.0


def test_near_dup_rate_means_the_same_in_the_postmortem_and_mining(run, small_bank):
    """A twin of the positive far from q: near_dup_rate (cos to the positive) counts it in both
    the post-mortem and cascade.negatives (mining, pre-flight); only the checklist's q-and-pos
    rate leaves it out."""
    from cascade.negatives import clean_negatives

    val = run["pairs_obj"].val().subset(np.arange(4))
    V = small_bank.vectors.copy()
    far = (val.target + len(V) // 2) % len(V)
    V[far] = V[val.target]  # each positive's twin, in another article
    q = -V[val.target]  # cos(q, twin) = -1
    I = np.stack([np.r_[f, np.flatnonzero(small_bank.article_indices != small_bank.article_indices[
        t])[:15]] for f, t in zip(far, val.target, strict=True)])
    D = np.einsum("pkd,pd->pk", V[I], q)
    r = pm.raw_top_rates(q, I, V, val, small_bank.article_indices, DUP_THRESHOLD)
    negs = clean_negatives(q, D, I, V, val.target, small_bank.article_indices, 16,
                           threshold=DUP_THRESHOLD)
    assert r["near_dup_rate"] == negs.near_dup_rate >= 1 / 16
    assert r["near_dup_rate_q_and_pos"] == 0.0


def _one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err and needle in err, err


def test_cli_missing_checkpoint(run, tmp_path, capsys):
    rc = pm.main(_argv(run, ckpt=str(tmp_path / "nope.pt"), out=tmp_path / "pm.json"))
    _one_line_error(capsys, rc, "no such checkpoint")
    assert not (tmp_path / "pm.json").exists()


def test_cli_pairs_from_another_bank(run, tmp_path, capsys):
    other = synth_bank(SynthConfig(n=600, dim=32, mean_chunks=20, topics=2, seed=9))
    save_pairs(expand_pairs(other, resolve(ExpandConfig(), other)), tmp_path / "other.npz")
    argv = _argv(run, out=tmp_path / "pm.json")
    argv[argv.index("--pairs") + 1] = str(tmp_path / "other.npz")
    _one_line_error(capsys, pm.main(argv), "another bank")
    assert not (tmp_path / "pm.json").exists()


def test_cli_checkpoint_from_another_bank_or_unreadable(run, tmp_path, capsys):
    other = synth_bank(SynthConfig(n=600, dim=32, mean_chunks=20, topics=2, seed=9))
    foreign = _save_towers(tmp_path / "foreign.pt", other)
    _one_line_error(capsys, pm.main(_argv(run, ckpt=str(foreign))), "another bank")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    _one_line_error(capsys, pm.main(_argv(run, ckpt=str(junk))), "not a readable checkpoint")


@pytest.mark.parametrize("flag, value, needle", [("device", "mps", "cpu only"),
                                                 ("negatives", 0, "--negatives"),
                                                 ("dup_threshold", 1.5, "--dup-threshold")])
def test_cli_bad_flags(run, tmp_path, capsys, flag, value, needle):
    _one_line_error(capsys, pm.main(_argv(run, out=tmp_path / "pm.json", **{flag: value})),
                    needle)
    assert not (tmp_path / "pm.json").exists()


def test_default_out():
    assert str(pm.default_out("runs/x/checkpoints/best.pt")) == "runs/x/postmortem.json"
    assert str(pm.default_out("models/v3.pt")) == "models/postmortem.json"


def test_cli_wrong_keys(run, small_bank, tmp_path, capsys):
    np.savez(tmp_path / "bank.npz", vectors=small_bank.vectors)
    argv = _argv(run)
    argv[argv.index("--bank") + 1] = str(tmp_path / "bank.npz")
    _one_line_error(capsys, pm.main(argv), "missing key 'article_indices'")
    state = {ck.MODEL_CONFIG: TowerConfig(dim=small_bank.dim).to_dict()}
    ck.save_checkpoint(tmp_path / "no_towers.pt", state)
    _one_line_error(capsys, pm.main(_argv(run, ckpt=str(tmp_path / "no_towers.pt"))),
                    "missing key 'query_tower'")
    query, doc = build_towers(TowerConfig(dim=small_bank.dim, hidden=32))
    state.update({ck.QUERY_TOWER: query.state_dict(), ck.DOC_TOWER: doc.state_dict()})
    ck.save_checkpoint(tmp_path / "mismatch.pt", state)  # config says hidden 512, weights 32
    _one_line_error(capsys, pm.main(_argv(run, ckpt=str(tmp_path / "mismatch.pt"))),
                    "do not match its model config")
