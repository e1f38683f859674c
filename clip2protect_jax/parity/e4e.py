"""Golden item `e4e`: the official Encoder4Editing (encoder4editing, 99ea505) on recipe v1.

Reads `manifest_e4e.json` from the golden folder (the `manifest` argument, manifest.json,
does not describe e4e). Recipe-v1 weights (seed 9) -> convert/e4e.py -> Flax encoder on
the stored NCHW inputs `x` (2 random images) and `e2e_x` (the official transform of the
aligned photo), run as one batch of 3 (eval BatchNorm: samples are independent).
Compares `codes`, `style_out` (w0, delta_i), `wplus`, `e2e_codes`, `e2e_wplus` and, in
float32, the debug summaries `dbgNN_stats` / `dbgNN_sample`. float64: weights and inputs
cast up, compared with `*_f64` at 1e-10.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert.e4e import convert_checkpoint
from clip2protect_jax.models.e4e import Encoder4Editing, to_wplus
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays, recipe_v1_state_dict

MANIFEST = "manifest_e4e.json"
MODEL = "e4e_encoder"
TOL, TOL_F64 = 5e-5, 1e-10

# manifest debug module name -> key of Encoder4Editing's debug dict.
_DEBUG_KEYS = {"styles.3": "styles.3.input", "styles.7": "styles.7.input"}


def load_e4e_manifest(golden_dir: str) -> dict[str, Any]:
  path = os.path.join(golden_dir, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: the e4e golden item needs {MANIFEST} and "
                            "e4e.npz in the golden folder (see golden/README_e4e_align.md).")
  with open(path) as f:
    return json.load(f)


def recipe_checkpoint(entry: dict[str, Any]) -> dict[str, Any]:
  """A checkpoint dict shaped like e4e_ffhq_encode.pt, filled with recipe-v1 weights."""
  state_dict = {"encoder." + k: v for k, v in recipe_v1_state_dict(entry).items()}
  la = entry["latent_avg"]
  latent_avg = np.random.default_rng(la["seed"]).standard_normal(tuple(la["shape"]))
  size = 2 ** ((int(la["shape"][0]) + 2) // 2)   # n_styles = 2 log2(size) - 2
  return {"state_dict": state_dict, "latent_avg": latent_avg.astype(np.float32),
          "opts": {"stylegan_size": size, "encoder_type": "Encoder4Editing"}}


def summaries(t_nchw: np.ndarray, sample_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """golden debug format: [mean, std, absmax, rms] (float64) and values at flat indices."""
  t64 = t_nchw.astype(np.float64)
  stats = np.array([t64.mean(), t64.std(), np.abs(t64).max(), np.sqrt((t64 ** 2).mean())])
  return stats, t_nchw.reshape(-1)[sample_idx]


def _to_nchw(t):
  t = np.asarray(t)
  return np.transpose(t, (0, 3, 1, 2)) if t.ndim == 4 else t


def build(entry: dict[str, Any]) -> dict[str, Any]:
  """Recipe-v1 checkpoint -> convert/e4e.py tree {"params", "latent_avg", "stylegan_size"}."""
  return convert_checkpoint(recipe_checkpoint(entry), source="recipe v1 e4e")


def evaluate(item: str, tree: dict[str, Any], golden: dict[str, np.ndarray],
             entry: dict[str, Any], float64: bool = False, e2e_only: bool = False
             ) -> list[Comparison]:
  """Runs the converted encoder on the golden inputs and compares every output.

  e2e_only: run only the aligned photo `e2e_x` (a third of the work; no debug arrays).
  """
  dtype = jnp.float64 if float64 else jnp.float32
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree["params"])
  debug_mods = [(d["key_prefix"], _DEBUG_KEYS.get(d["module"], d["module"]))
                for d in entry["debug_modules"]]
  if e2e_only:
    debug_mods = []
  x = golden["e2e_x"] if e2e_only else np.concatenate([golden["x"], golden["e2e_x"]], 0)
  x = jnp.asarray(np.transpose(x, (0, 2, 3, 1)), dtype)
  model = Encoder4Editing(tree["stylegan_size"], dtype=dtype)

  @jax.jit
  def forward(p, x):
    codes, dbg = model.apply({"params": p}, x, debug=True)
    deltas = jnp.stack([dbg[f"delta.{i}"] for i in range(1, codes.shape[1])], axis=1)
    style_out = jnp.concatenate([codes[:, :1], deltas], axis=1)
    return codes, style_out, {k: dbg[m][:2] for k, m in debug_mods}

  with jax.default_matmul_precision("highest"):
    codes, style_out, dbg = forward(params, x)
  codes, style_out = np.asarray(codes), np.asarray(style_out)
  latent_avg = np.asarray(tree["latent_avg"]).astype(codes.dtype)
  wplus = np.asarray(to_wplus(jnp.asarray(codes), latent_avg))
  n = 0 if e2e_only else 2
  outs = {"e2e_codes": codes[n:], "e2e_wplus": wplus[n:]}
  if not e2e_only:
    outs.update(codes=codes[:2], style_out=style_out[:2], wplus=wplus[:2])
  suffix, tol = ("_f64", TOL_F64) if float64 else ("", TOL)
  results = [compare(item, name + suffix, ours, golden[name + suffix], tol)
             for name, ours in outs.items()]
  if not float64:
    for key, _ in debug_mods:
      stats, sample = summaries(_to_nchw(dbg[key]), golden[key + "_sample_idx"])
      results.append(compare(item, key + "_stats", stats, golden[key + "_stats"], tol))
      results.append(compare(item, key + "_sample", sample, golden[key + "_sample"], tol))
  return results


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  del manifest
  entry = load_e4e_manifest(golden_dir)["models"][MODEL]
  if float64 and not jax.config.read("jax_enable_x64"):
    raise RuntimeError("float64 parity needs jax_enable_x64 (tools/parity.py --float64)")
  return evaluate(item, build(entry), load_arrays(golden_dir, entry["file"]), entry, float64)
