"""The hard-negative curriculum: `--mine-schedule "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"`.

Each `;`-separated segment is `FIRST-LAST:none` or `FIRST-LAST:COUNT@COS_MIN-COS_MAX`, epochs
inclusive and 1-based (a first segment may start at 0, as the checklist's does, meaning "from the
first epoch"). Segments must follow each other with no gap or overlap and cover every epoch.
The pre-flight check and the trainer both use `parse_schedule` / `check_covers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_SEGMENT = re.compile(
    r"^\s*(\d+)\s*-\s*(\d+)\s*:\s*(?:(none)|(\d+)\s*@\s*([0-9.]+)\s*-\s*([0-9.]+))\s*$")


class ScheduleError(ValueError):
    """A malformed schedule; the message quotes the bad segment."""


@dataclass(frozen=True)
class Segment:
    first: int  # first epoch (inclusive)
    last: int  # last epoch (inclusive)
    count: int  # hard negatives per pair; 0 = no mining
    cos_min: float = 0.0
    cos_max: float = 1.0

    def __str__(self) -> str:
        if self.count == 0:
            return f"{self.first}-{self.last}:none"
        return f"{self.first}-{self.last}:{self.count}@{_num(self.cos_min)}-{_num(self.cos_max)}"


def _num(x: float) -> str:
    """Shortest positional text that parses back to x (`:g` kept 6 digits, no round trip)."""
    return np.format_float_positional(x, trim="-")


def parse_schedule(text: str) -> list[Segment]:
    """Parse and check the segments' own rules and their order (not yet the epoch count)."""
    if not text or not text.strip():
        raise ScheduleError("empty schedule")
    segments = []
    for i, raw in enumerate(text.split(";"), start=1):
        if not raw.strip():
            raise ScheduleError(f"segment {i} is empty (stray ';' in {text!r})")
        m = _SEGMENT.match(raw)
        if not m:
            raise ScheduleError(f"segment {i} {raw.strip()!r}: expected FIRST-LAST:none or "
                                f"FIRST-LAST:COUNT@COS_MIN-COS_MAX")
        first, last = int(m[1]), int(m[2])
        if first > last:
            raise ScheduleError(f"segment {i} {raw.strip()!r}: first epoch {first} > last {last}")
        if m[3]:
            seg = Segment(first, last, 0)
        else:
            try:
                count, lo, hi = int(m[4]), float(m[5]), float(m[6])
            except ValueError:
                raise ScheduleError(f"segment {i} {raw.strip()!r}: unreadable number") from None
            if count <= 0:
                raise ScheduleError(f"segment {i} {raw.strip()!r}: hard-negative count must be "
                                    f"> 0 (use 'none' for no mining)")
            if not 0.0 <= lo < hi <= 1.0:
                raise ScheduleError(f"segment {i} {raw.strip()!r}: need 0 <= cos_min < cos_max "
                                    f"<= 1, got {lo}-{hi}")
            seg = Segment(first, last, count, lo, hi)
        if segments:
            prev = segments[-1]
            if seg.first <= prev.last:
                raise ScheduleError(f"segment {i} {raw.strip()!r} overlaps segment {i - 1} "
                                    f"{prev} (epoch {seg.first})")
            if seg.first > prev.last + 1:
                raise ScheduleError(f"gap before segment {i} {raw.strip()!r}: epochs "
                                    f"{prev.last + 1}-{seg.first - 1} are not covered")
        elif seg.first > 1:
            raise ScheduleError(f"segment 1 {raw.strip()!r}: epochs 1-{seg.first - 1} are not "
                                f"covered (the first segment must start at 0 or 1)")
        segments.append(seg)
    return segments


def check_covers(segments: list[Segment], epochs: int) -> None:
    """Refuse a schedule that stops before the last epoch."""
    if segments[-1].last < epochs:
        raise ScheduleError(f"segment {len(segments)} {segments[-1]} ends at epoch "
                            f"{segments[-1].last}, but training runs {epochs} epochs "
                            f"(epochs {segments[-1].last + 1}-{epochs} are not covered)")


def segment_for(segments: list[Segment], epoch: int) -> Segment:
    """The segment in force at a 1-based `epoch`."""
    for seg in segments:
        if seg.first <= epoch <= seg.last:
            return seg
    raise ScheduleError(f"epoch {epoch} is not covered by the schedule")


def format_schedule(segments: list[Segment]) -> str:
    return ";".join(str(s) for s in segments)
