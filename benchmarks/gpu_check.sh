#!/usr/bin/env bash
# Both stages on this machine's GPUs, in one script (under 5 minutes on one GPU):
#   1. benchmarks/bench_gpu.py: EfficientNet-Lite0 extraction on the GPU against the bare teacher loop,
#      and the epoch time of AFT against STL for the demo student with bf16 autocast;
#      then benchmarks/bench_inputs.py: the student's input paths against the pure-compute ceiling;
#   2. torchrun --nproc_per_node=<GPUs> of stage 1 (ranks split partitions of one store), then verify;
#   3. torchrun of stage 2 (DDP over NCCL, counts over gloo) on that store.
# Run from a checkout after `make setup` (or with PY=/path/to/python of an environment holding
# featcache). Nothing is downloaded. Without a GPU it runs the same steps on the CPU with 2 processes,
# which checks the script, not the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PY=$(command -v "$PY")
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac   # absolute, not resolved: a venv's python is a symlink
BIN=$(dirname "$PY")
WORK=${WORK:-/tmp/featcache-gpu-check}
ROWS=${ROWS:-4096}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - t0 )) s)"; }

step "machine"
NGPU=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
nvidia-smi -L 2>/dev/null || echo "no GPU visible: running the checks on the CPU"
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available())"
NPROC=$(( NGPU > 0 ? NGPU : 2 ))

step "benchmarks: extraction vs bare loop, AFT vs STL epoch ($ROWS images)"
(cd benchmarks && "$PY" bench_gpu.py --rows "$ROWS" --work "$WORK" --out "$WORK/bench_gpu.json")

step "student inputs: compute ceiling vs decode vs overlapped decode vs cached inputs"
(cd benchmarks && "$PY" bench_inputs.py --out "$WORK/bench_inputs.json")

step "torchrun stage 1: $NPROC processes into one store"
"$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m featcache.pipeline.cli "$WORK/extract.toml" \
  --set output.store="$WORK/torchrun.zarr" --set output.overwrite=true
"$BIN/featcache-cache" verify "$WORK/torchrun.zarr"
"$PY" - "$WORK" <<'PYEOF'
import sys, numpy as np
from featcache.cache_tools import FeatureCache
work = sys.argv[1]
one, many = FeatureCache.open(f"{work}/store.zarr"), FeatureCache.open(f"{work}/torchrun.zarr")
a, b = one.read("effnet_lite0", 0, one.rows), many.read("effnet_lite0", 0, many.rows)
diff = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
print(f"torchrun store vs single process: same rows {bool((one.sample_ids == many.sample_ids).all())}, "
      f"max |difference| {diff:.2e} (batch composition differs per rank: expect bf16-level noise on GPU)")
PYEOF

step "torchrun stage 2: $NPROC processes, AFT, 2 epochs"
"$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m featcache.train.cli "$WORK/train.toml" \
  --set out_dir="$WORK/run_torchrun"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('world', r['world_size'], 'device', r['device'], 'test accuracy', r['test_accuracy'])" "$WORK/run_torchrun/results.json"

step "done"
