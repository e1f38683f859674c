"""Stage 2, adversarial latent search (REFERENCE.md section 4), one vmapped jitted step.

Per image, the optimised variables are the W+ code (only `trainable_rows` move: the others'
gradient is zeroed before Adam, as the official `grad[0][0:8] = 0`) and the noise maps of
resolution <= `noise_max_resolution`. Each step:
  x = clamp((G(w, noise) + 1) / 2, 0, 1)                          [H, W, 3] in [0, 1]
  L = 0.01 * sum((w - w0)^2) + 0.7 * L_adv(FR surrogates on the face crop of x)
      + 0.3 * L_clip(InfoNCE between x0 and a random-perspective copy of x)
Everything that does not depend on the optimised variables (text features, E(x0), target
and source embeddings) is an input computed once (`prepare_constants`). Each image has its
own PRNG key, so a batched run equals running each image alone.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clip2protect_jax import augment, parallel, resize, tuning
from clip2protect_jax.losses import fr_adversarial_loss, latent_l2
from clip2protect_jax.losses_clip import clip_image_features, nce_loss
from clip2protect_jax.models import stylegan2
from clip2protect_jax.models.clip import CLIP
from clip2protect_jax.models.face import registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ProtectSettings:
  """Stage-2 hyperparameters (hashable: closed over by the jitted step)."""
  surrogates: tuple[str, ...] = ("ir152", "irse50", "mobile_face")  # victim: facenet
  steps: int = 50
  learning_rate: float = 0.01
  latent_weight: float = 0.01
  adversarial_weight: float = 0.7
  clip_weight: float = 0.3
  trainable_rows: tuple[int, ...] = tuple(range(8, 18))
  noise_max_resolution: int = 256
  mode: str = "impersonation"            # impersonation | dodging
  distortion_scale: float = 0.5          # RandomPerspective
  num_aug: int = 1
  official_dodging: bool = False         # quirk 4: dodging keeps the target term
  official_clip_shift: bool = False      # quirk 2: CLIP sees (v + 1) / 2 of [0, 1] images
  official_output_step: bool = False     # quirk 3: output = forward of step index steps-1

  def __post_init__(self):
    if self.mode not in ("impersonation", "dodging"):
      raise ValueError(f"protect.mode={self.mode!r}: use impersonation or dodging")
    unknown = [m for m in self.surrogates if m not in registry.names()]
    if unknown:
      raise ValueError(f"unknown surrogate FR models {unknown}; known: {registry.names()}")
    if self.steps < (1 if self.official_output_step else 0):
      raise ValueError(f"protect.steps={self.steps}: use 0 or more (1 or more with "
                       "official_output_step)")
    if self.num_aug < 1:
      raise ValueError(f"protect.num_aug={self.num_aug}: use 1 or more")


class ImageConstants(NamedTuple):
  """Per-image inputs that stay fixed during the search (leading N axis when batched)."""
  wplus0: Array                 # [n_latent, D] initial code (e4e / projection)
  noise: tuple[Array, ...]      # every noise map [r, r, 1]: initial values / frozen maps
  crops: dict[str, Array]       # "box": [4] face box (x1, y1, x2, y2) in generator pixels;
                                # aligned surrogate -> [2, 3] its warp (fr_align)
  clip_x0: Array                # [1, E] raw CLIP image feature of x0 = G(w0)
  source_emb: dict[str, Array]  # model -> [D], the user's own photo
  target_emb: dict[str, Array]  # model -> [D], the target identity's photo
  key: Array                    # PRNG key of this image


class SharedInputs(NamedTuple):
  """Inputs shared by the whole batch."""
  clip_params: Any
  fr_params: dict[str, Any]
  text_src: Array               # [T, E] normalised template features of "face"
  text_tgt: Array               # [T, E] ... of the makeup prompt


class ProtectState(NamedTuple):
  wplus: Array                  # [n_latent, D]
  noise: tuple[Array, ...]      # the optimised maps only (see optimised_noise_indices)
  opt_state: Any
  step: Array                   # int32 ()


@dataclasses.dataclass(frozen=True)
class ProtectModels:
  generator: stylegan2.Generator
  clip: CLIP


def optimised_noise_indices(size: int, max_resolution: int) -> tuple[int, ...]:
  """Indices of the noise maps that stage 2 optimises (13 of 17 at 1024 with 256)."""
  return tuple(i for i, s in enumerate(stylegan2.noise_shapes(size)) if s[1] <= max_resolution)


def row_mask(n_latent: int, rows: Sequence[int]) -> Array:
  """[n_latent, 1] with 1 on the W+ rows that may change, 0 elsewhere."""
  bad = [r for r in rows if not 0 <= r < n_latent]
  if bad:
    raise ValueError(f"protect.trainable_rows {bad} out of range: the generator has "
                     f"{n_latent} W+ rows (0..{n_latent - 1})")
  return jnp.zeros((n_latent, 1)).at[jnp.asarray(rows, jnp.int32)].set(1.0)


def render(generator: stylegan2.Generator, gen_params: tuning.BatchParams, wplus: Array,
           noise: Sequence[Array]) -> Array:
  """One image: its slice of the batch's BatchParams (vmapped with tuning.BATCH_AXES), W+
  [n_latent, D], maps [r, r, 1] -> clamp((G + 1) / 2, 0, 1) [H, W, 3]."""
  img = generator.apply({"params": tuning.merge_params(*gen_params)}, wplus[None],
                        [n[None] for n in noise])[0]
  return jnp.clip((img + 1.0) / 2.0, 0.0, 1.0)


def render_batch(generator: stylegan2.Generator, gen_params: tuning.BatchParams,
                 wplus: Array, noise: Sequence[Array]) -> Array:
  """BatchParams of N images, W+ [N, n_latent, D], maps [N, r, r, 1] -> [N, H, W, 3] in
  [0, 1] (render per image)."""
  return jax.vmap(functools.partial(render, generator), in_axes=(tuning.BATCH_AXES, 0, 0))(
      gen_params, wplus, list(noise))


def _check_batch_params(gen_params: Any) -> None:
  if not isinstance(gen_params, tuning.BatchParams):
    raise TypeError("gen_params must be a tuning.BatchParams: tuning.tune(...).params, or "
                    "tuning.BatchParams({}, params) for one generator shared by every image; "
                    f"got {type(gen_params).__name__}")


def _all_noise(consts: ImageConstants, optimised: Sequence[Array], idx: Sequence[int]):
  maps = list(consts.noise)
  for i, m in zip(idx, optimised):
    maps[i] = m
  return maps


def fr_embeddings(names: Sequence[str], fr_params: Mapping[str, Any], images01: Array,
                  crops: Mapping[str, Array]) -> dict[str, Array]:
  """[N, H, W, 3] in [0, 1] -> model -> [N, D].

  crops: "box" -> [N, 4] (the official crop/resize path); each aligned model -> [N, 2, 3]
  (registry.model_input).
  """
  return {m: registry.embed(m, fr_params[m], registry.model_input(m, images01, crops))
          for m in names}


def target_embeddings(names: Sequence[str], fr_params: Mapping[str, Any],
                      target_crop01: Array, target_aligned01: Mapping[str, Array] | None = None
                      ) -> dict[str, Array]:
  """Target photo -> model -> [D].

  target_crop01: [H, W, 3] in [0, 1], the photo already cropped; as the official code,
  (x - 0.5) * 2, then a bilinear resize straight to the model size. target_aligned01: for
  aligned models, model -> [h, w, 3] in [0, 1], the photo warped to the model's input.
  """
  out = {}
  for m in names:
    if registry.get(m).alignment == "box":
      x = resize.resize_bilinear(registry.to_range(m, target_crop01[None]),
                                 registry.get(m).input_size)
    else:
      x = registry.to_range(m, target_aligned01[m][None])
    out[m] = registry.embed(m, fr_params[m], x)[0]
  return out


def make_loss(models: ProtectModels, settings: ProtectSettings) -> Callable:
  """(wplus, noise_opt, gen_params, consts, shared, key) -> (loss, metrics) for one image."""
  idx = optimised_noise_indices(models.generator.size, settings.noise_max_resolution)

  def loss_fn(wplus, noise_opt, gen_params, consts: ImageConstants, shared: SharedInputs,
              key):
    x = render(models.generator, gen_params, wplus, _all_noise(consts, noise_opt, idx))
    x_aug = augment.random_perspective(key, jnp.repeat(x[None], settings.num_aug, axis=0),
                                       distortion_scale=settings.distortion_scale)
    e = clip_image_features(models.clip, shared.clip_params, x_aug,
                            official_shift=settings.official_clip_shift)
    l_clip = nce_loss(consts.clip_x0, e, shared.text_src, shared.text_tgt)
    emb = fr_embeddings(settings.surrogates, shared.fr_params, x[None],
                        {k: v[None] for k, v in consts.crops.items()})
    l_adv = fr_adversarial_loss({m: v[0] for m, v in emb.items()}, consts.target_emb,
                                consts.source_emb, settings.mode, settings.official_dodging)
    l_lat = latent_l2(wplus, consts.wplus0)
    total = (settings.latent_weight * l_lat + settings.adversarial_weight * l_adv +
             settings.clip_weight * l_clip)
    return total, {"loss": total, "latent": l_lat, "adversarial": l_adv, "clip": l_clip}

  return loss_fn


def make_optimizer(settings: ProtectSettings) -> optax.GradientTransformation:
  return optax.adam(settings.learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def init_state(models: ProtectModels, settings: ProtectSettings,
               consts: ImageConstants) -> ProtectState:
  """One image's initial state: w = w0, the optimised maps = their initial values."""
  idx = optimised_noise_indices(models.generator.size, settings.noise_max_resolution)
  noise = tuple(consts.noise[i] for i in idx)
  return ProtectState(consts.wplus0, noise,
                      make_optimizer(settings).init((consts.wplus0, noise)),
                      jnp.zeros((), jnp.int32))


def make_image_step(models: ProtectModels, settings: ProtectSettings) -> Callable:
  """(state, gen_params, consts, shared) -> (state, metrics) for ONE image."""
  loss_fn = make_loss(models, settings)
  optimizer = make_optimizer(settings)
  mask = row_mask(models.generator.n_latent, settings.trainable_rows)

  def step(state: ProtectState, gen_params, consts: ImageConstants, shared: SharedInputs):
    key = jax.random.fold_in(consts.key, state.step)
    grads, metrics = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.wplus, state.noise, gen_params, consts, shared, key)
    grads = (grads[0] * mask, grads[1])
    updates, opt_state = optimizer.update(grads, state.opt_state)
    wplus, noise = optax.apply_updates((state.wplus, state.noise), updates)
    return ProtectState(wplus, noise, opt_state, state.step + 1), metrics

  return step


def _compile_key(settings: ProtectSettings) -> ProtectSettings:
  """The settings with the fields the compiled functions do not depend on blanked."""
  return dataclasses.replace(settings, steps=0, official_output_step=False)


@functools.lru_cache(maxsize=16)
def make_batch_step(models: ProtectModels, settings: ProtectSettings,
                    mesh: Mesh | None = None) -> Callable:
  """The jitted (state, gen_params (tuning.BatchParams), consts, shared) -> (state, metrics)
  for a batch: the image step vmapped over images and the per-image generator params; with
  a mesh, each of its devices steps its share of the batch (parallel.split_batch).

  Cached per (models, settings, mesh): every batch of a job reuses one compiled step.
  """
  in_axes = (0, tuning.BATCH_AXES, 0, None)
  step = jax.vmap(make_image_step(models, settings), in_axes=in_axes)
  return jax.jit(parallel.split_batch(step, mesh, in_axes), donate_argnums=(0,))


def protect(models: ProtectModels, settings: ProtectSettings, gen_params: tuning.BatchParams,
            consts: ImageConstants, shared: SharedInputs, mesh: Mesh | None = None
            ) -> tuple[Array, ProtectState, dict[str, Array]]:
  """Runs the search for a batch; returns (protected [N, H, W, 3] in [0, 1], state, history).

  history: metric -> [updates, N]. With official_output_step the returned image is the
  forward pass of step index steps-1 (after steps-1 updates), as the official code saves.
  mesh: the batch's inputs lie split over its devices (parallel.shard_batch, the rest
  parallel.replicate); each device searches for its share.
  """
  _check_batch_params(gen_params)
  state = jax.vmap(lambda c: init_state(models, settings, c))(consts)
  if mesh is not None:  # where the step leaves it (else the second step compiles again)
    state = jax.device_put(state, parallel.batch_sharding(mesh))
  step_settings = _compile_key(settings)
  # The step donates the state: give it buffers of its own, not aliases of `consts`.
  state = jax.tree_util.tree_map(jnp.copy, state)
  step = make_batch_step(models, step_settings, mesh)  # one per config
  n_updates = settings.steps - 1 if settings.official_output_step else settings.steps
  history = []
  for _ in range(n_updates):
    state, metrics = step(state, gen_params, consts, shared)
    history.append(metrics)
  images = _make_draw(models, step_settings, mesh)(gen_params, state.wplus, state.noise,
                                                   consts)
  stacked = {k: jnp.stack([h[k] for h in history]) for k in history[0]} if history else {}
  return images, state, stacked


@functools.lru_cache(maxsize=16)
def _make_draw(models: ProtectModels, settings: ProtectSettings, mesh: Mesh | None):
  """Jitted (gen_params (BatchParams), wplus [N,...], optimised maps, consts) -> images
  [N, H, W, 3] in [0, 1]."""
  idx = optimised_noise_indices(models.generator.size, settings.noise_max_resolution)
  in_axes = (tuning.BATCH_AXES, 0, 0, 0)
  return jax.jit(parallel.split_batch(jax.vmap(
      lambda p, w, nz, c: render(models.generator, p, w, _all_noise(c, nz, idx)),
      in_axes=in_axes), mesh, in_axes))


@functools.lru_cache(maxsize=16)
def _make_constants_fn(models: ProtectModels, settings: ProtectSettings, mesh: Mesh | None):
  """Jitted (gen_params (BatchParams), wplus0, noise, crops, sources, target crop, aligned
  target crops, shared) -> (clip_x0 [N, 1, E], source embeddings, target embeddings)."""

  def fn(gen_params, wplus0, noise, crops, source_images01, target_crop01, target_aligned01,
         shared):
    x0 = render_batch(models.generator, gen_params, wplus0, noise)
    clip_x0 = jax.vmap(lambda x: clip_image_features(
        models.clip, shared.clip_params, x[None],
        official_shift=settings.official_clip_shift))(x0)
    names = settings.surrogates
    source = fr_embeddings(names, shared.fr_params, source_images01, crops)
    target = target_embeddings(names, shared.fr_params, target_crop01, target_aligned01)
    n = wplus0.shape[0]
    target = {m: jnp.broadcast_to(v, (n,) + v.shape) for m, v in target.items()}
    return clip_x0, source, target

  return jax.jit(parallel.split_batch(fn, mesh, (tuning.BATCH_AXES, 0, 0, 0, 0, None, None,
                                                 None)))


def prepare_constants(models: ProtectModels, settings: ProtectSettings,
                      gen_params: tuning.BatchParams, wplus0: Array, noise: Sequence[Array],
                      crops: Mapping[str, Array], source_images01: Array,
                      target_crop01: Array, shared: SharedInputs, keys: Array,
                      target_aligned01: Mapping[str, Array] | None = None,
                      mesh: Mesh | None = None) -> ImageConstants:
  """Everything fixed during the search, computed once for a batch of N images.

  gen_params: the N images' generator (tuning.tune(...).params, or tuning.BatchParams({},
  params) for one shared by all); wplus0 [N, n_latent, D]; noise maps [N, r, r, 1]; crops:
  "box" -> [N, 4] and aligned surrogate -> [N, 2, 3] (see fr_embeddings); source_images01
  [N, H, W, 3] in [0, 1] (the aligned originals); target_crop01 [h, w, 3] in [0, 1]; keys
  [N] PRNG keys (e.g. fold_in(base, image_index), so results don't depend on batching);
  target_aligned01: aligned surrogate -> [h, w, 3] in [0, 1] (see target_embeddings).
  mesh: the batch's inputs lie split over its devices; each device computes its share.
  """
  _check_batch_params(gen_params)
  crops = {k: jnp.asarray(v) for k, v in crops.items()}
  clip_x0, source, target = _make_constants_fn(models, _compile_key(settings), mesh)(
      gen_params, wplus0, list(noise), crops, source_images01, target_crop01,
      dict(target_aligned01 or {}), shared)
  return ImageConstants(wplus0, tuple(noise), crops, clip_x0, source, target, keys)
