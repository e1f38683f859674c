"""Optimisation-based GAN inversion: rosinality's `projector.py` recipe, batched, in JAX.

From the mean latent, Adam on the latent (W [N, 512] or W+ [N, n_latent, 512]) and the
per-image noise maps minimises
  LPIPS(G(w + latent noise), x) + noise_regularize * R(noise) + mse * mean((G - x)^2)
with the projector's schedules: lr ramps up over the first 5 % and down (cosine) over the
last 25 %; the latent gets Gaussian noise of std latent_std * noise * max(0, 1 - t /
noise_ramp)^2; after every step each noise map is re-normalised to zero mean, unit std.
Generator outputs larger than 256 are mean-pooled to 256 before the losses (as the
projector does). Targets are NHWC float in [-1, 1] at 256x256; their perceptual (LPIPS)
features are computed once per batch, not at every step.

Differences from the official script (documented, deliberate): the noise regulariser and
the noise re-normalisation are per image (the script computes them over the whole batch;
it is normally run with one image), and every image draws its latent noise from its own
key, so a batch gives exactly what each image gives alone.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clip2protect_jax import parallel
from clip2protect_jax.models import stylegan2
from clip2protect_jax.models.lpips import LPIPS


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
  """Hyperparameters of projector.py (its defaults, except w_plus: True here, as stage 2
  needs W+; projector.py's --w_plus is off by default)."""
  steps: int = 1000
  lr: float = 0.1
  lr_rampup: float = 0.05
  lr_rampdown: float = 0.25
  noise: float = 0.05             # latent noise strength (x latent_std)
  noise_ramp: float = 0.75
  noise_regularize: float = 1e5
  mse: float = 0.0
  lpips: float = 1.0              # 0 drops the perceptual term (MSE-only projection)
  w_plus: bool = True
  n_mean_latent: int = 10000

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"projection.steps={self.steps}: use 1 or more")
    # projector.py divides by both ramps (ZeroDivisionError there; NaN in a jitted step).
    for name in ("lr_rampup", "lr_rampdown", "noise_ramp"):
      if not getattr(self, name) > 0:
        raise ValueError(f"projection.{name}={getattr(self, name)} must be > 0 (a fraction "
                         "of the steps; e.g. 1e-6 for practically no ramp)")


def learning_rate(t, initial_lr: float, rampdown: float = 0.25, rampup: float = 0.05):
  """projector.get_lr: t in [0, 1] -> lr."""
  ramp = jnp.minimum(1.0, (1.0 - t) / rampdown)
  ramp = 0.5 - 0.5 * jnp.cos(ramp * math.pi)
  ramp = ramp * jnp.minimum(1.0, t / rampup)
  return initial_lr * ramp


def noise_regularize(noises: Sequence[jax.Array]) -> jax.Array:
  """projector.noise_regularize for ONE image: noise maps [r, r, 1] -> scalar.

  Squared mean autocorrelation at shift 1 (both axes, circular), summed over a pyramid of
  2x2 mean-pooled versions down to 8x8.
  """
  loss = 0.0
  for noise in noises:
    n = noise[..., 0]
    size = n.shape[0]
    while True:
      loss = loss + jnp.mean(n * jnp.roll(n, 1, axis=1)) ** 2 + jnp.mean(
          n * jnp.roll(n, 1, axis=0)) ** 2
      if size <= 8:
        break
      n = n.reshape(size // 2, 2, size // 2, 2).mean(axis=(1, 3))
      size //= 2
  return loss


def normalize_noise(noise: jax.Array) -> jax.Array:
  """(noise - mean) / std (unbiased std, as torch.std) for one image's map."""
  mean = jnp.mean(noise)
  std = jnp.sqrt(jnp.sum((noise - mean) ** 2) / (noise.size - 1))
  return (noise - mean) / std


def downsample_to(img: jax.Array, size: int = 256) -> jax.Array:
  """[N, H, W, C] -> [N, size, size, C] by mean-pooling factor H // size (H > size)."""
  n, h, w, c = img.shape
  if h <= size:
    return img
  f = h // size
  return img.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def latent_stats(model: stylegan2.Generator, params: Any, key: jax.Array, n: int
                 ) -> tuple[jax.Array, jax.Array]:
  """(mean w [D], scalar std) over n random z: projector.py's latent_mean, latent_std."""
  @jax.jit
  def stats(params, key):
    z = jax.random.normal(key, (n, model.style_dim))
    w = model.apply({"params": params}, z, method=stylegan2.Generator.get_latent)
    mean = w.mean(axis=0)
    return mean, jnp.sqrt(jnp.sum((w - mean) ** 2) / n)
  return stats(params, key)


_INIT_FOLD = 2 ** 31 - 1   # fold_in data of the initial noise maps (steps use 0, 1, ...)


class Perceptual(NamedTuple):
  """A perceptual distance in two halves, so that the fixed targets' side is computed once:
  distance(features(a), features(b)) -> (N,) for images [N, 256, 256, 3] in [-1, 1]
  (LPIPS: `LPIPS.features` / `LPIPS.distance`)."""
  features: Callable[[jax.Array], Any]
  distance: Callable[[Any, Any], jax.Array]


def lpips_perceptual(lpips_model: LPIPS, variables: Any) -> Perceptual:
  """The Perceptual of an LPIPS module and its variables."""
  return Perceptual(
      lambda x: lpips_model.apply(variables, x, method=LPIPS.features),
      lambda fa, fb: lpips_model.apply(variables, fa, fb, method=LPIPS.distance))


class Projector(NamedTuple):
  """make_projector's jitted functions (see there)."""
  init: Callable
  step: Callable
  target_features: Callable


def make_projector(model: stylegan2.Generator, cfg: ProjectionConfig,
                   perceptual: Perceptual | None, mesh: Mesh | None = None) -> Projector:
  """Returns the jitted Projector: `init(latent_mean, image_keys) -> state`,
  `target_features(targets) -> features` (None without a perceptual term; once per batch)
  and `step(state, gen_params, targets, target_features, image_keys, latent_std)
  -> (state, losses)`.

  state = (latent, noises, opt_state, step count); image_keys: [N] PRNG keys, one per
  image: its initial noise maps and, folded with the step count, its latent noise.
  losses: dict of (N,) per-image terms (the step sums them: images are independent).
  mesh: the batch-leading arguments lie split over its devices (parallel.shard_batch, the
  rest parallel.replicate); each device projects its share.
  """
  if cfg.lpips and perceptual is None:
    raise ValueError("projection.lpips > 0 needs a Perceptual (lpips_perceptual of "
                     "load_lpips); set lpips=0 for an MSE-only projection")
  use_perceptual = bool(cfg.lpips)
  schedule = lambda count: learning_rate(count / cfg.steps, cfg.lr, cfg.lr_rampdown,
                                         cfg.lr_rampup)
  opt = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
  shapes = stylegan2.noise_shapes(model.size)

  def init(latent_mean: jax.Array, image_keys: jax.Array):
    batch = image_keys.shape[0]
    latent = jnp.broadcast_to(latent_mean, (batch, model.style_dim))
    if cfg.w_plus:
      latent = jnp.broadcast_to(latent[:, None], (batch, model.n_latent, model.style_dim))

    def one_image_noise(k):
      keys = jax.random.split(jax.random.fold_in(k, _INIT_FOLD), len(shapes))
      return [jax.random.normal(kk, s[1:]) for kk, s in zip(keys, shapes)]
    noises = jax.vmap(one_image_noise)(image_keys)
    latent = jnp.array(latent)
    return latent, noises, opt.init((latent, noises)), jnp.zeros((), jnp.int32)

  def target_features(targets: jax.Array):
    return perceptual.features(targets) if use_perceptual else None

  def per_image_losses(variables, gen_params, targets, target_feats, keys, latent_std, t):
    latent, noises = variables
    strength = latent_std * cfg.noise * jnp.maximum(0.0, 1.0 - t / cfg.noise_ramp) ** 2
    eps = jax.vmap(lambda k, l: jax.random.normal(k, l.shape))(keys, latent)
    w = latent + strength * eps
    wplus = w if cfg.w_plus else stylegan2.broadcast_to_wplus(w, model.size)
    img = downsample_to(model.apply({"params": gen_params}, wplus, noises), targets.shape[1])
    mse = jnp.mean((img - targets) ** 2, axis=(1, 2, 3))
    reg = jax.vmap(lambda *ns: noise_regularize(ns))(*noises)
    p = (perceptual.distance(perceptual.features(img), target_feats) if use_perceptual
         else 0.0 * mse)
    total = cfg.lpips * p + cfg.noise_regularize * reg + cfg.mse * mse
    return total, {"total": total, "perceptual": p, "noise_reg": reg, "mse": mse}

  def step(state, gen_params, targets, target_feats, image_keys, latent_std):
    latent, noises, opt_state, count = state
    t = count / cfg.steps
    keys = jax.vmap(lambda k: jax.random.fold_in(k, count))(image_keys)
    grad_fn = jax.grad(lambda v: (lambda tot, aux: (tot.sum(), aux))(
        *per_image_losses(v, gen_params, targets, target_feats, keys, latent_std, t)),
        has_aux=True)
    grads, losses = grad_fn((latent, noises))
    updates, opt_state = opt.update(grads, opt_state, (latent, noises))
    latent, noises = optax.apply_updates((latent, noises), updates)
    noises = [jax.vmap(normalize_noise)(n) for n in noises]
    return (latent, noises, opt_state, count + 1), losses

  split = functools.partial(parallel.split_batch, mesh=mesh)
  return Projector(jax.jit(split(init, in_axes=(None, 0))),
                   jax.jit(split(step, in_axes=(0, None, 0, 0, 0, None))),
                   jax.jit(split(target_features, in_axes=0)))


def project(model: stylegan2.Generator, gen_params: Any, targets: jax.Array, key: jax.Array,
            cfg: ProjectionConfig, perceptual: Perceptual | None,
            image_keys: jax.Array | None = None, latent_mean=None, latent_std=None,
            projector: Projector | None = None
            ) -> tuple[jax.Array, list[jax.Array], dict[str, jax.Array]]:
  """Projects targets [N, 256, 256, 3] in [-1, 1] -> (W+ [N, n_latent, D], noises, losses).

  key: seeds the mean-latent estimate; image_keys [N] (default: split from key) drive each
  image's initial noise maps and its latent noise at every step (fold_in of the step), so
  an image gives the same result alone or in any batch with the same image key.
  Returns the final W+ (W broadcast to every row when cfg.w_plus is False), the noise maps
  [N, r, r, 1] and the per-image losses of the last step. `projector`: make_projector's
  result, to reuse its compilations across calls.
  """
  stats_key, img_key = jax.random.split(key)
  if latent_mean is None or latent_std is None:
    latent_mean, latent_std = latent_stats(model, gen_params, stats_key, cfg.n_mean_latent)
  n = targets.shape[0]
  if image_keys is None:
    image_keys = jax.random.split(img_key, n)
  init, step, target_features = projector or make_projector(model, cfg, perceptual)
  state, feats = init(latent_mean, image_keys), target_features(targets)
  losses = {}
  for _ in range(cfg.steps):
    state, losses = step(state, gen_params, targets, feats, image_keys, latent_std)
  latent, noises = state[0], state[1]
  wplus = latent if cfg.w_plus else stylegan2.broadcast_to_wplus(latent, model.size)
  return wplus, noises, losses
