"""Reads TensorFlow.js weight files (weights manifests and graph-model JSON) into numpy.

A TF.js model stores its tensors in binary shards listed by a "weights manifest": a list
of groups {"paths": [shard files], "weights": [{"name", "shape", "dtype",
"quantization"?}]}; the tensors of a group are laid out back to back across the
concatenated shards. Quantised tensors are stored as uint8/uint16 with a per-tensor affine
map (value = q * scale + min) or as float16. A graph model (`model.json`) embeds its
manifest under "weightsManifest" next to the GraphDef ("modelTopology").
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "uint8": np.uint8,
           "uint16": np.uint16, "float16": np.float16}


def _tensor(raw: bytes, spec: dict[str, Any]) -> tuple[np.ndarray, int]:
  """One tensor from the start of `raw` -> (array in its logical dtype, bytes consumed)."""
  shape = [int(d) for d in spec["shape"]]
  count = int(np.prod(shape)) if shape else 1
  quant = spec.get("quantization")
  stored = _DTYPES[quant["dtype"] if quant else spec["dtype"]]
  nbytes = count * np.dtype(stored).itemsize
  if len(raw) < nbytes:
    raise ValueError(f"weight {spec['name']!r} needs {nbytes} bytes, the shard has {len(raw)}")
  q = np.frombuffer(raw[:nbytes], dtype=stored).reshape(shape)
  if quant and quant["dtype"] in ("uint8", "uint16"):
    value = q.astype(np.float64) * quant["scale"] + quant["min"]
    q = value.astype(_DTYPES[spec["dtype"]])
  elif quant:  # float16
    q = q.astype(_DTYPES[spec["dtype"]])
  return q, nbytes


def read_manifest(manifest: list[dict[str, Any]], folder: str) -> dict[str, np.ndarray]:
  """A weights manifest (already parsed) whose shards live in `folder` -> name -> array."""
  out: dict[str, np.ndarray] = {}
  for group in manifest:
    raw = b""
    for shard in group["paths"]:
      path = os.path.join(folder, shard)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"TF.js weight shard {path} is missing; run "
                                "`python tools/fetch_assets.py` to fetch the model files.")
      with open(path, "rb") as f:
        raw += f.read()
    offset = 0
    for spec in group["weights"]:
      out[spec["name"]], used = _tensor(raw[offset:], spec)
      offset += used
    if offset != len(raw):
      raise ValueError(f"TF.js shards {group['paths']} in {folder}: {len(raw)} bytes, the "
                       f"manifest describes {offset}; the files do not belong together.")
  return out


def read_weights(manifest_json: str) -> dict[str, np.ndarray]:
  """A `*-weights_manifest.json` file (layers models, e.g. face-api) -> name -> array."""
  with open(manifest_json) as f:
    return read_manifest(json.load(f), os.path.dirname(manifest_json))


def read_graph_model(model_json: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """A graph-model `model.json` -> (GraphDef nodes as dicts, name -> weight array)."""
  with open(model_json) as f:
    model = json.load(f)
  if model.get("format") != "graph-model" or "modelTopology" not in model:
    raise ValueError(f"{model_json} is not a TF.js graph model (format "
                     f"{model.get('format')!r})")
  return (model["modelTopology"]["node"],
          read_manifest(model["weightsManifest"], os.path.dirname(model_json)))
