"""Golden "recipe v1" weights: deterministic pseudo-random torch state_dicts.

The golden vectors in ../shared/golden were made by running the OFFICIAL PyTorch
architectures on weights drawn by this recipe (see golden/README.md, "Recipe v1").
Rebuilding the same weights here, pushing them through our converters and comparing our
outputs with the stored ones proves a converter + model pair exact, without any
pretrained weights. Everything is read from the manifest (seed, ordered key list, rules);
nothing is assumed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Mapping

import numpy as np

_STYLEGAN_MAPPING_WEIGHT = re.compile(r"style\.\d+\.weight")


class RecipeChecksumError(ValueError):
  """A regenerated weight does not match the manifest's checksums."""


def load_manifest(golden_dir: str) -> dict[str, Any]:
  path = os.path.join(golden_dir, "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: --golden must name a folder holding manifest.json and the "
        "golden .npz files (e.g. ../shared/golden or tests/golden).")
  with open(path) as f:
    return json.load(f)


def load_arrays(golden_dir: str, file_name: str) -> dict[str, np.ndarray]:
  path = os.path.join(golden_dir, file_name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found (named by manifest.json).")
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def _draw(rng: np.random.Generator, name: str, shape: tuple[int, ...], rule: str,
          family: str) -> np.ndarray:
  """One state_dict entry under recipe v1; consumes `rng` exactly as the reference did."""
  leaf = name.split(".")[-1]
  if name.endswith("running_var"):
    v = rng.uniform(0.5, 1.5, shape)
  elif name.endswith("running_mean"):
    v = rng.normal(0.0, 0.1, shape)
  elif len(shape) >= 2:
    v = rng.standard_normal(shape)
    if family == "stylegan2":
      if _STYLEGAN_MAPPING_WEIGHT.fullmatch(name):
        v = v * 100.0
    else:
      v = v / math.sqrt(math.prod(shape[1:]))
  elif leaf == "bias" or leaf.endswith("_bias"):
    v = rng.normal(0.0, 0.1, shape)
  else:
    v = 1.0 + rng.normal(0.0, 0.1, shape)
  return np.asarray(v).astype(np.float32)


def recipe_v1_state_dict(model_entry: Mapping[str, Any], *,
                         verify: bool = True) -> dict[str, np.ndarray]:
  """Rebuilds a model's torch state_dict (name -> float32 ndarray) from its manifest entry.

  Integer entries (`num_batches_tracked`) are returned as int64 zeros and `keep_kernel`
  entries with the values listed in the manifest, so the dict is a complete state_dict as
  a converter would receive it. With `verify`, every drawn entry is checked against the
  manifest's sha16 (exact) and sum/sumsq (1e-9 relative).
  """
  rng = np.random.default_rng(int(model_entry["recipe_seed"]))
  family = model_entry["family"]
  out: dict[str, np.ndarray] = {}
  for row in model_entry["state_dict"]:
    name, shape, rule = row[0], tuple(row[1]), row[2]
    if rule == "keep_int":
      out[name] = np.zeros(shape, np.int64)
      continue
    if rule == "keep_kernel":
      out[name] = np.asarray(row[3], np.float32).reshape(shape)
      continue
    value = _draw(rng, name, shape, rule, family)
    if verify:
      _verify_entry(name, value, row)
    out[name] = value
  return out


def _verify_entry(name: str, value: np.ndarray, row: list) -> None:
  expected_sum, expected_sumsq, expected_sha = row[3], row[4], row[5]
  sha = hashlib.sha256(np.ascontiguousarray(value, "<f4").tobytes()).hexdigest()[:16]
  v64 = value.astype(np.float64)
  if sha != expected_sha or not (
      math.isclose(v64.sum(), expected_sum, rel_tol=1e-9, abs_tol=1e-9) and
      math.isclose((v64 * v64).sum(), expected_sumsq, rel_tol=1e-9)):
    raise RecipeChecksumError(
        f"recipe v1 entry {name!r}: sha16 {sha} vs manifest {expected_sha}, sum "
        f"{v64.sum()!r} vs {expected_sum!r}. The numpy random stream or the manifest "
        "order differs from the one that made the golden files.")
