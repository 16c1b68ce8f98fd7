"""Compute threads per process, applied in every thread that searches.

torch's thread count is process-wide, but FAISS's is OpenMP's, which is per thread: a thread that
never set it (a gRPC handler, a pool worker, a user's thread) runs each FAISS call with OpenMP's
default of one thread per core, and the idle ones spin. Measured on the default bank, one context
per call from a worker thread on 2 cores: 22 ms of CPU per search with the default against 14 ms
with one thread, for the same answers. So `set_threads` records the count, and stage 1 applies it
in the calling thread (`apply_faiss_threads`) before each search.
"""

from __future__ import annotations

import faiss
import torch

_faiss_threads: int | None = None  # None: FAISS's own default, untouched


def set_threads(n: int) -> None:
    """Torch and FAISS threads for this process (1 is fastest for one context on a shared CPU);
    FAISS's count then holds in every thread that searches through stage 1."""
    global _faiss_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    _faiss_threads = n
    faiss.omp_set_num_threads(n)


def apply_faiss_threads() -> None:
    """Give the calling thread the FAISS thread count `set_threads` chose (if any)."""
    if _faiss_threads is not None and faiss.omp_get_max_threads() != _faiss_threads:
        faiss.omp_set_num_threads(_faiss_threads)
