"""Data parallelism over one host's devices: each batch of images split across them.

Every batched stage (e4e encoding, projection, pivotal tuning, the adversarial search,
generation) is one jitted function of a batch whose images are independent (vmapped), or,
for the joint tuning mode, a mean over them. Data parallelism: the batch-leading inputs lie
on a 1-D mesh (axis DATA_AXIS, leading axis split), the networks' parameters replicated, and
each device runs the same function on its share of the batch (split_batch: shard_map), so
per image it computes what a one-device run computes. The joint mode sums its gradient of
the replicated generator over the devices, and its mean divides by the whole batch's
weight (psums over DATA_AXIS in tuning.make_joint_step). The small once-per-batch
functions without per-image weights (tuning.prepare_target's LPIPS features, the target's
FR embeddings, projection.latent_stats) are left to jit's own partitioning, or run
replicated.

Why shard_map and not jit's automatic partitioning of the batch axis: XLA's SPMD
partitioner mis-shapes the grouped convolutions that vmap makes of per-image generator
weights ("output feature dimension ... divisible by feature_group_count", jax 0.10 CPU).

Several hosts (a TPU pod slice): each process sees its local devices only here; run one
job per host, each on its own photos and workdir.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def device_count(requested: int, batch_size: int, what: str,
                 available: int | None = None) -> int:
  """How many local devices a stage with batches of `batch_size` uses.

  requested: config.devices. 0 = as many of the `available` local devices as split a batch
  evenly (all of them when batch_size is a multiple of their number); n > 0 = exactly n,
  which must divide batch_size. `what` names the batch-size field in messages.
  """
  available = jax.local_device_count() if available is None else available
  if requested < 0:
    raise ValueError(f"config.devices={requested}: use 0 (all local devices) or a count "
                     f"from 1 to {available}")
  if requested > available:
    raise ValueError(
        f"config.devices={requested}, but this process sees {available} local "
        f"{jax.default_backend()} device(s): use 0 for all of them, or at most {available}")
  if requested:
    if batch_size % requested:
      raise ValueError(
          f"{what}={batch_size} is not a multiple of config.devices={requested}: each "
          f"device takes an equal share of a batch; set {what} to a multiple of {requested} "
          "or change config.devices")
    return requested
  n = max(d for d in range(1, available + 1) if batch_size % d == 0)
  if n < available:
    logging.warning("%s=%d splits evenly over %d of the %d local devices: using %d (a "
                    "multiple of %d uses them all)", what, batch_size, n, available, n,
                    available)
  return n


def check_batch_size(requested: int, batch_size: int, what: str) -> None:
  """Fails (before any work) when config.devices=requested cannot split a stage's batches
  (device_count's rule; 0 always finds a count)."""
  if batch_size < 1:
    raise ValueError(f"{what}={batch_size}: use 1 or more")
  if requested:
    device_count(requested, batch_size, what)


def data_mesh(requested: int, batch_size: int, what: str) -> Mesh | None:
  """The mesh a stage splits its batches over (device_count's rule), or None for one device."""
  n = device_count(requested, batch_size, what)
  if n == 1:
    return None
  logging.info("%s: data parallel, each batch of %d split over %d devices", what,
               batch_size, n)
  return Mesh(np.asarray(jax.local_devices()[:n]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh | None) -> NamedSharding | None:
  """Arrays split along their leading (image) axis over the mesh; None without a mesh."""
  return None if mesh is None else NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays copied whole to every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
  """Each leaf (numpy or jax array [B, ...], B a multiple of the mesh size) on the devices,
  split along its leading axis; without a mesh, jnp.asarray on the default device."""
  if mesh is None:
    return jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)
  return jax.device_put(tree, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  """Every jax/numpy array leaf of `tree` (network parameters, constants) copied to each
  device of the mesh, once per distinct array (leaves that are one array in `tree` stay one
  array); other leaves (modules, strings, None) are returned as they are. No mesh: `tree`."""
  if mesh is None:
    return tree
  sharding = replicated_sharding(mesh)
  placed: dict[int, jax.Array] = {}

  def put(leaf):
    if not isinstance(leaf, (jax.Array, np.ndarray)):
      return leaf
    if id(leaf) not in placed:
      placed[id(leaf)] = jax.device_put(leaf, sharding)
    return placed[id(leaf)]

  return jax.tree_util.tree_map(put, tree)


def device_span(x: jax.Array) -> int:
  """How many devices an array's data lies on (a sharded batch's: the mesh size)."""
  return len(x.sharding.device_set)


def _specs(axes: Any, tree: Any) -> Any:
  """PartitionSpecs for `tree` from `axes` (a pytree prefix of it, vmap style): leaves under
  0 are split along their leading axis (scalars, e.g. Adam's step count, are replicated),
  leaves under None are replicated."""
  def spec(axis, x):
    if axis not in (0, None):
      raise ValueError(f"batch axes must be 0 or None, got {axis!r}")
    return PartitionSpec(DATA_AXIS) if axis == 0 and np.ndim(x) else PartitionSpec()
  return jax.tree_util.tree_map(
      lambda axis, sub: jax.tree_util.tree_map(lambda x: spec(axis, x), sub),
      axes, tree, is_leaf=lambda x: x is None)


def split_batch(fn: Callable, mesh: Mesh | None, in_axes: Any, out_axes: Any = 0
                ) -> Callable:
  """fn(*args) with each device of the mesh running fn on its share of the batch (shard_map),
  for use inside jax.jit; no mesh: fn.

  in_axes / out_axes (vmap style, per positional argument / for the result): 0 = the batch
  (leading) axis, split over the devices; None = the same for every image, replicated. fn
  must treat images independently, or reduce over them with collectives over DATA_AXIS.
  A scalar under 0 (an Adam step count) is taken as replicated: each device keeps its own
  value, so a scalar result must be the same on every device (a step count) or psum-ed by
  fn; a per-device sum would read back as device 0's and differ between devices later.
  """
  if mesh is None:
    return fn

  def on_devices(*args):
    axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else in_axes
    in_specs = _specs(axes, args)
    local = jax.tree_util.tree_map(
        lambda s, x: jax.ShapeDtypeStruct(
            (np.shape(x)[0] // mesh.size, *np.shape(x)[1:]) if s != PartitionSpec()
            else np.shape(x), jnp.result_type(x)), in_specs, args)
    # The result's ranks, from fn traced on one device's share; vmap binds DATA_AXIS for
    # its collectives (a leading axis of 1 is added to every result, and dropped here).
    out = jax.eval_shape(jax.vmap(fn, in_axes=None, axis_size=1, axis_name=DATA_AXIS),
                         *local)
    out = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), out)
    # check_vma=False: the custom VJPs of models/layers.py return parameter cotangents that
    # vary over devices; a function that reduces over the batch psums them itself.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=_specs(out_axes, out),
                         check_vma=False)(*args)

  on_devices.__name__ = getattr(fn, "__name__", "batch_fn")   # names its compilations
  return on_devices
