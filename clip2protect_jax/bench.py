"""Timing helpers for the benchmark tools (host side; prints nothing, asserts nothing)."""
from __future__ import annotations

import math
import re
import time
from typing import Any, Callable, Hashable, Mapping

import jax


def compile_fn(fn: Callable, args: tuple) -> tuple[Any, dict[str, float]]:
  """AOT-compiles jitted `fn` for `args` (arrays or jax.ShapeDtypeStruct).

  Returns (compiled, info): compile_s (tracing included), flops and bytes accessed (XLA cost
  analysis, per call; see _cost_info) and the executable's memory (argument/output/temp
  bytes).
  """
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  return _compile_lowered(fn, args, lowered, time.perf_counter() - t0)


def _compile_lowered(fn: Callable, args: tuple, lowered: Any, lower_s: float
                     ) -> tuple[Any, dict[str, float]]:
  t0 = time.perf_counter()
  compiled = lowered.compile()
  info = {"compile_s": lower_s + time.perf_counter() - t0,
          **_cost_info(unfused_cost_analysis(fn, args, lowered), compiled)}
  try:
    mem = compiled.memory_analysis()
    info.update({f"{k}_bytes": float(getattr(mem, k + "_in_bytes", float("nan")))
                 for k in ("argument_size", "output_size", "alias_size", "temp_size")})
  except Exception:  # noqa: BLE001 (not every backend reports it)
    pass
  return compiled, info


# Compile-only GPU targets: XLA's GPU compiler needs these facts of a device, not the device
# (JAX's CUDA plugin must be installed: `bash tools/setup.sh gpu-plan`). Name -> (device
# description, memory bytes, HBM bytes/s); both are sm_90 parts with 132 SMs and 50 MB L2,
# compiled against CUDA 12.8 / cuDNN 9.8.
GPU_TARGETS = {"h100": ("NVIDIA H100 80GB HBM3", 84_929_347_584, 3.35e12),
               "h200": ("NVIDIA H200", 150_754_820_096, 4.8e12)}


def gpu_target_config(name: str) -> str:
  """The GpuTargetConfigProto text (xla/stream_executor/device_description.proto) of
  GPU_TARGETS[name]."""
  description, memory, bandwidth = GPU_TARGETS[name]
  device = dict(threads_per_block_limit=1024, threads_per_warp=32,
                shared_memory_per_block=49152, shared_memory_per_core=233472,
                threads_per_core_limit=2048, core_count=132, fpus_per_core=128,
                block_dim_limit_x=2147483647, block_dim_limit_y=65535,
                block_dim_limit_z=65535, memory_bandwidth=int(bandwidth),
                l2_cache_size=52428800, clock_rate_ghz=1.98, device_memory_size=memory,
                shared_memory_per_block_optin=232448, registers_per_core_limit=65536,
                registers_per_block_limit=65536)
  fields = "\n".join(f"  {k}: {v}" for k, v in device.items())
  return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n"
          "runtime_version { major: 12 minor: 8 patch: 0 }\n"
          'platform_name: "CUDA"\ndnn_version_info { major: 9 minor: 8 }\n'
          f'device_description_str: "{description}"\n')


def gpu_target_device(name: str) -> Any:
  """A compile-only device of GPU_TARGETS[name]: jit(...).lower(args placed on it by
  place_abstract).compile() gives the optimised GPU program (its fusions, cuDNN calls and
  memory), without a GPU and without running anything. Autotuning is off (no device), so
  cuDNN algorithms are picked at run time; the plan and the memory are the GPU's."""
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(name, "cuda", target_config=gpu_target_config(name),
                                        topology="1x1x1").devices[0]
  except Exception as e:  # noqa: BLE001 (re-raised with what to do)
    raise RuntimeError(
        f"compiling for GPU target {name!r} without a GPU needs JAX's CUDA plugin: run "
        "`bash tools/setup.sh gpu-plan` and use .venv-gpu-plan/bin/python "
        f"({type(e).__name__}: {str(e)[:200]})") from e


def place_abstract(tree: Any, device: Any) -> Any:
  """Abstract values (jax.eval_shape's ShapeDtypeStructs) placed on `device`."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def conv_calls(compiled: Any) -> dict[str, int]:
  """Convolution library calls of a compiled GPU program by cuDNN kind, plus
  'weight gradient as forward conv (kernel = feature map)': forward convolutions whose
  window is larger than 5x5, i.e. a weight gradient that XLA could not map to cuDNN's
  backward-filter call and runs with the whole output-gradient map as its kernel (no
  kernel of the tuned networks is larger than 4x4; a weight gradient at 4x4 pixels is
  missed)."""
  import collections
  counts = collections.Counter()
  for line in compiled.as_text().splitlines():
    target = re.search(r'custom_call_target="__cudnn\$(conv\w*)"', line)
    if not target or "custom-call(" not in line:
      continue
    counts[target.group(1)] += 1
    window = re.search(r"window=\{size=(\d+)x(\d+)", line)
    if "Forward" in target.group(1) and window and int(window.group(1)) > 5:
      counts["weight gradient as forward conv (kernel = feature map)"] += 1
  return dict(counts)


def compile_many(jobs: Mapping[Hashable, tuple[Callable, tuple]],
                 log: Callable[[str], None] = lambda message: None
                 ) -> dict[Hashable, tuple[Any, dict[str, float]] | Exception]:
  """compile_fn for every job, one at a time (on an H100, compiling 2-4 tuning steps at
  once in threads finished none of them in 90-350 s). A job that fails to lower or compile
  maps to its exception; log(message) hears when each job is lowered, starts and ends
  compiling (a cut run shows where)."""
  out = {}
  for key, (fn, args) in jobs.items():
    try:
      t0 = time.perf_counter()
      lowered = fn.lower(*args)
      lower_s = time.perf_counter() - t0
      log(f"lowered {key} in {lower_s:.1f} s; compiling")
      out[key] = _compile_lowered(fn, args, lowered, lower_s)
      log(f"compiled {key} in {out[key][1]['compile_s']:.1f} s")
    except Exception as e:  # noqa: BLE001 (recorded per job)
      out[key] = e
  return out


def _warm_up(compiled: Any, args: tuple, carry: Callable[[Any, tuple], tuple] | None
             ) -> tuple:
  """One call of `compiled`, waited for; returns the next call's arguments (carry(out,
  args) for steps that donate their state; default: the same args)."""
  out = jax.block_until_ready(compiled(*args))
  return carry(out, args) if carry else args


def _run(compiled: Any, args: tuple, calls: int,
         carry: Callable[[Any, tuple], tuple] | None) -> None:
  """`calls` calls of `compiled` (each fed the previous one's carry), waited for."""
  for _ in range(calls):
    out = compiled(*args)
    args = carry(out, args) if carry else args
  jax.block_until_ready(out)


def time_compiled(compiled: Any, args: tuple, iters: int,
                  carry: Callable[[Any, tuple], tuple] | None = None) -> float:
  """Runs `compiled` once (warm-up) and `iters` times; seconds per call, steady state.

  carry(out, args) -> next args, for steps that donate their state (default: same args).
  """
  args = _warm_up(compiled, args, carry)
  t0 = time.perf_counter()
  _run(compiled, args, iters, carry)
  return (time.perf_counter() - t0) / iters


def compile_and_time(fn: Callable, args: tuple, iters: int,
                     carry: Callable[[Any, tuple], tuple] | None = None) -> dict[str, float]:
  """compile_fn + time_compiled: compile_s, seconds (per call), flops, tflops (achieved),
  memory bytes."""
  compiled, info = compile_fn(fn, args)
  return with_rate(info, time_compiled(compiled, args, iters, carry))


def with_rate(info: dict[str, Any], seconds: float) -> dict[str, Any]:
  """info + seconds (per call) + tflops (achieved; NaN without a FLOP count)."""
  return {**info, "seconds": seconds,
          "tflops": info.get("flops", float("nan")) / seconds / 1e12}


def _first_analysis(analysis: Any) -> Mapping[str, float]:
  """A cost analysis as a dict ({} where there is none)."""
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) and analysis else analysis
  return analysis if isinstance(analysis, Mapping) else {}


def unfused_cost_analysis(fn: Callable, args: tuple, lowered: Any) -> Mapping[str, float]:
  """XLA's cost analysis of jitted fn's lowered (unfused, backend-independent) HLO for args.

  lowered.cost_analysis() where it counts FLOPs; else (a GPU through JAX's CUDA plugin,
  jax 0.11.2: None) fn lowered for args placed on the CPU and analysed there (the same HLO
  before any backend's optimisation, so the same FLOPs). {} where neither works: a missing
  FLOP count must not cost a compiled step its timing."""
  try:
    analysis = _first_analysis(lowered.cost_analysis())
    if "flops" in analysis:
      return analysis
    return _first_analysis(
        fn.lower(*place_abstract(args, jax.devices("cpu")[0])).cost_analysis())
  except Exception as e:  # noqa: BLE001 (reported, FLOPs then NaN)
    print(f"  no FLOP count ({type(e).__name__}: {str(e)[:200]})", flush=True)
    return {}


def _cost_info(unfused: Mapping[str, float], compiled: Any) -> dict[str, float]:
  """XLA's cost analysis, per call: flops, bytes_accessed and bytes_accessed_unfused.

  flops and bytes_accessed_unfused come from the lowered (backend-independent, unfused)
  HLO (unfused_cost_analysis): the compiled executable's FLOPs miss convolutions that the
  GPU backend turns into cuDNN custom calls (~10x too few for the tuning step on an H200).
  bytes_accessed is the compiled (fused) program's memory traffic, the memory-roofline
  figure: trustworthy on CPU, an undercount on GPU for the same reason (reported as
  measured, NaN where unsupported).
  """
  def cost(analysis, key):
    return float(_first_analysis(analysis).get(key, float("nan")))
  try:
    fused = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 (not every backend reports it)
    fused = None
  return {"flops": cost(unfused, "flops"), "bytes_accessed": cost(fused, "bytes accessed"),
          "bytes_accessed_unfused": cost(unfused, "bytes accessed")}


def peak_device_bytes() -> float:
  """The device's peak allocated bytes so far (GPU/TPU), NaN where unsupported (CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats.get("peak_bytes_in_use", float("nan")))


def device_memory_bytes() -> float:
  """The memory the device's allocator may use (GPU/TPU), NaN where unknown (CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats.get("bytes_limit", float("nan")))


def hlo_op_lines(compiled: Any) -> dict[str, str]:
  """Instruction name -> its line, for every instruction of the compiled (optimised) HLO."""
  return {match.group(1): line.strip().removeprefix("ROOT ")
          for line in compiled.as_text().splitlines()
          if (match := _INSTRUCTION.match(line))}


def hlo_category(line: str) -> str:
  """A coarse kind for one optimised-HLO instruction line (GPU names; CPU falls to opcode),
  read off the instruction's own name, opcode and attributes, not its operands' names."""
  own = _OPERANDS.sub("()", line.split(", metadata=")[0], count=1)
  kinds = (("convBackwardFilter", "conv, weight gradient (cuDNN)"),
           ("convBackwardInput", "conv, input gradient (cuDNN)"),
           ("convForward", "conv, forward (cuDNN)"),
           ("convBiasActivationForward", "conv, forward (cuDNN)"),
           ("__cudnn$fusion", "cuDNN fusion"),
           ("__cublas", "matmul (cuBLAS)"), ("gemm", "matmul (cuBLAS)"),
           (" convolution(", "convolution"), (" dot(", "dot"),
           ("kind=kLoop", "loop fusion (elementwise)"),
           ("kind=kInput", "input fusion (reduction)"), ("kind=kOutput", "output fusion"),
           (" copy(", "copy / layout change"), (" transpose(", "copy / layout change"),
           ("custom-call", "other custom call"), (" fusion(", "other fusion"))
  return next((kind for key, kind in kinds if key in own), "other")


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*?)\s([a-z][a-z\-]*)\((.*)$")
_NO_TRAFFIC = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant")
_OPERANDS = re.compile(r"\((?:\s*(?:/\*index=\d+\*/)?%[^\s,()]+,?)*\s*\)")
_COMPUTATION = re.compile(r"^%?(\S+) \(.*\) -> .* \{$")


def _shape_bytes(text: str) -> int:
  return sum(math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype]
             for dtype, dims in _SHAPE.findall(text))


def _sliced_bytes(inst: str, users: Mapping[str, list[tuple[str, str, int]]]) -> int | None:
  """The bytes of inst that its slices read (through slices of slices), or None unless
  every use of inst is a slice; users: instruction -> [(user, opcode, result bytes)]."""
  uses = users.get(inst)
  if not uses or any(op not in ("slice", "dynamic-slice") for _, op, _ in uses):
    return None
  return sum(min(size, _sliced_bytes(user, users) or size) for user, _, size in uses)


def _sliced_parameter_reads(text: str) -> dict[str, dict[int, int]]:
  """Per fused computation: parameter number -> the bytes it reads, for the parameters that
  are only sliced (a fusion reading a slice of a large buffer reads only the slice; of a
  slice that is only sliced further, only those slices)."""
  out, name, params, users = {}, None, {}, {}
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      name, params, users = head.group(1), {}, {}
      continue
    if name is None:
      continue
    if line.startswith("}"):
      reads = {number: b for param, number in params.items()
               if (b := _sliced_bytes(param, users)) is not None}
      if reads:
        out[name] = reads
      name = None
      continue
    match = _INSTRUCTION.match(line.split(", metadata=")[0])
    if not match:
      continue
    inst, shape, opcode, operands = match.groups()
    if opcode == "parameter":
      params[inst] = int(operands.partition(")")[0])
    for op in re.findall(r"%([^\s,()]+)", operands):
      users.setdefault(op, []).append((inst, opcode, _shape_bytes(shape)))
  return out


def hlo_traffic(compiled: Any) -> list[dict[str, Any]]:
  """Memory traffic per instruction of the compiled program's entry computation, assuming
  each instruction (a fusion, a library call, a copy) reads its operands (or the slices of
  them that a fusion reads) and writes its result once: rows {category (hlo_category),
  source (the JAX op), bytes}, largest first. Their sum is the traffic floor of this fusion
  plan: sum / HBM bandwidth bounds the step from below (XLA's own 'bytes accessed' also
  counts traffic inside fusions)."""
  text = compiled.as_text()
  sliced = _sliced_parameter_reads(text)
  entry = text[text.index("\nENTRY"):]
  sizes, rows = {}, []
  for line in entry[:entry.index("\n}")].splitlines()[1:]:
    match = _INSTRUCTION.match(line.split(", metadata=")[0].split(", calls=")[0])
    if not match:
      continue
    name, shape, opcode, operands = match.groups()
    sizes[name] = _shape_bytes(shape)
    if opcode in _NO_TRAFFIC:
      continue
    calls = re.search(r"calls=%([^\s,]+)", line)
    partial = sliced.get(calls.group(1), {}) if calls else {}
    read = sum(partial.get(i, sizes.get(op, 0))
               for i, op in enumerate(re.findall(r"%([^\s,()]+)", operands)))
    rows.append({"category": hlo_category(line), "source": _source_op(line),
                 "bytes": sizes[name] + read})
  return sorted(rows, key=lambda r: -r["bytes"])


def kernel_profile(compiled: Any, args: tuple, calls: int, trace_dir: str,
                   carry: Callable[[Any, tuple], tuple] | None = None) -> list[dict[str, Any]]:
  """Device time per HLO instruction over `calls` calls of `compiled`, from a
  jax.profiler trace written to `trace_dir` (after one warm-up call).

  Returns rows sorted by time: op, category (hlo_category), ms_per_call, launches per call,
  the first kernel names, and the instruction's HLO (first 400 characters). Events are
  taken from the device planes (GPU/TPU); on CPU, from the host threads that run XLA ops.
  """
  import collections
  import glob
  import os
  args = _warm_up(compiled, args, carry)
  with jax.profiler.trace(trace_dir):
    _run(compiled, args, calls, carry)
  paths = sorted(glob.glob(os.path.join(glob.escape(trace_dir), "**", "*.xplane.pb"),
                           recursive=True),
                 key=os.path.getmtime)
  data = jax.profiler.ProfileData.from_file(paths[-1])
  planes = [p for p in data.planes if p.name.startswith("/device:")] or [
      p for p in data.planes if p.name.startswith("/host:CPU")]
  total = collections.defaultdict(float)
  launches = collections.Counter()
  kernels = collections.defaultdict(list)
  device = any(p.name.startswith("/device:") for p in planes)
  lines = hlo_op_lines(compiled)
  for plane in planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        op = stats.get("hlo_op") or _annotated_op(stats)
        if not op and device and event.duration_ns > 0:   # a kernel without an HLO name
          op = "kernel " + event.name[:80]
        if not op:
          continue
        if op.startswith("command_buffer"):   # a CUDA graph: its kernels' own instructions
          op = kernel_instruction(event.name, lines) or op
        total[op] += event.duration_ns
        launches[op] += 1
        if event.name not in kernels[op] and len(kernels[op]) < 3:
          kernels[op].append(event.name)
  rows = [{"op": op, "category": hlo_category(lines.get(op, "")),
           "source": _source_op(lines.get(op, "")),
           "ms_per_call": ns / 1e6 / calls, "launches_per_call": launches[op] / calls,
           "kernels": kernels[op], "hlo": lines.get(op, "")[:400]}
          for op, ns in total.items()]
  return sorted(rows, key=lambda r: -r["ms_per_call"])


def kernel_instruction(kernel: str, lines: Mapping[str, str]) -> str | None:
  """The HLO instruction a GPU kernel was generated for, where the kernel is XLA's own
  (named after its fusion, '.' -> '_': kernel 'loop_add_fusion_2' is 'loop_add_fusion.2');
  None for library kernels (cuDNN, cuBLAS, CUTLASS). Inside a command buffer (a CUDA graph)
  the profiler names only the buffer; this recovers what ran in it."""
  if kernel in lines:
    return kernel
  head, _, index = kernel.rpartition("_")
  name = f"{head}.{index}"
  return name if index.isdigit() and name in lines else None


def _annotated_op(stats: dict[str, Any]) -> str | None:
  """The HLO op named in an XLA annotation stat ('...#hlo_op=fusion.3,hlo_module=...#')."""
  for value in stats.values():
    if isinstance(value, str) and "hlo_op=" in value:
      return value.split("hlo_op=", 1)[1].split(",", 1)[0].split("#", 1)[0]
  return None


def tune_step_case(generator: Any, lpips_model: Any, lpips_vars: Any, gen_params: Any,
                   schedule: str, batch: int, max_resolution: int = 0
                   ) -> tuple[Callable, Callable[[], tuple], Callable]:
  """The jitted stage-1 step of `schedule` at `batch` on random inputs (speed only), tuning
  the layers up to `max_resolution` px (0: all, tuning.TuningSettings).

  Returns (step, make_args, carry): make_args() allocates the step's arguments (one
  parameter copy per image for per_image, one shared set for joint; jax.eval_shape of it
  gives the abstract arguments for compiling), carry(out, args) the next call's arguments.
  """
  from clip2protect_jax import tuning
  from clip2protect_jax.models import stylegan2
  settings = tuning.TuningSettings(steps=0, schedule=schedule, max_resolution=max_resolution)
  size = generator.size

  def make_args():
    wplus0 = jax.random.normal(jax.random.key(1), (batch, generator.n_latent,
                                                   generator.style_dim))
    noise = stylegan2.make_noise(jax.random.key(2), size, batch)
    targets = jax.random.uniform(jax.random.key(4), (batch, size, size, 3), minval=-1,
                                 maxval=1)
    target = tuning.prepare_target(lpips_model, settings, lpips_vars, targets)
    tuned, frozen = tuning.split_params(settings, gen_params)
    return (*tuning.initial_state(settings, tuned, batch),
            *tuning.batch_inputs(settings, frozen, wplus0, noise, target, lpips_vars))

  def carry(out, args):   # params and optimiser state are donated: feed the new ones
    return (out[0], out[1]) + tuple(args[2:])

  return tuning.compiled_step(generator, lpips_model, settings), make_args, carry


def print_kernel_profile(title: str, rows: list[dict[str, Any]], batch: int, top: int
                         ) -> dict[str, float]:
  """Prints kernel_profile's rows summed by category, then the `top` instructions; returns
  ms per call by category."""
  import collections
  by_kind = collections.defaultdict(float)
  for r in rows:
    by_kind[r["category"]] += r["ms_per_call"]
  traced = sum(by_kind.values()) or float("nan")
  print(f"\n{title}: device ops {traced:.2f} ms/call ({traced / batch:.2f} ms/image)")
  for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
    print(f"  {kind:<34} {ms:9.2f} ms/call {100 * ms / traced:5.1f}%")
  for r in rows[:top]:
    shape = r["hlo"].partition(" = ")[2].partition(" ")[0]
    print(f"  {r['ms_per_call']:8.3f} ms x{r['launches_per_call']:<4.0f} {r['category']:<30} "
          f"{shape[:40]:<40} {r['source'][-90:]}")
  print(flush=True)
  return dict(by_kind)


def print_traffic(title: str, rows: list[dict[str, Any]], batch: int, top: int
                  ) -> dict[str, float]:
  """Prints hlo_traffic's rows summed by category and by layer (the JAX op path without
  its transformation wrappers and indices); returns bytes per call by category."""
  import collections
  by_kind, by_layer = collections.Counter(), collections.Counter()
  for r in rows:
    by_kind[r["category"]] += r["bytes"]
    parts = [p for p in r["source"].split("/") if p and "(" not in p]
    by_layer[re.sub(r"\d+", "#", "/".join(parts)) or "(no JAX op)"] += r["bytes"]
  total = sum(by_kind.values())
  print(f"\n{title}: traffic floor {total / 1e9:.2f} GB/call ({total / batch / 1e9:.2f} "
        "GB/image; each instruction reads its operands and writes its result once)")
  for name, counter in (("kind", by_kind), ("layer", by_layer)):
    for key, b in counter.most_common(top):
      print(f"  by {name}: {b / 1e9:8.2f} GB {100 * b / total:5.1f}%  {key[-90:]}")
  print(flush=True)
  return {k: float(v) for k, v in by_kind.items()}


def _source_op(line: str) -> str:
  """The JAX-level op name in an HLO line's metadata (which module/layer it came from)."""
  _, sep, rest = line.partition('op_name="')
  return rest.partition('"')[0] if sep else ""
