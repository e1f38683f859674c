"""Benchmark the generator steps that dominate CLIP2Protect; prints numbers, asserts nothing.

  python tools/benchmark.py --size=1024 --batch_sizes=1,8,16 --dtypes=float32,bfloat16

For each (mode, dtype, batch size): compile time, steady-state time per call and per
image, images/s, XLA's FLOP count and the achieved TFLOP/s. Modes:
  synth         forward synthesis W+ -> image
  grad_wplus    d loss / d W+ and noise (a stage-2-like step, shared generator params)
  grad_params   d loss / d ALL generator params, one param copy PER IMAGE via vmap
                (a pivotal-tuning-like step)
Also prints the bf16-vs-fp32 output error of the synthesis (scaled = max|d| / max|fp32|).
On GPU, fp32 uses --precision (default: 'default', i.e. TF32 where the card allows).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("size", 256, "Generator resolution (1024 = paper).")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Batch sizes.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Convolution compute dtypes.")
flags.DEFINE_list("modes", ["synth", "grad_wplus", "grad_params"], "What to time.")
flags.DEFINE_integer("iters", 5, "Timed calls after warm-up.")
flags.DEFINE_string("precision", "default", "lax precision: default | high | highest.")
flags.DEFINE_integer("channel_max", 512, "Channel cap (512 = paper architecture).")
flags.DEFINE_string("golden", None, "Optional golden folder: also print the bf16 and fp32 "
                    "errors of the recipe-v1 StyleGAN2 256 against the official output.")
FLAGS = flags.FLAGS


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
  outputs = {}
  for dtype in FLAGS.dtypes:
    model = stylegan2.Generator(FLAGS.size, channel_max=FLAGS.channel_max,
                                dtype=jnp.dtype(dtype), precision=precision)
    for mode in FLAGS.modes:
      for bs in map(int, FLAGS.batch_sizes):
        wplus = jax.random.normal(jax.random.key(1), (bs, model.n_latent, model.style_dim))
        noise = stylegan2.make_noise(jax.random.key(2), FLAGS.size, bs)
        if mode == "grad_params":  # one copy of the params per image
          p = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (bs,) + x.shape), params)
          args = (p, wplus, noise)
        else:
          args = (params, wplus, noise)
        fn = make_fn(model, mode)
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        out = jax.block_until_ready(compiled(*args))
        t0 = time.perf_counter()
        for _ in range(FLAGS.iters):
          out = jax.block_until_ready(compiled(*args))
        dt = (time.perf_counter() - t0) / FLAGS.iters
        if mode == "synth":
          outputs[(dtype, bs)] = np.asarray(out)
        print(f"{mode:<12} {dtype:<9} batch {bs:>3}: compile {compile_s:6.1f} s, "
              f"{dt * 1e3:9.2f} ms/call, {dt * 1e3 / bs:9.2f} ms/image, "
              f"{bs / dt:8.2f} images/s, {flops / 1e9:10.2f} GFLOP/call, "
              f"{flops / dt / 1e12:7.3f} TFLOP/s", flush=True)
  for (dtype, bs), img in outputs.items():
    ref = outputs.get(("float32", bs))
    if dtype != "float32" and ref is not None:
      scaled = np.abs(img - ref).max() / np.abs(ref).max()
      rel_l2 = np.linalg.norm(img - ref) / np.linalg.norm(ref)
      print(f"{dtype} vs float32 synthesis, batch {bs}: scaled max error {scaled:.2e}, "
            f"rel-L2 {rel_l2:.2e}")


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
