"""The deploys a server holds, and swapping to a new one without dropping a call.

A deploy is named by its id: the first 12 hex digits of the sha256 of its deploy.json (which
pins every file by sha256, so one id is one set of models). A server serves the id it loaded
last (`live`) and keeps the one before it (`previous`) until the next swap: a call names the id
it wants (the front sends its own with every stage call), so a call the front began on the old
deploy is answered by the old models in every stage even after the stages swapped.

Swapping (SIGHUP): load what deploy.json names now (sha256s checked by the library), warm it,
then replace `live` by one assignment. A call reads `live` once when it starts and keeps that
object, so calls in flight finish on the model they began with. A deploy that fails to load is
refused and `live` stays.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class NotHeld(LookupError):
    """A call named a deploy this server does not hold (neither its live one nor the one
    before)."""


def deploy_id(path: str | Path) -> str:
    """What names a deploy in every answer: sha256 of its deploy.json, first 12 hex digits."""
    return content_id(Path(path).read_bytes())


def content_id(data: bytes) -> str:
    """The deploy id of deploy.json's bytes `data`."""
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass(frozen=True)
class Loaded:
    id: str
    model: Any  # what the server serves of it: a Cascade, or a Stage1


def same_bank(deploy_path, old_bank):
    """The bank object `old_bank` when deploy.json names the same file with the same
    fingerprint (a new checkpoint on the same bank: the swap shares the bank, no second copy),
    else None (the library loads it)."""
    from cascade.deploy import read_deploy, resolve

    if old_bank is None or old_bank.path is None:
        return None
    deploy = read_deploy(deploy_path)
    same_file = resolve(deploy_path, deploy["bank"]).resolve() == Path(old_bank.path).resolve()
    return old_bank if same_file and old_bank.fingerprint() == deploy["bank_fingerprint"] \
        else None


class Deploys:
    """The live deploy and the one before it, swapped atomically."""

    def __init__(self) -> None:
        self.live: Loaded | None = None
        self.previous: Loaded | None = None
        self.swapping = threading.Lock()  # one swap at a time

    def get(self, wanted: str = "") -> Loaded:
        """The deploy `wanted` names ("" = the live one)."""
        live, previous = self.live, self.previous
        if not wanted or wanted == live.id:
            return live
        if previous is not None and previous.id == wanted:
            return previous
        raise NotHeld(f"deploy {wanted} is not held here (live {live.id}"
                      f"{', previous ' + previous.id if previous else ''})")

    def put(self, new: Loaded) -> None:
        """Serve `new` from now on; the live one becomes the previous (the one before that is
        dropped, once the calls that hold it end)."""
        if self.live is not None and self.live.id == new.id:
            return
        self.previous, self.live = self.live, new
