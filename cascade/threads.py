"""Compute threads per process: torch's, FAISS's and NumPy's BLAS, in every thread that searches.

Three libraries keep their own threads, and each idle thread of theirs spins for a while after
its work, burning a core the other requests could use:
- torch's count is process-wide (`torch.set_num_threads`);
- FAISS's is OpenMP's, which is per thread: a thread that never set it (a gRPC handler, a pool
  worker, a user's thread) runs each FAISS call with one thread per core. Measured on the
  default bank, one context per call from a worker thread on 2 cores: 22 ms of CPU per search
  against 14 ms with one thread. So `set_threads` records the count, and stage 1 applies it in
  the calling thread (`apply_faiss_threads`) before each search;
- NumPy's BLAS (OpenBLAS) is process-wide, set through threadpoolctl: with its default of one
  thread per core, the small products of one context's search cost 18.6 ms of CPU per search
  against 11.3 ms with one thread, for the same wall time (9.9 ms).
"""

from __future__ import annotations

import faiss
import numpy  # noqa: F401  (loads NumPy's BLAS, so threadpoolctl finds it)
import torch
from threadpoolctl import threadpool_limits

_faiss_threads: int | None = None  # None: FAISS's own default, untouched


def set_threads(n: int) -> None:
    """Torch, FAISS and BLAS threads for this process (1 is fastest for one context on a shared
    CPU); FAISS's count then holds in every thread that searches through stage 1."""
    global _faiss_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    _faiss_threads = n
    faiss.omp_set_num_threads(n)
    threadpool_limits(n, user_api="blas")


def apply_faiss_threads() -> None:
    """Give the calling thread the FAISS thread count `set_threads` chose (if any)."""
    if _faiss_threads is not None and faiss.omp_get_max_threads() != _faiss_threads:
        faiss.omp_set_num_threads(_faiss_threads)
