"""Where the pivotal-tuning step's time goes; prints numbers (and JSON), asserts nothing.

  python tools/profile_tuning.py --size=1024 --batch_sizes=1,8 --json_out=profile.json

Two views, each timed for every batch size with one parameter copy PER IMAGE (vmap):
1. ablation of the whole step: generator forward+backward w.r.t. its tuned params
   (tuning.split_params: the synthesis network) alone; + the LPIPS/MSE loss at 256; + the
   Adam update (= tuning.py's per_image step itself, bench.tune_step_case).
2. single layers at config-f channel counts, gradient w.r.t. weight and input, per-image
   weights: the 3x3 modulated conv, the stride-2 transposed (upsampling) conv and the
   FIR blur, each as the model computes it (vmap of lax convs, i.e. grouped convolutions),
   and two alternative formulations of the 3x3 conv with the same result:
     blockdiag  batch folded into channels, ONE dense conv with a block-diagonal weight
                (B x the FLOPs, dense kernels)
     einsum     im2col patches + a batched matmul per image
and the upsampling conv + blur as one sub-pixel conv (generator.upsample_impl=subpixel's form).
Per-image time at batch B divided by the time at batch 1 says whether batching helps
(< 1) or hurts (> 1). This is the issue-8 diagnosis of the torch-shaped graph (the
Generator module's own defaults, LPIPS in fp32 whatever --dtypes says); the configured
graphs (sub-pixel, grouped, ...) and bf16 LPIPS are timed by tools/benchmark.py.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from clip2protect_jax import bench, image_io  # noqa: E402

flags.DEFINE_integer("size", 1024, "Generator resolution.")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes.")
flags.DEFINE_list("views", ["ablation", "layers"], "ablation and/or layers.")
flags.DEFINE_list("layer_resolutions", ["16", "64", "256", "1024"], "Layer probe sizes.")
flags.DEFINE_integer("iters", 5, "Timed calls after warm-up.")
flags.DEFINE_string("json_out", None, "Write the results to this JSON file.")
FLAGS = flags.FLAGS


def ablation(dtype: str, bs: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from clip2protect_jax import tuning, weights
  from clip2protect_jax.models import stylegan2
  key = jax.random.key(0)
  gen = stylegan2.Generator(FLAGS.size, dtype=jnp.dtype(dtype))
  params = stylegan2.init_params(gen, key)
  lp, lp_vars, _ = weights.load_lpips("random", key)
  step, make_args, carry = bench.tune_step_case(gen, lp, lp_vars, params, "per_image", bs)
  args = make_args()
  tuned, _, frozen, w, noise, target, _ = args   # tuned [bs, ...], frozen shared
  image = jax.random.uniform(key, (bs, FLAGS.size, FLAGS.size, 3), minval=-1, maxval=1)

  def render(p, wi, ni):
    p = tuning.merge_params(p, frozen)
    return gen.apply({"params": p}, wi[None], [m[None] for m in ni])

  def gen_only(p, wi, ni, xi):
    return jnp.mean(jnp.square(render(p, wi, ni) - xi[None]))

  image_loss = tuning.make_image_loss(gen, lp, tuning.TuningSettings())

  def with_loss(p, wi, ni, ti):
    return image_loss(p, frozen, wi, ni, ti, lp_vars)

  out = []
  for name, fn, last in (("generator_fwd_bwd", jax.grad(gen_only), image),
                         ("+lpips_mse_loss", jax.grad(with_loss), target)):
    r = bench.compile_and_time(jax.jit(jax.vmap(fn)), (tuned, w, noise, last), FLAGS.iters)
    out.append({"view": "ablation", "part": name, "dtype": dtype, "batch": bs, **r})
  r = bench.compile_and_time(step, args, FLAGS.iters, carry=carry)
  out.append({"view": "ablation", "part": "+adam (= tuning step)", "dtype": dtype,
              "batch": bs, **r})
  return out


def layer_fns(res: int, ch: int, dtype):
  """name -> (fn(x [B,H,W,C], w [B,k,k,C,C]) -> scalar, input shape at batch 1)."""
  import jax
  import jax.numpy as jnp
  from clip2protect_jax.models.layers import (depth_to_space2, make_blur_kernel,
                                              subpixel_upsample_kernel, upfirdn2d)
  dn = ("NHWC", "HWIO", "NHWC")

  def conv3(x, w):
    return jax.lax.conv_general_dilated(x[None], w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=dn)[0]

  def up(x, w):
    return jax.lax.conv_general_dilated(x[None], w[::-1, ::-1], (1, 1), ((2, 2), (2, 2)),
                                        lhs_dilation=(2, 2), dimension_numbers=dn)[0]

  kernel = make_blur_kernel((1, 3, 3, 1)) * 4

  def up_subpixel(x, w):  # the same function as up + blur (layers.subpixel_upsample_kernel)
    return depth_to_space2(jax.lax.conv_general_dilated(
        x[None], subpixel_upsample_kernel(w, kernel), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=dn))[0]

  def blur(x, w):
    del w
    return upfirdn2d(x[None], kernel, pad=(1, 1))[0]

  def vmapped(f):
    return lambda x, w: jnp.sum(jnp.square(jax.vmap(f)(x, w)))

  def blockdiag(x, w):
    b, h, wd, c = x.shape
    xs = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * c)
    eye = jnp.eye(b, dtype=w.dtype)
    big = jnp.einsum("bklio,bd->klbido", w, eye).reshape(3, 3, b * c, b * c)
    y = jax.lax.conv_general_dilated(xs, big, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    return jnp.sum(jnp.square(y))

  def einsum(x, w):
    b, h, wd, c = x.shape
    patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                                                   dimension_numbers=dn)  # [B,H,W,C*9]
    wf = jnp.transpose(w, (0, 3, 1, 2, 4)).reshape(b, c * 9, -1)      # (C, kh, kw) order
    y = jnp.einsum("bhwp,bpo->bhwo", patches, wf)
    return jnp.sum(jnp.square(y))

  return {"conv3x3 (vmap, grouped)": (vmapped(conv3), res),
          "conv3x3 blockdiag": (blockdiag, res),
          "conv3x3 einsum": (einsum, res),
          "upsample conv (vmap)": (vmapped(up), res // 2),
          "upsample conv+blur subpixel (vmap)": (vmapped(up_subpixel), res // 2),
          "blur upfirdn2d (vmap)": (vmapped(blur), res)}


def layers(dtype: str, bs: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from clip2protect_jax.models.stylegan2 import channels_at
  out = []
  for res in map(int, FLAGS.layer_resolutions):
    ch = channels_at(res)
    for name, (fn, in_res) in layer_fns(res, ch, jnp.dtype(dtype)).items():
      x = jax.random.normal(jax.random.key(0), (bs, in_res, in_res, ch), jnp.dtype(dtype))
      w = jax.random.normal(jax.random.key(1), (bs, 3, 3, ch, ch), jnp.dtype(dtype)) * 0.05
      try:
        r = bench.compile_and_time(jax.jit(jax.grad(fn, argnums=(0, 1))), (x, w), FLAGS.iters)
      except Exception as e:  # noqa: BLE001 (e.g. out of memory: record and go on)
        r = {"error": f"{type(e).__name__}: {str(e)[:200]}", "seconds": float("nan")}
      out.append({"view": "layers", "part": name, "resolution": res, "channels": ch,
                  "dtype": dtype, "batch": bs, **r})
  return out


def main(argv):
  del argv
  import jax
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  results = []
  for dtype in FLAGS.dtypes:
    for bs in map(int, FLAGS.batch_sizes):
      for view in FLAGS.views:
        for r in (ablation if view == "ablation" else layers)(dtype, bs):
          results.append(r)
          label = r["part"] + (f" @{r['resolution']}" if "resolution" in r else "")
          print(f"{label:<34} {dtype:<9} batch {bs:>3}: {r['seconds'] * 1e3 / bs:9.3f} "
                f"ms/image, {r.get('tflops', float('nan')):7.2f} TFLOP/s, compile "
                f"{r.get('compile_s', float('nan')):5.1f} s {r.get('error', '')}", flush=True)
  base = {(r["view"], r["part"], r.get("resolution"), r["dtype"]): r["seconds"]
          for r in results if r["batch"] == 1}
  print("\nper-image time at batch B / time at batch 1:")
  for r in results:
    b1 = base.get((r["view"], r["part"], r.get("resolution"), r["dtype"]))
    if r["batch"] != 1 and b1:
      ratio = r["seconds"] / r["batch"] / b1
      r["per_image_ratio_vs_batch1"] = ratio
      label = r["part"] + (f" @{r['resolution']}" if "resolution" in r else "")
      print(f"  {label:<34} {r['dtype']:<9} batch {r['batch']:>3}: {ratio:6.2f}x")
  if FLAGS.json_out:
    image_io.atomic_write_json(FLAGS.json_out, {"device": jax.devices()[0].device_kind,
                                                "results": results})


if __name__ == "__main__":
  app.run(main)
