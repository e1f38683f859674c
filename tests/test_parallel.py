"""parallel.py's rules, in this process (its 2-device checks: tests/parallel_checks.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from clip2protect_jax import parallel


def test_device_count_uses_every_device_that_splits_the_batch_evenly():
  assert parallel.device_count(0, 8, "b", available=8) == 8
  assert parallel.device_count(0, 8, "b", available=3) == 2     # 8 = 2 x 4: 2 of the 3
  assert parallel.device_count(0, 6, "b", available=4) == 3
  assert parallel.device_count(0, 7, "b", available=4) == 1
  assert parallel.device_count(4, 8, "b", available=8) == 4
  with pytest.raises(ValueError, match="config.batch_size=6 is not a multiple of "
                                       "config.devices=4"):
    parallel.device_count(4, 6, "config.batch_size", available=8)
  with pytest.raises(ValueError, match="config.devices=9, but this process sees 8"):
    parallel.device_count(9, 9, "b", available=8)
  with pytest.raises(ValueError, match="config.devices=-1"):
    parallel.device_count(-1, 8, "b", available=8)


def test_one_device_changes_nothing():
  assert parallel.data_mesh(1, 4, "b") is None
  fn = lambda x: x * 2
  assert parallel.split_batch(fn, None, 0) is fn
  tree = {"w": np.ones(3)}
  assert parallel.replicate(tree, None) is tree
  placed = parallel.shard_batch({"x": np.ones((2, 3)), "k": jax.random.key(0)}, None)
  assert isinstance(placed["x"], jax.Array) and placed["x"].shape == (2, 3)


def test_batch_axes_become_partition_specs():
  """vmap-style axes (a pytree prefix) -> one PartitionSpec per leaf: 0 splits the leading
  axis, except of scalars (an Adam step count), None replicates."""
  args = ({"w": jnp.ones((4, 3)), "count": jnp.zeros(())}, jnp.ones((2,)), [jnp.ones((4,))])
  specs = parallel._specs((0, None, 0), args)  # noqa: SLF001
  assert specs == ({"w": P("data"), "count": P()}, P(), [P("data")])
  with pytest.raises(ValueError, match="must be 0 or None"):
    parallel._specs(1, jnp.ones((2, 2)))  # noqa: SLF001


def test_batch_sizes_are_checked_before_any_work():
  parallel.check_batch_size(0, 5, "config.batch_size")   # 0 always finds a count
  n = jax.local_device_count()
  with pytest.raises(ValueError, match=f"config.devices={n + 1}, but this process sees {n}"):
    parallel.check_batch_size(n + 1, 4, "config.batch_size")
