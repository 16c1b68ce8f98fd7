"""The one strict config loader (cascade.config_loader): every refusal is one line naming the file
and the dotted key; a renamed key names its new name; an old deploy.json's prefilter in
index_params still loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from cascade.config_loader import ConfigError, build, load_yaml, merge
from cascade.deploy import CascadeConfig, DeployError
from serving.config import ConfigError as ServingConfigError
from training.config import ConfigError as TrainingConfigError


@dataclass
class Inner:
    size: int = 3
    rate: float = 0.5


@dataclass
class Outer:
    RENAMED: ClassVar[dict] = {"workers": "threads"}
    name: str = "x"
    threads: int = 1
    path: str | None = None
    ks: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=lambda: Inner(size=7))


def test_builds_on_the_defaults_and_converts_only_int_to_float():
    cfg = build(Outer(), {"inner": {"rate": 1}, "ks": [5]}, "f.yaml")
    assert cfg.inner == Inner(size=7, rate=1.0) and isinstance(cfg.inner.rate, float)
    assert cfg.ks == [5] and cfg.threads == 1
    assert merge(cfg, {"inner": {"size": 9}}).inner == Inner(size=9, rate=1.0)


@pytest.mark.parametrize("data,message", [
    ({"nmae": "y"}, r"^f.yaml: unknown key 'nmae' \(known: name, threads, path, ks, inner\)$"),
    ({"workers": 4}, r"^f.yaml: key 'workers' was renamed 'threads'; use that name$"),
    ({"threads": True}, r"^f.yaml.threads: expected int, got True$"),
    ({"path": 5}, r"^f.yaml.path: expected str, got 5$"),
    ({"ks": [1, "2"]}, r"^f.yaml.ks\[1\]: expected int, got '2'$"),
    ({"inner": 3}, r"^f.yaml.inner: expected a mapping, got 3$"),
    ({"inner": {"rate": "fast"}}, r"^f.yaml.inner.rate: expected float, got 'fast'$"),
])
def test_refusals_name_the_key_in_one_line(data, message):
    with pytest.raises(ConfigError, match=message):
        build(Outer, data, "f.yaml")


def test_yaml_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("threads: 2\nname: a\nthreads: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: duplicate key 'threads' \(line 3\)"):
        load_yaml(p)
    p.write_text("- threads\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings at the top level"):
        load_yaml(p)
    p.write_text("threads: [\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_yaml(p)
    p.write_text("")
    assert load_yaml(p) == {}
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")
    # One error class for every config: training's and serving's are the loader's.
    assert ServingConfigError is TrainingConfigError is ConfigError


def test_deploy_cascade_keeps_loading_the_old_prefilter_form():
    assert CascadeConfig.from_dict({"index_params": "prefilter=none"}).exact_prefilter == "none"
    old = CascadeConfig.from_dict({"index_factory": "Flat", "index_params": "prefilter=int8"})
    assert old == CascadeConfig() and old.index_params == ""
    assert CascadeConfig.from_dict({"exact_prefilter": "none"}).exact_prefilter == "none"
    with pytest.raises(DeployError, match="disagree"):
        CascadeConfig.from_dict({"index_params": "prefilter=none", "exact_prefilter": "int8"})
    with pytest.raises(DeployError, match="cascade.exact_prefilter must be one of int8, none"):
        CascadeConfig.from_dict({"exact_prefilter": "int4"})
    with pytest.raises(DeployError, match=r"cascade: unknown key 'k1' \(known: k_stage1,"):
        CascadeConfig.from_dict({"k1": 5})
