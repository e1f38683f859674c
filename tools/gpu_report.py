"""The fast-tuning table (issue 8) from tools/gpu_benchmarks.sh's JSON files: markdown for
README, the verdict against the issue's two targets, the profiles by kind and the precision
check. Prints; asserts nothing.

  python tools/gpu_report.py OUT_DIR [--steps=150]
  python tools/gpu_report.py OUT_DIR --fastest   # prints "UPSAMPLE CONV" (for the script)

Reads every OUT_DIR/*.json written by tools/benchmark.py (tune_step rows that ran) and
check.json (tools/check_tuning.py). Throughput is tuning steps of one image per second
(= images/s of the step); "stage 1" is --steps of them per image. The batch-1 baseline of
the ">= 8x" target is the torch-shaped graph's batch 1 (per_image, dilated, xla,
activations, float32: the default before this issue, the official code's form); each row
also gives the speed-up over its own configuration's batch 1.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys

from absl import app, flags

flags.DEFINE_integer("steps", 150, "Tuning steps per image (paper: 150).")
flags.DEFINE_bool("fastest", False, "Print only the upsample_impl and conv_impl of the "
                  "fastest per_image bfloat16 row (most images/s), for gpu_benchmarks.sh.")
FLAGS = flags.FLAGS

BASELINE = ("per_image", "dilated", "xla", "activations", "float32")
SPEEDUP_TARGET, STAGE_SECONDS_TARGET = 8.0, 0.5


def schedule_of(row: dict) -> str:
  """A tune_step row's schedule, with the fast mode's tuned layers if it has them."""
  r = row.get("max_resolution", 0)
  return f"{row['schedule']}, layers <= {r} px" if r else row["schedule"]


def configuration(row: dict) -> tuple[str, ...]:
  """(schedule, upsample_impl, conv_impl, modulation, dtype) of a tune_step row."""
  return (schedule_of(row),) + tuple(row[k] for k in ("upsample_impl", "conv_impl",
                                                      "modulation", "dtype"))


def load_tune_rows(folder: str) -> tuple[set[str], list[dict]]:
  """(device names, tune_step rows that ran) of the benchmark JSON files in `folder`;
  a configuration and batch measured twice keeps the faster row, with the profile of
  either. Unreadable files are reported and skipped."""
  devices, best = set(), {}
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    try:
      with open(path) as f:
        data = json.load(f)
    except (OSError, ValueError) as e:
      print(f"skipped {path}: {e}", file=sys.stderr)
      continue
    if "results" not in data:
      continue
    devices.add(f"{data['device']} ({data['backend']}, jax {data['jax']}, size {data['size']})")
    for row in data["results"]:
      if not row["mode"].startswith("tune_step") or not math.isfinite(row["seconds"]):
        continue
      key = configuration(row) + (row["batch"],)
      other = best.get(key, {})
      if not other or row["seconds"] < other["seconds"]:
        profile = {k: v for k, v in other.items() if k.startswith("profile_")}
        best[key] = {**profile, **row, "file": os.path.basename(path)}
      elif "profile_ms_by_kind" in row and "profile_ms_by_kind" not in other:
        other.update({k: v for k, v in row.items() if k.startswith("profile_")})
  return devices, sorted(best.values(), key=lambda r: configuration(r) + (r["batch"],))


def memory_gib(row: dict) -> float:
  """Arguments + temporaries + outputs not aliased to donated arguments, GiB."""
  used = (row.get("argument_size_bytes", math.nan) + row.get("temp_size_bytes", math.nan)
          + row.get("output_size_bytes", math.nan) - row.get("alias_size_bytes", 0.0))
  return used / 2 ** 30


def batch1_throughputs(rows: list[dict]) -> dict[tuple[str, ...], float]:
  """configuration -> its batch-1 images/s (joint without its own batch-1 row: the per_image
  one of the same generator, the same step for one image)."""
  base = {configuration(r): r["images_per_s"] for r in rows if r["batch"] == 1}
  for config in {configuration(r) for r in rows if r["schedule"] == "joint"}:
    alone = (config[0].replace("joint", "per_image", 1),) + config[1:]
    if config not in base and alone in base:
      base[config] = base[alone]
  return base


def ratio(a: float, b: float) -> str:
  """a / b to 2 decimals, or "—" without b (no batch-1 row measured)."""
  return f"{a / b:.2f}" if math.isfinite(b) and b else "—"


def table(rows: list[dict], steps: int) -> list[str]:
  """Markdown rows: one per (configuration, batch)."""
  base = batch1_throughputs(rows)
  baseline = base.get(BASELINE, math.nan)
  lines = ["| schedule, upsampling, weight gradients, modulation | dtype | batch | ms per "
           "image-step | images/s | TFLOP/s | stage 1, s/image | x baseline batch 1 | x own "
           "batch 1 | memory, GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    config = configuration(r)
    own = base.get(config, math.nan)
    lines.append(
        f"| {', '.join(config[:4])} | {config[4]} | {r['batch']}"
        f"{' (largest)' if r.get('largest_fitting_estimate') else ''} | "
        f"{r['ms_per_image']:.2f} | {r['images_per_s']:.1f} | {r['tflops']:.1f} | "
        f"{r['ms_per_image'] * steps / 1e3:.3f} | {ratio(r['images_per_s'], baseline)} | "
        f"{ratio(r['images_per_s'], own)} | {memory_gib(r):.1f} |")
  return lines


def verdict(rows: list[dict], steps: int) -> list[str]:
  """The best row of each schedule (per_image, joint, fast modes) against the issue's two
  targets."""
  base = batch1_throughputs(rows)
  baseline = base.get(BASELINE, math.nan)
  lines = []
  for schedule in sorted({schedule_of(r) for r in rows}, key=lambda s: (s != "per_image", s)):
    candidates = [r for r in rows if schedule_of(r) == schedule]
    best = max(candidates, key=lambda r: r["images_per_s"])
    speedup = best["images_per_s"] / baseline
    stage = best["ms_per_image"] * steps / 1e3
    met = speedup >= SPEEDUP_TARGET and stage <= STAGE_SECONDS_TARGET
    lines.append(
        f"best {schedule}: {', '.join(configuration(best))} at batch {best['batch']}: "
        f"{best['images_per_s']:.1f} images/s = {speedup:.2f}x the baseline batch 1 "
        f"(target >= {SPEEDUP_TARGET:g}x; "
        f"{ratio(best['images_per_s'], base.get(configuration(best), math.nan))}x its own "
        f"batch 1), stage 1 {stage:.3f} s/image (target <= "
        f"{STAGE_SECONDS_TARGET:g} s): {'MET' if met else 'NOT met'}")
  if math.isnan(baseline):
    lines.append("no batch-1 row of the baseline (torch-shaped fp32): speed-ups are NaN "
                 "(run gpu_benchmarks.sh part 1)")
  return lines


def fastest(rows: list[dict]) -> dict | None:
  """The per_image bfloat16 row with the most images/s, or None."""
  candidates = [r for r in rows if schedule_of(r) == "per_image" and r["dtype"] == "bfloat16"]
  return max(candidates, key=lambda r: r["images_per_s"], default=None)


def profiles(rows: list[dict], top: int = 6) -> list[str]:
  """Each profiled row's device time by kind of op, largest first."""
  lines = []
  for r in rows:
    by_kind = r.get("profile_ms_by_kind")
    if not by_kind:
      continue
    total = sum(by_kind.values())
    parts = sorted(by_kind.items(), key=lambda kv: -kv[1])[:top]
    lines.append(f"profile {', '.join(configuration(r))} batch {r['batch']}: "
                 f"{total / r['batch']:.2f} ms/image of device ops; "
                 + "; ".join(f"{k} {100 * ms / total:.0f}%" for k, ms in parts))
  return lines


def precision(folder: str) -> list[str]:
  """check.json (tools/check_tuning.py): batched vs alone and bf16 vs fp32 errors."""
  path = os.path.join(folder, "check.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    check = json.load(f)
  lines = [f"check_tuning on {check['device']}, size {check['size']}, batch {check['batch']}, "
           f"{check['steps']} steps, {check['upsample_impl']}/{check['conv_impl']}/"
           f"{check['modulation']}:"]
  for name, err in check.items():
    if isinstance(err, dict) and "max_abs" in err:
      lines.append(f"  {name}: reconstruction max-abs {err['max_abs']:.2e} "
                   f"({err['max_abs_over_range']:.2e} of the range), rel-L2 "
                   f"{err['rel_l2']:.2e}")
  return lines


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python tools/gpu_report.py OUT_DIR")
  if not os.path.isdir(argv[1]):
    sys.exit(f"{argv[1]}: no such folder (give the OUT_DIR of tools/gpu_benchmarks.sh)")
  devices, rows = load_tune_rows(argv[1])
  if FLAGS.fastest:
    best = fastest(rows)
    if best is None:
      sys.exit(f"{argv[1]}: no per_image bfloat16 tune_step row that ran")
    print(best["upsample_impl"], best["conv_impl"])
    return
  if not rows:
    sys.exit(f"{argv[1]}: no tune_step rows that ran (benchmark.py --json_out files); "
             "run bash tools/gpu_benchmarks.sh OUT_DIR on a GPU first")
  print("device:", "; ".join(sorted(devices)), "\n")
  print("\n".join(table(rows, FLAGS.steps)), "\n")
  for block in (verdict(rows, FLAGS.steps), profiles(rows), precision(argv[1])):
    if block:
      print("\n".join(block), "\n")


if __name__ == "__main__":
  app.run(main)
