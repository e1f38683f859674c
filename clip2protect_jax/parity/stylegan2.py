"""Golden item `stylegan2`: the official rosinality Generator at 1024 (seed 0) and 256 (seed 1).

1024: mapping w, synthesis image (compared as the strided sub-sample, the centre crop and
the per-channel mean/std). 256: mapping w, the full image, sum(img * R) and its gradients
w.r.t. W+ and the first three noise maps.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert.stylegan2 import convert_generator
from clip2protect_jax.models import stylegan2
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays, recipe_v1_state_dict

ITEM = "stylegan2"
TOL = 5e-5
GRAD_TOL, GRAD_REL_L2_TOL = 1e-2, 5e-3
TOL_F64, GRAD_TOL_F64 = 1e-10, 1e-8


def nchw(x):
  return jnp.transpose(x, (0, 3, 1, 2))


def load_generator(model_entry: dict[str, Any], dtype=jnp.float32,
                   graph: dict[str, str] | None = None):
  """Recipe-v1 weights of a manifest entry -> (Generator, params, noise buffers). graph:
  Generator fields that form the same function differently (upsample_impl, conv_impl,
  modulation); default the torch-shaped graph."""
  size = int(model_entry["constructor"].split("(")[1].split(",")[0])
  params, noise = convert_generator(recipe_v1_state_dict(model_entry), size=size,
                                    source=f"recipe v1 {model_entry['constructor']}")
  cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), t)
  return stylegan2.Generator(size, dtype=dtype, **(graph or {})), cast(params), cast(noise)


def compare_1024(golden: dict[str, np.ndarray], entry: dict[str, Any],
              float64: bool) -> list[Comparison]:
  dtype = jnp.float64 if float64 else jnp.float32
  model, params, noise = load_generator(entry, dtype)
  z = jnp.asarray(golden["g1024_z"], dtype)
  wplus = jnp.asarray(golden["g1024_wplus"], dtype)
  w = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.get_latent))(params, z)
  img = nchw(jax.jit(lambda p, x, n: model.apply({"params": p}, x, n))(params, wplus, noise))
  img = np.asarray(img)
  mean = img.astype(np.float64).mean(axis=(2, 3))
  std = img.astype(np.float64).std(axis=(2, 3))
  crop = img[:, :, 448:576, 448:576]
  sfx, tol = ("_f64", TOL_F64) if float64 else ("", TOL)
  out = [compare(ITEM, "g1024_w" + sfx, w, golden["g1024_w" + sfx], tol),
         compare(ITEM, "g1024_img_crop" + sfx, crop, golden["g1024_img_crop" + sfx], tol),
         compare(ITEM, "g1024_img_chan_mean" + sfx, mean,
                 golden["g1024_img_chan_mean" + sfx], tol),
         compare(ITEM, "g1024_img_chan_std" + sfx, std, golden["g1024_img_chan_std" + sfx],
                 tol)]
  if not float64:
    out.insert(1, compare(ITEM, "g1024_img_sub4", img[:, :, ::4, ::4],
                          golden["g1024_img_sub4"], TOL))
  return out


def compare_256(golden: dict[str, np.ndarray], entry: dict[str, Any], float64: bool,
                graph: dict[str, str] | None = None, per_sample: bool = False
                ) -> list[Comparison]:
  """per_sample: run each of the batch's samples as its own batch-1 call (as pivotal
  tuning runs each image), summing sum(img * R) and the noise gradients (the noise maps
  are shared by the batch) over the calls: the same outputs. With modulation 'weights' or
  'auto' a batch of samples sharing one generator convolves with one weight per sample
  (grouped convolutions: for the 256 model on XLA:CPU, 60 s against 25 s for the two
  batch-1 calls)."""
  dtype = jnp.float64 if float64 else jnp.float32
  model, params, noise = load_generator(entry, dtype, graph)
  z = jnp.asarray(golden["g256_z"], dtype)
  wplus = jnp.asarray(golden["g256_wplus"], dtype)
  r_nhwc = jnp.asarray(np.transpose(golden["g256_R"], (0, 2, 3, 1)), dtype)

  def loss(wplus, noise, params, r):
    img = model.apply({"params": params}, wplus, noise)
    return jnp.sum(img * r), img

  w = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.get_latent))(params, z)
  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  if per_sample:
    calls = [value_and_grad(wplus[i:i + 1], noise, params, r_nhwc[i:i + 1])
             for i in range(wplus.shape[0])]
    values, imgs, g_wplus, g_noise = zip(*[(v, im, gw, gn) for (v, im), (gw, gn) in calls])
    value, img, g_wplus = sum(values), jnp.concatenate(imgs), jnp.concatenate(g_wplus)
    g_noise = [sum(per_call) for per_call in zip(*g_noise)]
  else:
    (value, img), (g_wplus, g_noise) = value_and_grad(wplus, noise, params, r_nhwc)
  img = np.asarray(nchw(img))
  g_noise = [np.transpose(np.asarray(g), (0, 3, 1, 2)) for g in g_noise[:3]]
  if float64:
    out = [compare(ITEM, "g256_w_f64", w, golden["g256_w_f64"], TOL_F64),
           compare(ITEM, "g256_img_crop_f64", img[:, :, 64:192, 64:192],
                   golden["g256_img_crop_f64"], TOL_F64),
           compare(ITEM, "g256_loss_sum_out_R_f64", value, golden["g256_loss_sum_out_R_f64"],
                   TOL_F64),
           compare(ITEM, "g256_grad_wplus_f64", g_wplus, golden["g256_grad_wplus_f64"],
                   GRAD_TOL_F64)]
    out += [compare(ITEM, f"g256_grad_noise{i}_f64", g, golden[f"g256_grad_noise{i}_f64"],
                    GRAD_TOL_F64) for i, g in enumerate(g_noise)]
    return out
  out = [compare(ITEM, "g256_w", w, golden["g256_w"], TOL),
         compare(ITEM, "g256_img", img, golden["g256_img"], TOL),
         compare(ITEM, "g256_loss_sum_out_R", value, golden["g256_loss_sum_out_R"], TOL),
         compare(ITEM, "g256_grad_wplus", g_wplus, golden["g256_grad_wplus"], GRAD_TOL,
                 GRAD_REL_L2_TOL)]
  out += [compare(ITEM, f"g256_grad_noise{i}", g, golden[f"g256_grad_noise{i}"], GRAD_TOL)
          for i, g in enumerate(g_noise)]
  return out


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  del item
  models = manifest["models"]
  golden = load_arrays(golden_dir, models["stylegan2_1024"]["file"])
  return (compare_1024(golden, models["stylegan2_1024"], float64) +
          compare_256(golden, models["stylegan2_256"], float64))
