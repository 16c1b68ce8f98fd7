"""A corpus that is not Wikipedia: the docstrings of Python's standard library, as JSONL.

    python scripts/stdlib_corpus.py --out artifacts/pydocs.jsonl --max-articles 600
    make data CORPUS=artifacts/pydocs.jsonl

One article per public function or class of a fixed list of standard-library modules
(`inspect.getdoc`, cleaned of indentation), in the list's order and then by name, so the file is
the same on every run of the same Python version (docstrings change between versions: the
version is in each line's `python` field, which ingest ignores). Docstrings
repeat themselves across modules ("Return a new ..."), which is what makes this corpus a test of
the duplicate handling. The text is the Python Software Foundation's (PSF License).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path

# Modules that import without side effects (no GUI, no network, no printing) on Linux.
MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "binascii", "bisect", "bz2",
    "calendar", "cmd", "codecs", "collections", "colorsys", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis",
    "email.message", "email.utils", "enum", "fnmatch", "fractions", "functools", "getopt",
    "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "importlib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "lzma",
    "math", "mimetypes", "mmap", "numbers", "operator", "optparse", "os", "os.path", "pathlib",
    "pickle", "pkgutil", "platform", "plistlib", "pprint", "queue", "random", "re", "sched",
    "secrets", "selectors", "shlex", "shutil", "signal", "socket", "sqlite3", "statistics",
    "string", "struct", "subprocess", "sys", "tarfile", "tempfile", "textwrap", "threading",
    "time", "tokenize", "tomllib", "traceback", "types", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "wave", "weakref", "xml.etree.ElementTree", "zipfile", "zlib",
)


def docstring_articles(modules: tuple[str, ...] = MODULES):
    """(id, title, text) of each public function or class defined in these modules that has a
    docstring of its own; in module order, then by name."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            # Only what the module defines: re-exports would repeat another module's article.
            if getattr(obj, "__module__", None) not in (name, f"_{name}", module.__name__):
                continue
            doc = obj.__doc__ if isinstance(obj.__doc__, str) else None
            text = " ".join(inspect.cleandoc(doc).split()) if doc else ""
            if len(text) < 20:
                continue
            yield f"{name}.{attr}", f"{name}.{attr}", text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="artifacts/pydocs.jsonl", help="JSONL corpus to write")
    p.add_argument("--max-articles", type=int, default=0,
                   help="keep at most this many articles, spread evenly over the list (0 = all)")
    args = p.parse_args(argv)
    with warnings.catch_warnings():  # typing.io and typing.re warn when touched
        warnings.simplefilter("ignore", DeprecationWarning)
        articles = list(docstring_articles())
    if args.max_articles and len(articles) > args.max_articles:
        step = len(articles) / args.max_articles
        articles = [articles[int(i * step)] for i in range(args.max_articles)]
    version = ".".join(map(str, sys.version_info[:3]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for aid, title, text in articles:
            f.write(json.dumps({"id": aid, "title": title, "text": text, "topic": "Software",
                                "python": version}, ensure_ascii=False) + "\n")
    print(f"wrote {out}: {len(articles):,} docstrings of Python {version}'s standard library")
    return 0


if __name__ == "__main__":
    sys.exit(main())
