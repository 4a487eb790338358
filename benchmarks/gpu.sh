#!/usr/bin/env bash
# The GPU figures, in one run that keeps to its own time budget (README, "Speed": "On one GPU").
#
# On a GPU machine without TensorFlow (Keras runs on JAX), from the project's root:   bash benchmarks/gpu.sh 540
# Where packages are missing, put wheels in .whl: ../shared/gpu/README.md's wheelhouse plus ImageHash and PyWavelets
# (the duplicate check of every sweep's data); we left out SQLAlchemy, Alembic, Mako and greenlet (Optuna's database,
# unused by grid studies) to stay under the 64 MiB a GPU call could carry.
# Rehearsal on a CPU machine (every step at smoke scale, no GPU):   GPU_SH_REHEARSE=1 bash benchmarks/gpu.sh 1200
#
# Steps, in this order, each skipped (and written down as unmeasured) when the budget left is below what it needs:
#   1. the 48-trial classification study (128 px, random weights, ASHA, 60 epochs at most), 8 trials per GPU
#   2. the 36-trial segmentation study (224 px, ASHA, 60 epochs at most), 4 trials per GPU
#   3. sweep bench segmentation --preset smoke --epochs 10: the study's way, Ray Tune by hand, the service's way
#   4. packing: the segmentation study cut to 12 trials of 10 epochs at 1 and 0.25 GPU per trial
# Every step starts with empty caches (features, compiled programs) of its own, so each pays its own compilation.
# GPU busy is nvidia-smi's utilisation sampled every 0.5 s during the step. Writes $OUT (default ./gpu-out):
# summary.md (every figure with the command that made it, or "unmeasured" and why) and logs.tar.gz.
set -u
budget=${1:-540}
out=${OUT:-$PWD/gpu-out}
work=${GPU_SH_WORK:-/tmp/gpu-sh}
start=$(date +%s)
mkdir -p "$out" "$work"
summary=$out/summary.md
failed=0 # a step that ended other than done or stopped at its limit makes the script exit 1
: >"$summary"
left() { echo $((budget - ($(date +%s) - start))); }
say() { echo "$*" | tee -a "$summary"; }

if [ -d .whl ] && ! python3 -c 'import ray, keras' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "install from .whl failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# The driver too (Grad-CAM, test scoring) must not take 75% of the card, JAX's default, beside packed trials.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ -n "${GPU_SH_REHEARSE:-}" ]; then
  cls=(--preset smoke) seg=(--preset smoke) pack=(--preset smoke) gpu8=0 gpu4=0 gpu1=0
else
  cls=(--set data.image_size=128 --set train.weights=null) seg=()
  pack=(--set train.epochs=10 --set "space.dropout=[0.2]")
  gpu8=0.125 gpu4=0.25 gpu1=1
fi

say "# GPU figures ($(date -u +%FT%TZ), budget ${budget} s)"
say ""
say '```'
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } 2>&1 \
  | tee -a "$summary"
python3 - <<'EOF' 2>&1 | tee -a "$summary"
import os, platform
import jax, keras, ray
print(f"python {platform.python_version()}, jax {jax.__version__} on {jax.devices()}, keras {keras.__version__}"
      f" ({keras.backend.backend()}), ray {ray.__version__}, {os.cpu_count()} CPUs")
EOF
say '```'

# GPU_SH_STEPS: the steps to run, by name (default all of them, in the order below); GPU_SH_STEP_LIMIT: seconds
# each step may take at most (default: each step's own, below)
steps=" ${GPU_SH_STEPS:-cls48 seg36 segbench segpack1 segpack4} "

# step NAME SECONDS_NEEDED SECONDS_AT_MOST -- sweep ARGS...: run one sweep command with its own empty cache, time it,
# sample GPU busy, and write its figures (benchmarks/gpu_figures.py) or why there are none.
step() {
  local name=$1 need=$2 most=${GPU_SH_STEP_LIMIT:-$3}
  shift 4
  [[ $steps == *" $name "* ]] || return 0
  local have
  have=$(left)
  say ""
  say "## $name"
  say ""
  say "\`sweep $*\`"
  say ""
  if ((have < need)); then
    say "unmeasured: ${have} s of the budget left, the step needs about ${need} s"
    return
  fi
  ((most > have - 45)) && most=$((have - 45)) # room after it: 15 s to stop, `ray stop`, its figures, the archive
  rm -rf "${work:?}/runs/$name" "$work/cache-$name" # a folder of an earlier run of the script is not this run's
  local log=$work/$name.log
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 >"$work/$name.busy" 2>/dev/null &
  local sampler=$!
  local t0 t1 rc
  t0=$(date +%s.%N)
  SWEEP_CACHE_DIR=$work/cache-$name timeout -s INT --kill-after=15 "$most" \
    python3 -c 'import sys; from search.cli import main; sys.exit(main())' "$@" \
    --storage "$work/runs" --name "$name" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  # Its trials too: every Ray process on the machine (the script expects a machine of its own).
  ((rc == 124 || rc == 137)) && python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1
  ((rc == 0 || rc == 124 || rc == 130 || rc == 137)) || failed=1
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  say "$(python3 -c "print(f'wall {$t1 - $t0:.1f} s, exit code $rc')")$( ((rc == 124 || rc == 137)) && echo ", stopped at the step's limit of $most s")"
  python3 - "$work/$name.busy" <<'EOF' | tee -a "$summary"
import sys
vals = [float(v) for v in open(sys.argv[1]).read().split() if v.replace(".", "", 1).isdigit()]
print(f"GPU busy: mean {sum(vals) / len(vals):.0f}% over {len(vals)} samples" if vals else "GPU busy: n/a (no samples)")
EOF
  python3 benchmarks/gpu_figures.py "$work/runs/$name" "$log" 2>&1 | tee -a "$summary"
}

step cls48 90 240 -- run classification --backend jax "${cls[@]}" --gpus-per-trial "$gpu8"
step seg36 90 240 -- run segmentation --backend jax "${seg[@]}" --gpus-per-trial "$gpu4"
step segbench 60 200 -- bench segmentation --backend jax --preset smoke --epochs 10 --gpus-per-trial "$gpu8"
step segpack1 40 120 -- run segmentation --backend jax "${pack[@]}" --gpus-per-trial "$gpu1"
step segpack4 40 120 -- run segmentation --backend jax "${pack[@]}" --gpus-per-trial "$gpu4"

say ""
say "whole script: $(($(date +%s) - start)) s"
(cd "$work" && find . -path './cache-*' -prune -o -type f \( -name '*.log' -o -name '*.md' -o -name '*.json' \
  -o -name '*.csv' -o -name '*.busy' \) -print | tar -czf "$out/logs.tar.gz" -T -)
ls -la "$out"
exit "$failed"
