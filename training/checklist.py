"""The whole v4 checklist in one command (`make train-v4`).

    python -m training.checklist --profile default      # the real default bank
    python -m training.checklist --profile smoke        # a small synthetic bank, ~1-2 minutes

Steps: bank (built if missing) -> v3 baseline pairs + training (if missing) -> post-mortem of v3
-> v4 pair expansion (with the checklist's retry) -> pre-flight (stops on a blocker) -> gates
relative to the heuristic on val (a bank without a shipped profile) -> v4 training -> gate ->
deploy.json (stage 1 = v4 or the heuristic, and why). Each step is the same `python -m
training.<step>` a user can run by hand, with the checklist's flag names.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from cascade import checkpoint as ck
from cascade.bank import BankError, atomic_write, load_bank, sha256_file, write_json
from cascade.deploy import CascadeConfig
from cascade.pairs import load_pairs
from cascade.split import SplitSpec, key_kind
from training import expand_pairs, postmortem, preflight, train_v4
from training.config import (
    CONFIG_DIR,
    ConfigError,
    RelativeGates,
    TrainConfig,
    from_dict,
    load_config,
    load_yaml,
    merge,
    relative_to_heuristic,
    to_yaml,
)

EXIT_BLOCKED = 1
EXIT_BAD_INPUT = 2


@dataclass
class Profile:
    bank: str = "artifacts/wikipedia_vital_bank.npz"  # the bank (BANK= overrides)
    make_bank: str = "ingest"  # how to build a missing bank: ingest | synthetic
    synthetic: dict = field(default_factory=dict)  # training.synth_bank flags for "synthetic"
    ingest: dict = field(default_factory=dict)  # training.ingest flags for "ingest" (corpus: sotu)
    # {bank} below is the bank's file stem, so each bank gets its own pairs and runs.
    v3_pairs: str = "artifacts/twotower/{bank}/pairs_v3.npz"
    v3_expand: dict = field(default_factory=lambda: {"stride": 2})  # phase-2: fewer pairs
    v4_pairs: str = "artifacts/twotower/{bank}/pairs_v4.npz"
    v4_expand: dict = field(default_factory=lambda: {"target_pairs": 50000, "seed": 42})
    v3_config: str = "v3_phase2_default.yaml"
    v4_config: str = "v4_default.yaml"
    v3_out: str = "runs/{bank}/twotower_v3_phase2"
    v4_out: str = "runs/{bank}/twotower_v4"
    deploy: str = "runs/{bank}/deploy.json"
    mine_schedule: str = ""  # empty: the v4 config's schedule
    epochs: int = 0  # 0: the v4 config's epochs
    # config: v4 runs with its config's gates and abort trigger. heuristic: they are set from
    # the exp-weighted heuristic measured on this bank's val split by relative_gates (written to
    # runs/{bank}/v4_relative.yaml). `make train-v4 BANK=...` without PROFILE= on a bank that no
    # shipped profile is made for runs the default profile with "heuristic".
    gates: str = "config"
    relative_gates: RelativeGates = field(default_factory=RelativeGates)

    def path(self, template: str) -> str:
        return template.format(bank=Path(self.bank).stem)


def shipped_profile_for(bank: str) -> str | None:
    """The shipped profile whose own bank is `bank` (its gates were set for it), if any."""
    for p in sorted(CONFIG_DIR.glob("profile_*.yaml")):
        own = (yaml.safe_load(p.read_text()) or {}).get("bank")
        if own and Path(own).resolve() == Path(bank).resolve():
            return p.stem.removeprefix("profile_")
    return None


def choose_profile(profile: str | None, bank: str | None) -> tuple[str, str | None, bool]:
    """(profile, bank to put in its place or None for its own, whether the gates are relative to
    the heuristic) for `--profile` / `--bank` as given. A named profile keeps its own gates."""
    if profile is not None:
        return profile, bank, False
    # `make train-v4 BANK=artifacts/sotu_bank.npz` gets the profile made for that bank.
    shipped = shipped_profile_for(bank) if bank else None
    if shipped and shipped != "default":
        return shipped, None, False  # its own bank: built when missing, like the default's
    # Any other bank: the default recipe, with gates that fit the bank (ARCHITECTURE.md
    # "Gates"), measured on its own val split.
    return "default", bank, bool(bank) and shipped is None


def load_profile(name_or_path: str, bank: str | None) -> tuple[Profile, str]:
    """The profile with `bank` (if given) in place of its own; and its own bank."""
    p = Path(name_or_path)
    if not p.exists():
        p = CONFIG_DIR / f"profile_{name_or_path}.yaml"
    if not p.exists():
        raise ConfigError(f"{name_or_path}: no such profile (try default or smoke)")
    profile = from_dict(Profile, load_yaml(p), str(p))
    if profile.gates not in ("config", "heuristic"):
        raise ConfigError(f"{p}: 'gates' is {profile.gates!r} (config or heuristic)")
    own_bank = profile.bank
    if bank:
        profile.bank = bank
    return profile, own_bank


def flags(d: dict) -> list[str]:
    out = []
    for key, value in d.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


SPLIT_KEYS = ("seed", "train_split", "test_split")


def split_of(profile: Profile, bank) -> SplitSpec:
    """The article split every pairs file of this checklist run is drawn with."""
    d = expand_pairs.ExpandConfig()
    e = {**{k: getattr(d, k) for k in SPLIT_KEYS}, **profile.v4_expand}
    return SplitSpec(seed=int(e["seed"]), train=float(e["train_split"]),
                     test=float(e["test_split"]), key=key_kind(bank))


def trained_split(path: Path) -> SplitSpec | None:
    try:
        return ck.split_spec_of(ck.load_checkpoint(path))
    except ck.CheckpointError:
        return None


def step(title: str) -> None:
    print(f"\n=== {title} {'=' * max(0, 76 - len(title))}", flush=True)


def call(module, argv: list[str]) -> int:
    """Run a step as `python -m <module> argv`, printing that command first: the log holds the
    exact commands that reproduce the checklist by hand."""
    print(f"$ python -m {module.__name__} {shlex.join(argv)}", flush=True)
    return module.main(argv)


def relative_config(profile: Profile, bank, pairs_path: str, cfg: TrainConfig) -> str:
    """Measure the exp-weighted heuristic on the pairs' val split (the evaluation the trainer
    and the final gate use), set `cfg`'s gates and abort margin from it by the profile's rule,
    and write that config beside deploy.json: -> its path."""
    from cascade.methods import compare_methods  # imports torch's towers: only when needed

    val = load_pairs(pairs_path, bank).val()
    articles = len(set(val.articles(bank).tolist()))
    where = f"val ({len(val):,} pairs from {articles:,} articles)"
    table, _ = compare_methods(bank, val, {"heuristic": ("exp_weighted", None)},
                               tuple(cfg.eval_ks))
    out, lines = relative_to_heuristic(cfg, table["heuristic"], profile.relative_gates, where)
    out = merge(out, {"bank": bank.path, "pairs": pairs_path,
                      "out": profile.path(profile.v4_out)}, "relative gates")
    for line in lines:
        print(f"  {line}")
    path = Path(profile.path(profile.deploy)).with_name("v4_relative.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    head = [f"# {profile.v4_config} with gates and abort trigger relative to the exp-weighted",
            f"# heuristic on {bank.path}'s {where}, written by training.checklist:",
            *(f"#   {line}" for line in lines)]
    text = "\n".join(head) + "\n" + to_yaml(out)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    print(f"wrote {path}")
    return str(path)


def build_missing_bank(profile: Profile) -> int:
    """Step 0: the profile's bank, built when missing (ingest or synthetic)."""
    bank_path = profile.bank
    if Path(bank_path).exists():
        return 0
    step(f"0. Bank {bank_path} is missing: building it ({profile.make_bank})")
    if profile.make_bank == "synthetic":
        from training import synth_bank
        return call(synth_bank, ["--out", bank_path] + flags(profile.synthetic))
    from training import ingest
    return call(ingest, ["--out", bank_path] + flags(profile.ingest))


def note_foreign_gates(profile: Profile, v4_cfg: TrainConfig, gates_bank: str | None) -> None:
    """Say so when a shipped config's gates, set for another bank, judge this one."""
    bank_path = profile.bank
    shipped = (CONFIG_DIR / profile.v4_config).exists() and not Path(profile.v4_config).exists()
    if (profile.gates == "config" and shipped and gates_bank
            and Path(gates_bank).resolve() != Path(bank_path).resolve()):
        # Gate thresholds measure difficulty, which depends on the bank (ARCHITECTURE.md "Gates").
        print(f"note: the gates of {profile.v4_config} ({v4_cfg.gates.metric} success >= "
              f"{v4_cfg.gates.success}%, partial >= {v4_cfg.gates.partial}%) were set for "
              f"{gates_bank}; for {bank_path}, set thresholds relative to the heuristic in a "
              f"config of your own, named by a profile (make train-v4 PROFILE=my_profile.yaml). "
              f"Deploying v4 also requires beating the heuristic beyond the 95% CI, whatever "
              f"the thresholds")


def v3_baseline(profile: Profile, bank) -> tuple[int, Path]:
    """Step 1: the phase-2 (v3) baseline, and its post-mortem. Both pairs files take the same
    article split (seed and fractions), so v3 is compared on articles it never trained on.
    -> (exit code, v3's best.pt)."""
    bank_path = profile.bank
    split = split_of(profile, bank)
    split_flags = flags({k: v for k, v in profile.v4_expand.items() if k in SPLIT_KEYS})
    v3_pairs, v3_out = profile.path(profile.v3_pairs), profile.path(profile.v3_out)
    v3_best = Path(v3_out) / "checkpoints" / "best.pt"
    stale = v3_best.exists() and trained_split(v3_best) != split
    if stale:
        print(f"note: {v3_best} was trained with another article split than "
              f"{split.to_dict()}: retraining v3, so that it is compared on articles it never "
              f"trained on")
    if stale or not v3_best.exists() or not Path(v3_pairs).exists():
        step("1a. v3 baseline pairs (phase-2 recipe)")
        rc = call(expand_pairs, ["--bank", bank_path, "--out", v3_pairs]
                  + flags(profile.v3_expand) + split_flags)
        if rc:
            return rc, v3_best
    if stale or not v3_best.exists():
        step("1b. v3 baseline training (hard negatives from epoch 1, no curriculum, no filter)")
        rc = call(train_v4, ["--config", profile.v3_config, "--bank", bank_path, "--pairs",
                             v3_pairs, "--out", v3_out, "--name", "twotower_v3_phase2"])
        if rc not in (0, train_v4.EXIT_ABORT):
            return rc, v3_best
    step("1. Phase-2 (v3) post-mortem")
    return call(postmortem, ["--ckpt", str(v3_best), "--pairs", v3_pairs, "--bank", bank_path,
                             "--out", str(Path(v3_out) / "postmortem.json"), "--device",
                             "cpu"]), v3_best


def expand_v4_pairs(profile: Profile, resume: bool) -> int:
    """Step 2: the v4 pairs, with the checklist's retry."""
    step("2. Expand training pairs")
    v4_pairs = profile.path(profile.v4_pairs)
    if resume and Path(v4_pairs).exists():
        # Re-expanding could change the pairs under the run being resumed (its last.pt pins
        # them, and --resume would refuse).
        print(f"--resume: keeping {v4_pairs}, the pairs the run started with")
        return 0
    return call(expand_pairs, ["--bank", profile.bank, "--out", v4_pairs, "--auto-retry"]
                + flags(profile.v4_expand))


def v4_preflight(profile: Profile, v4_cfg: TrainConfig, schedule: str, epochs: int,
                 v3_best: Path) -> int:
    """Step 3: pre-flight; a blocker stops the run."""
    step("3. v4 pre-flight checks")
    v4_pairs = profile.path(profile.v4_pairs)
    manifest = str(Path(v4_pairs).with_name("pairs_v4_manifest.json"))
    rc = call(preflight, ["--pairs", v4_pairs, "--bank", profile.bank, "--mine-schedule",
                          schedule, "--filter-threshold", str(v4_cfg.filter_threshold),
                          "--epochs", str(epochs), "--manifest-out", manifest, "--ckpt",
                          str(v3_best)])
    if rc:
        print("pre-flight found a blocker: v4 training not started", file=sys.stderr)
    return rc


def train_v4_run(profile: Profile, bank, v4_cfg: TrainConfig, schedule: str, epochs: int,
                 v3_best: Path, resume: bool, nproc: int) -> int:
    """Step 4: v4 training (gates relative to the heuristic first, when the profile says so),
    its gate and report."""
    v4_pairs = profile.path(profile.v4_pairs)
    v4_config = profile.v4_config
    if profile.gates == "heuristic":
        step("4a. Gates relative to the heuristic on this bank's val split")
        v4_config = relative_config(profile, bank, v4_pairs, v4_cfg)
    step("4. v4 training")
    args = ["--config", v4_config, "--bank", profile.bank, "--pairs", v4_pairs, "--out",
            profile.path(profile.v4_out), "--mine-schedule", schedule, "--epochs", str(epochs),
            "--baseline", f"v3={v3_best}"]
    args += ["--resume"] if resume else []
    if nproc > 1:  # data-parallel: torchrun starts the ranks, each runs train_v4.main
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(nproc), "-m", "training.train_v4", *args]
        print(f"$ {shlex.join(cmd)}", flush=True)
        return subprocess.run(cmd).returncode
    return call(train_v4, args)


def write_deploy(profile: Profile, bank, t0: float) -> None:
    """Step 5: deploy.json, stage 1 = v4 or the heuristic as the gate decided, and why."""
    step("5. Deploy decision")
    v4_out = profile.path(profile.v4_out)
    gate = json.loads((Path(v4_out) / "gate.json").read_text())
    checkpoint = gate.get("best_checkpoint") if gate["stage1"] == "v4" else None
    deploy = {
        "stage1": gate["stage1"],
        "checkpoint": checkpoint,
        # Serving refuses a checkpoint whose bytes are not these (cascade.checkpoint.verify_sha256).
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "heuristic": {"kind": "exp_weighted", "alpha": 0.1},
        "verdict": gate["verdict"], "reason": gate["reason"],
        "judged_on": {"split": gate.get("split"), "pairs": gate.get("test_pairs"),
                      "articles": gate.get("test_articles"), "split_spec": gate.get("split_spec")},
        "bank": profile.bank, "bank_fingerprint": bank.fingerprint(),
        "gate": str(Path(v4_out) / "gate.json"), "report": str(Path(v4_out) / "report.md"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": asdict(profile),
        # The cascade's settings (K per stage, FAISS index, longest context); `make train-lvm`
        # adds the LVM and stage 3's w.
        "cascade": CascadeConfig().to_dict(),
    }
    deploy_path = Path(profile.path(profile.deploy))
    deploy_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(deploy_path, deploy)
    print(f"verdict {gate['verdict']}; stage 1 = {deploy['stage1']}: {gate['reason']}")
    print(f"wrote {deploy_path} ({time.perf_counter() - t0:.0f}s for the whole checklist)")


def run_checklist(profile: Profile, resume: bool = False, gates_bank: str | None = None,
                  nproc: int = 1) -> int:
    """The checklist on `profile`; `gates_bank` is the bank its v4 config's gates were set for
    (the profile's own bank), to say so when another bank runs with them. `nproc` > 1 trains v4
    data-parallel under torchrun."""
    t0 = time.perf_counter()
    rc = build_missing_bank(profile)
    if rc:
        return rc
    bank = load_bank(profile.bank)
    v4_cfg = load_config(profile.v4_config)
    note_foreign_gates(profile, v4_cfg, gates_bank)
    schedule = profile.mine_schedule or v4_cfg.mine_schedule
    epochs = profile.epochs or v4_cfg.epochs
    rc, v3_best = v3_baseline(profile, bank)
    if rc:
        return rc
    rc = expand_v4_pairs(profile, resume) or v4_preflight(profile, v4_cfg, schedule, epochs,
                                                          v3_best)
    if rc:
        return rc
    rc = train_v4_run(profile, bank, v4_cfg, schedule, epochs, v3_best, resume, nproc)
    if rc not in (0, train_v4.EXIT_ABORT):
        return rc
    write_deploy(profile, bank, t0)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.checklist",
                                description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None,
                   help="default | smoke | long | a profile YAML (default: the shipped profile "
                        "whose own bank is --bank, else default)")
    p.add_argument("--bank", default=None, help="use this bank instead of the profile's")
    p.add_argument("--resume", action="store_true", help="continue v4 from its last.pt")
    p.add_argument("--nproc", type=int, default=1,
                   help="train v4 data-parallel in this many processes (torchrun, DDP)")
    args = p.parse_args(argv)
    if args.nproc < 1:
        print(f"error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    named_bank = args.bank
    chosen, args.bank, relative = choose_profile(args.profile, args.bank)
    if args.profile is None and chosen != "default":
        print(f"profile {chosen}: the shipped profile for {named_bank}")
    args.profile = chosen
    if args.bank and not Path(args.bank).exists():
        # Only the profile's own bank is built when missing: building the default corpus into a
        # path the user named would train on data they did not ask for.
        print(f"error: {args.bank}: no such bank (build one with `make data BANK={args.bank} "
              f"CORPUS=my.jsonl`, or `python -m training.synth_bank --out {args.bank}`)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        profile, own_bank = load_profile(args.profile, args.bank)
        if relative:
            profile.gates = "heuristic"
            print(f"{args.bank}: no shipped profile is made for this bank; the default profile "
                  f"runs with gates relative to the heuristic on its val split (PROFILE= runs a "
                  f"profile with its own gates)")
        return run_checklist(profile, resume=args.resume, gates_bank=own_bank, nproc=args.nproc)
    except (ConfigError, BankError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
