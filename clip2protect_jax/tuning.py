"""Stage 1, pivotal tuning (REFERENCE.md section 3): fit the generator to each photo.

Per image: ALL generator parameters are optimised with Adam (lr 5e-4, torch's default
betas/eps) for 150 steps on LPIPS-VGG(x_hat, x) + 0.1 * MSE, both images first resized to
256x256 by torch's legacy nearest, around the image's fixed W+ code with frozen noise.
With a fixed W+ the mapping network is never run and its gradients are exact zeros, on which
torch's Adam changes nothing; so only the synthesis network is stepped here (`split_params`),
the same result without a per-image copy and Adam state of the mapping network.

Three schedules:
  per_image  (corrected default, standard PTI): every image starts from the pretrained
             generator with a fresh optimiser; a batch is one vmapped, jitted step over
             per-image parameter copies.
  cumulative (official quirk 1): one generator and one Adam state are carried from image
             to image in order, so image k starts from the generator tuned on 0..k-1.
  joint      (fast mode, off by default): ONE generator copy and one Adam state per batch,
             tuned on the mean of the batch's per-image losses. Every convolution then has
             shared weights (a plain batched conv instead of one weight copy per image), so
             it scales with batch size; a face's result depends on its batch-mates.
`max_resolution` R > 0 (fast mode, off by default, any schedule): only the synthesis layers
at <= R px are tuned; the layers above (the largest maps, the costliest part of the
per-image step) keep the pretrained weights, one copy shared by every image, with no weight
gradients or Adam state (with the generator's modulation 'activations' their convolutions
are plain batched ones).
Every schedule returns the batch's generator as a `BatchParams`, as stage 2 takes it: the
leaves that differ per image with a leading image axis (per_image and cumulative: the tuned
layers), the rest stored once for every image (the frozen layers and the mapping network;
joint: the whole generator, TuneResult.per_image False). The loss's target side (the photo
resized to 256 and its LPIPS-VGG features) never changes, so `prepare_target` computes it
once per batch and each step runs the VGG trunk on the reconstructions only. Nothing is
pickled.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax
from flax import traverse_util

from clip2protect_jax import parallel
from clip2protect_jax.losses_clip import (TuningTarget, lpips_mse_loss_to_target,
                                          tuning_target)
from clip2protect_jax.models.lpips import LPIPS
from clip2protect_jax.models.stylegan2 import Generator, synthesis_layer_resolution

Array = jax.Array
SCHEDULES = ("per_image", "cumulative", "joint")


@dataclasses.dataclass(frozen=True)
class TuningSettings:
  steps: int = 150
  learning_rate: float = 5e-4
  loss_resolution: int = 256       # both images are nearest-resized to this before the loss
  mse_weight: float = 0.1
  lpips_weight: float = 1.0        # 0: MSE only (no LPIPS network is run)
  schedule: str = "per_image"      # per_image | cumulative (official quirk 1) | joint (fast)
  max_resolution: int = 0          # 0: every layer; R: only synthesis layers <= R px (fast)

  def __post_init__(self):
    if self.steps < 0:
      raise ValueError(f"tune.steps={self.steps}: use 0 or more (0: no pivotal tuning, "
                       "stage 2 searches the pretrained generator)")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"tune.schedule={self.schedule!r}: use one of {', '.join(SCHEDULES)}")
    r = self.max_resolution
    if r and (r < 4 or r & (r - 1)):
      raise ValueError(f"tune.max_resolution={r}: use 0 (every layer) or a power of two >= 4 "
                       "(the highest tuned synthesis resolution)")


def make_optimizer(settings: TuningSettings) -> optax.GradientTransformation:
  """torch.optim.Adam(lr) equivalent: betas (0.9, 0.999), eps 1e-8 added after the sqrt."""
  return optax.adam(settings.learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def split_params(settings: TuningSettings, gen_params: Any) -> tuple[Any, Any]:
  """gen_params -> (tuned, frozen), two nested dicts of its layout: the synthesis layers
  (all of them when max_resolution is 0, else those at <= max_resolution px) and the rest
  (the mapping network, whose gradients are exact zeros with a fixed W+, so that torch's
  Adam over every parameter leaves it unchanged too)."""
  r = settings.max_resolution
  flat = traverse_util.flatten_dict(gen_params)
  tuned = {k: k[0] == "synthesis" and (not r or synthesis_layer_resolution(k[1]) <= r)
           for k in flat}
  pick = lambda want: traverse_util.unflatten_dict(
      {k: v for k, v in flat.items() if tuned[k] == want})
  return pick(True), pick(False)


def merge_params(tuned: Any, frozen: Any) -> Any:
  """split_params undone: the generator's whole parameter tree."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(tuned),
                                       **traverse_util.flatten_dict(frozen)})


class BatchParams(NamedTuple):
  """A batch's generator params, as tuning returns them and stage 2 takes them.

  per_image: the leaves that differ per image, each with a leading image axis [N, ...]
  (per_image / cumulative tuning: the tuned layers; {} when one generator serves the batch).
  shared: the leaves every image uses, stored once (the frozen layers and the mapping
  network; joint tuning, or no tuning: the whole generator). vmap a function of one image's
  BatchParams over a batch with in_axes BATCH_AXES; merge_params(*p) is that image's whole
  parameter tree.
  """
  per_image: Any
  shared: Any

  def image(self, i: int) -> Any:
    """Image i's whole parameter tree."""
    return merge_params(jax.tree_util.tree_map(lambda x: x[i], self.per_image), self.shared)


BATCH_AXES = BatchParams(0, None)   # vmap in_axes of a BatchParams argument


def batch_params(settings: TuningSettings, tuned: Any, frozen: Any) -> BatchParams:
  """The schedule's BatchParams from its tuned half (per_image / cumulative: [N, ...] per
  image; joint: the one set) and the frozen half (split_params)."""
  if settings.schedule == "joint":
    return BatchParams({}, merge_params(tuned, frozen))
  return BatchParams(tuned, frozen)


def per_image_copies(tree: Any, n: int) -> Any:
  """Every leaf [...] -> n copies of it [n, ...]."""
  return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)


def _adam_step(loss_fn: Callable, settings: TuningSettings,
               axis_name: str | None = None) -> Callable:
  """(tuned, opt_state, *inputs) -> (tuned, opt_state, aux): one Adam update of the tuned
  params on loss_fn(tuned, *inputs) -> (loss, aux); axis_name: the loss's batch is split over
  that mesh axis, and the gradient is summed over it."""
  optimizer = make_optimizer(settings)

  def step(tuned, opt_state, *inputs):
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(tuned, *inputs)
    if axis_name is not None:
      grads = jax.lax.psum(grads, axis_name)
    updates, opt_state = optimizer.update(grads, opt_state, tuned)
    return optax.apply_updates(tuned, updates), opt_state, aux

  return step


def _batch_losses(generator: Generator, lpips_model: LPIPS, settings: TuningSettings,
                  gen_params, wplus0, noise, target: TuningTarget, lpips_params) -> Array:
  """Per-image stage-1 losses [B] of the generator's reconstructions of wplus0 [B, ...]."""
  x_hat = generator.apply({"params": gen_params}, wplus0, list(noise))
  return lpips_mse_loss_to_target(lpips_model, lpips_params, x_hat, target,
                                  mse_weight=settings.mse_weight,
                                  lpips_weight=settings.lpips_weight)


def make_image_loss(generator: Generator, lpips_model: LPIPS,
                    settings: TuningSettings) -> Callable:
  """ONE image's stage-1 loss: (tuned, frozen (split_params), wplus0 [n_latent, D], noise
  [r, r, 1] maps, target (the image's TuningTarget, without the batch axis), lpips_params)
  -> loss ()."""
  def loss_fn(tuned, frozen, wplus0, noise, target, lpips_params):
    target = jax.tree_util.tree_map(lambda x: x[None], target)
    return _batch_losses(generator, lpips_model, settings, merge_params(tuned, frozen),
                         wplus0[None], [n[None] for n in noise], target, lpips_params)[0]

  return loss_fn


def make_image_step(generator: Generator, lpips_model: LPIPS,
                    settings: TuningSettings) -> Callable:
  """One Adam step for ONE image: (tuned, opt_state, *make_image_loss's inputs after tuned)
  -> (tuned, opt_state, loss ())."""
  image_loss = make_image_loss(generator, lpips_model, settings)

  def loss_fn(*args):
    loss = image_loss(*args)
    return loss, loss

  return _adam_step(loss_fn, settings)


def make_joint_step(generator: Generator, lpips_model: LPIPS, settings: TuningSettings,
                    axis_name: str | None = None) -> Callable:
  """One Adam step of ONE generator on a whole batch (schedule 'joint').

  (tuned, opt_state, frozen, wplus0 [B, n_latent, D], noise [B, r, r, 1] maps, target (the
  batch's TuningTarget), weights [B] (1 = a real face, 0 = batch padding), lpips_params)
  -> (tuned, opt_state, per-image losses [B] before the update). The loss optimised is the
  weighted mean of the per-image losses. axis_name: the batch is split over that mesh axis
  (parallel.split_batch): the mean divides by the weight summed over it, and the gradient
  is summed over it.
  """
  def loss_fn(tuned, frozen, wplus0, noise, target, weights, lpips_params):
    per_image = _batch_losses(generator, lpips_model, settings, merge_params(tuned, frozen),
                              wplus0, noise, target, lpips_params)
    total = jnp.sum(weights) if axis_name is None else jax.lax.psum(jnp.sum(weights),
                                                                      axis_name)
    return jnp.sum(per_image * weights) / total, per_image

  return _adam_step(loss_fn, settings, axis_name)


@functools.partial(jax.jit, static_argnames=("lpips_model", "settings"))
def prepare_target(lpips_model: LPIPS | None, settings: TuningSettings, lpips_params: Any,
                   targets: Array) -> TuningTarget:
  """targets [N, H, W, 3] in [-1, 1] -> their TuningTarget (resized image and LPIPS
  features), computed once per batch instead of in each of the steps."""
  return tuning_target(lpips_model, lpips_params, targets, settings.loss_resolution,
                       settings.lpips_weight)


def initial_state(settings: TuningSettings, tuned: Any, n: int) -> tuple[Any, Any]:
  """(tuned, opt_state) the joint or per_image schedule starts n images from, given the
  pretrained tuned half (split_params): one fresh copy of it (joint; the step donates it)
  or n copies with n Adam states."""
  optimizer = make_optimizer(settings)
  if settings.schedule == "joint":
    tuned = jax.tree_util.tree_map(jnp.copy, tuned)
    return tuned, optimizer.init(tuned)
  tuned = per_image_copies(tuned, n)
  return tuned, jax.vmap(optimizer.init)(tuned)


def _initial_state(settings: TuningSettings, tuned: Any, n: int, mesh: Mesh | None
                   ) -> tuple[Any, Any]:
  """initial_state, made on the mesh's devices: per-image copies split over them (each
  device makes its share; none holds all N), the joint mode's one copy replicated."""
  if mesh is None:
    return initial_state(settings, tuned, n)
  return _compiled_initial_state(settings, n, mesh)(tuned)


@functools.lru_cache(maxsize=8)
def _compiled_initial_state(settings: TuningSettings, n: int, mesh: Mesh) -> Callable:
  place = (parallel.replicated_sharding(mesh) if settings.schedule == "joint"
           else parallel.batch_sharding(mesh))
  return jax.jit(functools.partial(initial_state, settings, n=n), out_shardings=place)


def batch_inputs(settings: TuningSettings, frozen: Any, wplus0: Array,
                 noise: Sequence[Array], target: TuningTarget, lpips_params: Any,
                 weights: Array | None = None) -> tuple:
  """The joint / per_image step's arguments after (tuned, opt_state), the frozen half of
  the params (split_params) first; weights (joint only) default to 1 for every image."""
  if settings.schedule != "joint":
    return frozen, wplus0, list(noise), target, lpips_params
  weights = jnp.ones(wplus0.shape[:1]) if weights is None else weights
  return frozen, wplus0, list(noise), target, jnp.asarray(weights, jnp.float32), lpips_params


@functools.lru_cache(maxsize=8)
def compiled_step(generator: Generator, lpips_model: LPIPS, settings: TuningSettings,
                  batched: bool = True, mesh: Mesh | None = None) -> Callable:
  """The jitted step of `settings.schedule`, cached so that every batch of a job reuses one
  compilation. per_image: the image step vmapped over parameter copies (batched) or alone;
  joint: make_joint_step. The tuned params and optimiser state are donated; the frozen
  params are shared by the images. mesh (batched): split each batch over its devices
  (parallel.split_batch)."""
  if settings.schedule == "joint":
    step = make_joint_step(generator, lpips_model, settings,
                           None if mesh is None else parallel.DATA_AXIS)
    return jax.jit(parallel.split_batch(step, mesh, (None, None, None, 0, 0, 0, 0, None),
                                        (None, None, 0)), donate_argnums=(0, 1))
  step = make_image_step(generator, lpips_model, settings)
  if batched:
    in_axes = (0, 0, None, 0, 0, 0, None)
    return jax.jit(parallel.split_batch(jax.vmap(step, in_axes=in_axes), mesh, in_axes),
                   donate_argnums=(0, 1))
  return jax.jit(step)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _run_steps(step: Callable, params: Any, opt_state: Any, steps: int, *inputs
               ) -> tuple[Any, Any, Array]:
  """`steps` calls of step(params, opt_state, *inputs) -> (params, opt_state, loss);
  returns the last params and opt_state and the losses stacked [steps, ...] (steps >= 0)."""
  if not steps:
    loss = jax.eval_shape(step, params, opt_state, *inputs)[2]
    return params, opt_state, jnp.zeros((0, *loss.shape), loss.dtype)
  losses = []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, *inputs)
    losses.append(loss)
  return params, opt_state, jnp.stack(losses)


class TuneResult(NamedTuple):
  params: BatchParams   # the tuned generator of each of the N images
  losses: Array         # [steps, N]
  carry: Any            # cumulative schedule: (params, opt_state) after the last image; else None

  @property
  def per_image(self) -> bool:
    """False (joint): ONE parameter set serves the N images."""
    return bool(jax.tree_util.tree_leaves(self.params.per_image))


def tune(generator: Generator, lpips_model: LPIPS, settings: TuningSettings,
         gen_params: Any, lpips_params: Any, wplus0: Array, noise: Sequence[Array],
         targets: Array, carry: Any = None, weights: Array | None = None,
         mesh: Mesh | None = None) -> TuneResult:
  """Tunes the generator on N images.

  gen_params: the pretrained params (shared); wplus0 [N, n_latent, D]; noise: maps
  [N, r, r, 1] (frozen, one set per image); targets [N, H, W, 3] in [-1, 1].
  carry (cumulative only): (params, opt_state) returned by the previous batch's call, so a
  job split into batches tunes exactly as one long sequence; None starts from gen_params.
  The returned BatchParams hold the whole tree: the tuned layers per image (per_image,
  cumulative), the frozen ones once.
  weights (joint only): [N], 0 for batch padding that must not pull the shared generator;
  None = all 1.
  mesh (per_image, joint): the batch's inputs lie split over its devices
  (parallel.shard_batch); each device tunes its share (per_image: it makes and keeps its
  share of the N parameter copies and Adam states). The cumulative schedule takes none: its
  sequence runs on every device of replicated params at once.
  """
  step_settings = dataclasses.replace(settings, steps=0)  # one compilation for any steps
  target = prepare_target(lpips_model, step_settings, lpips_params, targets)
  if settings.schedule in ("joint", "per_image"):
    tuned, frozen = split_params(settings, gen_params)
    tuned, _, losses = _run_steps(
        compiled_step(generator, lpips_model, step_settings, mesh=mesh),
        *_initial_state(settings, tuned, wplus0.shape[0], mesh),
        settings.steps,
        *batch_inputs(settings, frozen, wplus0, noise, target, lpips_params, weights))
    return TuneResult(batch_params(settings, tuned, frozen), losses, None)

  if mesh is not None:
    raise ValueError("the cumulative schedule tunes one image at a time: give it unsplit "
                     "inputs and no mesh (with replicated params it runs on every device)")
  single = compiled_step(generator, lpips_model, step_settings, batched=False)
  params, opt_state = carry if carry is not None else (gen_params, None)
  tuned, frozen = split_params(settings, params)
  if opt_state is None:  # placed as the params are, as the step returns it: one compilation
    opt_state = jax.jit(make_optimizer(settings).init)(tuned)
    sharding = getattr(jax.tree_util.tree_leaves(tuned)[0], "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1:   # replicated params: jit
      # gave one device's arrays
      opt_state = jax.device_put(opt_state, sharding)
  snapshots, losses = [], []
  for i in range(wplus0.shape[0]):  # official: generator and Adam state carry over
    tuned, opt_state, image_losses = _run_steps(
        single, tuned, opt_state, settings.steps, frozen, wplus0[i], [m[i] for m in noise],
        jax.tree_util.tree_map(lambda x: x[i], target), lpips_params)
    snapshots.append(tuned)
    losses.append(image_losses)
  return TuneResult(batch_params(settings, _stack(snapshots), frozen), jnp.stack(losses, axis=1),
                    (merge_params(tuned, frozen), opt_state))
