"""The sentence encoder and its embedding cache, through the real packaged model."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cascade.encoder import embed_sentences, encode, encoder_info, load_encoder, sentence_key
from training.corpora import default_corpus_path, read_wikipedia_corpus
from training.ingest import split_sentences


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()



@pytest.fixture(scope="module")
def sentences():
    articles = read_wikipedia_corpus(default_corpus_path())[100:112]
    return [s for a in articles for s in split_sentences(a.text)]


def test_resume_embeds_only_missing(encoder, sentences, tmp_path):
    reference = embed_sentences(sentences, encoder, tmp_path / "ref", batch_size=4096,
                                progress=False)
    assert reference.shape == (len(sentences), 384)

    # A run killed after its second shard: the encoder fails on the third forward batch.
    real_encode, calls = encoder.encode, []

    def dying_encode(texts, **kw):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(texts, **kw)

    cache = tmp_path / "cache"
    encoder.encode = dying_encode
    try:
        with pytest.raises(KeyboardInterrupt):
            embed_sentences(sentences, encoder, cache, batch_size=8, encode_batch_size=8,
                            progress=False)
    finally:
        del encoder.encode  # back to the class's method
    assert sorted(p.name for p in cache.iterdir()) == ["shard_00000.npz", "shard_00001.npz"]

    stats: dict = {}
    resumed = embed_sentences(sentences, encoder, cache, batch_size=8, progress=False,
                              stats=stats)
    unique = len(set(sentences))
    assert stats["cached"] == 16 and stats["embedded"] == unique - 16
    np.testing.assert_allclose(resumed, reference, atol=1e-5)

    stats = {}
    again = embed_sentences(sentences[::-1], encoder, cache, progress=False, stats=stats)
    assert stats["embedded"] == 0 and stats["cached"] == unique
    np.testing.assert_allclose(again, reference[::-1], atol=1e-5)


def test_unreadable_shard_is_skipped(encoder, tmp_path, caplog):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "shard_00000.npz").write_bytes(b"not a zip")
    stats: dict = {}
    with caplog.at_level(logging.WARNING):
        v = embed_sentences(["One sentence.", "Another one."], encoder, cache, progress=False,
                            stats=stats)
    assert v.shape == (2, 384) and stats["embedded"] == 2
    assert "unreadable shard" in caplog.text
    assert (cache / "shard_00001.npz").exists()  # the damaged shard is left, never overwritten


def test_encode_matches_the_cache(encoder, sentences, tmp_path):
    """Serving's uncached `encode` gives the vectors ingest stored: a text context lands in the
    bank's space."""
    cached = embed_sentences(sentences[:10], encoder, tmp_path, progress=False)
    fresh = encode(sentences[:10], encoder)
    assert fresh.dtype == np.float32 and fresh.shape == (10, 384)
    np.testing.assert_allclose(fresh, cached, atol=1e-5)
    assert encode([], encoder).shape == (0, 384)


def test_cache_ids_are_stable():
    """The cache key and encoder id are part of every bank's inputs key: changing them would
    rebuild (and re-embed) every existing bank."""
    assert sentence_key("Paris is in France.") == \
        "bf72529d9e077431f45672e78e126ae1e8bab08828927a2e3e990e106427b3af"
    info = encoder_info()
    assert info["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["id"].startswith("all-MiniLM-L6-v2_gt") and info["id"].endswith("_norm")
