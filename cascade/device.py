"""Which torch device a step runs on, and the mixed precision it may use there.

    device = resolve_device("auto")          # cuda if available, else mps, else cpu
    check_amp("bf16", device)                # bf16 autocast is for cuda only
    with autocast(device, "bf16"): ...       # a no-op context when amp is "off"

Every step that takes `--device` (the trainers, the post-mortem, the benchmarks) resolves it
here, so "auto" and the error for a bad name mean the same thing everywhere. FAISS stays on the
CPU: towers, batches and the loss move to the device, search results come back as numpy.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch
from torch import nn

DEVICES = "auto, cpu, cuda, cuda:N or mps"
AMP_MODES = ("off", "bf16")
_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# cuBLAS picks its reduction order per call unless its workspace is pinned; without this a cuda
# run is not reproducible, and --resume on cuda could not be exact. Set before cuBLAS starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def check_device_name(name: str) -> str:
    """`name` when it names a device (whether this machine has it or not), else ValueError:
    what a config file is checked with on a machine that may not be the one it runs on."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"--device {name!r}: expected {DEVICES}")
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """`name` -> a usable torch.device; ValueError (one line naming it) if it is not one here."""
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: this torch ({torch.__version__}) sees no CUDA "
                             f"GPU; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA "
                             f"device(s) here (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r}: MPS is not available on this machine; use "
                         f"--device cpu or auto")
    return device


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse a mixed-precision mode the device cannot run (ValueError, one line)."""
    if amp not in AMP_MODES:
        raise ValueError(f"--amp {amp!r}: expected one of {', '.join(AMP_MODES)}")
    if amp == "bf16" and device.type != "cuda":
        raise ValueError(f"--amp bf16 needs --device cuda (got {device}); on {device.type} "
                         f"training runs in float32")


def autocast(device: torch.device, amp: str):
    """bf16 autocast on cuda when amp is "bf16"; otherwise a context that changes nothing."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def module_device(module: nn.Module) -> torch.device:
    """The device a module's parameters live on (cpu for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def to_cpu(obj):
    """A copy of a nested dict / list / tuple with every tensor moved to the CPU, so a state
    saved on a GPU loads anywhere (torch.load(..., weights_only=True) on a CPU-only machine)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


def rng_state(device: torch.device) -> dict:
    """The torch generators a run draws from on `device` (CPU always, plus the device's own)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what `rng_state` saved; a device generator saved on another kind is left as is."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])
