"""Timing helpers for the benchmark tools (host side; prints nothing, asserts nothing)."""
from __future__ import annotations

import time
from typing import Any, Callable

import jax


def compile_and_time(fn: Callable, args: tuple, iters: int,
                     carry: Callable[[Any, tuple], tuple] | None = None) -> dict[str, float]:
  """AOT-compiles jitted `fn` for `args`, runs it once (warm-up) and `iters` times.

  carry(out, args) -> next args, for steps that donate their state (default: same args).
  Returns compile_s, seconds (per call, steady state), flops (XLA cost analysis, per call),
  tflops (achieved), and the executable's memory (argument/output/temp bytes).
  """
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(lowered)
  try:
    mem = compiled.memory_analysis()
    memory = {k: float(getattr(mem, k + "_in_bytes", float("nan")))
              for k in ("argument_size", "output_size", "temp_size")}
  except Exception:  # noqa: BLE001 (not every backend reports it)
    memory = {}
  step = carry or (lambda out, a: a)
  out = jax.block_until_ready(compiled(*args))
  args = step(out, args)
  t0 = time.perf_counter()
  for _ in range(iters):
    out = compiled(*args)
    args = step(out, args)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t0) / iters
  return {"compile_s": compile_s, "seconds": dt, "flops": flops,
          "tflops": flops / dt / 1e12, **{f"{k}_bytes": v for k, v in memory.items()}}


def _flops(lowered) -> float:
  """FLOPs per call from XLA's cost analysis of the lowered (backend-independent) HLO.

  The compiled executable's own analysis misses convolutions that the GPU backend turns
  into cuDNN custom calls (it reported ~10x too few FLOPs for the tuning step on an H200).
  """
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def peak_device_bytes() -> float:
  """The device's peak allocated bytes so far (GPU/TPU), NaN where unsupported (CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats.get("peak_bytes_in_use", float("nan")))
