"""Synthetic banks with sequential structure, for tests and scale benchmarks (never real data).

Each article is a smooth trajectory: a point moving along an arc in its own random plane, offset
by its topic centre and an article offset, plus isotropic noise. Consecutive chunks are therefore
closer than random ones, and the next chunk is predictable from the previous ones better than by
averaging them: there is real signal for a query tower to learn.

    python -m training.synth_bank --n 1000000 --dim 768 --out artifacts/synth_1m.npz

With `--like REAL.npz` the vectors keep a real bank's geometry instead (`like_bank`): each
synthetic article picks a real article, sits around its centroid (offset by a draw of the real
within-article spread), takes that article's length and TMD codes, and its chunks follow the
real within-article covariance (PCA of the real residuals) with the real correlation between
consecutive chunks (an AR(1) walk of the measured lag-1 correlation). A wider --dim lifts every
vector by one fixed random orthonormal map Q (D_real -> D, Q^T Q = I), which keeps every inner
product, so the lifted bank is exactly as hard to search as the unlifted one:

    python -m training.synth_bank --like artifacts/wikipedia_vital_bank.npz --n 500000 \
        --dim 768 --out artifacts/like_wiki_500k_768.npz
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cascade.bank import Bank, save_bank
from cascade.tmd import pack

log = logging.getLogger(__name__)


@dataclass
class SynthConfig:
    n: int = 10_000  # rows (chunks) in the bank
    dim: int = 384  # vector dimension
    mean_chunks: int = 20  # mean chunks per article; lengths are uniform in [mean/2, 3*mean/2]
    topics: int = 12  # topic clusters (also the TMD domain of each row)
    topic_weight: float = 0.8  # norm of the topic-centre component
    article_weight: float = 0.2  # norm of the per-article offset
    arc_radius: float = 0.9  # radius of the trajectory arc
    step_min: float = 0.15  # angular step per chunk (radians), drawn per article
    step_max: float = 0.45
    noise: float = 1.0  # norm of the per-chunk noise
    seed: int = 0


# Articles generated per block: bounds memory to a few (rows_in_block, D) temporaries.
_ARTICLES_PER_BLOCK = 2048


def article_lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    lo = max(2, cfg.mean_chunks // 2)
    hi = max(lo, (3 * cfg.mean_chunks) // 2)
    lengths = rng.integers(lo, hi + 1, size=cfg.n // lo + 1)
    cut = int(np.searchsorted(np.cumsum(lengths), cfg.n)) + 1
    lengths = lengths[:cut].copy()
    lengths[-1] -= int(lengths.sum()) - cfg.n  # the last article absorbs the rounding
    if lengths[-1] < 1:
        lengths = lengths[:-1]
    return lengths.astype(np.int64)


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synth_bank(cfg: SynthConfig, progress: bool = False) -> Bank:
    """Generate a bank of `cfg.n` rows; memory is the output plus a bounded working set."""
    rng = np.random.default_rng(cfg.seed)
    lengths = article_lengths(cfg, rng)
    n_articles = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    topic_centres = _unit_rows(rng, cfg.topics, cfg.dim)
    article_topic = rng.integers(0, cfg.topics, size=n_articles)

    vectors = np.empty((cfg.n, cfg.dim), dtype=np.float32)
    article_indices = np.repeat(np.arange(n_articles, dtype=np.int64), lengths)
    chunk_indices = np.arange(cfg.n, dtype=np.int64) - np.repeat(starts, lengths)

    bar = tqdm(total=cfg.n, unit="row", desc="synth bank", disable=not progress)
    for a0 in range(0, n_articles, _ARTICLES_PER_BLOCK):
        a1 = min(a0 + _ARTICLES_PER_BLOCK, n_articles)
        na = a1 - a0
        # Per-article geometry: an offset, an orthonormal plane (u, w), a phase and a step.
        offset = _unit_rows(rng, na, cfg.dim)
        u = _unit_rows(rng, na, cfg.dim)
        w = _unit_rows(rng, na, cfg.dim)
        w -= np.einsum("ij,ij->i", w, u)[:, None] * u
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        phase = rng.uniform(0, 2 * np.pi, size=na).astype(np.float32)
        step = rng.uniform(cfg.step_min, cfg.step_max, size=na).astype(np.float32)
        centre = (cfg.topic_weight * topic_centres[article_topic[a0:a1]]
                  + cfg.article_weight * offset)

        r0, r1 = int(starts[a0]), int(starts[a1 - 1] + lengths[a1 - 1])
        local = article_indices[r0:r1] - a0
        angle = phase[local] + step[local] * chunk_indices[r0:r1].astype(np.float32)
        out = vectors[r0:r1]
        out[:] = rng.standard_normal(out.shape, dtype=np.float32)
        out *= cfg.noise / np.sqrt(cfg.dim, dtype=np.float32)
        out += centre[local]
        out += (cfg.arc_radius * np.cos(angle))[:, None] * u[local]
        out += (cfg.arc_radius * np.sin(angle))[:, None] * w[local]
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        bar.update(r1 - r0)
    bar.close()

    # TMD codes: domain = topic; task drawn per article; modifier = position bucket in the article.
    task = rng.integers(0, 32, size=n_articles)
    domain = article_topic % 16
    modifier = np.minimum(chunk_indices, 63)
    tmd = pack(np.repeat(domain, lengths), np.repeat(task, lengths), modifier)
    meta = {"synthetic": True, "corpus": "synthetic", "encoder": None,
            "synth_config": cfg.__dict__.copy()}
    return Bank(vectors=vectors, article_indices=article_indices, chunk_indices=chunk_indices,
                tmd_codes=tmd.astype(np.uint16), meta=meta)


def like_bank(real: Bank, n: int, dim: int, seed: int = 0, progress: bool = False) -> Bank:
    """`n` rows of `dim` dims with the geometry of `real` (see the module doc)."""
    if dim < real.dim:
        raise ValueError(f"--dim {dim} is below the real bank's {real.dim}: a lift only widens")
    rng = np.random.default_rng(seed)
    starts, ends = real.article_bounds()
    lengths = ends - starts
    art = np.repeat(np.arange(len(starts)), lengths)
    v = np.asarray(real.vectors, dtype=np.float64)
    sums = np.add.reduceat(v, starts, axis=0)
    centroids = sums / lengths[:, None]
    resid = v - centroids[art]
    # Within-article covariance as principal axes: e = z @ axes, z standard normal.
    multi = lengths[art] > 1
    dof = max(int(multi.sum()) - int((lengths > 1).sum()), 1)
    _, sing, vt = np.linalg.svd(resid[multi], full_matrices=False)
    axes = (sing[:, None] / np.sqrt(dof)) * vt
    same = np.flatnonzero(art[1:] == art[:-1])
    rho = float(np.einsum("ij,ij->", resid[same], resid[same + 1])
                / max(np.einsum("ij,ij->", resid[same], resid[same]), 1e-12))
    rho = float(np.clip(rho, -0.95, 0.95))
    lift = None
    if dim > real.dim:  # a fixed random orthonormal map: inner products unchanged
        lift, _ = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((dim, real.dim)))
        lift = lift.T.astype(np.float32)  # (D_real, D): x @ lift

    # Articles: a real article each, drawn uniformly, until n rows.
    picks = rng.integers(0, len(starts), size=n // max(int(lengths.min()), 1) + 1)
    cut = int(np.searchsorted(np.cumsum(lengths[picks]), n)) + 1
    picks = picks[:cut]
    lens = lengths[picks].copy()
    lens[-1] -= int(lens.sum()) - n
    article_indices = np.repeat(np.arange(len(picks), dtype=np.int64), lens)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    chunk_indices = np.arange(n, dtype=np.int64) - np.repeat(first, lens)
    source_row = starts[picks][article_indices] + chunk_indices  # the real chunk it mirrors
    vectors = np.empty((n, dim), np.float32)
    bar = tqdm(total=n, unit="row", desc="synth bank (like)", disable=not progress)
    for a0 in range(0, len(picks), _ARTICLES_PER_BLOCK):
        a1 = min(a0 + _ARTICLES_PER_BLOCK, len(picks))
        r0, r1 = int(first[a0]), int(first[a1 - 1] + lens[a1 - 1])
        local = article_indices[r0:r1] - a0
        centre = centroids[picks[a0:a1]] + rng.standard_normal((a1 - a0, len(axes))) @ axes
        z = rng.standard_normal((r1 - r0, len(axes)))
        for i in range(1, r1 - r0):  # AR(1) along each article: consecutive chunks correlate
            if local[i] == local[i - 1]:
                z[i] = rho * z[i - 1] + np.sqrt(1 - rho * rho) * z[i]
        x = centre[local] + z @ axes
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vectors[r0:r1] = x.astype(np.float32) @ lift if lift is not None else x
        bar.update(r1 - r0)
    bar.close()
    tmd = real.tmd_codes[source_row] if real.tmd_codes is not None else None
    meta = {"synthetic": True, "corpus": f"synthetic, like {real.path}", "encoder": None,
            "like": {"bank": real.path, "fingerprint": real.fingerprint(),
                     "lag1_correlation": round(rho, 4), "lift": f"{real.dim}->{dim}",
                     "seed": seed}}
    return Bank(vectors=vectors, article_indices=article_indices, chunk_indices=chunk_indices,
                tmd_codes=tmd, meta=meta)


def main(argv: list[str] | None = None) -> int:
    defaults = SynthConfig()
    p = argparse.ArgumentParser(prog="python -m training.synth_bank",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output bank .npz (sidecar .json beside it)")
    for name, value in defaults.__dict__.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                       help=f"default {value}")
    p.add_argument("--like", help="a real bank whose geometry to keep (see the module doc); "
                                  "uses --n, --dim and --seed only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.like:
        from cascade.bank import BankError, load_bank
        t0 = time.perf_counter()
        try:
            bank = like_bank(load_bank(args.like, mmap=True), args.n, args.dim, args.seed,
                             progress=True)
        except (BankError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        save_bank(bank, args.out)
        print(f"wrote {args.out}: {bank.n:,} x {bank.dim} rows like {args.like} "
              f"({int(bank.article_indices[-1]) + 1:,} articles, lag-1 correlation "
              f"{bank.meta['like']['lag1_correlation']}) in {time.perf_counter() - t0:.1f}s")
        return 0
    cfg = SynthConfig(**{k: getattr(args, k) for k in defaults.__dict__})
    if cfg.n < 2 or cfg.dim < 2 or cfg.mean_chunks < 2 or cfg.topics < 1:
        print("error: need --n >= 2, --dim >= 2, --mean-chunks >= 2, --topics >= 1",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    bank = synth_bank(cfg, progress=True)
    gen_s = time.perf_counter() - t0
    save_bank(bank, args.out)
    total_s = time.perf_counter() - t0
    print(f"wrote {args.out}: {bank.n:,} x {bank.dim} synthetic rows, "
          f"{len(np.unique(bank.article_indices)):,} articles "
          f"(generated in {gen_s:.1f}s, {total_s:.1f}s with saving)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
