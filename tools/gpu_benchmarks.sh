#!/usr/bin/env bash
# The GPU measurements for README's performance tables (issue 8), in one short run.
#   bash tools/gpu_benchmarks.sh OUT_DIR
#   PARTS="1 2" bash tools/gpu_benchmarks.sh OUT_DIR    (only those parts; default all five,
#   so that two device calls can share the work and the compilation cache)
# (SIZE=16 CHECK_SIZE=16 BATCHES=2 PYTHON=.venv/bin/python: a quick CPU dry run.)
# Writes OUT_DIR/{run.log, batch1.json, tune.json, tune_fp32.json, conv_impls.json,
# joint.json, check.json, report.txt} (report.txt: tools/gpu_report.py's table and verdict).
# Parts run in order of importance, each under its own time limit (570 s in all); benchmark.py
# rewrites its JSON after every batch size and logs each compilation's start and end, so a
# cut part still tells.
# Compilations run one at a time: on an H100 (jax 0.11.2, 2026-11-26) a run that compiled
# 2-4 tuning steps at once in threads finished none of them in 90-350 s.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash tools/gpu_benchmarks.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Shared by the parts: the model inits (17 s + 14 s of compiling on a CPU) compile once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/c2p_jax_cache}
log="$out/run.log"
filter() { grep --line-buffered -v "^W0000\|^I0000\|libtpu" | tee -a "$log"; }
parts=" ${PARTS:-1 2 3 4 5} "
# part N SECONDS TOOL ARGS...: runs TOOL under a time limit if N is among $PARTS.
part() {
  local n=$1 seconds=$2; shift 2
  [[ $parts == *" $n "* ]] || return 0
  echo "== part $n ($seconds s) $(date +%T)" | filter
  timeout "$seconds" $py "$@" 2>&1 | filter
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; $py -c \
  "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  2>&1 | filter
tune=(--size=${SIZE:-1024} --modes=tune_step --iters=3 --profile_top=25)
b=${BATCHES:-8,16,32}; b0=${b%%,*}
# 1. Batch 1 at the paper's settings: the torch-shaped upsampling (the previous default) and
#    the sub-pixel one, fp32, with a per-instruction profile of each.
part 1 120 tools/benchmark.py "${tune[@]}" --schedules=per_image \
  --upsample_impls=subpixel,dilated --conv_impls=xla --dtypes=float32 --batch_sizes=1 \
  --profile_batches=1 --json_out="$out/batch1.json"
# 2. The configuration the compiled plan favours (README, "The GPU's own plan"): per-image
#    generators, sub-pixel upsampling, batch-grouped weight gradients (cuDNN backward-filter
#    calls), fused modulation at high resolutions, bf16 generator and LPIPS; batch 1 to the
#    largest that fits, with a per-instruction profile.
best=(--upsample_impls=subpixel --conv_impls=grouped --modulations=auto)
part 2 220 tools/benchmark.py "${tune[@]}" --schedules=per_image "${best[@]}" \
  --dtypes=bfloat16 --batch_sizes=1,$b --profile_batches=$b0 --max_batch \
  --json_out="$out/tune.json"
# 3. The same in fp32 (TF32), then bf16 with JAX's own weight gradients (conv_impl=xla:
#    forward convs with feature-map kernels in the plan).
part 3 90 tools/benchmark.py "${tune[@]}" --schedules=per_image "${best[@]}" \
  --dtypes=float32 --batch_sizes=1,$b0 --json_out="$out/tune_fp32.json"
part 3 50 tools/benchmark.py "${tune[@]}" --schedules=per_image --upsample_impls=subpixel \
  --conv_impls=xla --modulations=auto --dtypes=bfloat16 --batch_sizes=$b0 \
  --profile_batches=$b0 --json_out="$out/conv_impls.json"
# 4. The joint fast mode (one generator per batch).
part 4 50 tools/benchmark.py "${tune[@]}" --schedules=joint "${best[@]}" --dtypes=bfloat16 \
  --batch_sizes=$b0 --json_out="$out/joint.json"
# 5. Batched == alone and the bf16 error, on the device, config-f channels at 256.
part 5 40 tools/check_tuning.py --size=${CHECK_SIZE:-256} --batch=4 --steps=20 \
  --upsample_impl=subpixel --conv_impl=grouped --modulation=auto \
  --json_out="$out/check.json"
# The README table, the verdict against the issue's targets and the profiles by kind.
echo "== report $(date +%T)" | filter
$py tools/gpu_report.py "$out" 2>&1 | tee "$out/report.txt" | filter
