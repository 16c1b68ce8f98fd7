"""Command-line pieces the trainers share: flags that override keys of a YAML config."""

from __future__ import annotations

import argparse


def add_config_flags(p: argparse.ArgumentParser, flags: dict[str, tuple[type, str]]) -> None:
    """--<name> (underscores as dashes) for each config key in `flags` (its type and help);
    unset, the config's value holds. Then --resume, which every trainer has."""
    for name, (tp, text) in flags.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=tp, default=None, dest=name,
                       help=text)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")


def parse_overrides(p: argparse.ArgumentParser, argv: list[str] | None,
                    flags: dict) -> argparse.Namespace:
    """Parse `argv`; `args.overrides` holds the config keys of `flags` given on the line."""
    args = p.parse_args(argv)
    args.overrides = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    return args
