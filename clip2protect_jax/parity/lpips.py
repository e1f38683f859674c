"""Golden item `lpips_vgg`: lpips==0.1.4 `LPIPS(net='vgg')` v0.1, recipe v1 seed 8.

The recipe covers the WHOLE state_dict, so the ScalingLayer shift/scale are random and are
taken from the weights; `*_const_scaling` re-runs with lpips' constants. Inputs (2,3,64,64)
in [-1, 1], normalize=False. Tolerance 1e-5 scaled (float32), 1e-10 against `*_f64`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert.lpips import convert_lpips_state_dict
from clip2protect_jax.models.lpips import LPIPS, LPIPS_SCALE, LPIPS_SHIFT
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays, recipe_v1_state_dict

TOL, TOL_F64 = 1e-5, 1e-10


def recipe_params(manifest: dict[str, Any]) -> dict[str, Any]:
  """Recipe-v1 LPIPS weights through the whole-state_dict converter."""
  return convert_lpips_state_dict(recipe_v1_state_dict(manifest["models"]["lpips_vgg"]))


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  g = load_arrays(golden_dir, manifest["models"]["lpips_vgg"]["file"])
  dt = np.float64 if float64 else np.float32
  params = jax.tree.map(lambda a: np.asarray(a, dt), recipe_params(manifest))
  const = jax.tree.map(lambda a: a, params)
  # The float64 reference set the constants in float64 (not float32 values cast up).
  const["params"]["shift"] = np.asarray(LPIPS_SHIFT, dt)
  const["params"]["scale"] = np.asarray(LPIPS_SCALE, dt)
  x0, x1 = (np.transpose(g[k], (0, 2, 3, 1)).astype(dt) for k in ("in0", "in1"))
  model = LPIPS(dtype=jnp.float64 if float64 else jnp.float32)
  fn = jax.jit(lambda p, a, b: model.apply(p, a, b, per_layer=True))
  suffix, tol = ("_f64", TOL_F64) if float64 else ("", TOL)
  out = []
  for p, name in ((params, ""), (const, "_const_scaling")):
    total, terms = fn(p, x0, x1)
    out.append(compare(item, f"out{name}", np.asarray(total).reshape(-1, 1, 1, 1),
                       g[f"out{name}{suffix}"], tol))
    out.append(compare(item, f"per_layer{name}", np.asarray(terms).reshape(5, -1, 1, 1, 1),
                       g[f"per_layer{name}{suffix}"], tol))
  heads = np.concatenate([np.asarray(params["params"][f"lin{k}"]) for k in range(5)])
  out.append(compare(item, "lin_weights_effective", heads, g["lin_weights_effective"], 0.0))
  return out
