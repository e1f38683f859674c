"""Benchmark CLIP2Protect's steps; prints numbers (and optionally JSON), asserts nothing.

  python tools/benchmark.py --size=1024 --batch_sizes=1,8,16 --dtypes=float32,bfloat16 \
      --modes=tune_step,protect_step,end_to_end --json_out=bench.json

For each (mode, dtype, batch size): compile time, steady-state time per call and per
image, images/s, XLA's FLOP count, achieved TFLOP/s, bytes accessed (the fused program's
memory traffic; see bench._cost_info) and the executable's memory. Modes:
  synth         forward synthesis W+ -> image
  grad_wplus    d loss / d W+ and noise (shared generator params)
  grad_params   d loss / d ALL generator params, one param copy PER IMAGE via vmap
  tune_step     the real stage-1 step (tuning.py), for every --schedules (per_image: one
                generator copy per image; joint: the fast mode's one shared generator),
                --upsample_impls, --conv_impls and --modulations: LPIPS-VGG + 0.1 MSE at
                256, Adam update (random LPIPS weights; LPIPS's VGG runs in the row's
                dtype, i.e. bf16 rows = generator.dtype and tune.lpips_dtype bfloat16).
                Batch sizes in order, each configuration compiled, timed and written
                in turn (JSON, atomically: a run cut by a time limit keeps them);
                --max_batch adds the largest batch that the
                compiled memory says fits; --profile_batches breaks the step down by HLO
                instruction (device time from a profiler trace); --cost_only only compiles
                and prints FLOPs and traffic; --target compiles for an H100/H200 without
                one.
  protect_step  the real stage-2 step (protect.py): per-image tuned generators, CLIP
                (--clip_preset) with random perspective, --surrogates FR models, Adam
  end_to_end    one batch through tuning.tune (150 steps) + protect.prepare_constants +
                protect.protect (50 steps), compiled beforehand; images/s amortised
Paper settings: --size=1024 (StyleGAN2 config-f), CLIP ViT-B/32, 3 surrogates (+1 victim,
not run in the step). All weights random: speed does not depend on their values.
Also prints the bf16-vs-fp32 output error of the synthesis (scaled = max|d| / max|fp32|).
On GPU, fp32 uses --precision (default: 'default', i.e. TF32 where the card allows).
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from clip2protect_jax import bench, image_io  # noqa: E402

PIPELINE_MODES = ("tune_step", "protect_step", "end_to_end")
flags.DEFINE_integer("size", 256, "Generator resolution (1024 = paper).")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Batch sizes.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Convolution compute dtypes.")
flags.DEFINE_list("modes", ["synth", "grad_wplus", "grad_params"],
                  "What to time: synth, grad_wplus, grad_params, " + ", ".join(PIPELINE_MODES))
flags.DEFINE_integer("iters", 5, "Timed calls after warm-up.")
flags.DEFINE_string("precision", "default", "lax precision: default | high | highest.")
flags.DEFINE_integer("channel_max", 512, "Channel cap (512 = paper architecture).")
flags.DEFINE_list("upsample_impls", ["dilated"],
                  "Generator upsampling: dilated, subpixel, phases, taps.")
flags.DEFINE_list("conv_impls", ["xla"], "Generator stride-1 convs (per-image weights): xla, "
                  "grouped, tapwise, im2col, hybrid (tune_step sweeps them; other modes use "
                  "the first).")
flags.DEFINE_list("modulations", ["activations"], "Generator modulation: activations, weights, "
                  "auto (tune_step sweeps them; other modes use the first).")
flags.DEFINE_list("schedules", ["per_image"], "tune_step: tuning schedules (per_image, joint).")
flags.DEFINE_integer("tune_max_resolution", 0, "tune_step / end_to_end: tune only the "
                     "synthesis layers <= this many px (fast mode; 0: every layer).")
flags.DEFINE_list("profile_batches", [], "tune_step: batch sizes whose step is also traced "
                  "(jax.profiler) and broken down by HLO instruction.")
flags.DEFINE_integer("profile_top", 25, "tune_step: instructions printed per profile.")
flags.DEFINE_string("trace_dir", "/tmp/benchmark_trace", "tune_step: profiler output.")
flags.DEFINE_bool("max_batch", False, "tune_step: also time the largest batch (a multiple "
                  "of 8) that the two largest --batch_sizes' memory predicts to fit.")
flags.DEFINE_bool("cost_only", False, "tune_step: compile (abstractly, zero weights) and "
                  "print XLA's FLOPs, bytes accessed and the memory-traffic floor by kind "
                  "and layer (bench.hlo_traffic) without running anything: the roofline of "
                  "a size/batch this device cannot run.")
flags.DEFINE_enum("target", None, ["h100", "h200"], "tune_step, implies --cost_only: compile "
                  "for this GPU without one (bench.gpu_target_device; needs `bash "
                  "tools/setup.sh gpu-plan`, run with .venv-gpu-plan/bin/python) and print its "
                  "fusion plan's traffic floor, memory and cuDNN calls (with --max_batch, "
                  "also for the largest batch that fits its memory).")
flags.DEFINE_string("clip_preset", "ViT-B/32", "CLIP architecture for protect_step.")
flags.DEFINE_list("surrogates", ["ir152", "irse50", "mobile_face"], "FR surrogates.")
flags.DEFINE_integer("tune_steps", 150, "end_to_end: stage-1 steps.")
flags.DEFINE_integer("protect_steps", 50, "end_to_end: stage-2 steps.")
flags.DEFINE_string("json_out", None, "Also write every result to this JSON file.")
flags.DEFINE_string("golden", None, "Optional golden folder: also print the bf16 and fp32 "
                    "errors of the recipe-v1 StyleGAN2 256 against the official output.")
FLAGS = flags.FLAGS


def report(mode: str, dtype: str, bs: int, r: dict) -> dict:
  """Prints one result line; returns the JSON record."""
  dt = r["seconds"]
  print(f"{mode:<12} {dtype:<9} batch {bs:>3}: compile {r.get('compile_s', 0):6.1f} s, "
        f"{dt * 1e3:9.2f} ms/call, {dt * 1e3 / bs:9.2f} ms/image, {bs / dt:8.3f} images/s, "
        f"{r.get('flops', float('nan')) / 1e9:10.2f} GFLOP/call, "
        f"{r.get('tflops', float('nan')):7.3f} TFLOP/s, "
        f"{r.get('bytes_accessed', float('nan')) / 1e9:8.2f} GB accessed/call, temp "
        f"{r.get('temp_size_bytes', float('nan')) / 2**30:6.2f} GiB", flush=True)
  return {"mode": mode, "dtype": dtype, "batch": bs, "ms_per_image": dt * 1e3 / bs,
          "images_per_s": bs / dt, **r}


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from clip2protect_jax.models import stylegan2

  if FLAGS.target and set(FLAGS.modes) != {"tune_step"}:
    raise app.UsageError("--target compiles the tuning step only: pass --modes=tune_step")
  if FLAGS.target:   # runs on the CPU; the CUDA plugin only compiles (no cuInit)
    jax.config.update("jax_platforms", "cpu")
  precision = None if FLAGS.precision == "default" else FLAGS.precision
  key = jax.random.key(0)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, size {FLAGS.size}, precision {FLAGS.precision}"
        + (f"; compiling for {bench.GPU_TARGETS[FLAGS.target][0]} (no run)" if FLAGS.target
           else ""))

  def make_fn(model, mode):
    def loss(p, w, n):
      return jnp.mean(jnp.square(model.apply({"params": p}, w, n)))
    if mode == "synth":
      return jax.jit(lambda p, w, n: model.apply({"params": p}, w, n))
    if mode == "grad_wplus":
      return jax.jit(jax.grad(loss, argnums=(1, 2)))
    def one(p, w, n):  # per-image params
      return jax.grad(loss)(p, w[None], [m[None] for m in n])
    return jax.jit(jax.vmap(one))

  if FLAGS.golden:
    golden_precision_report(FLAGS.golden, precision)
  outputs, results = {}, []
  gen_modes = [m for m in FLAGS.modes if m in ("synth", "grad_wplus", "grad_params")]
  if gen_modes:
    params = stylegan2.init_params(stylegan2.Generator(
        FLAGS.size, channel_max=FLAGS.channel_max, precision=precision), key)
  for dtype, impl in itertools.product(FLAGS.dtypes, FLAGS.upsample_impls):
    model = stylegan2.Generator(FLAGS.size, channel_max=FLAGS.channel_max,
                                dtype=jnp.dtype(dtype), precision=precision,
                                upsample_impl=impl, conv_impl=FLAGS.conv_impls[0],
                                modulation=FLAGS.modulations[0])
    for mode in gen_modes:
      for bs in map(int, FLAGS.batch_sizes):
        wplus = jax.random.normal(jax.random.key(1), (bs, model.n_latent, model.style_dim))
        noise = stylegan2.make_noise(jax.random.key(2), FLAGS.size, bs)
        if mode == "grad_params":  # one copy of the params per image
          p = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (bs,) + x.shape), params)
          args = (p, wplus, noise)
        else:
          args = (params, wplus, noise)
        r = report(f"{mode}[{impl}]", dtype, bs,
                   bench.compile_and_time(make_fn(model, mode), args, FLAGS.iters))
        results.append(r)
        if mode == "synth":
          outputs[(dtype, impl, bs)] = np.asarray(make_fn(model, mode)(*args))
  if "tune_step" in FLAGS.modes:   # written after every configuration: a cut run keeps them
    results += tune_step_benchmarks(precision, lambda rs: write_json(results + rs))
  pipeline_modes = [m for m in FLAGS.modes if m in ("protect_step", "end_to_end")]
  if pipeline_modes:
    results += pipeline_benchmarks(pipeline_modes, precision)
  for (dtype, impl, bs), img in outputs.items():
    ref = outputs.get(("float32", FLAGS.upsample_impls[0], bs))
    if (dtype, impl) != ("float32", FLAGS.upsample_impls[0]) and ref is not None:
      scaled = np.abs(img - ref).max() / np.abs(ref).max()
      rel_l2 = np.linalg.norm(img - ref) / np.linalg.norm(ref)
      print(f"{dtype} {impl} vs float32 {FLAGS.upsample_impls[0]} synthesis, batch {bs}: "
            f"scaled max error {scaled:.2e}, rel-L2 {rel_l2:.2e}")
  write_json(results)
  if FLAGS.json_out:
    print(f"wrote {FLAGS.json_out}")


def write_json(results: list[dict]) -> None:
  """Writes --json_out (if set) with the device description and `results`."""
  import jax
  if not FLAGS.json_out:
    return
  image_io.atomic_write_json(FLAGS.json_out, {   # a run cut by a time limit leaves whole JSON
      "device": jax.devices()[0].device_kind, "target": FLAGS.target,
      "backend": jax.default_backend(), "jax": jax.__version__, "size": FLAGS.size,
      "precision": FLAGS.precision, "peak_device_bytes": bench.peak_device_bytes(),
      "results": results})


def tune_step_benchmarks(precision, progress=lambda results: None) -> list[dict]:
  """The stage-1 step for every configuration (dtype, schedule, upsampling, conv form,
  modulation) x batch size at --size.

  Batch sizes in order; per configuration: compile (bench.compile_many, abstract arguments:
  nothing is allocated), then time it, allocating its state only while it runs;
  progress(results so far) after each.
  """
  import gc

  import jax
  import jax.numpy as jnp
  from clip2protect_jax import weights
  from clip2protect_jax.models import stylegan2
  key = jax.random.key(0)
  cost_only = FLAGS.cost_only or bool(FLAGS.target)
  target = bench.gpu_target_device(FLAGS.target) if FLAGS.target else None
  lpips = {d: weights.load_lpips("random", key, jnp.dtype(d))[:2] for d in FLAGS.dtypes}
  gens = {(dtype, impl, conv, mod): stylegan2.Generator(
      FLAGS.size, channel_max=FLAGS.channel_max, dtype=jnp.dtype(dtype), precision=precision,
      upsample_impl=impl, conv_impl=conv, modulation=mod) for dtype, impl, conv, mod in
      itertools.product(FLAGS.dtypes, FLAGS.upsample_impls, FLAGS.conv_impls,
                        FLAGS.modulations)}
  first = next(iter(gens.values()))
  params = (jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   stylegan2.abstract_params(first)) if cost_only
            else stylegan2.init_params(first, key))   # the same for every config
  print(f"  [{time.strftime('%H:%M:%S')}] generator params initialised", flush=True)

  def case(dtype, schedule, impl, conv, mod, bs):
    return bench.tune_step_case(gens[(dtype, impl, conv, mod)], *lpips[dtype],
                                params, schedule, bs, FLAGS.tune_max_resolution)

  groups = list(itertools.product(FLAGS.dtypes, FLAGS.schedules, FLAGS.upsample_impls,
                                  FLAGS.conv_impls, FLAGS.modulations))

  def run(config, compiled_or_error):
    dtype, schedule, impl, conv, mod, bs = config
    label = f"tune_step[{schedule},{impl},{conv},{mod}]" + (
        f" layers <= {FLAGS.tune_max_resolution} px" if FLAGS.tune_max_resolution else "")
    extra = {}
    if isinstance(compiled_or_error, Exception):
      info, seconds = {"error": _short(compiled_or_error)}, float("nan")
    elif cost_only:
      exe, info = compiled_or_error
      seconds, rows = float("nan"), bench.hlo_traffic(exe)
      extra = {"traffic_floor_bytes": float(sum(r["bytes"] for r in rows)),
               "traffic_by_kind": bench.print_traffic(f"{label} {dtype} batch {bs}", rows,
                                                      bs, FLAGS.profile_top)}
      if target is not None:
        extra["conv_calls"] = bench.conv_calls(exe)
        ms = extra["traffic_floor_bytes"] / bench.GPU_TARGETS[FLAGS.target][2] * 1e3 / bs
        print(f"  cuDNN convolutions: {extra['conv_calls']}\n  at full HBM bandwidth: "
              f"{ms:.2f} ms/image-step, {ms * FLAGS.tune_steps / 1e3:.2f} s/image for "
              f"{FLAGS.tune_steps} steps\n", flush=True)
    else:
      exe, info = compiled_or_error
      _, make_args, carry = case(*config)
      try:
        seconds = bench.time_compiled(exe, make_args(), FLAGS.iters, carry)
      except Exception as e:  # noqa: BLE001 (out of memory: record and go on)
        info, seconds = {**info, "error": _short(e)}, float("nan")
      if str(bs) in FLAGS.profile_batches and math.isfinite(seconds):
        name = f"{schedule}_{impl}_{conv}_{mod}_{dtype}_{bs}"
        try:   # a profiler failure keeps the timing
          rows = bench.kernel_profile(exe, make_args(), 2, os.path.join(FLAGS.trace_dir, name),
                                      carry)
          extra = {"profile_ms_by_kind": bench.print_kernel_profile(
              f"{label} {dtype} batch {bs}", rows, bs, FLAGS.profile_top),
                   "profile_ops": rows[:150]}
        except Exception as e:  # noqa: BLE001
          extra = {"profile_error": _short(e)}
          print(f"  profile failed: {extra['profile_error']}", flush=True)
      gc.collect()
    r = {**bench.with_rate(info, seconds), "schedule": schedule, "upsample_impl": impl,
         "conv_impl": conv, "modulation": mod, "max_resolution": FLAGS.tune_max_resolution}
    return {**report(label, dtype, bs, r), **extra}

  results = []

  def wave(configs, extra=None):
    """Compiles and times each configuration in turn, results (+ extra fields) written
    after each (a run cut by a time limit keeps every configuration finished before)."""
    out = []
    for config in configs:
      step, make_args, _ = case(*config)
      abstract = jax.eval_shape(make_args)
      job = (step, bench.place_abstract(abstract, target) if target else abstract)
      compiled = bench.compile_many(
          {config: job}, lambda m: print(f"  [{time.strftime('%H:%M:%S')}] {m}", flush=True))
      out.append({**run(config, compiled.pop(config)), **(extra or {})})
      progress(results + out)
    return out

  for bs in map(int, FLAGS.batch_sizes):   # batch sizes in order: small ones land first
    results += wave([g + (bs,) for g in groups])
  if FLAGS.max_batch:
    limit = (bench.GPU_TARGETS[FLAGS.target][1] if FLAGS.target
             else bench.device_memory_bytes())
    def config_of(r):
      return tuple(r[k] for k in ("dtype", "schedule", "upsample_impl", "conv_impl",
                                  "modulation"))
    largest = {g: largest_fitting_batch([r for r in results if config_of(r) == g], limit)
               for g in groups}
    results += wave([g + (bs,) for g, bs in largest.items()
                     if bs and bs > max(map(int, FLAGS.batch_sizes))],
                    {"largest_fitting_estimate": True})
  return results


def largest_fitting_batch(results: list[dict], limit_bytes: float) -> int | None:
  """The largest multiple of 8 (at most 128) whose memory (arguments + temporaries + outputs
  not aliased to donated arguments, linear in the batch through the two largest measured
  batches) stays under 92% of `limit_bytes`."""
  pts = sorted((r["batch"], r["argument_size_bytes"] + r["temp_size_bytes"] +
                r["output_size_bytes"] - r.get("alias_size_bytes", 0.0)) for r in results
               if "error" not in r and "temp_size_bytes" in r)
  if len(pts) < 2 or not math.isfinite(limit_bytes):
    return None
  (b1, m1), (b2, m2) = pts[-2:]
  per_image = (m2 - m1) / (b2 - b1)
  if not math.isfinite(per_image) or per_image <= 0:   # NaN: no memory analysis
    return None
  fits = int((0.92 * limit_bytes - (m2 - per_image * b2)) / per_image) // 8 * 8
  return min(fits, 128) or None     # capped: compiling beyond that takes minutes


def _short(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e)[:300]}"


def pipeline_benchmarks(modes, precision) -> list[dict]:
  """protect_step / end_to_end at --size with random weights."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from clip2protect_jax import protect, tuning, weights
  from clip2protect_jax.models import stylegan2
  key = jax.random.key(0)
  ts = tuning.TuningSettings(steps=FLAGS.tune_steps, schedule=FLAGS.schedules[0],
                             max_resolution=FLAGS.tune_max_resolution)
  results = []
  for dtype in FLAGS.dtypes:
    lpips_model, lpips_vars, _ = weights.load_lpips("random", key, jnp.dtype(dtype))
    gen = stylegan2.Generator(FLAGS.size, channel_max=FLAGS.channel_max,
                              dtype=jnp.dtype(dtype), precision=precision,
                              upsample_impl=FLAGS.upsample_impls[0],
                              conv_impl=FLAGS.conv_impls[0],
                              modulation=FLAGS.modulations[0])
    params = stylegan2.init_params(gen, key)
    clip_model, clip_vars, _ = weights.load_clip(FLAGS.clip_preset, "random", key,
                                                 jnp.dtype(dtype))
    fr = {m: weights.load_face_model(m, "random", jax.random.fold_in(key, i))[0]
          for i, m in enumerate(FLAGS.surrogates)}
    text = jax.random.normal(jax.random.key(3), (2, 79, clip_model.config.embed_dim))
    text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
    shared = protect.SharedInputs(clip_vars, fr, text[0], text[1])
    models = protect.ProtectModels(gen, clip_model)
    rows = tuple(range(8, 18)) if gen.n_latent == 18 else tuple(
        range(gen.n_latent // 2, gen.n_latent))   # small test sizes: the upper half
    settings = protect.ProtectSettings(surrogates=tuple(FLAGS.surrogates),
                                       steps=FLAGS.protect_steps, trainable_rows=rows)
    for bs in map(int, FLAGS.batch_sizes):
      wplus0 = jax.random.normal(jax.random.key(1), (bs, gen.n_latent, gen.style_dim))
      noise = stylegan2.make_noise(jax.random.key(2), FLAGS.size, bs)
      targets = jax.random.uniform(jax.random.key(4), (bs, FLAGS.size, FLAGS.size, 3),
                                   minval=-1, maxval=1)
      # The generator as tuning leaves it: the tuned layers per image, the rest shared.
      tuned_half, frozen = tuning.split_params(ts, params)
      if ts.schedule != "joint":
        tuned_half = tuning.per_image_copies(tuned_half, bs)
      batch_params = tuning.batch_params(ts, tuned_half, frozen)
      s = FLAGS.size
      boxes = jnp.tile(jnp.array([[0.27 * s, 0.3 * s, 0.73 * s, 0.85 * s]]), (bs, 1))
      keys = jax.random.split(jax.random.key(5), bs)
      target_crop = jax.random.uniform(jax.random.key(6), (700, 520, 3))

      def constants():
        return protect.prepare_constants(models, settings, batch_params, wplus0, noise,
                                         {"box": boxes}, (targets + 1) / 2, target_crop, shared,
                                         keys)

      if "protect_step" in modes:
        consts = constants()
        state = jax.tree_util.tree_map(jnp.copy, jax.vmap(
            lambda c: protect.init_state(models, settings, c))(consts))
        step = protect.make_batch_step(models, protect._compile_key(settings))  # noqa: SLF001
        r = bench.compile_and_time(step, (state, batch_params, consts, shared), FLAGS.iters,
                                   carry=lambda out, a: (out[0],) + a[1:])
        results.append(report("protect_step", dtype, bs, r))
      if "end_to_end" in modes:
        def once(tune_steps, protect_steps):
          tuned = tuning.tune(gen, lpips_model, dataclasses.replace(ts, steps=tune_steps),
                              params, lpips_vars, wplus0, noise, targets)
          c = protect.prepare_constants(models, settings, tuned.params, wplus0, noise,
                                        {"box": boxes}, (targets + 1) / 2, target_crop, shared,
                                        keys)
          st = dataclasses.replace(settings, steps=protect_steps)
          return jax.block_until_ready(
              protect.protect(models, st, tuned.params, c, shared)[0])
        t0 = time.perf_counter()
        once(1, 1)   # compiles everything the full run uses
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        once(FLAGS.tune_steps, FLAGS.protect_steps)
        r = {"seconds": time.perf_counter() - t0, "compile_s": compile_s,
             "tune_steps": FLAGS.tune_steps, "protect_steps": FLAGS.protect_steps}
        results.append(report("end_to_end", dtype, bs, r))
  return results


def golden_precision_report(golden_dir: str, precision) -> None:
  """Error of each compute dtype on the golden StyleGAN2 256 (recipe weights, stored W+)."""
  import jax.numpy as jnp
  import numpy as np
  from clip2protect_jax.models import stylegan2
  from clip2protect_jax.parity import recipe
  from clip2protect_jax.parity.stylegan2 import load_generator
  entry = recipe.load_manifest(golden_dir)["models"]["stylegan2_256"]
  golden = recipe.load_arrays(golden_dir, entry["file"])
  _, params, noise = load_generator(entry)
  ref = np.transpose(golden["g256_img"], (0, 2, 3, 1))
  for dtype in FLAGS.dtypes:
    model = stylegan2.Generator(256, dtype=jnp.dtype(dtype), precision=precision)
    img = np.asarray(model.apply({"params": params}, jnp.asarray(golden["g256_wplus"]), noise))
    print(f"golden StyleGAN2 256, {dtype} compute vs official fp32 output: scaled max error "
          f"{np.abs(img - ref).max() / np.abs(ref).max():.2e}, rel-L2 "
          f"{np.linalg.norm(img - ref) / np.linalg.norm(ref):.2e}")


if __name__ == "__main__":
  app.run(main)
