"""bench.hlo_traffic: the memory-traffic floor read off a compiled program."""
import jax
import jax.numpy as jnp

from clip2protect_jax import bench


def test_hlo_traffic_counts_each_instruction_once():
  """x * 2 + 1 on 1000 floats fuses into one elementwise instruction: it reads 4000 bytes
  and writes 4000; a second output of another dtype and size adds its own bytes."""
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  one = bench.hlo_traffic(jax.jit(lambda v: v * 2 + 1).lower(x).compile())
  assert sum(r["bytes"] for r in one) == 8000
  assert one[0]["category"] == "loop fusion (elementwise)"
  two = bench.hlo_traffic(jax.jit(
      lambda v: (v * 2 + 1, jnp.sum(v[:500]).astype(jnp.bfloat16))).lower(x).compile())
  assert sum(r["bytes"] for r in two) >= 8000 + 2
