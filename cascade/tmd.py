"""The TMD schema: a chunk's domain (16), task (32) and modifier (64), packed in 15 bits.

    code = domain << 11 | task << 6 | modifier        # [domain 4 | task 5 | modifier 6]

- **Domain**: the subject area of the chunk's article (Science ... Software).
- **Task**: what the sentence does, its rhetorical role: defines, narrates history, gives a
  cause, compares, describes a process, ... Task 0, `statement`, is a plain statement that no
  more specific role fits.
- **Modifier**: the most salient qualifier of the content: temporal (a date or period),
  quantitative, geographic (and which region), biographical, hedged, negated, and the kind of
  subject matter (religious, military, chemical, ...). Modifier 0, `none`, means none is salient.

`cascade.tagger` assigns codes with documented rules; `cascade.tmd_rerank` compares them. Every
one of the 16 x 32 x 64 codes has a name, `name(code)`, e.g. "History/event/military".
"""

from __future__ import annotations

import numpy as np

DOMAIN_BITS, TASK_BITS, MODIFIER_BITS = 4, 5, 6
DOMAIN_SHIFT = TASK_BITS + MODIFIER_BITS  # 11
TASK_SHIFT = MODIFIER_BITS  # 6
CODE_MAX = 1 << (DOMAIN_BITS + TASK_BITS + MODIFIER_BITS)  # 32768: codes are [0, CODE_MAX)
# (part, how many values it takes, its shift in the code), highest bits first: the one definition
# of the layout that banks, their converter and the tagger use.
PARTS = (("domain", 1 << DOMAIN_BITS, DOMAIN_SHIFT), ("task", 1 << TASK_BITS, TASK_SHIFT),
         ("modifier", 1 << MODIFIER_BITS, 0))
LAYOUT = f"{DOMAIN_BITS}+{TASK_BITS}+{MODIFIER_BITS} bit domain|task|modifier"  # for messages

DOMAINS = (
    "Science", "Mathematics", "Technology", "Engineering", "Medicine", "Psychology",
    "Philosophy", "History", "Literature", "Art", "Economics", "Law", "Politics", "Education",
    "Environment", "Software",
)

# What a sentence does. The tagger's rules (cascade.tagger.TASK_RULES) say which words mark each.
TASKS = (
    "statement",       # 0  a plain statement: no more specific role below fits
    "definition",      # 1  says what the subject is: "X is a Y", "refers to", "is defined as"
    "history",         # 2  narrates the past: "was founded", "originated", "in the 12th century"
    "cause",           # 3  gives a cause: "because", "due to", "caused by"
    "effect",          # 4  gives a consequence: "led to", "resulted in", "as a result"
    "comparison",      # 5  compares: "unlike", "compared with", "whereas", "similar to"
    "process",         # 6  describes how something happens: "process", "occurs when", "stages"
    "classification",  # 7  sorts into kinds: "types of", "divided into", "classified as"
    "composition",     # 8  says what it is made of: "consists of", "composed of", "contains"
    "function",        # 9  says what it is for: "used to", "used for", "in order to"
    "example",         # 10 gives examples: "for example", "such as", "including"
    "location",        # 11 places it: "located in", "situated", "borders", "lies"
    "biography",       # 12 a person's life: "was born", "died", "grew up", "married"
    "work",            # 13 what someone made or did: "wrote", "composed", "invented", "founded"
    "etymology",       # 14 where the name comes from: "derived from", "from the Greek", "named"
    "property",        # 15 a characteristic: "characterized by", "known for", "features"
    "statistics",      # 16 figures: "population", "percent", counts and measures
    "evidence",        # 17 research and evidence: "studies", "evidence", "research shows"
    "theory",          # 18 theories and explanations: "theory", "hypothesis", "model", "law of"
    "method",          # 19 a method or technique: "method", "technique", "approach", "procedure"
    "application",     # 20 where it is used: "applications", "widely used", "is used in"
    "influence",       # 21 influence and legacy: "influenced", "legacy", "inspired"
    "criticism",       # 22 controversy: "criticized", "controversial", "debate", "disputed"
    "regulation",      # 23 rules and rights: "illegal", "regulated", "constitution", "rights"
    "event",           # 24 an event: "war", "battle", "revolution", "election", "took place"
    "change",          # 25 growth or change: "increased", "declined", "evolved", "expanded"
    "relationship",    # 26 relations: "related to", "associated with", "linked to"
    "reception",       # 27 how it is regarded: "regarded as", "considered", "acclaimed"
    "problem",         # 28 risks and harm: "risk", "symptoms", "threat", "damage"
    "treatment",       # 29 remedies: "treatment", "therapy", "prevention", "cure"
    "practice",        # 30 customs and practice: "tradition", "ritual", "worship", "custom"
    "ranking",         # 31 a rank or record: "the largest", "the first", "one of the most"
)

# The most salient qualifier. The tagger's rules (cascade.tagger.MODIFIER_RULES) say which words
# mark each; the order of the rules, not of this list, decides between several.
MODIFIERS = (
    "none",            # 0  nothing salient
    # time
    "temporal",        # 1  a date or period not placed below
    "ancient",         # 2  BC / BCE, antiquity
    "medieval",        # 3  the Middle Ages, 5th-15th century
    "early_modern",    # 4  16th-18th century
    "modern",          # 5  19th-20th century
    "contemporary",    # 6  21st century, "today", "currently"
    "duration",        # 7  how long: "for 30 years", "lasted"
    "sequence",        # 8  order of events: "later", "afterwards", "subsequently"
    # quantity
    "quantitative",    # 9  numbers not placed below
    "percentage",      # 10 percent
    "monetary",        # 11 money: $, dollars, euros, GDP
    "measurement",     # 12 units: km, kg, metres, degrees
    "superlative",     # 13 largest, most, highest
    "comparative",     # 14 more than, larger than
    "approximate",     # 15 about, approximately, roughly
    # place
    "geographic",      # 16 a place not placed below
    "europe",          # 17
    "asia",            # 18
    "africa",          # 19
    "americas",        # 20
    "oceania",         # 21
    "global",          # 22 world, international, worldwide
    "urban",           # 23 city, capital, town
    "maritime",        # 24 sea, ocean, river, coast
    # people
    "biographical",    # 25 a person's life events
    "family",          # 26 wife, son, dynasty
    "organizational",  # 27 company, party, institution
    "ethnic",          # 28 peoples, ethnic groups
    "gender",          # 29 women, men
    # stance
    "negation",        # 30 not, never, no longer
    "hedged",          # 31 may, might, possibly, it is thought
    "disputed",        # 32 disputed, unclear, debated
    "positive",        # 33 praised, celebrated, important
    "negative",        # 34 failed, destroyed, notorious
    "attributed",      # 35 according to, said, argued
    # subject matter
    "religious",       # 36
    "military",        # 37
    "political",       # 38
    "economic",        # 39
    "legal",           # 40
    "scientific",      # 41
    "medical",         # 42
    "technical",       # 43
    "artistic",        # 44
    "literary",        # 45
    "musical",         # 46
    "linguistic",      # 47
    "biological",      # 48
    "chemical",        # 49
    "physical",        # 50
    "astronomical",    # 51
    "climatic",        # 52
    "agricultural",    # 53
    "sporting",        # 54
    "educational",     # 55
    "digital",         # 56
    "mathematical",    # 57
    "cultural",        # 58
    "architectural",   # 59
    # form
    "enumeration",     # 60 a list of several items
    "quotation",       # 61 a quoted phrase
    "alias",           # 62 also known as, or a parenthesised alternative name
    "acronym",         # 63 an abbreviation in capitals
)

assert len(DOMAINS) == 1 << DOMAIN_BITS and len(TASKS) == 1 << TASK_BITS \
    and len(MODIFIERS) == 1 << MODIFIER_BITS


def _ints_below(values: np.ndarray, size: int, what: str, kind: str, note: str = "") -> np.ndarray:
    """`values` as an int64 array, refusing non-integers and values outside [0, size)."""
    a = np.asarray(values)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: expected {kind}, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= size))
    if len(bad):
        raise ValueError(f"{what}: value {a.flat[bad[0]]} at position {bad[0]} outside "
                         f"[0, {size}){note}")
    return a


def check_codes(codes: np.ndarray, what: str = "tmd codes") -> np.ndarray:
    """`codes` as an int64 array, refusing values outside [0, CODE_MAX) with a one-line error."""
    return _ints_below(codes, CODE_MAX, what, "integer codes", f" ({LAYOUT})")


def _check_part(values: np.ndarray, size: int, what: str) -> np.ndarray:
    return _ints_below(values, size, f"tmd {what}", "integers")


def pack(domain: np.ndarray | int, task: np.ndarray | int = 0,
         modifier: np.ndarray | int = 0) -> np.ndarray:
    """Broadcast (domain, task, modifier) -> uint16 codes; out-of-range parts raise ValueError."""
    d = _check_part(domain, len(DOMAINS), "domain")
    t = _check_part(task, len(TASKS), "task")
    m = _check_part(modifier, len(MODIFIERS), "modifier")
    return ((d << DOMAIN_SHIFT) | (t << TASK_SHIFT) | m).astype(np.uint16)


def unpack(codes: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """codes -> (domain, task, modifier) int64 arrays of the same shape."""
    c = check_codes(codes)
    return (c >> DOMAIN_SHIFT, (c >> TASK_SHIFT) & ((1 << TASK_BITS) - 1),
            c & ((1 << MODIFIER_BITS) - 1))


def name(code: int) -> str:
    """"Domain/task/modifier" of one code, e.g. "History/event/military"."""
    d, t, m = (int(x) for x in unpack(np.int64(code)))
    return f"{DOMAINS[d]}/{TASKS[t]}/{MODIFIERS[m]}"


def code_of(name_: str) -> int:
    """The code of a "Domain/task/modifier" name (the inverse of `name`)."""
    parts = name_.split("/")
    if len(parts) != 3:
        raise ValueError(f"tmd name {name_!r}: expected Domain/task/modifier")
    try:
        d, t, m = DOMAINS.index(parts[0]), TASKS.index(parts[1]), MODIFIERS.index(parts[2])
    except ValueError:
        raise ValueError(f"tmd name {name_!r}: unknown domain, task or modifier") from None
    return int(pack(d, t, m))


def distribution(codes: np.ndarray, top: int = 20) -> dict:
    """Counts of domains, tasks, modifiers and the `top` most frequent codes (name -> count),
    most frequent first, with the number of distinct codes."""
    d, t, m = unpack(codes)
    n = int(len(d))

    def table(values: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
        counts = np.bincount(values, minlength=len(names))
        return {names[i]: int(counts[i]) for i in np.argsort(-counts, kind="stable")
                if counts[i]}

    codes64 = check_codes(codes)
    uniq, counts = np.unique(codes64, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return {"rows": n, "distinct_codes": int(len(uniq)),
            "domains": table(d, DOMAINS), "tasks": table(t, TASKS),
            "modifiers": table(m, MODIFIERS),
            "top_codes": {name(int(uniq[i])): int(counts[i]) for i in order}}
