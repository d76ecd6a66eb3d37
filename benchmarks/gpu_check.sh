#!/usr/bin/env bash
# The checks and figures that need a CUDA device, in one run (about 8 minutes on one H100/H200).
# Run from the repository root on a machine with a GPU and a CUDA build of PyTorch; results go to
# ${OUT:-gpu-check}/. Each step has its own time limit so that one slow step cannot eat the others.
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=python3
step() { local secs=$1 name=$2; shift 2; echo "=== $name (limit ${secs}s)"; local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-15}" "$OUT/$name.log"; echo "=== $name: rc=$rc, $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"
step 150 test_cuda $py -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
step 150 overhead_cuda $py benchmarks/mixing_overhead.py --device cuda --seconds 12
step 120 ensemble_cuda $py benchmarks/ensemble.py --device cuda --models 2000 --epochs 20 --plain-models 3
step 170 depth_paper_cuda $py -m manifold_mixup.cli depth-study --preset paper --out /tmp/depth-paper-cuda --device cuda --no-progress
echo "depth shards done: $(ls /tmp/depth-paper-cuda/shards 2>/dev/null | wc -l)"
cp /tmp/depth-paper-cuda/summary.md "$OUT/depth_summary.md" 2>/dev/null
cp /tmp/depth-paper-cuda/results.csv "$OUT/depth_results.csv" 2>/dev/null
step 120 tests_all $py -m pytest -q -x -p no:cacheprovider -n 8 tests
