"""Pivotal tuning on the device at hand: batched vs alone, bf16 vs fp32; prints numbers.

  python tools/check_tuning.py --size=256 --batch=4 --steps=20 --upsample_impl=subpixel

Runs tuning.tune (the production path, random weights, random targets) for --steps steps on
--batch images at once and on image 0 alone, in float32, and on the batch in bfloat16
compute (generator.dtype and tune.lpips_dtype bfloat16; float32 master weights and Adam),
then renders every tuned generator in float32 and prints, against the float32 batched
reconstruction of image 0: max-abs error, error relative to the image's range, and rel-L2.
Batched == alone is what the CPU tests assert on a tiny generator; this shows it (and the
bf16 error) on the real architecture and device.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from clip2protect_jax import image_io  # noqa: E402

flags.DEFINE_integer("size", 256, "Generator resolution (config-f channels).")
flags.DEFINE_integer("batch", 4, "Images tuned together.")
flags.DEFINE_integer("steps", 20, "Tuning steps.")
flags.DEFINE_string("upsample_impl", "dilated", "dilated | subpixel | phases | taps.")
flags.DEFINE_string("conv_impl", "xla", "xla | grouped | tapwise | im2col | hybrid.")
flags.DEFINE_string("modulation", "activations", "activations | weights | auto.")
flags.DEFINE_string("json_out", None, "Also write the numbers to this JSON file.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from clip2protect_jax import tuning, weights
  from clip2protect_jax.models import stylegan2
  key = jax.random.key(0)
  lpips = {d: weights.load_lpips("random", key, jnp.dtype(d))[:2]
           for d in ("float32", "bfloat16")}

  def generator(dtype):
    return stylegan2.Generator(FLAGS.size, dtype=jnp.dtype(dtype),
                               upsample_impl=FLAGS.upsample_impl, conv_impl=FLAGS.conv_impl,
                               modulation=FLAGS.modulation)

  fp32 = generator("float32")
  params = stylegan2.init_params(fp32, key)
  b = FLAGS.batch
  wplus0 = jax.random.normal(jax.random.key(1), (b, fp32.n_latent, fp32.style_dim))
  noise = stylegan2.make_noise(jax.random.key(2), FLAGS.size, b)
  targets = jax.random.uniform(jax.random.key(4), (b, FLAGS.size, FLAGS.size, 3), minval=-1,
                               maxval=1)
  ts = tuning.TuningSettings(steps=FLAGS.steps)
  render = jax.jit(jax.vmap(lambda p, w, n: fp32.apply({"params": tuning.merge_params(*p)},
                                                       w[None], [m[None] for m in n])[0],
                            in_axes=(tuning.BATCH_AXES, 0, 0)))

  def run(dtype, n):
    lpips_model, lpips_vars = lpips[dtype]
    tuned = tuning.tune(generator(dtype), lpips_model, ts, params, lpips_vars, wplus0[:n],
                        [m[:n] for m in noise], targets[:n])
    image0 = np.asarray(render(tuned.params, wplus0[:n], [m[:n] for m in noise])[0])
    return image0, np.asarray(tuned.losses)

  ref, ref_losses = run("float32", b)
  out = {"device": jax.devices()[0].device_kind, "size": FLAGS.size, "batch": b,
         "steps": FLAGS.steps, "upsample_impl": FLAGS.upsample_impl,
         "conv_impl": FLAGS.conv_impl, "modulation": FLAGS.modulation,
         "loss_first_last": [float(ref_losses[0, 0]), float(ref_losses[-1, 0])]}
  print(f"device {out['device']}, size {FLAGS.size}, {FLAGS.steps} steps; image 0's loss "
        f"{ref_losses[0, 0]:.4f} -> {ref_losses[-1, 0]:.4f} (float32, batch {b})")
  for name, (dtype, n) in (("alone_vs_batched_float32", ("float32", 1)),
                           (f"bfloat16_vs_float32_batch{b}", ("bfloat16", b))):
    img, _ = run(dtype, n)
    err = np.abs(img - ref)
    out[name] = {"max_abs": float(err.max()),
                 "max_abs_over_range": float(err.max() / (ref.max() - ref.min())),
                 "rel_l2": float(np.linalg.norm(img - ref) / np.linalg.norm(ref))}
    print(f"{name}: reconstruction max-abs {out[name]['max_abs']:.2e} "
          f"({out[name]['max_abs_over_range']:.2e} of the range), rel-L2 "
          f"{out[name]['rel_l2']:.2e}", flush=True)
    if FLAGS.json_out:   # after each comparison: a run cut by a time limit keeps what it has
      image_io.atomic_write_json(FLAGS.json_out, out)


if __name__ == "__main__":
  app.run(main)
