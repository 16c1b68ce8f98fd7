"""Pre-flight: each check's pass and fail path on small synthetic banks, leakage against brute
force, the manifest's contents, and the CLI's exit codes (0 go, 1 blocker, 2 unusable input)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest

from cascade.bank import Bank, save_bank, sha256_file
from cascade.pairs import KEYS, TRAIN, VAL, Pairs, save_pairs
from training import preflight
from training.expand_pairs import ExpandConfig, expand_pairs, resolve
from training.preflight import (
    BLOCKER,
    PASS,
    WARNING,
    CheckResult,
    check_alignment,
    check_checkpoint_leakage,
    check_filter,
    check_leakage,
    check_sanity,
    check_schedule,
    git_commit,
    main,
    row_hashes,
    run_preflight,
    window_hashes,
    write_manifest,
)
from training.synth_bank import SynthConfig, synth_bank


@pytest.fixture(scope="module")
def clean(small_bank):
    """Stride-1 pairs of the small bank, context <= 8, split by article."""
    return expand_pairs(small_bank, resolve(ExpandConfig(seed=7), small_bank))


def _copy(pairs: Pairs, **cols) -> Pairs:
    out = pairs.subset(np.arange(len(pairs)))
    for key, value in cols.items():
        setattr(out, key, value)
    return out


def _bank_like(bank: Bank, vectors: np.ndarray) -> Bank:
    return Bank(vectors=vectors.astype(np.float32), article_indices=bank.article_indices,
                chunk_indices=bank.chunk_indices)


def _run(tmp_path, pairs: Pairs, bank_path, *extra: str) -> tuple[int, dict]:
    """Save `pairs`, run the CLI on them; return the exit code and the results by check name."""
    path = tmp_path / "pairs.npz"
    save_pairs(pairs, path)
    rc = main(["--pairs", str(path), "--bank", str(bank_path), "--sample", "400", *extra])
    results_path = tmp_path / "preflight_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    return rc, {r["name"]: r for r in results}


# ---------------------------------------------------------------------------------------------
# green path and manifest


def test_clean_pairs_are_green(tmp_path, small_bank, small_bank_path, clean, capsys):
    rc, results = _run(tmp_path, _copy(clean), small_bank_path)
    out = capsys.readouterr().out
    assert rc == 0
    assert list(results) == ["data_sanity", "leakage", "checkpoint_leakage", "alignment",
                             "schedule",
                             "hard_negative_filter", "manifest"]
    assert {r["status"] for r in results.values()} == {PASS}, results
    for name in results:
        assert name in out
    assert "GO" in out
    # Defaults beside the pairs; the expansion args default to the pairs' own config.
    manifest = json.loads((tmp_path / "pairs_manifest.json").read_text())
    assert manifest["expansion_args"] == clean.meta["config"]
    assert manifest["counts"]["val_pairs"] == clean.meta["val_pairs"]
    leak = results["leakage"]["values"]
    assert leak["shared_articles"] == leak["overlapping_val_windows"] == 0
    filt = results["hard_negative_filter"]["values"]
    assert 0 < filt["dropped_fraction"] < 1 and filt["sampled_train_pairs"] == 100


def test_manifest_holds_fingerprints_and_commit(tmp_path, small_bank, small_bank_path, clean):
    out = tmp_path / "sub" / "m.json"
    rc, results = _run(tmp_path, _copy(clean), small_bank_path, "--manifest-out", str(out),
                       "--expansion-args", '{"stride": 1, "max_per_seq": 1000}',
                       "--mine-schedule", " 0-5 : none ; 6-30:8@0.80-0.90", "--epochs", "30")
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["bank"]["fingerprint"] == small_bank.fingerprint()
    assert m["bank"]["sha256"] == sha256_file(small_bank_path)
    assert m["pairs"]["sha256"] == sha256_file(tmp_path / "pairs.npz")
    assert m["pairs"]["bank_fingerprint"] == small_bank.fingerprint()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=preflight.REPO_DIR,
                          capture_output=True, text=True).stdout.strip()
    assert m["git_commit"] in (head, head + "-dirty")
    assert m["expansion_args"] == {"stride": 1, "max_per_seq": 1000}
    assert m["mine_schedule"] == "0-5:none;6-30:8@0.8-0.9"
    assert m["filter_threshold"] == 0.98
    assert m["counts"] == {k: clean.meta[k] for k in ("pairs", "train_pairs", "val_pairs",
                                                     "test_pairs", "train_articles",
                                                     "val_articles", "test_articles")}
    assert m["checks"] == {name: PASS for name in results} and m["go"] is True
    assert datetime.fromisoformat(m["created_utc"]).utcoffset().total_seconds() == 0
    assert not list(out.parent.glob(".*.tmp")), "atomic write left a temp file"


def test_manifest_without_git_or_args_warns(tmp_path, small_bank, clean, monkeypatch):
    assert git_commit(tmp_path) is None  # not a git checkout
    monkeypatch.setattr(preflight, "git_commit", lambda: None)
    bank = _bank_like(small_bank, small_bank.vectors)  # in memory: no file to hash
    result = write_manifest(tmp_path / "m.json", clean, bank, [], "garbage", 0.98, None)
    assert result.status == WARNING and "no git commit" in result.detail
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["git_commit"] is None and m["expansion_args"] is None
    assert m["mine_schedule"] == "garbage" and m["bank"]["sha256"] is None  # in-memory bank


# ---------------------------------------------------------------------------------------------
# 1. data sanity


def _first_of_article(clean: Pairs, bank: Bank) -> int:
    """A pair whose context starts an article that is not the bank's first."""
    starts, _ = bank.article_bounds()
    return int(np.flatnonzero(np.isin(clean.ctx_start, starts[1:]))[0])


def test_context_crossing_an_article_is_a_blocker(tmp_path, small_bank, small_bank_path, clean):
    i = _first_of_article(clean, small_bank)
    ctx_start = clean.ctx_start.copy()
    ctx_start[i] -= 1  # reaches back into the previous article
    rc, results = _run(tmp_path, _copy(clean, ctx_start=ctx_start), small_bank_path)
    assert rc == 1
    sanity = results["data_sanity"]
    assert sanity["status"] == BLOCKER and f"pair {i} " in sanity["detail"]
    assert sanity["values"]["crosses_article"] == 1


@pytest.mark.parametrize("fault", ["target_not_after_context", "out_of_bounds", "no_val",
                                   "bad_split", "other_bank"])
def test_sanity_blockers(small_bank, clean, fault):
    s, e, t, split = (getattr(clean, k).copy() for k in KEYS)
    i = int(np.flatnonzero(clean.lengths >= 2)[3])
    if fault == "target_not_after_context":
        e[i] -= 1
    elif fault == "out_of_bounds":
        t[i] = small_bank.n + 5
    elif fault == "no_val":
        split[:] = TRAIN
    elif fault == "bad_split":
        split[i] = 3
    pairs = Pairs(s, e, t, split, "sha256:0123" if fault == "other_bank" else
                  small_bank.fingerprint())
    result = check_sanity(pairs, small_bank)
    assert result.status == BLOCKER
    expected = {"no_val": "the val split is empty", "other_bank": "pairs pin bank"}
    assert expected.get(fault, f"pair {i} ") in result.detail
    if fault == "out_of_bounds":
        checks = {r.name: r for r in run_preflight(pairs, small_bank, sample=100)}
        assert checks["leakage"].status == checks["hard_negative_filter"].status == BLOCKER
        assert "not run" in checks["leakage"].detail
        assert checks["schedule"].status == PASS


def test_too_few_val_pairs_or_articles_is_a_blocker(small_bank, clean):
    art = small_bank.article_indices[clean.target]
    val_articles = np.unique(art[clean.split == VAL])
    assert len(val_articles) >= preflight.MIN_EVAL_ARTICLES  # the clean pairs pass
    # Keep the val pairs of 2 articles only (a 2-article corpus has 1 val article).
    keep = (clean.split == TRAIN) | np.isin(art, val_articles[:2])
    result = check_sanity(clean.subset(np.flatnonzero(keep)), small_bank)
    assert result.status == BLOCKER
    assert "from 2 articles, too few for a confidence interval" in result.detail
    one = clean.subset(np.concatenate([np.flatnonzero(clean.split == TRAIN),
                                       np.flatnonzero(clean.split == VAL)[:1]]))
    assert "the val split has 1 pairs from 1 articles" in check_sanity(one, small_bank).detail


def test_sanity_warns_on_unpinned_pairs(small_bank, clean):
    result = check_sanity(_copy(clean, bank_fingerprint=""), small_bank)
    assert result.status == WARNING and "no bank fingerprint" in result.detail


# ---------------------------------------------------------------------------------------------
# 2. leakage, against brute force


def _brute_force_leakage(pairs: Pairs, bank: Bank) -> dict:
    art, V = bank.article_indices, bank.vectors
    tr, va = pairs.split == TRAIN, pairs.split != TRAIN  # val and test are both held out
    train_rows = [(s, t) for s, t in zip(pairs.ctx_start[tr], pairs.target[tr], strict=True)]
    overlapping = sum(any(s <= tt and ss <= t for ss, tt in train_rows)
                      for s, t in zip(pairs.ctx_start[va], pairs.target[va], strict=True))
    train_targets = {V[t].tobytes() for t in pairs.target[tr]}
    train_contexts = {V[s:e].tobytes() for s, e in zip(pairs.ctx_start[tr], pairs.ctx_end[tr],
                                                       strict=True)}
    return {
        "shared_articles": len(set(art[pairs.target[tr]]) & set(art[pairs.target[va]])),
        "overlapping_val_windows": overlapping,
        "duplicate_val_targets": sum(V[t].tobytes() in train_targets for t in pairs.target[va]),
        "duplicate_val_contexts": sum(V[s:e].tobytes() in train_contexts
                                      for s, e in zip(pairs.ctx_start[va], pairs.ctx_end[va],
                                                      strict=True)),
    }


@pytest.mark.parametrize("case", ["clean", "random_split", "dup_target", "dup_context"])
def test_leakage_matches_brute_force(small_bank, clean, case):
    pairs, bank = clean, small_bank
    va, tr = np.flatnonzero(clean.split == VAL), np.flatnonzero(clean.split == TRAIN)
    if case == "random_split":
        pairs = _copy(clean, split=np.random.default_rng(0).permutation(clean.split))
    elif case in ("dup_target", "dup_context"):
        V = small_bank.vectors.copy()
        # A val pair and a train pair with 5-row contexts, in different articles.
        i = va[clean.lengths[va] == 5][0]
        j = tr[clean.lengths[tr] == 5][-1]
        if case == "dup_target":
            V[clean.target[i]] = V[clean.target[j]]
        else:
            V[clean.ctx_start[i]:clean.ctx_end[i]] = V[clean.ctx_start[j]:clean.ctx_end[j]]
        bank = _bank_like(small_bank, V)
    result = check_leakage(pairs, bank)
    expected = _brute_force_leakage(pairs, bank)
    assert {k: result.values[k] for k in expected} == expected
    assert result.status == (PASS if case == "clean" else BLOCKER)
    if case == "random_split":
        assert expected["shared_articles"] > 0 and expected["overlapping_val_windows"] > 0
    if case == "dup_target":
        assert expected == {"shared_articles": 0, "overlapping_val_windows": 0,
                            "duplicate_val_targets": 1, "duplicate_val_contexts": 0}
    if case == "dup_context":
        assert expected["duplicate_val_contexts"] >= 1


def test_random_pair_level_split_blocks_the_run(tmp_path, small_bank_path, clean, capsys):
    """The Done-when test: a pairs file split pair by pair, not by article, is a blocker."""
    pairs = _copy(clean, split=np.random.default_rng(1).permutation(clean.split))
    rc, results = _run(tmp_path, pairs, small_bank_path)
    assert rc == 1
    assert results["leakage"]["status"] == BLOCKER
    assert "articles in train and val/test" in results["leakage"]["detail"]
    assert results["data_sanity"]["status"] == PASS
    assert "NO-GO" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "pairs_manifest.json").read_text())
    assert manifest["checks"]["leakage"] == BLOCKER and manifest["go"] is False


def test_window_hashes_follow_bytes():
    rng = np.random.default_rng(0)
    V = rng.standard_normal((200, 6)).astype(np.float32)
    V[100:120] = V[10:30]  # a repeated stretch
    start = rng.integers(0, 190, size=1500)
    end = np.minimum(start + rng.integers(1, 12, size=1500), 200)
    start[:50], end[:50] = 100 + np.arange(50) % 10, 110 + np.arange(50) % 10
    h = window_hashes(row_hashes(V), start, end)
    key = [V[s:e].tobytes() for s, e in zip(start, end, strict=True)]
    same_hash = h[:, None] == h[None, :]
    same_bytes = np.array([[a == b for b in key] for a in key])
    np.testing.assert_array_equal(same_hash, same_bytes)
    assert same_bytes.sum() > len(key)  # the planted repeats were hit


# ---------------------------------------------------------------------------------------------
# 3. alignment


def test_alignment_warns_on_a_common_component(tmp_path, small_bank, clean):
    assert check_alignment(small_bank.vectors, 500, np.random.default_rng(0)).status == PASS
    common = np.random.default_rng(5).standard_normal(small_bank.dim).astype(np.float32)
    V = small_bank.vectors + 1.5 * common / np.linalg.norm(common)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    bank = _bank_like(small_bank, V)
    result = check_alignment(bank.vectors, 500, np.random.default_rng(0))
    assert result.status == WARNING and "whitening" in result.detail
    assert result.values["mean_cos"] > 0.5
    # Warnings only: the CLI still says go.
    save_bank(bank, tmp_path / "common.npz")
    rc, results = _run(tmp_path, _copy(clean, bank_fingerprint=bank.fingerprint()),
                       tmp_path / "common.npz")
    assert rc == 0 and results["alignment"]["status"] == WARNING
    assert sum(r["status"] == WARNING for r in results.values()) == 1


# ---------------------------------------------------------------------------------------------
# 4. schedule


@pytest.mark.parametrize("schedule, segment", [
    ("0-5:none;7-10:8@0.82-0.92", "7-10:8@0.82-0.92"),  # gap
    ("0-5:none;6-30:0@0.8-0.9", "6-30:0@0.8-0.9"),  # zero negatives
    ("6-10:8@0.9-0.8", "6-10:8@0.9-0.8"),  # inverted cos window
    ("garbage", "garbage"),
    ("0-5:none;6-20:8@0.8-0.9", "6-20:8@0.8-0.9"),  # stops before epoch 30
])
def test_broken_schedule_is_a_blocker_naming_the_segment(schedule, segment):
    result = check_schedule(schedule, 30)
    assert result.status == BLOCKER and segment in result.detail


def test_schedule_pass_and_overlong(tmp_path, small_bank_path, clean):
    ok = check_schedule(preflight.DEFAULT_SCHEDULE, 30)
    assert ok.status == PASS and ok.values["schedule"] == preflight.DEFAULT_SCHEDULE
    assert check_schedule(preflight.DEFAULT_SCHEDULE, 20).status == WARNING  # 21-30 unused
    rc, results = _run(tmp_path, _copy(clean), small_bank_path, "--mine-schedule",
                       "0-5:none;7-10:8@0.82-0.92")
    assert rc == 1 and "7-10:8@0.82-0.92" in results["schedule"]["detail"]


# ---------------------------------------------------------------------------------------------
# 5. hard-negative filter


@pytest.mark.parametrize("threshold, status", [(0.9, BLOCKER), (0.95, BLOCKER), (0.98, PASS),
                                               (0.999, WARNING), (1.0, BLOCKER)])
def test_filter_threshold(small_bank, clean, threshold, status):
    result = check_filter(clean, small_bank, threshold, 100, np.random.default_rng(0))
    assert result.status == status
    assert result.values["sampled_train_pairs"] == 100
    for key in ("dropped_fraction", "positive_rate", "near_dup_rate"):
        assert 0.0 <= result.values[key] <= 1.0


def test_filter_reports_planted_near_duplicates(small_bank, clean):
    V = small_bank.vectors.copy()
    rng = np.random.default_rng(3)
    n = len(V)
    for t in clean.target[clean.split == TRAIN][::8]:
        dup = V[t] + 0.01 * rng.standard_normal(V.shape[1]).astype(np.float32)
        V[(t + n // 2) % n] = dup / np.linalg.norm(dup)  # half the bank away: another article
    bank = _bank_like(small_bank, V)
    everything = len(clean)  # all train pairs are queries
    base = check_filter(clean, small_bank, 0.98, everything, np.random.default_rng(0))
    planted = check_filter(clean, bank, 0.98, everything, np.random.default_rng(0))
    assert base.values["near_dup_rate"] == 0.0
    assert planted.values["near_dup_rate"] > 0.0005  # ~1 in 8 positives has a twin


def test_cli_filter_threshold_blocks(tmp_path, small_bank_path, clean):
    rc, results = _run(tmp_path, _copy(clean), small_bank_path, "--filter-threshold", "0.9")
    assert rc == 1 and results["hard_negative_filter"]["status"] == BLOCKER


# ---------------------------------------------------------------------------------------------
# exit 2: inputs that cannot be used


def _other_bank_path(tmp_path):
    path = tmp_path / "other.npz"
    save_bank(synth_bank(SynthConfig(n=3000, dim=32, mean_chunks=20, topics=4, seed=2)), path)
    return path


def test_pairs_from_another_bank_exit_2_cli(tmp_path, clean):
    save_pairs(_copy(clean), tmp_path / "pairs.npz")
    proc = subprocess.run([sys.executable, "-m", "training.preflight", "--pairs",
                           str(tmp_path / "pairs.npz"), "--bank", str(_other_bank_path(tmp_path))],
                          capture_output=True, text=True, cwd=preflight.REPO_DIR)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "another bank" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "preflight_results.json").exists()


@pytest.mark.parametrize("fault", ["missing_pairs", "missing_bank", "missing_key",
                                   "bad_expansion_args", "expansion_args_not_object"])
def test_unusable_inputs_exit_2(tmp_path, small_bank_path, clean, capsys, fault):
    pairs_path = tmp_path / "pairs.npz"
    save_pairs(_copy(clean), pairs_path)
    argv = ["--pairs", str(pairs_path), "--bank", str(small_bank_path)]
    if fault == "missing_pairs":
        argv[1] = str(tmp_path / "nope.npz")
    elif fault == "missing_bank":
        argv[3] = str(tmp_path / "nope.npz")
    elif fault == "missing_key":
        np.savez(pairs_path, ctx_start=clean.ctx_start, ctx_end=clean.ctx_end, split=clean.split)
    else:
        argv += ["--expansion-args", "{stride: 32" if fault == "bad_expansion_args" else "[1]"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0
    want = {"missing_key": "missing key 'target'", "bad_expansion_args": "not valid JSON",
            "expansion_args_not_object": "JSON object"}.get(fault, "no such file")
    assert want in err


# ---------------------------------------------------------------------------------------------
# every blocker names its remedy

REMEDY = re.compile(r"python -m training\.\w+ --|make \w+ \w+=|--[a-z][a-z-]+")


def _blockers(small_bank, clean, tmp_path) -> dict[str, list[CheckResult]]:
    """Each way a check can block, by name: -> the blocker results it gives."""
    s, e, t, split = (getattr(clean, k).copy() for k in KEYS)
    i = int(np.flatnonzero(clean.lengths >= 2)[3])
    fp = small_bank.fingerprint()

    def sanity(**cols) -> Pairs:
        c = {"ctx_start": s, "ctx_end": e, "target": t, "split": split, **cols}
        return Pairs(c["ctx_start"], c["ctx_end"], c["target"], c["split"], fp)

    def at(col: np.ndarray, value) -> np.ndarray:
        col = col.copy()
        col[i] = value
        return col

    out: dict[str, list[CheckResult]] = {}
    out["shape"] = [check_sanity(sanity(target=t[:-1]), small_bank)]
    out["target_not_after_context"] = [check_sanity(sanity(ctx_end=at(e, e[i] - 1)),
                                                    small_bank)]
    out["bad_split"] = [check_sanity(sanity(split=at(split, 3)), small_bank)]
    j = _first_of_article(clean, small_bank)
    crossing = s.copy()
    crossing[j] -= 1
    out["crosses_article"] = [check_sanity(sanity(ctx_start=crossing), small_bank)]
    out["no_val"] = [check_sanity(sanity(split=np.where(split == VAL, TRAIN, split)),
                                  small_bank)]
    art = small_bank.article_indices[clean.target]
    keep = (clean.split != VAL) | np.isin(art, np.unique(art[clean.split == VAL])[:2])
    out["too_few_val"] = [check_sanity(clean.subset(np.flatnonzero(keep)), small_bank)]
    out["other_bank"] = [check_sanity(Pairs(s, e, t, split, "sha256:0123"), small_bank)]
    # Out of bounds: data_sanity and the checks it stops ("not run").
    out["out_of_bounds"] = run_preflight(sanity(target=at(t, small_bank.n + 5)), small_bank,
                                         sample=100)
    out["shared_articles"] = [check_leakage(
        _copy(clean, split=np.random.default_rng(0).permutation(clean.split)), small_bank)]
    va, tr = np.flatnonzero(clean.split == VAL), np.flatnonzero(clean.split == TRAIN)
    a, b = va[clean.lengths[va] == 5][0], tr[clean.lengths[tr] == 5][-1]
    for case in ("dup_target", "dup_context"):
        V = small_bank.vectors.copy()
        if case == "dup_target":
            V[clean.target[a]] = V[clean.target[b]]
        else:
            V[clean.ctx_start[a]:clean.ctx_end[a]] = V[clean.ctx_start[b]:clean.ctx_end[b]]
        out[case] = [check_leakage(clean, _bank_like(small_bank, V))]
    out["checkpoint_unreadable"] = [check_checkpoint_leakage(clean, small_bank,
                                                             [str(tmp_path / "none.pt")])]
    out["schedule"] = [check_schedule("0-5:none;7-10:8@0.82-0.92", 30)]
    for threshold in (0.9, 1.0):
        out[f"filter_{threshold}"] = [check_filter(clean, small_bank, threshold, 20,
                                                   np.random.default_rng(0))]
    (tmp_path / "file").write_text("")
    out["manifest"] = [write_manifest(tmp_path / "file" / "m.json", clean, small_bank, [],
                                      preflight.DEFAULT_SCHEDULE, 0.98, {})]
    return out


def test_every_blocker_names_the_command_or_flag_that_fixes_it(tmp_path, small_bank, clean):
    for case, results in _blockers(small_bank, clean, tmp_path).items():
        blockers = [r for r in results if r.status == BLOCKER]
        assert blockers, case
        for r in blockers:
            # data_sanity and leakage join their problems with "; ": each names its remedy.
            joined = r.name in ("data_sanity", "leakage") and not r.detail.startswith("not run")
            for problem in r.detail.split("; ") if joined else [r.detail]:
                assert REMEDY.search(problem), (case, r.name, problem)
    leak = _blockers(small_bank, clean, tmp_path)["dup_context"][0]
    assert "python -m training.expand_pairs --bank" in leak.detail
    assert "drops the val/test pairs whose context equals a train context" in leak.detail
