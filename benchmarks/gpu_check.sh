#!/usr/bin/env bash
# The checks and figures that need a CUDA device, in one run (about 5 minutes on one H200).
#   bash benchmarks/gpu_check.sh [tests] [overhead] [ensemble] [depth] [long]   (default: the first four)
# "long" (issue 17): the paper preset's 400 problems trained 200 epochs, evaluated at 10, 20, 40, 100 and
# 200, into ${LONG_OUT:-paper-long-depth}; the study resumes, so rerun the same line until it says done
# (each call stops after ${LONG_SECS:-540} s, within a 10-minute command limit).
# Run from the repository root on a machine with a GPU and a CUDA build of PyTorch; logs go to
# ${OUT:-gpu-check}/. Each step has its own time limit so that one slow step cannot eat the others.
# OLD_SRC=path/to/other/src adds the overhead benchmark on that code, in the same run (a baseline);
# SWEEP_CHUNKS="" skips the ensemble's chunk-size sweep.
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=python3
step() { local secs=$1 name=$2; shift 2; echo "=== $name (limit ${secs}s)"; local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-15}" "$OUT/$name.log"; echo "=== $name: rc=$rc, $((SECONDS - t0)) s"; }
want() { for w in "${ARGS[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(tests overhead ensemble depth)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"
if want tests; then
  step 150 test_cuda $py -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
fi
if want overhead; then
  step 150 overhead_cuda $py benchmarks/mixing_overhead.py --device cuda --seconds "${SECONDS_PER_MODEL:-10}"
  if [ -n "${OLD_SRC:-}" ]; then
    step 150 overhead_cuda_old env PYTHONPATH="$OLD_SRC" $py benchmarks/mixing_overhead.py --device cuda \
      --seconds "${SECONDS_PER_MODEL:-10}" --models paper-mlp paper-cnn small-resnet
  fi
fi
if want ensemble; then
  TAIL=4 step 120 ensemble_cuda $py benchmarks/ensemble.py --device cuda --models 2000 --epochs 20 --plain-models 3
  for c in ${SWEEP_CHUNKS-106 512 2048}; do
    TAIL=3 step 60 "ensemble_cuda_chunk$c" $py benchmarks/ensemble.py --device cuda --models 2048 --epochs 5 \
      --plain-models 1 --chunk "$c"
  done
fi
if want depth; then
  step 170 depth_paper_cuda $py -m manifold_mixup.cli depth-study --preset paper --out /tmp/depth-paper-cuda \
    --device cuda --no-progress
  echo "depth shards done: $(ls /tmp/depth-paper-cuda/shards 2>/dev/null | wc -l)"
  cp /tmp/depth-paper-cuda/summary.md "$OUT/depth_summary.md" 2>/dev/null
  cp /tmp/depth-paper-cuda/results.csv "$OUT/depth_results.csv" 2>/dev/null
fi
if want long; then
  step "${LONG_SECS:-540}" depth_paper_long_cuda $py -m manifold_mixup.cli depth-study --preset paper --epochs 200 \
    --eval-epochs 10 20 40 100 200 --out "${LONG_OUT:-paper-long-depth}" --device cuda --no-progress
  echo "long shards done: $(ls "${LONG_OUT:-paper-long-depth}"/shards 2>/dev/null | wc -l) of 40"
fi
