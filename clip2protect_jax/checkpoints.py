"""Orbax save/restore of converted params, checked leaf by leaf against the module.

A converted checkpoint is a folder holding an orbax PyTree (the params, plus any
buffers such as StyleGAN2 noise maps) and `metadata.json` (which architecture and
config it belongs to, and where it came from). Restoring compares every stored leaf
with the abstract tree of the module (`jax.eval_shape` of its init) first, so a wrong
or partial checkpoint fails at once, naming the leaves by path.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from clip2protect_jax.convert.common import WeightsMismatchError, format_mismatch
from clip2protect_jax.image_io import atomic_write_json

_TREE_DIR = "tree"
_METADATA = "metadata.json"


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
          for path, leaf in flat}


def compare_trees(reference: Any, candidate: Any, source: str) -> None:
  """Raises WeightsMismatchError unless `candidate` has exactly the leaves/shapes of `reference`."""
  want, got = _flat_shapes(reference), _flat_shapes(candidate)
  missing = set(want) - set(got)
  unexpected = set(got) - set(want)
  misshaped = [(k, got[k], want[k]) for k in set(want) & set(got) if got[k] != want[k]]
  if missing or unexpected or misshaped:
    raise WeightsMismatchError(format_mismatch(
        source, missing, unexpected, misshaped,
        hint="Was the checkpoint converted for a different architecture or config? "
             "Re-run tools/convert_checkpoint.py with matching settings."))


def save(path: str, tree: Any, metadata: dict[str, Any]) -> None:
  """Writes `tree` (numpy/jax arrays) and JSON `metadata` to folder `path` (must not exist)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; remove it or choose another output path.")
  tree = jax.tree_util.tree_map(np.asarray, tree)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, _TREE_DIR), tree)
  atomic_write_json(os.path.join(path, _METADATA), metadata)   # last: marks it complete


def is_complete(path: str) -> bool:
  """Whether `path` holds a checkpoint whose save finished (its metadata is written last)."""
  return os.path.isfile(os.path.join(path, _METADATA))


def load_metadata(path: str) -> dict[str, Any]:
  meta_path = os.path.join(os.path.abspath(path), _METADATA)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
        f"{meta_path} not found: {path} is not a converted checkpoint. Convert the "
        "official .pt file with tools/convert_checkpoint.py (see checkpoints/README.md).")
  with open(meta_path) as f:
    return json.load(f)


def restore(path: str, abstract_tree: Any) -> Any:
  """Restores the tree at `path`, checked against `abstract_tree` (e.g. from jax.eval_shape).

  Returns a tree of numpy arrays with the abstract tree's structure and dtypes.
  """
  path = os.path.abspath(path)
  tree_path = os.path.join(path, _TREE_DIR)
  if not os.path.isdir(tree_path):
    raise FileNotFoundError(
        f"{tree_path} not found: {path} is not a converted checkpoint. Convert the "
        "official .pt file with tools/convert_checkpoint.py (see checkpoints/README.md).")
  # This process alone: orbax's default waits for every JAX process at each restore (a TPU
  # pod slice's hosts, each on its own shard of the photos, load models at different times).
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
    stored = ckptr.metadata(tree_path).item_metadata
    stored_shapes = jax.tree_util.tree_map(
        lambda m: np.empty(m.shape, np.uint8), stored,
        is_leaf=lambda m: hasattr(m, "shape"))
    compare_trees(abstract_tree, stored_shapes, source=path)
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_tree)
    return ckptr.restore(tree_path, target)
