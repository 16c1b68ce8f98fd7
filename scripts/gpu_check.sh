#!/usr/bin/env bash
# Issue 13's GPU check: the GPU tests, then one checklist-scale v4 epoch (synthetic 500k x 768
# bank, 50k pairs of 100-vector contexts, the checklist's launch config) with --device cuda and
# with --device cuda --amp bf16, printing pairs/s. Run from the repository root:
#
#     OUT=/some/dir bash scripts/gpu_check.sh        # results under $OUT (default gpu_check_out)
#
# Made for a lent GPU machine: python3 with PyTorch (2.11) preinstalled, sentence-transformers,
# pyyaml and tqdm present, no faiss, no internet, 16 cores. It installs nothing into the system:
# the wheels below go from .whl/ into .gpu_site/ (put on PYTHONPATH with the repo root); the
# project's own torch pin (2.13.0, CPU) is not installed, the image's CUDA torch runs the code.
# Wheels to put in .whl/ (Python 3.12, manylinux x86_64), downloaded where there is internet:
#
#   pip download --only-binary=:all: --no-deps --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 -d .whl \
#       faiss-cpu==1.15.1 packaging==26.4 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 \
#       pygments==2.21.0 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 \
#       kiwisolver==1.5.1 pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6
#
#   faiss-cpu==1.15.1   always (the project's pinned FAISS; search stays on the CPU)
#   packaging==26.4     only used if python3 cannot import packaging (faiss-cpu needs it)
#   pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
#                       only used if python3 cannot import pytest
#   matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1
#   pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6
#                       only used if python3 cannot import matplotlib (the trainer's report
#                       draws its plots with it); an installed pillow/dateutil is kept
#
# Budget: under 8 minutes on an H100 (each step has a timeout; the sum of the timeouts is
# 7.7 minutes). The same script measures the CPU figure for comparison (no install, no tests):
#     DEVICES=cpu SKIP_TESTS=1 TRAIN_PAIRS=512 TIMEOUT_SCALE=20 OUT=/tmp/cpu_epoch \
#         bash scripts/gpu_check.sh
#
# Knobs: DEVICES (default "cuda cuda-bf16"), TRAIN_PAIRS (pairs the measured epoch trains on,
# default 8192 = 16 optimizer steps of 32 x 16), WORK (bank and runs; default /tmp/gpu_check_work),
# SKIP_TESTS=1, TIMEOUT_SCALE (multiplies every timeout).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
WORK=${WORK:-/tmp/gpu_check_work}
DEVICES=${DEVICES:-cuda cuda-bf16}
TRAIN_PAIRS=${TRAIN_PAIRS:-8192}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/.gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
t() { echo $(( $1 * ${TIMEOUT_SCALE:-1} )); }  # TIMEOUT_SCALE=20 on a slow, shared CPU
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.txt"; }

# 0. Wheels, into .gpu_site (never the system's packages).
if ! $PY -c "import faiss, matplotlib, pytest" 2>/dev/null; then
  want=()
  $PY -c "import faiss" 2>/dev/null || want+=(.whl/faiss_cpu-1.15.1-*.whl)
  $PY -c "import packaging" 2>/dev/null || want+=(.whl/packaging-26.4-*.whl)
  $PY -c "import pytest" 2>/dev/null || want+=(.whl/pytest-9.2.0-*.whl .whl/pluggy-1.7.0-*.whl
                                                 .whl/iniconfig-2.3.1-*.whl
                                                 .whl/pygments-2.21.0-*.whl)
  if ! $PY -c "import matplotlib" 2>/dev/null; then
    want+=(.whl/matplotlib-3.11.2-*.whl .whl/contourpy-1.3.3-*.whl .whl/cycler-0.12.1-*.whl
           .whl/fonttools-4.68.0-*.whl .whl/kiwisolver-1.5.1-*.whl .whl/pyparsing-3.3.3-*.whl)
    $PY -c "import PIL" 2>/dev/null || want+=(.whl/pillow-13.0.0-*.whl)
    $PY -c "import dateutil" 2>/dev/null || want+=(.whl/python_dateutil-4.0.0-*.whl
                                                   .whl/tzdata-*.whl)
  fi
  say "installing ${want[*]} into .gpu_site"
  $PY -m pip install --quiet --no-index --no-deps --target .gpu_site "${want[@]}" \
    > "$OUT/install.txt" 2>&1 || { say "install failed (see install.txt)"; }
fi
{ nvidia-smi -L 2>&1; $PY -c "import torch, faiss, numpy; print('torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'devices',
torch.cuda.device_count(), '| faiss', faiss.__version__, '| numpy', numpy.__version__)"; nproc; } \
  > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 1. The GPU tests (skipped without CUDA, so a pass here with 0 run would say nothing).
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  say "pytest -m gpu"
  timeout $(t 180) $PY -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_device.py \
    tests/test_train_v4.py > "$OUT/pytest_gpu.txt" 2>&1
  say "pytest exit $? ($(tail -1 "$OUT/pytest_gpu.txt"))"
fi

# 2. The checklist-scale bank and pairs (as benchmarks.train_memory builds them; val and test
# are 2% each so the epoch's eval and the final gate stay short).
if [ ! -f "$WORK/pairs.npz" ]; then
  say "building the 500k x 768 synthetic bank and 50k pairs"
  timeout $(t 100) $PY -m training.synth_bank --n 500000 --dim 768 --mean-chunks 150 --seed 0 \
      --out "$WORK/bank.npz" > "$OUT/build.txt" 2>&1 &&
    timeout $(t 100) $PY -m training.expand_pairs --bank "$WORK/bank.npz" --out "$WORK/pairs.npz" \
      --context-len 100 --min-context 100 --stride 3 --max-per-seq 1000 --target-pairs 50000 \
      --train-split 0.96 --test-split 0.02 --seed 0 >> "$OUT/build.txt" 2>&1
  say "build exit $? ($(tail -1 "$OUT/build.txt"))"
fi

# 3. One epoch per device setting: the checklist's config, 16 hard negatives mined (exact
# search, so no IVF build is timed), memory bank 50k. pairs/s counts the training pass only.
sed 's/^index: .*/index: flat/' training/configs/v4_checklist.yaml > "$WORK/v4_checklist_flat.yaml"
for setting in $DEVICES; do
  case $setting in
    cuda-bf16) flags=(--device cuda --amp bf16) ;;
    *) flags=(--device "$setting") ;;
  esac
  rm -rf "$WORK/run_$setting"
  say "epoch on $setting: ${flags[*]}, $TRAIN_PAIRS train pairs"
  timeout $(t 90) $PY -m training.train_v4 --config "$WORK/v4_checklist_flat.yaml" --bank "$WORK/bank.npz" \
    --pairs "$WORK/pairs.npz" --out "$WORK/run_$setting" --log-dir "$WORK/logs" --epochs 1 \
    --mine-schedule "1-1:16@0-1" --max-train-pairs "$TRAIN_PAIRS" \
    "${flags[@]}" > "$OUT/epoch_$setting.txt" 2>&1
  say "epoch on $setting exit $?"
  cp "$WORK/run_$setting/history.json" "$OUT/history_$setting.json" 2>/dev/null
done

# 4. Summary: pairs/s of each setting, as JSON and a line each.
$PY - "$OUT" $DEVICES <<'EOF'
import json, sys
from pathlib import Path
out, settings = Path(sys.argv[1]), sys.argv[2:]
rows = {}
for s in settings:
    path = out / f"history_{s}.json"
    if not path.exists():
        rows[s] = None
        print(f"{s:<10} no result (see epoch_{s}.txt)")
        continue
    h = json.loads(path.read_text())[-1]
    rows[s] = {k: h.get(k) for k in ("pairs_per_s", "seconds", "loss", "recall@10",
                                     "recall@500", "mrr", "margin")}
    print(f"{s:<10} {h['pairs_per_s']:9.1f} pairs/s  (epoch {h['seconds']:.1f}s with mining and "
          f"eval; loss {h['loss']:.4f}, val R@500 {h['recall@500']:.2f}%)")
(out / "summary.json").write_text(json.dumps(rows, indent=2, allow_nan=False))
EOF
say "done"
