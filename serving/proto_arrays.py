"""Between protobuf messages and the library's numpy types. A malformed message raises
ValueError naming the field; the servicers turn it into INVALID_ARGUMENT."""

from __future__ import annotations

import numpy as np

from serving.protos import pb


def vectors_from_proto(msg, field: str) -> np.ndarray:
    """Vectors message -> (L, dim) float32 (a view of the bytes)."""
    if msg.dim == 0:
        raise ValueError(f"{field}.dim: must be the bank's dimension, got 0")
    row_bytes = 4 * msg.dim
    if len(msg.data) % row_bytes:
        raise ValueError(f"{field}.data: {len(msg.data)} bytes is not a whole number of "
                         f"{msg.dim}-d float32 rows ({row_bytes} bytes each)")
    return np.frombuffer(msg.data, dtype="<f4").reshape(-1, msg.dim)


def vectors_to_proto(x: np.ndarray) -> pb.Vectors:
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.Vectors(data=x.tobytes(), dim=x.shape[1])


def context_kind(msg, field: str, allowed: tuple[str, ...]) -> str:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise ValueError(f"{field}: empty; set one of {', '.join(allowed)}")
    if kind not in allowed:
        raise ValueError(f"{field}.{kind}: not accepted here; set one of {', '.join(allowed)}")
    return kind


def candidates_from_proto(msgs, field: str) -> tuple[np.ndarray, np.ndarray]:
    """repeated Candidates -> ids (B, K) int64, scores (B, K) float32."""
    if not msgs:
        raise ValueError(f"{field}: empty")
    k = len(msgs[0].ids)
    for i, c in enumerate(msgs):
        if len(c.ids) != k or len(c.scores) != k:
            raise ValueError(f"{field}[{i}]: {len(c.ids)} ids and {len(c.scores)} scores; every "
                             f"list needs {k} of each (as {field}[0].ids)")
    ids = np.array([list(c.ids) for c in msgs], dtype=np.int64).reshape(len(msgs), k)
    scores = np.array([list(c.scores) for c in msgs], dtype=np.float32).reshape(len(msgs), k)
    return ids, scores


def candidates_to_proto(ids: np.ndarray, scores: np.ndarray) -> list[pb.Candidates]:
    return [pb.Candidates(ids=i.tolist(), scores=s.tolist()) for i, s in zip(ids, scores,
                                                                             strict=True)]
