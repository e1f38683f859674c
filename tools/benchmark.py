"""Benchmark CLIP2Protect's steps; prints numbers (and optionally JSON), asserts nothing.

  python tools/benchmark.py --size=1024 --batch_sizes=1,8,16 --dtypes=float32,bfloat16 \
      --modes=tune_step,protect_step,end_to_end --json_out=bench.json

For each (mode, dtype, batch size): compile time, steady-state time per call and per
image, images/s, XLA's FLOP count, achieved TFLOP/s and the executable's memory. Modes:
  synth         forward synthesis W+ -> image
  grad_wplus    d loss / d W+ and noise (shared generator params)
  grad_params   d loss / d ALL generator params, one param copy PER IMAGE via vmap
  tune_step     the real stage-1 step (tuning.py): per-image generator copies, LPIPS-VGG +
                0.1 MSE at 256, Adam update (random LPIPS weights)
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

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from clip2protect_jax import bench  # noqa: E402

PIPELINE_MODES = ("tune_step", "protect_step", "end_to_end")
flags.DEFINE_integer("size", 256, "Generator resolution (1024 = paper).")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Batch sizes.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Convolution compute dtypes.")
flags.DEFINE_list("modes", ["synth", "grad_wplus", "grad_params"],
                  "What to time: synth, grad_wplus, grad_params, " + ", ".join(PIPELINE_MODES))
flags.DEFINE_integer("iters", 5, "Timed calls after warm-up.")
flags.DEFINE_string("precision", "default", "lax precision: default | high | highest.")
flags.DEFINE_integer("channel_max", 512, "Channel cap (512 = paper architecture).")
flags.DEFINE_string("upsample_impl", "dilated", "Generator upsampling: dilated | subpixel.")
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
        f"{r.get('tflops', float('nan')):7.3f} TFLOP/s, temp "
        f"{r.get('temp_size_bytes', float('nan')) / 2**30:6.2f} GiB", flush=True)
  return {"mode": mode, "dtype": dtype, "batch": bs, "ms_per_image": dt * 1e3 / bs,
          "images_per_s": bs / dt, **r}


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from clip2protect_jax.models import stylegan2

  precision = None if FLAGS.precision == "default" else FLAGS.precision
  key = jax.random.key(0)
  base = stylegan2.Generator(FLAGS.size, channel_max=FLAGS.channel_max, precision=precision)
  params = stylegan2.init_params(base, key)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, size {FLAGS.size}, precision {FLAGS.precision}")

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
  for dtype in FLAGS.dtypes:
    model = stylegan2.Generator(FLAGS.size, channel_max=FLAGS.channel_max,
                                dtype=jnp.dtype(dtype), precision=precision,
                                upsample_impl=FLAGS.upsample_impl)
    for mode in gen_modes:
      for bs in map(int, FLAGS.batch_sizes):
        wplus = jax.random.normal(jax.random.key(1), (bs, model.n_latent, model.style_dim))
        noise = stylegan2.make_noise(jax.random.key(2), FLAGS.size, bs)
        if mode == "grad_params":  # one copy of the params per image
          p = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (bs,) + x.shape), params)
          args = (p, wplus, noise)
        else:
          args = (params, wplus, noise)
        r = report(mode, dtype, bs, bench.compile_and_time(make_fn(model, mode), args,
                                                           FLAGS.iters))
        results.append(r)
        if mode == "synth":
          outputs[(dtype, bs)] = np.asarray(make_fn(model, mode)(*args))
  pipeline_modes = [m for m in FLAGS.modes if m in PIPELINE_MODES]
  if pipeline_modes:
    results += pipeline_benchmarks(pipeline_modes, precision)
  for (dtype, bs), img in outputs.items():
    ref = outputs.get(("float32", bs))
    if dtype != "float32" and ref is not None:
      scaled = np.abs(img - ref).max() / np.abs(ref).max()
      rel_l2 = np.linalg.norm(img - ref) / np.linalg.norm(ref)
      print(f"{dtype} vs float32 synthesis, batch {bs}: scaled max error {scaled:.2e}, "
            f"rel-L2 {rel_l2:.2e}")
  if FLAGS.json_out:
    device = jax.devices()[0]
    with open(FLAGS.json_out, "w") as f:
      json.dump({"device": device.device_kind, "backend": jax.default_backend(),
                 "jax": jax.__version__, "size": FLAGS.size, "precision": FLAGS.precision,
                 "peak_device_bytes": bench.peak_device_bytes(), "results": results}, f,
                indent=2)
    print(f"wrote {FLAGS.json_out}")


def pipeline_benchmarks(modes, precision) -> list[dict]:
  """tune_step / protect_step / end_to_end at --size with random weights."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from clip2protect_jax import protect, tuning, weights
  from clip2protect_jax.models import stylegan2
  key = jax.random.key(0)
  lpips_model, lpips_vars, _ = weights.load_lpips("random", key)
  ts = tuning.TuningSettings(steps=FLAGS.tune_steps)
  results = []
  for dtype in FLAGS.dtypes:
    gen = stylegan2.Generator(FLAGS.size, channel_max=FLAGS.channel_max,
                              dtype=jnp.dtype(dtype), precision=precision,
                              upsample_impl=FLAGS.upsample_impl)
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
      per_image = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (bs,) + x.shape),
                                         params)
      s = FLAGS.size
      boxes = jnp.tile(jnp.array([[0.27 * s, 0.3 * s, 0.73 * s, 0.85 * s]]), (bs, 1))
      keys = jax.random.split(jax.random.key(5), bs)
      target_crop = jax.random.uniform(jax.random.key(6), (700, 520, 3))

      def constants():
        return protect.prepare_constants(models, settings, per_image, True, wplus0, noise,
                                         {"box": boxes}, (targets + 1) / 2, target_crop, shared,
                                         keys)

      if "tune_step" in modes:
        step = tuning._compiled_step(gen, lpips_model, ts, batched=True)  # noqa: SLF001
        opt = jax.vmap(tuning.make_optimizer(ts).init)(per_image)
        args = (jax.tree_util.tree_map(jnp.copy, per_image), opt, wplus0, noise, targets,
                lpips_vars)
        r = bench.compile_and_time(step, args, FLAGS.iters,
                                   carry=lambda out, a: (out[0], out[1]) + a[2:])
        results.append(report("tune_step", dtype, bs, r))
      if "protect_step" in modes:
        consts = constants()
        state = jax.tree_util.tree_map(jnp.copy, jax.vmap(
            lambda c: protect.init_state(models, settings, c))(consts))
        step = protect.make_batch_step(models, protect._compile_key(settings), True)  # noqa: SLF001
        r = bench.compile_and_time(step, (state, per_image, consts, shared), FLAGS.iters,
                                   carry=lambda out, a: (out[0],) + a[1:])
        results.append(report("protect_step", dtype, bs, r))
      if "end_to_end" in modes:
        def once(tune_steps, protect_steps):
          tuned = tuning.tune(gen, lpips_model, dataclasses.replace(ts, steps=tune_steps),
                              params, lpips_vars, wplus0, noise, targets)
          c = protect.prepare_constants(models, settings, tuned.params, True, wplus0, noise,
                                        {"box": boxes}, (targets + 1) / 2, target_crop, shared,
                                        keys)
          st = dataclasses.replace(settings, steps=protect_steps)
          return jax.block_until_ready(
              protect.protect(models, st, tuned.params, c, shared, True)[0])
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
