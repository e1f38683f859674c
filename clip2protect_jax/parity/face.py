"""Golden items `irse50`, `ir152`, `mobileface`, `facenet`: the official FR embedders.

Recipe-v1 weights -> convert/face.py -> Flax module on the stored NCHW inputs (transposed
to NHWC); compares the official forward output `emb` and, where the model normalises,
`emb_prenorm`, the output of the final BatchNorm1d captured in the same forward pass (the
golden used a forward hook on that module).
float64: the float32 recipe weights and inputs are cast up and compared with `*_f64`.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.models.face import registry
from clip2protect_jax.models.face.irse import BatchNorm
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays, recipe_v1_state_dict

TOL, TOL_F64 = 5e-5, 1e-10
# Golden item -> registry model (registry `mobileface` is human-models' MobileFace).
REGISTRY_NAME = {"mobileface": "mobile_face"}


def load_model(item: str, manifest: dict[str, Any], dtype=jnp.float32):
  """(registry spec, module, params) for golden item `item` with its recipe-v1 weights."""
  spec = registry.get(REGISTRY_NAME.get(item, item))
  params = spec.convert(recipe_v1_state_dict(manifest["models"][item]))
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
  return spec, spec.module(dtype), params


def forward_with_prenorm(module, params, x):
  """(official output, output of the last top-level BatchNorm on [N, D] features)."""
  is_top_bn = lambda m, method: isinstance(m, BatchNorm) and len(m.scope.path) == 1
  emb, state = module.apply({"params": params}, x, capture_intermediates=is_top_bn,
                            mutable=["intermediates"])
  bn_outputs = [v["__call__"][0] for v in state["intermediates"].values()]
  return emb, [o for o in bn_outputs if o.ndim == 2][-1]


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  dtype = jnp.float64 if float64 else jnp.float32
  entry = manifest["models"][item]
  spec, module, params = load_model(item, manifest, dtype)
  golden = load_arrays(golden_dir, entry["file"])
  x = jnp.asarray(np.transpose(golden["x"], (0, 2, 3, 1)), dtype)
  emb, prenorm = jax.jit(functools.partial(forward_with_prenorm, module))(params, x)
  suffix, tol = ("_f64", TOL_F64) if float64 else ("", TOL)
  results = [compare(item, "emb" + suffix, emb, golden["emb" + suffix], tol)]
  if spec.l2_normalized:
    results.append(compare(item, "emb_prenorm" + suffix, prenorm,
                           golden["emb_prenorm" + suffix], tol))
  return results
