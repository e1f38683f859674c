#!/usr/bin/env bash
# The GPU measurements behind README's performance tables, in one short run.
#   bash tools/gpu_benchmarks.sh OUT_DIR [BATCH_SIZES]     (default batch sizes 1,8)
# Writes OUT_DIR/{env.txt, bench_fp32.json, bench_bf16.json, profile.json, *.log}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash tools/gpu_benchmarks.sh OUT_DIR [BATCH_SIZES]}
bs=${2:-1,8}
mkdir -p "$out"
py=${PYTHON:-python}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c \
  "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  > "$out/env.txt" 2>&1
cat "$out/env.txt"
# Stage 1 and stage 2 steps at the paper's settings (1024, CLIP ViT-B/32, 3 surrogates).
timeout 250 $py tools/benchmark.py --size=1024 --batch_sizes="$bs" --dtypes=float32 \
  --modes=tune_step,protect_step --iters=3 --json_out="$out/bench_fp32.json" 2>&1 \
  | grep -v "^W0000\|^I0000" | tee "$out/bench_fp32.log"
timeout 90 $py tools/benchmark.py --size=1024 --batch_sizes="${bs##*,}" --dtypes=bfloat16 \
  --modes=tune_step --iters=3 --json_out="$out/bench_bf16.json" 2>&1 \
  | grep -v "^W0000\|^I0000" | tee "$out/bench_bf16.log"
# Where the tuning step's time goes (issue 8).
timeout 200 $py tools/profile_tuning.py --size=1024 --batch_sizes="$bs" --iters=3 \
  --json_out="$out/profile.json" 2>&1 | grep -v "^W0000\|^I0000" | tee "$out/profile.log"
