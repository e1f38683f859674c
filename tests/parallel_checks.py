"""Data parallelism on 2 fake CPU devices == one device (run by tests/test_pipeline.py).

A separate process, because the device count is fixed when jax starts:
  python tests/parallel_checks.py [WORKDIR]
Each check computes a batch on one device and split over two, and asserts that they agree
(and that the split result does lie on both devices); prints one line per check. With
WORKDIR, it then runs the tiny `protect` job there split over the two devices, for the
caller to compare with a one-device run.
"""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2")
os.environ["JAX_PLATFORMS"] = "cpu"   # 2 CPU devices, also on a machine with a GPU
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from clip2protect_jax import (generate, parallel, pipeline, presets, projection,  # noqa: E402
                              protect, tuning, weights)
from clip2protect_jax.models.clip import CLIP, PRESETS  # noqa: E402
from clip2protect_jax.models import stylegan2  # noqa: E402
from clip2protect_jax.models.lpips import LPIPS  # noqa: E402

SIZE, DIM, BATCH = 16, 32, 4


def close(a, b, what: str, rtol=1e-4, atol=1e-5) -> None:
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                                              atol=atol, err_msg=what), a, b)


def split_over_both(tree, what: str) -> None:
  """Every batch-leading leaf lies on both devices, each holding half of the batch."""
  for leaf in jax.tree_util.tree_leaves(tree):
    if leaf.ndim and leaf.shape[0] == BATCH:
      assert parallel.device_span(leaf) == 2, (what, leaf.sharding)
      assert {s.data.shape[0] for s in leaf.addressable_shards} == {BATCH // 2}, what


def collectives(fn, *args) -> dict[str, int]:
  text = fn.lower(*args).compile().as_text()
  return {op: text.count(f" {op}(") for op in ("all-reduce", "all-gather", "all-to-all",
                                                "collective-permute")}


def check_tuning(mesh) -> None:
  gen = stylegan2.Generator(SIZE, style_dim=DIM, n_mlp=2, channel_max=16)
  lpips_model = LPIPS()
  lpips_params = jax.jit(lpips_model.init)(jax.random.key(11), jnp.zeros((1, 32, 32, 3)),
                                           jnp.zeros((1, 32, 32, 3)))
  gen_params = stylegan2.init_params(gen, jax.random.key(0))
  wplus0 = jax.random.normal(jax.random.key(6), (BATCH, gen.n_latent, DIM)) * 0.3
  noise = stylegan2.make_noise(jax.random.key(7), SIZE, batch=BATCH)
  targets = jax.random.uniform(jax.random.key(12), (BATCH, SIZE, SIZE, 3), minval=-1,
                               maxval=1)
  weights = jnp.asarray([1.0, 1.0, 1.0, 0.0])   # the last one batch padding
  put = lambda x: parallel.shard_batch(x, mesh)
  mse_only = dict(mse_weight=1.0, lpips_weight=0.0)   # LPIPS (slow to compile) once
  for schedule in tuning.SCHEDULES:
    ts = tuning.TuningSettings(steps=3, learning_rate=1e-2, loss_resolution=32,
                               schedule=schedule,
                               **({} if schedule == "per_image" else mse_only))
    w = weights if schedule == "joint" else None
    one = tuning.tune(gen, lpips_model, ts, gen_params, lpips_params, wplus0, noise,
                      targets, weights=w)
    # The cumulative sequence runs on every device at once, its inputs not split (as the
    # pipeline runs it: an eager slice of a split array would run collectives).
    cumulative = schedule == "cumulative"
    inputs = (wplus0, noise, targets) if cumulative else put((wplus0, noise, targets))
    two = tuning.tune(gen, lpips_model, ts, *parallel.replicate((gen_params, lpips_params),
                                                                 mesh),
                      *inputs, weights=None if w is None else put(w),
                      mesh=None if cumulative else mesh)
    close(one.losses, two.losses, f"{schedule} losses")
    close(one.params, two.params, f"{schedule} params")
    if cumulative:   # one program per device count: the carried Adam state lies where the
      # params do from the first step (placed otherwise, a second program was compiled)
      single = tuning.compiled_step(gen, lpips_model, dataclasses.replace(ts, steps=0),
                                    batched=False)
      assert single._cache_size() == 2, single._cache_size()  # noqa: SLF001
    if schedule == "per_image":
      split_over_both(two.params.per_image, "per-image params")
    print(f"tuning {schedule}: 2 devices == 1 device")

  # What each device exchanges in one compiled step: nothing per image; the joint mode
  # sums its gradient (and the batch's weight).
  ts = tuning.TuningSettings(steps=0, loss_resolution=32, schedule="per_image", **mse_only)
  tuned, frozen = tuning.split_params(ts, gen_params)
  state = tuning._initial_state(ts, tuned, BATCH, mesh)  # noqa: SLF001
  target = tuning.prepare_target(lpips_model, ts, lpips_params, put(targets))
  step = tuning.compiled_step(gen, lpips_model, ts, mesh=mesh)
  per_image = collectives(step, *state, frozen, put(wplus0), put(noise), target,
                          lpips_params)
  assert sum(per_image.values()) == 0, per_image
  ts = dataclasses.replace(ts, schedule="joint")
  tuned, frozen = tuning.split_params(ts, gen_params)
  state = tuning._initial_state(ts, tuned, BATCH, mesh)  # noqa: SLF001
  joint = collectives(tuning.compiled_step(gen, lpips_model, ts, mesh=mesh), *state, frozen,
                      put(wplus0), put(noise), target, put(weights), lpips_params)
  assert joint["all-reduce"] > 0 and joint["all-gather"] == 0, joint
  print(f"collectives per step: per_image {per_image}, joint {joint}")


def check_projection(mesh) -> None:
  model = stylegan2.Generator(SIZE, DIM, 2, channel_max=16)
  params = stylegan2.init_params(model, jax.random.key(0))
  targets = jax.random.uniform(jax.random.key(1), (BATCH, SIZE, SIZE, 3), minval=-1,
                               maxval=1)
  keys = jax.random.split(jax.random.key(3), BATCH)
  cfg = projection.ProjectionConfig(steps=4, mse=1.0, lpips=0.0, noise_regularize=1e3,
                                    n_mean_latent=64)
  mean, std = projection.latent_stats(model, params, jax.random.key(2), 64)
  run = lambda p, t, k, m: projection.project(
      model, p, t, jax.random.key(2), cfg, None, image_keys=k, latent_mean=mean,
      latent_std=std, projector=projection.make_projector(model, cfg, None, m))
  one = run(params, targets, keys, None)
  two = run(parallel.replicate(params, mesh), parallel.shard_batch(targets, mesh),
            parallel.shard_batch(keys, mesh), mesh)
  close(one, two, "projection")
  split_over_both(two[:2], "projection")
  print("projection: 2 devices == 1 device")


def check_generate(mesh) -> None:
  model = stylegan2.Generator(SIZE, DIM, 2, channel_max=16, modulation="weights")
  params = stylegan2.init_params(model, jax.random.key(0))
  noise = stylegan2.make_noise(jax.random.key(1), SIZE)
  z = jax.random.normal(jax.random.key(2), (BATCH, DIM))
  w_avg = jnp.zeros((DIM,))
  one = generate.make_sample_fn(model)(params, z, noise, w_avg, 0.7)
  two = generate.make_sample_fn(model, mesh)(*parallel.replicate((params,), mesh),
                                             parallel.shard_batch(z, mesh),
                                             *parallel.replicate((noise, w_avg), mesh), 0.7)
  close(one, two, "generate")
  split_over_both(two, "generate")
  print("generate (modulated weights): 2 devices == 1 device")


def main() -> None:
  assert jax.local_device_count() == 2, jax.local_devices()
  mesh = parallel.data_mesh(0, BATCH, "batch")
  assert mesh is not None and mesh.size == 2
  check_tuning(mesh)
  check_projection(mesh)
  check_generate(mesh)
  print("all parallel checks passed")
  if len(sys.argv) > 1:   # from the repository root (the preset's paths are relative)
    config = presets.protect_config("tiny")
    config.devices = 2
    config.evaluate.dlib_victim = False   # host-side work, checked by the one-device run
    config.report.enabled = False
    pipeline.run(config, sys.argv[1])
    # The batch's tuning and search steps each compiled once: their first inputs lie where
    # their outputs do. (The steps are cached by the models' architectures, equal to the
    # job's; the tiny preset's tuning has no LPIPS.)
    assert not config.tune.lpips_weight   # no LPIPS model in the tuning step's key
    generator = weights.generator_from_config(config.generator)
    clip_model = CLIP(PRESETS[config.clip.preset], dtype=jnp.dtype(config.clip.dtype))
    ts = dataclasses.replace(pipeline.tuning_settings(config), steps=0)
    steps = {
        "tuning": tuning.compiled_step(generator, None, ts, mesh=mesh),
        "search": protect.make_batch_step(
            protect.ProtectModels(generator, clip_model),
            protect._compile_key(pipeline.protect_settings(config)), mesh)}  # noqa: SLF001
    sizes = {k: f._cache_size() for k, f in steps.items()}  # noqa: SLF001
    assert sizes == {"tuning": 1, "search": 1}, sizes
    print(f"protect job on 2 devices; compilations per step: {sizes}")


if __name__ == "__main__":
  main()
