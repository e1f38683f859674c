"""CLIP encode speed and reduced-precision accuracy on the current device.

  python tools/benchmark_clip.py [--preset ViT-B/32] [--batch 8] [--texts 158] [--iters 5]
                                 [--golden ../shared/golden]

Prints, per compute dtype (float32 at 'highest' matmul precision as the reference, float32
at the default precision, bfloat16, float16): compile time and steady-state time of
`encode_image` on a batch of 224x224 images and of `encode_text` on `--texts` prompts (the
79 templates x 2 classes of the CLIP loss, trimmed to their longest prompt as
`losses_clip.text_features` does), and the embedding error against the float32 reference
(max|d| / max|ref| and the worst cosine similarity). Weights: the golden recipe-v1 CLIP if
--golden is given (realistic LayerNorm/bias values), else a random init.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("preset", "ViT-B/32", "CLIP preset (models.clip.PRESETS).")
flags.DEFINE_integer("batch", 8, "Images per encode_image call.")
flags.DEFINE_integer("texts", 158, "Prompts per encode_text call (79 templates x 2 classes).")
flags.DEFINE_integer("iters", 5, "Timed calls after the compiling one.")
flags.DEFINE_string("golden", None, "Golden folder: use the recipe-v1 CLIP weights (B/32).")
FLAGS = flags.FLAGS


def _time(fn, *args, iters):
  t0 = time.perf_counter()
  out = fn(*args).block_until_ready()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(iters):
    out = fn(*args).block_until_ready()
  return out, compile_s, (time.perf_counter() - t0) / iters


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from clip2protect_jax.models import clip as clip_model
  from clip2protect_jax.models.tokenizer import tokenize

  config = clip_model.PRESETS[FLAGS.preset]
  if FLAGS.golden:
    from clip2protect_jax.parity import clip as clip_parity
    from clip2protect_jax.parity.recipe import load_manifest
    manifest = load_manifest(FLAGS.golden)
    params = clip_parity.recipe_params(manifest)
    config = clip_parity.config_from_manifest(manifest["models"]["clip"])
    weights = "recipe-v1 (golden)"
  else:
    r = config.image_resolution
    params = jax.jit(clip_model.CLIP(config).init)(
        jax.random.PRNGKey(0), jnp.zeros((1, r, r, 3)), jnp.zeros((1, 77), jnp.int32))
    weights = "random init"
  params = jax.device_put(params)
  rng = np.random.default_rng(0)
  r = config.image_resolution
  images = jnp.asarray(rng.standard_normal((FLAGS.batch, r, r, 3)).astype(np.float32))
  words = ["face", "red lipstick", "purple eyeshadow", "a bad photo of a {}.",
           "a photo of the hard to see {}.", "a low resolution photo of the {}."]
  prompts = [f"{words[3 + i % 3].format(words[i % 3])} {i}" for i in range(FLAGS.texts)]
  tokens = jnp.asarray(clip_model.trim_tokens(tokenize(prompts)))

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print(f"CLIP {FLAGS.preset}, weights: {weights}; encode_image batch {FLAGS.batch} "
        f"({r}x{r}), encode_text {FLAGS.texts} prompts x {tokens.shape[1]} tokens")
  print(f"{'compute':<22} {'img compile s':>13} {'img ms':>9} {'txt compile s':>13} "
        f"{'txt ms':>9} {'img err':>9} {'img cos':>9} {'txt err':>9} {'txt cos':>9}")
  ref = None
  for label, dtype, precision in (("float32 (highest)", jnp.float32, "highest"),
                                  ("float32 (default)", jnp.float32, "default"),
                                  ("bfloat16", jnp.bfloat16, "default"),
                                  ("float16", jnp.float16, "default")):
    model = clip_model.CLIP(config, dtype=dtype)
    with jax.default_matmul_precision(precision):
      enc_img = jax.jit(lambda p, x: model.apply(p, x.astype(dtype), method=model.encode_image))
      enc_txt = jax.jit(lambda p, t: model.apply(p, t, method=model.encode_text))
      img, ci, ti = _time(enc_img, params, images, iters=FLAGS.iters)
      txt, ct, tt = _time(enc_txt, params, tokens, iters=FLAGS.iters)
    img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
    if ref is None:
      ref = img, txt
    errs = []
    for got, want in zip((img, txt), ref):
      scaled = np.abs(got - want).max() / np.abs(want).max()
      cos = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
      errs += [scaled, cos.min()]
    print(f"{label:<22} {ci:>13.2f} {ti * 1e3:>9.1f} {ct:>13.2f} {tt * 1e3:>9.1f} "
          f"{errs[0]:>9.2e} {errs[1]:>9.6f} {errs[2]:>9.2e} {errs[3]:>9.6f}")


if __name__ == "__main__":
  app.run(main)
