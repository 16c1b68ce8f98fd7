"""Process set-up that training and serving share: a run's log file and deterministic torch.

Plain functions a command calls once near its start; nothing here runs on import.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import torch


def log_to_file(logger: logging.Logger, log_dir: str | Path, prefix: str,
                fmt: str = "%(message)s", stream: TextIO | None = None,
                exclusive: bool = True) -> Path:
    """Send `logger`'s INFO records to <log_dir>/<prefix>_<YYYYmmdd_HHMMSS>.log and to `stream`
    (stdout by default); -> the log file's path.

    `exclusive` replaces the logger's handlers and stops its records from reaching the root
    logger (a run's own log, printed once); False adds the two handlers beside any there are."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}.log"
    if exclusive:
        logger.handlers.clear()
        logger.propagate = False
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter(fmt)
    for handler in (logging.FileHandler(path, encoding="utf-8"),
                    logging.StreamHandler(sys.stdout if stream is None else stream)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return path


def silence(logger: logging.Logger) -> None:
    """No output from `logger` (a rank other than 0 of a data-parallel run: rank 0 logs)."""
    logger.handlers.clear()
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def deterministic_torch(seed: int, threads: int = 0) -> None:
    """Seed torch and make its kernels reproducible, so --resume is exact and a cuda run stays
    close to the CPU's; `threads` > 0 sets torch's intra-op thread count (0 keeps torch's)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False  # cuDNN's autotuner picks kernels by timing
    # cuDNN runs float32 convolutions/RNNs in TF32 by default (10-bit mantissa): keep float32
    # float32, so a cuda run matches the CPU's; --amp bf16 is the flag that trades precision.
    torch.backends.cudnn.allow_tf32 = False
    if threads:
        torch.set_num_threads(threads)
