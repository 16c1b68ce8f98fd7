"""The one strict loader from YAML and dicts to settings dataclasses, used by every config:
serving.yaml (serving.config), the training YAMLs and their flags (training.config,
training.train_lvm, training.checklist), deploy.json's "cascade" mapping (cascade.deploy) and the
model configs stored in checkpoints (cascade.towers, cascade.lvm).

Strict means: an unknown key, a key given twice in a YAML file, a value of the wrong type or a
mapping where a value belongs (or the reverse) is refused in one line naming the file and the
dotted key. The only conversion is int -> float, which loses nothing. A dataclass can list keys
it renamed in `RENAMED` (old name -> new name): an old name is refused with one line naming the
new one, so a file written for an older version says what to change instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or flag with an unknown key, a wrong type or an impossible value."""


def _convert(value, tp, default, where: str, error: type[Exception]):
    """`value` checked against the type hint `tp` (int -> float where a float is wanted);
    `default`: the current value, the base of a nested dataclass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and len(args) == 2:  # X | None: say what X wants
            other = next(a for a in args if a is not type(None))
            return None if value is None else _convert(value, other, default, where, error)
        for arg in args:
            try:
                return _convert(value, arg, default, where, error)
            except error:
                continue
        raise error(f"{where}: {value!r} is not {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise error(f"{where}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise error(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], None, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(default if dataclasses.is_dataclass(default) else tp, value, where, error)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or
                                          (tp is int and isinstance(value, bool))):
        raise error(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build(base, data, where: str, error: type[Exception] = ConfigError):
    """The dataclass `base` (an instance: the defaults; or a class, whose defaults are used)
    with the keys of `data` replaced, recursing into nested dataclasses. `error`: the exception
    raised, one line naming `where` and the key."""
    if isinstance(base, type):
        base = base()
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping, got {data!r}")
    cls = type(base)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    renamed = getattr(cls, "RENAMED", {})
    for key in data:
        if key in renamed and key not in known:
            raise error(f"{where}: key '{key}' was renamed '{renamed[key]}'; use that name")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(known)})")
    return dataclasses.replace(base, **{
        k: _convert(v, hints[k], getattr(base, k), f"{where}.{k}", error)
        for k, v in data.items()})


def build_checked(cls, data, where: str, error: type[Exception] = ConfigError):
    """`build`, then the dataclass's own `validate()` (its ranges and combinations)."""
    cfg = build(cls, data, where, error)
    cfg.validate()
    return cfg


def merge(cfg, overrides: dict, where: str = "flags", error: type[Exception] = ConfigError):
    """A copy of dataclass `cfg` with `overrides` (nested dicts for nested dataclasses) applied,
    checked as `build` checks a file."""
    data = dataclasses.asdict(cfg)

    def deep(base: dict, new: dict) -> dict:
        for k, v in new.items():
            if isinstance(base.get(k), dict) and not isinstance(v, dict):
                raise error(f"{where}.{k}: expected a mapping, got {v!r}")
            base[k] = deep(dict(base[k]), v) if isinstance(v, dict) and isinstance(
                base.get(k), dict) else v
        return base

    return build(type(cfg), deep(data, overrides), where, error)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike, error: type[Exception] = ConfigError) -> dict:
    """A YAML file of settings: a mapping, each key once ({} for an empty file); `error`
    naming the file otherwise."""
    p = Path(path)
    try:
        data = yaml.load(p.read_text(), Loader=_StrictLoader)
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror})") from None
    except ConfigError as e:
        raise error(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{p}: expected a mapping of settings at the top level, "
                    f"got a {type(data).__name__}")
    return data


def to_yaml(cfg) -> str:
    """Every setting of dataclass `cfg`, defaults included, in declaration order."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
