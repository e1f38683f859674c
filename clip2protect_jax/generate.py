"""Job `generate`: sample faces from the generator and write PNGs + summary.json.

Resumable: images already in workdir/images are kept and not recomputed (a rerun with other
settings fails: run_settings); each file is written to a temporary name and renamed, so an
interrupted run never leaves a broken PNG. Every sample uses the checkpoint's fixed noise
maps (rosinality's generate.py draws fresh noise per sample: randomize_noise=True), so image
i is the same in any batch and run.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from clip2protect_jax import image_io, parallel, run_settings
from clip2protect_jax.models import stylegan2
from clip2protect_jax.weights import fingerprints, load_generator


def make_sample_fn(model: stylegan2.Generator, mesh: Mesh | None = None):
  """Jitted (params, z [B, D], noise, w_avg [D], psi) -> images [B, size, size, 3] in [-1, 1];
  with a mesh, each of its devices samples its share of the batch (parallel.split_batch)."""

  def sample(params, z, noise, w_avg, psi):
    w = model.apply({"params": params}, z, method=stylegan2.Generator.get_latent)
    wplus = stylegan2.broadcast_to_wplus(stylegan2.truncate(w, w_avg, psi), model.size)
    return model.apply({"params": params}, wplus, noise)

  return jax.jit(parallel.split_batch(sample, mesh, (None, 0, None, None, None)))


def run(config, workdir: str) -> dict:
  """Generates config.num_images images into `workdir`; returns the summary dict."""
  image_dir = os.path.join(workdir, "images")
  os.makedirs(image_dir, exist_ok=True)
  settings_path = os.path.join(workdir, "settings.json")
  settings = {**run_settings.select(config, ("seed", "truncation", "generator",
                                             "mean_latent_samples"),
                                    exclude=run_settings.GRAPH_FIELDS),
              **fingerprints({"generator": config.generator.weights})}
  # Fingerprints: older versions did not record them; an older record gains them.
  run_settings.check(settings_path, settings, run_settings.has_files(image_dir),
                     f"the images in {image_dir}", optional=("fingerprints",))
  run_settings.add_missing(settings_path, settings)
  init_key, z_key, mean_key = jax.random.split(jax.random.key(config.seed), 3)
  gen = load_generator(config.generator, init_key)
  logging.info("generator: %s", gen.description)
  model = gen.model
  w_avg = gen.latent_avg
  if w_avg is None:
    w_avg = stylegan2.mean_latent(model, gen.params, mean_key, config.mean_latent_samples)

  # All z are drawn up front from one key so that image i is the same whatever the batch
  # size and whichever images were already written.
  z_all = jax.random.normal(z_key, (config.num_images, model.style_dim))
  bs = config.batch_size
  mesh = parallel.data_mesh(config.devices, bs, "config.batch_size")
  sample = make_sample_fn(model, mesh)
  params, noise, w_avg = parallel.replicate((gen.params, gen.noise, w_avg), mesh)
  paths = [os.path.join(image_dir, f"{i:06d}.png") for i in range(config.num_images)]
  todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
  timings = []
  for start in range(0, len(todo), bs):
    idx = todo[start:start + bs]
    z = z_all[np.asarray(idx)]
    if len(idx) < bs:  # pad to a fixed shape: one compilation for every batch
      z = jnp.concatenate([z, jnp.zeros((bs - len(idx), model.style_dim))])
    t0 = time.perf_counter()
    images = np.asarray(sample(params, parallel.shard_batch(z, mesh), noise, w_avg,
                               config.truncation))
    timings.append(time.perf_counter() - t0)
    if not np.all(np.isfinite(images)):
      raise FloatingPointError(f"non-finite generator output for images {idx}")
    for j, i in enumerate(idx):
      image_io.write_png(paths[i], image_io.to_uint8(images[j]))
  summary = {
      "job": "generate",
      "weights": gen.description,
      "generator": config.generator.to_dict(),
      "num_images": config.num_images,
      "written_now": len(todo),
      "kept_from_earlier_runs": config.num_images - len(todo),
      "truncation": config.truncation,
      "seed": config.seed,
      "devices": [str(d) for d in (mesh.devices.flat if mesh else jax.devices()[:1])],
      "first_batch_seconds_incl_compile": timings[0] if timings else None,
      "later_batches_mean_seconds": float(np.mean(timings[1:])) if len(timings) > 1 else None,
      "images": [os.path.relpath(p, workdir) for p in paths],
  }
  image_io.atomic_write_json(os.path.join(workdir, "summary.json"), summary)
  logging.info("wrote %d images (%d kept) to %s; weights: %s", len(todo),
               config.num_images - len(todo), image_dir, gen.description)
  print(f"generate: {config.num_images} images in {image_dir} "
        f"({len(todo)} new). Weights: {gen.description}")
  return summary
