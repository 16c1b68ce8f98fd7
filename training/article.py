"""What a corpus reader returns (articles) and raises (CorpusError); every reader shares them."""

from __future__ import annotations

from dataclasses import dataclass


class CorpusError(ValueError):
    """A corpus we refuse; the message is one line naming the file (and line) and the problem."""


@dataclass
class Article:
    id: str
    title: str
    text: str
    topic: str
