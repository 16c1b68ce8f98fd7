"""What every benchmark does the same way: its results JSON (stamped, written, announced) and
its NAME=PATH checkpoint flags."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cascade.bank import write_json


def created() -> str:
    """The results JSON's "created" stamp: now, UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_report(out: str | Path, report: dict, note: str = "") -> None:
    """Write `report` as strict JSON to `out` (its folder made as needed) and say so."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}{note}")


def named_checkpoints(specs: list[str]) -> dict[str, str]:
    """--ckpt values, NAME=PATH or a PATH named by its run directory
    (runs/<bank>/<run>/checkpoints/best.pt -> <run>) -> {name: path}."""
    return dict(c.split("=", 1) if "=" in c else (Path(c).parent.parent.name, c) for c in specs)


# The note after "wrote <out>" of a timing benchmark, formatted with the load average at its start.
NOISY = " (load average {:.1f} at the start: timings on a shared machine are noisy)"
