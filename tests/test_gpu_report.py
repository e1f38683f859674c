"""tools/gpu_report.py: the issue-8 table and verdict from benchmark.py's JSON files."""
import json
import os
import subprocess
import sys

import pytest


def tune_row(schedule, upsample, conv, modulation, dtype, batch, seconds, **extra):
  """One tools/benchmark.py tune_step record (the fields the report reads)."""
  return {"mode": f"tune_step[{schedule},{upsample},{conv},{modulation}]", "dtype": dtype,
          "batch": batch, "seconds": seconds, "ms_per_image": seconds * 1e3 / batch,
          "images_per_s": batch / seconds, "tflops": 1.0, "schedule": schedule,
          "upsample_impl": upsample, "conv_impl": conv, "modulation": modulation,
          "argument_size_bytes": 2 ** 30, "temp_size_bytes": 2 ** 30,
          "output_size_bytes": 2 ** 30, "alias_size_bytes": 2 ** 30, **extra}


def write_benchmark(path, rows):
  path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "backend": "gpu",
                              "jax": "0.11.2", "size": 1024, "results": rows}))


def report(folder, *flags):
  return subprocess.run([sys.executable, "tools/gpu_report.py", str(folder), *flags],
                        capture_output=True, text=True, check=False)


def test_table_and_verdict_against_the_baseline_batch_1(tmp_path):
  best = ("per_image", "subpixel", "grouped", "auto", "bfloat16")
  write_benchmark(tmp_path / "batch1.json", [
      tune_row("per_image", "dilated", "xla", "activations", "float32", 1, 0.040)])
  write_benchmark(tmp_path / "tune.json", [
      tune_row(*best, 1, 0.010), tune_row(*best, 8, 0.020),           # 400 images/s
      tune_row(*best, 16, 0.080, profile_ms_by_kind={"conv": 60.0, "fusion": 20.0}),
      tune_row(*best, 32, float("nan"), error="out of memory")])
  write_benchmark(tmp_path / "joint.json", [
      tune_row("joint", "subpixel", "grouped", "auto", "bfloat16", 8, 0.1)])
  (tmp_path / "check.json").write_text(json.dumps({
      "device": "NVIDIA H100 80GB HBM3", "size": 256, "batch": 4, "steps": 20,
      "upsample_impl": "subpixel", "conv_impl": "grouped", "modulation": "auto",
      "bfloat16_vs_float32_batch4": {"max_abs": 1e-2, "max_abs_over_range": 3e-3,
                                     "rel_l2": 5e-3}}))
  out = report(tmp_path)
  assert out.returncode == 0, out.stderr
  text = out.stdout
  assert "NVIDIA H100 80GB HBM3 (gpu, jax 0.11.2, size 1024)" in text
  # batch 8: 2.5 ms per image-step -> 0.375 s for 150 steps; 16x the baseline's 25 images/s
  # and 4x its own batch 1; memory = 3 GiB - 1 GiB donated.
  assert ("| per_image, subpixel, grouped, auto | bfloat16 | 8 | 2.50 | 400.0 | 1.0 | "
          "0.375 | 16.00 | 4.00 | 2.0 |") in text
  assert "batch 32" not in text and "| 32 |" not in text          # the failed row is left out
  assert ("best per_image: per_image, subpixel, grouped, auto, bfloat16 at batch 8: "
          "400.0 images/s = 16.00x the baseline batch 1") in text
  assert ("(target >= 8x; 4.00x its own batch 1), stage 1 0.375 s/image (target <= 0.5 s): "
          "MET") in text
  # joint's own batch 1 is the per_image batch 1 of the same generator (100 images/s).
  assert "best joint:" in text and "3.20x the baseline batch 1 (target >= 8x; 0.80x its own" in text
  assert "NOT met" in text                                        # joint: 1.875 s/image
  assert "profile per_image, subpixel, grouped, auto, bfloat16 batch 16: 5.00 ms/image" in text
  assert "conv 75%; fusion 25%" in text
  assert "bfloat16_vs_float32_batch4: reconstruction max-abs 1.00e-02" in text


def test_without_the_baseline_batch_1_and_without_rows(tmp_path):
  write_benchmark(tmp_path / "tune.json", [
      tune_row("per_image", "subpixel", "grouped", "auto", "bfloat16", 8, 0.02)])
  out = report(tmp_path)
  assert out.returncode == 0, out.stderr
  assert "NaN" in out.stdout or "nan" in out.stdout
  assert "no batch-1 row of the baseline (torch-shaped fp32)" in out.stdout
  empty = tmp_path / "empty"
  empty.mkdir()
  out = report(empty)
  assert out.returncode != 0
  assert "no tune_step rows that ran" in out.stderr
  assert "gpu_benchmarks.sh" in out.stderr


def test_fastest_per_image_bf16_configuration(tmp_path):
  """--fastest (gpu_benchmarks.sh picks the graph of its later parts with it): the per_image
  bfloat16 row with the most images/s, not a faster joint or float32 one."""
  write_benchmark(tmp_path / "tune.json", [
      tune_row("per_image", "subpixel", "grouped", "auto", "bfloat16", 8, 0.050),
      tune_row("per_image", "taps", "grouped", "auto", "bfloat16", 8, 0.040),
      tune_row("per_image", "phases", "grouped", "auto", "bfloat16", 8, float("nan")),
      tune_row("per_image", "phases", "grouped", "auto", "float32", 8, 0.010),
      tune_row("joint", "subpixel", "grouped", "auto", "bfloat16", 8, 0.010),
      tune_row("per_image", "phases", "grouped", "auto", "bfloat16", 8, 0.010,
               max_resolution=256)])   # the layer-subset fast mode: not the faithful step
  out = report(tmp_path, "--fastest")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["taps", "grouped"]
  text = report(tmp_path).stdout
  assert "| per_image, layers <= 256 px, phases, grouped, auto | bfloat16 | 8 | 1.25 |" in text
  assert "best per_image: per_image, phases, grouped, auto, float32 at batch 8" in text
  assert "best per_image, layers <= 256 px: per_image, layers <= 256 px, phases" in text
  write_benchmark(tmp_path / "tune.json", [
      tune_row("joint", "subpixel", "grouped", "auto", "bfloat16", 8, 0.010)])
  out = report(tmp_path, "--fastest")
  assert out.returncode != 0 and "no per_image bfloat16 tune_step row" in out.stderr


def test_a_cut_file_is_skipped_and_a_faster_rerun_keeps_the_profile(tmp_path):
  """gpu_benchmarks.sh's later parts re-measure batch 8 without profiling; a part cut by
  its time limit may leave a broken file."""
  config = ("per_image", "subpixel", "grouped", "auto", "bfloat16")
  write_benchmark(tmp_path / "tune.json", [
      tune_row(*config, 8, 0.050, profile_ms_by_kind={"conv": 30.0, "fusion": 10.0})])
  write_benchmark(tmp_path / "max.json", [tune_row(*config, 8, 0.040)])
  (tmp_path / "cut.json").write_text('{"device": "NVIDIA H100 80GB HBM3", "resu')
  out = report(tmp_path)
  assert out.returncode == 0, out.stderr
  assert "skipped" in out.stderr and "cut.json" in out.stderr
  assert "| per_image, subpixel, grouped, auto | bfloat16 | 8 | 5.00 |" in out.stdout
  assert "conv 75%; fusion 25%" in out.stdout          # the slower row's profile, kept
  assert "| — | — |" in out.stdout                     # no batch-1 rows: no ratios


@pytest.mark.parametrize("args", [[], ["a", "b"]])
def test_usage(args):
  out = subprocess.run([sys.executable, "tools/gpu_report.py", *args], capture_output=True,
                       text=True, check=False)
  assert out.returncode != 0 and "usage" in (out.stdout + out.stderr).lower()


def test_gpu_benchmarks_script_stops_at_once_without_a_gpu(tmp_path):
  """A jax without a GPU backend would spend each part's whole time limit at 1024 px."""
  import jax
  if jax.default_backend() == "gpu":
    pytest.skip("this jax has a GPU: the script would run its benchmarks")
  out = subprocess.run(["bash", "tools/gpu_benchmarks.sh", str(tmp_path / "out")],
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                       text=True, check=False, timeout=120)
  assert out.returncode == 2, out.stdout + out.stderr
  assert "jax has no GPU backend" in out.stdout and "== part" not in out.stdout
