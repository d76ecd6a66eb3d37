#!/usr/bin/env bash
# The checks and figures that need a CUDA device, in one run (about 5 minutes on one H200).
#   bash benchmarks/gpu_check.sh [tests] [overhead] [ensemble] [depth] [split] [long] [fmnist]   (default: the first four)
# "split" (issue 23): the paper preset in-process (benchmarks/depth_cpu_side.py --device cuda), its wall time split
# into start-up (imports, CUDA context), training and each CPU-side part (problems, grids, MMLB, plans, evaluation,
# report), every timer waiting for the device; about 60-90 s.
# "long" (issue 17): the paper preset's 400 problems trained 200 epochs, evaluated at 10, 20, 40, 100 and
# 200, into ${LONG_OUT:-results/depth-paper-long-h200}; the study resumes, so rerun the same line until it says done
# (each call stops after ${LONG_SECS:-540} s, within a 10-minute command limit).
# "fmnist" (issue 21): Table 2 on Fashion-MNIST under the paper preset (60,000 images, 50 epochs, 11 methods x
# 5 seeds = 55 shards), ${FMNIST_WORKERS:-8} shards at once on the one GPU (--workers, local processes; cuDNN
# deterministic). The machine has neither the Debian package nor Ray: copy the four official .gz files (30 MiB)
# into data/fashion-mnist/ (ignored by git) and carry that folder with the working tree. On a fresh output folder
# a pilot first trains the 11 methods of one seed for 1 and for 3 epochs and prints the projected total; then the
# study runs for ${FMNIST_SECS:-420} s into ${FMNIST_OUT:-results/confmix-fashion-mnist-paper-h200} and stops, resumable;
# a copy returns under $OUT/fmnist/: put it back at that path (it travels with the working tree to the next
# machine) and rerun the same line until it says 55 of 55. Projection made before any device was lent (not
# measured): ~4 PFLOP of training; at 1-3 ms per step of batch 250 (kernel-launch bound, 12,000 steps per
# shard), 55 shards over 8 workers take 2-6 minutes, plus about a minute for the pilot.
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
  step 170 depth_paper_cuda $py -m manifold_mixup.paper.cli depth-study --preset paper --out /tmp/depth-paper-cuda \
    --device cuda --no-progress
  echo "depth shards done: $(ls /tmp/depth-paper-cuda/shards 2>/dev/null | wc -l)"
  cp /tmp/depth-paper-cuda/summary.md "$OUT/depth_summary.md" 2>/dev/null
  cp /tmp/depth-paper-cuda/results.csv "$OUT/depth_results.csv" 2>/dev/null
  sha256sum /tmp/depth-paper-cuda/results.csv 2>/dev/null  # the same on a rerun on this machine type
fi
if want split; then
  rm -rf /tmp/depth-split-cuda  # a fresh study (an old folder would resume)
  TAIL=2 step 150 depth_split_cuda $py benchmarks/depth_cpu_side.py --device cuda --problems-per-k 100 \
    --problems-per-shard 10 --out /tmp/depth-split-cuda
fi
if want fmnist; then
  FM_OUT=${FMNIST_OUT:-results/confmix-fashion-mnist-paper-h200}
  FM=($py -m manifold_mixup.paper.cli confmix-study --dataset fashion-mnist --preset paper
      --data-dir "${FMNIST_DIR:-data/fashion-mnist}" --device cuda --workers "${FMNIST_WORKERS:-8}" --no-progress)
  if [ ! -d "$FM_OUT/shards" ]; then  # the pilot, once: 3 epochs less 1 epoch is 2 epochs of 11 shards
    t0=$SECONDS; TAIL=3 step 240 fmnist_pilot_e1 "${FM[@]}" --seeds 1 --epochs 1 --warmup-epochs 0 --out /tmp/fmnist-e1
    t1=$((SECONDS - t0)); t0=$SECONDS
    TAIL=3 step 240 fmnist_pilot_e3 "${FM[@]}" --seeds 1 --epochs 3 --warmup-epochs 0 --out /tmp/fmnist-e3
    t3=$((SECONDS - t0))
    echo "fmnist pilot: 11 shards, 1 epoch ${t1} s, 3 epochs ${t3} s; projected paper preset (55 shards x 50 epochs):" \
      "about $(( (t3 - t1) * 5 * 50 / 2 / 60 + 1 )) min plus ${t1} s of start-up per call"
  fi
  step "${FMNIST_SECS:-420}" fmnist_paper_cuda "${FM[@]}" --out "$FM_OUT"
  echo "fmnist shards done: $(ls "$FM_OUT"/shards 2>/dev/null | grep -c json) of 55"
  mkdir -p "$OUT/fmnist" && cp -r "$FM_OUT" "$OUT/fmnist/"  # comes back with the logs
fi
if want long; then
  step "${LONG_SECS:-540}" depth_paper_long_cuda $py -m manifold_mixup.paper.cli depth-study --preset paper --epochs 200 \
    --eval-epochs 10 20 40 100 200 --out "${LONG_OUT:-results/depth-paper-long-h200}" --device cuda --no-progress
  echo "long shards done: $(ls "${LONG_OUT:-results/depth-paper-long-h200}"/shards 2>/dev/null | wc -l) of 40"
fi
