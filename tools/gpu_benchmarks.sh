#!/usr/bin/env bash
# The GPU measurements for README's performance tables (issue 8), sized for a session's 15
# minutes of device time, which the machine's start (1-2 min) also spends:
#   bash tools/gpu_benchmarks.sh OUT_DIR                          (parts 1-4: <= 535 s;
#     device call with timeout_s=600)
#   PARTS="5 6 7" UPSAMPLE=... CONV=... bash tools/gpu_benchmarks.sh OUT_DIR2   (~320 s,
#     at once, on the same warm machine, whose compilation cache holds the first call's
#     programs; UPSAMPLE, CONV: the first call's fastest, the graph its run.log's
#     "== part 4" line names; timeout_s = the device time left, less 30 s: a part cut by
#     it keeps what it measured; the parts in order of need, so what such a cut drops is
#     the last: hybrid)
# On the device leave PYTHON unset (its python3 has CUDA jax; a carried .venv has CPU jax):
# the script stops at once if $PYTHON's jax has no GPU backend (ALLOW_CPU=1: dry runs).
# Parts 4-8 run the graph UPSAMPLE/CONV name, else the fastest per-image bf16 graph of the
# parts before them (tools/gpu_report.py --fastest), else subpixel/grouped.
# (SIZE=16 CHECK_SIZE=16 BATCHES=2 PYTHON=.venv/bin/python ALLOW_CPU=1 PARTS="1 2 3 4 5 6 7
# 8": a CPU dry run, ~7 min on 2 cores (9.5 with part 4, cut there: CPU steps of its LPIPS
# at 256 px are slow).)
# Writes OUT_DIR/{run.log, batch1.json, tune.json, candidates.json, check.json, max.json,
# tune_fp32.json, hybrid.json, subset.json (part 8, not run by default), report.txt}
# (report.txt: tools/gpu_report.py's table and verdict; run it on both calls' JSON copied
# into one folder for the whole table).
# Parts run in order of importance, each under its own time limit; benchmark.py rewrites its
# JSON (atomically) after every configuration and logs each compilation's start and end, so
# a cut part still tells. Measured on an H200 (jax 0.11.2, 2026-11-27): each part spends ~20 s starting (jax,
# the random generator and LPIPS inits; LPIPS's init was eager then and is jitted now, which
# the cache keeps: on 2 CPU cores a part's start went 17.8 -> 3.7 s); compiling a 1024
# tuning step takes 11-15 s (fp32 batch 1), 50 s (bf16 batch 1), 51-76 s (fp32 / bf16
# batch 8), 22 s (joint batch 8). Part 4 compiles three 256 px steps (fp32 batch 4 and 1,
# bf16 batch 4) and its renders; its limit allows for that (55 s did not, by this arithmetic).
# Compilations run one at a time: on an H100 (jax 0.11.2, 2026-11-26) a run that compiled
# 2-4 tuning steps at once in threads finished none of them in 90-350 s. (The joint fast
# mode was timed on 2026-11-27, README; it is not re-timed here.)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash tools/gpu_benchmarks.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}   # the GPU machine's python (a python with CUDA jax elsewhere)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Shared by the parts: the model inits (17 s + 14 s of compiling on a CPU) compile once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/c2p_jax_cache}
log="$out/run.log"
filter() { grep --line-buffered -v "^W0000\|^I0000\|libtpu" | tee -a "$log"; }
parts=" ${PARTS:-1 2 3 4} "
# part N SECONDS TOOL ARGS...: runs TOOL under a time limit if N is among $PARTS.
part() {
  local n=$1 seconds=$2; shift 2
  [[ $parts == *" $n "* ]] || return 0
  echo "== part $n ($seconds s) $(date +%T): $*" | filter
  timeout "$seconds" $py "$@" 2>&1 | filter
  echo "== part $n exit status ${PIPESTATUS[0]} (124: cut by its time limit)" | filter
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } 2>&1 | filter
versions=$($py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
  flax.__version__, jax.devices()); print('backend=' + jax.default_backend())" 2>&1)
echo "$versions" | filter
if ! grep -qx "backend=gpu" <<< "$versions" && [[ ${ALLOW_CPU:-0} != 1 ]]; then
  echo "$py: jax has no GPU backend (above); use a python with CUDA jax, or" \
    "ALLOW_CPU=1 for a dry run" | filter
  exit 2
fi
# 10 timed calls: 0.4-8 s per row at 1024 (3 gave 120-150 ms at batch 8, near the 8x line).
tune=(--size=${SIZE:-1024} --modes=tune_step --iters=10 --profile_top=25)
b=${BATCHES:-8}
# The graph of the later parts: UPSAMPLE/CONV if given, else the fastest so far.
chosen() {
  local up=${UPSAMPLE:-} conv=${CONV:-}
  if [[ -z $up || -z $conv ]]; then
    read -r up conv < <($py tools/gpu_report.py "$out" --fastest 2>/dev/null) || true
  fi
  up=${up:-subpixel} conv=${conv:-grouped}
  echo "--upsample_impls=$up --conv_impls=$conv --modulations=auto"
}
# 1. The baseline of the ">= 8x" target: batch 1 of the torch-shaped fp32 graph (the default
#    before issue 8; profiled on 2026-11-27, README).
part 1 45 tools/benchmark.py "${tune[@]}" --schedules=per_image --upsample_impls=dilated \
  --conv_impls=xla --modulations=activations --dtypes=float32 --batch_sizes=1 \
  --json_out="$out/batch1.json"
# 2. The default graph (sub-pixel upsampling, batch-grouped weight gradients, fused
#    modulation) with bf16 generator and LPIPS at batch 8, profiled per instruction.
part 2 130 tools/benchmark.py "${tune[@]}" --schedules=per_image --upsample_impls=subpixel \
  --conv_impls=grouped --modulations=auto --dtypes=bfloat16 --batch_sizes=$b \
  --profile_batches=$b --json_out="$out/tune.json"
# 3. The upsampling candidates at batch 8, profiled: phase-split upsampling (-31% FLOPs, the
#    smallest traffic floor) and the transposed conv's 9 taps as one matrix product (-43%
#    FLOPs, no grouped convs for upsampling).
part 3 220 tools/benchmark.py "${tune[@]}" --schedules=per_image \
  --upsample_impls=phases,taps --conv_impls=grouped --modulations=auto \
  --dtypes=bfloat16 --batch_sizes=$b --profile_batches=$b --json_out="$out/candidates.json"
# 4. Batched == alone and the bf16 error with the fastest of parts 2-3, on the device,
#    config-f channels at 256 (check.json is written after each comparison).
part 4 130 tools/check_tuning.py --size=${CHECK_SIZE:-256} \
  --batch=4 --steps=20 $(chosen | sed 's/_impls=/_impl=/g; s/modulations/modulation/') \
  --json_out="$out/check.json"
# 5. The fastest graph at 4x the batch and the largest batch that fits (batch 8 again,
#    from the compilation cache; max.json is rewritten after each configuration).
part 5 130 tools/benchmark.py "${tune[@]}" --schedules=per_image \
  $(chosen) --dtypes=bfloat16 --batch_sizes=$b,$((4 * b)) --max_batch \
  --json_out="$out/max.json"
# 6. The fastest graph in fp32 (the config's default dtype), batched.
part 6 80 tools/benchmark.py "${tune[@]}" --schedules=per_image \
  $(chosen) --dtypes=float32 --batch_sizes=$b --json_out="$out/tune_fp32.json"
# 7. im2col matrix products for the wide convs (conv_impl=hybrid) with the fastest upsampling.
part 7 110 tools/benchmark.py "${tune[@]}" --schedules=per_image \
  $(chosen | sed 's/--conv_impls=[a-z]*/--conv_impls=hybrid/') --dtypes=bfloat16 \
  --batch_sizes=$b --profile_batches=$b --json_out="$out/hybrid.json"
# 8. Only when asked for (PARTS="... 8"): the layer-subset fast mode (only layers <= 256 px
#    tuned, the rest shared and frozen) with the fastest graph at batch 8; its own verdict.
part 8 100 tools/benchmark.py "${tune[@]}" --schedules=per_image \
  $(chosen) --dtypes=bfloat16 --batch_sizes=$b --tune_max_resolution=${SUBSET:-256} \
  --json_out="$out/subset.json"
# The README table, the verdict against the issue's targets and the profiles by kind.
echo "== report $(date +%T)" | filter
$py tools/gpu_report.py "$out" 2>&1 | tee "$out/report.txt" | filter
