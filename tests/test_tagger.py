"""The TMD tagger: the topic map, the task and modifier rules on real sentences of the default
corpus's kind, and domain centroids on seeded clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.tagger import (
    TOPIC_DOMAINS,
    DomainCentroids,
    bank_centroids,
    centroids_path,
    period_of_year,
    tag_context,
    tag_rows,
    tag_text,
    tag_texts,
    topic_domain,
)
from cascade.tmd import DOMAINS, MODIFIERS, TASKS, unpack

DEFAULT_TOPICS = ["Arts", "Biology and health sciences", "Everyday life", "Geography", "History",
                  "Mathematics", "People", "Philosophy and religion", "Physical sciences",
                  "Society and social sciences", "Technology", "Uncategorized"]


def test_topic_map_covers_the_default_corpus():
    assert sorted(TOPIC_DOMAINS) == sorted(DEFAULT_TOPICS)
    mapped = [TOPIC_DOMAINS[t] for t in DEFAULT_TOPICS if TOPIC_DOMAINS[t] is not None]
    assert len(mapped) == 10 and len(set(mapped)) == 10  # one domain per subject topic
    assert all(d in DOMAINS for d in mapped)
    assert topic_domain("History") == DOMAINS.index("History")
    assert topic_domain("Physical sciences") == DOMAINS.index("Science")
    assert topic_domain("People") is None and topic_domain("Uncategorized") is None
    # other corpora: a topic named like a domain is that domain, anything else has none
    assert topic_domain("law") == DOMAINS.index("Law")
    assert topic_domain(" Software ") == DOMAINS.index("Software")
    assert topic_domain("animals") is None and topic_domain("") is None
    assert topic_domain("unknown") is None


@pytest.mark.parametrize("text, task, modifier", [
    ("The bassoon is a musical instrument in the woodwind family, which plays in the tenor "
     "and bass ranges.", "definition", "musical"),
    ("Kurt Gödel was an Austrian logician.", "definition", "europe"),
    ("The word pony derives from the old French poulenet, a diminutive of poulain meaning "
     "foal.", "etymology", "europe"),
    ("He was born in Salzburg and died in Vienna.", "biography", "biographical"),
    ("Blunt trauma occurs due to an impactful force to a body part.", "cause", "physical"),
    ("As a result, ballet has evolved in distinct ways.", "effect", "none"),
    ("Elephants of the savanna have larger ears, whereas forest elephants have smaller ears.",
     "comparison", "none"),
    ("It is located in the greater Auckland Region.", "location", "geographic"),
    ("Its population of 5,570,585 makes it the fifth-most populous city in India.",
     "statistics", "quantitative"),
    ("Signs and symptoms vary among people and over time.", "problem", "medical"),
    ("The Battle of Hastings took place in 1066.", "event", "medieval"),
    ("Alcoholic beverages are typically divided into three classes: beers, wines, and "
     "spirits.", "classification", "none"),
    ("Windmills first appeared in Persia during the 9th century.", "history", "medieval"),
    ("It was built in 300 BC.", "work", "ancient"),
    ("The theory was proposed in 1905.", "theory", "modern"),
    ("Today, it is widely used in hospitals.", "application", "contemporary"),
    ("The tower is 324 metres tall.", "statement", "measurement"),
    ("It may have been written by a monk.", "work", "hedged"),
    ("It is not a true fish.", "statement", "negation"),
    ("The GDP grew by 3 percent.", "statistics", "percentage"),
    ("It lasted from 1618 to 1648.", "history", "early_modern"),
    ("The NATO summit was held in France.", "statement", "europe"),
    ("The NATO summit was held there.", "statement", "acronym"),
    ("The breed is characterized by a long coat.", "property", "none"),
    ("Jazz spread widely in the 1920s.", "change", "modern"),
    ("It flourished during the Heian era.", "history", "temporal"),
    ("The river crosses three countries.", "statement", "geographic"),
    ("plain words and nothing else", "statement", "none"),
])
def test_rules_on_examples(text, task, modifier):
    t, m = tag_text(text)
    assert (TASKS[t], MODIFIERS[m]) == (task, modifier)


def test_pronoun_subject_is_not_a_definition():
    assert TASKS[tag_text("It is a large city.")[0]] != "definition"
    assert TASKS[tag_text("Paris is a large city.")[0]] == "definition"


def test_periods():
    assert [period_of_year(y) for y in (100, 499, 500, 1499, 1500, 1799, 1800, 1999, 2000)] == \
        ["ancient", "ancient", "medieval", "medieval", "early_modern", "early_modern", "modern",
         "modern", "contemporary"]
    assert MODIFIERS[tag_text("It was rebuilt in the twentieth century.")[1]] == "modern"
    assert MODIFIERS[tag_text("It dates from the 3rd century BC.")[1]] == "ancient"
    # a number with a unit is not a year
    assert MODIFIERS[tag_text("The lake is 1200 km long.")[1]] == "measurement"


def test_tag_texts_takes_bytes_and_str():
    tasks, modifiers = tag_texts(np.array([b"It is not here.", "He was born in 1950."],
                                          dtype=object))
    assert TASKS[tasks[1]] == "biography" and MODIFIERS[modifiers[1]] == "modern"
    assert MODIFIERS[modifiers[0]] == "negation"


# ---------------------------------------------------------------------------------------------
# domains from vectors


def clustered(seed: int = 0, dim: int = 32, per_article: int = 4):
    """Three domain clusters (Science, History, Art), 10 articles each, unit rows with noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    domains = np.array([0, 7, 9])  # Science, History, Art
    rows, art, dom = [], [], []
    for a in range(30):
        c = a % 3
        x = centres[c] + 0.8 * rng.normal(size=(per_article, dim))
        rows.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        art += [a] * per_article
        dom += [domains[c]] * per_article
    return (np.concatenate(rows).astype(np.float32), np.array(art), np.array(dom))


def test_centroids_tag_unlabelled_articles(tmp_path):
    vectors, articles, truth = clustered()
    labels = truth.copy()
    hidden = articles >= 21  # the last 9 articles have no topic
    labels[hidden] = -1
    c = DomainCentroids.fit(vectors, labels)
    assert c.present.sum() == 3 and c.counts[7] == 7 * 4
    pred = c.predict(vectors[hidden], articles[hidden])
    np.testing.assert_array_equal(pred, truth[hidden])
    # per article: every chunk of an article gets one domain
    for a in np.unique(articles[hidden]):
        assert len(set(pred[articles[hidden] == a])) == 1
    # a domain without labelled rows is never predicted
    assert set(c.predict(vectors).tolist()) <= {0, 7, 9}

    path = centroids_path(tmp_path / "bank.npz")
    assert path.name == "bank.tmd.npz"
    c.save(path)
    back = DomainCentroids.load(path)
    assert bank_centroids(tmp_path / "bank.npz", {}) is None
    assert bank_centroids(tmp_path / "bank.npz", {"tmd_centroids": path.name}).present.sum() == 3
    np.testing.assert_array_equal(back.vectors, c.vectors)
    np.testing.assert_array_equal(back.predict(vectors), c.predict(vectors))


def test_centroid_refusals(tmp_path):
    vectors, _, truth = clustered()
    c = DomainCentroids.fit(vectors, truth)
    with pytest.raises(ValueError, match="dimension 16, the centroids 32"):
        c.predict(np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="no topic-labelled rows"):
        DomainCentroids.fit(vectors, np.full(len(vectors), -1))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a TMD centroid file"):
        DomainCentroids.load(tmp_path / "bad.npz")


def test_tag_rows():
    vectors, articles, truth = clustered()
    labels = np.where(articles < 21, truth, -1)
    texts = np.array(["He was born in 1950."] * len(vectors))
    codes, c, info = tag_rows(vectors, articles, texts, labels)
    d, t, m = unpack(codes)
    np.testing.assert_array_equal(d, truth)
    assert (TASKS[t[0]], MODIFIERS[m[0]]) == ("biography", "modern")
    assert info["domain_from_topic"] == 84 and info["domain_from_centroid"] == 36
    assert codes.dtype == np.uint16

    # a bank without texts: domains only
    codes, _, info = tag_rows(vectors, articles, None, labels)
    d, t, m = unpack(codes)
    np.testing.assert_array_equal(d, truth)
    assert (t == 0).all() and (m == 0).all() and not info["task_modifier_from_text"]

    # no topics at all: borrowed centroids tag everything; with none, domain 0
    codes, used, info = tag_rows(vectors, articles, None, None, centroids=c)
    np.testing.assert_array_equal(unpack(codes)[0], truth)
    assert used is c and info["domain_from_centroid"] == len(vectors)
    codes, used, info = tag_rows(vectors, articles, None, None)
    assert used is None and (codes == 0).all() and info["domain_unassigned_zero"] == 120


def test_tag_context():
    vectors, articles, truth = clustered()
    c = DomainCentroids.fit(vectors, truth)
    ctx = vectors[articles == 4]  # an History article
    codes = tag_context(ctx, ["It is not here."] * len(ctx), c)
    d, t, m = unpack(codes)
    assert (d == 7).all() and (MODIFIERS[m[0]]) == "negation"
    assert (unpack(tag_context(texts=["He was born in 1950."]))[0] == 0).all()
    with pytest.raises(ValueError, match="2 texts for 4 vectors"):
        tag_context(ctx, ["a", "b"], c)
    with pytest.raises(ValueError, match="vectors, texts or both"):
        tag_context()
