"""Face-recognition state_dicts (irse50.pth, ir152.pth, mobile_face.pth, facenet.pth) -> Flax.

The Flax modules in models/face name every submodule after its torch module, so the
torch key of a Flax leaf is its path joined with dots plus the renamed leaf:
  .../kernel (4-D, HWIO)   <- <prefix>.weight (O, I, kh, kw)   [OIHW -> HWIO; depthwise I=1]
  .../kernel (2-D, in,out) <- <prefix>.weight (out, in)        [.T, torch row order kept:
                              the models flatten in NCHW order before the Linear]
  .../bias                 <- <prefix>.bias
  BatchNorm scale/bias/mean/var <- <prefix>.weight/.bias/.running_mean/.running_var
                              (+ <prefix>.num_batches_tracked, optional and dropped)
  PReLU alpha              <- <prefix>.weight (C,)
The expected key set and shapes come from `jax.eval_shape` of the module's init (the
architecture), never from the input dict, and `check_state_dict` rejects any missing,
unexpected or mis-shaped key. FaceNet's unused `logits.*` (classify=True head) are expected
and dropped.

Entry point for tools: `convert_face(name, state_dict) -> params` (registry names
irse50 / ir152 / mobile_face / facenet); apply with `module.apply({"params": params}, x)`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert.common import (as_float32, check_state_dict, conv_oihw_to_hwio,
                                             linear_to_dense)
from clip2protect_jax.models.face.facenet import InceptionResnetV1
from clip2protect_jax.models.face.ir152 import IR152
from clip2protect_jax.models.face.irse import IRSE50, MobileFaceNet

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_leaf(leaf: str, shape: tuple[int, ...], is_bn: bool
                ) -> tuple[str, tuple[int, ...], Callable[[Any], np.ndarray]]:
  """(torch leaf name, torch shape, torch value -> flax value) of one Flax leaf."""
  if is_bn:
    return _BN_LEAVES[leaf], shape, as_float32
  if leaf == "kernel" and len(shape) == 4:
    kh, kw, i, o = shape
    return "weight", (o, i, kh, kw), conv_oihw_to_hwio
  if leaf == "kernel" and len(shape) == 2:
    return "weight", shape[::-1], linear_to_dense
  if leaf == "bias":
    return "bias", shape, as_float32
  if leaf == "alpha":
    return "weight", shape, as_float32
  raise ValueError(f"no torch name for Flax leaf {leaf!r} of shape {shape}")


@functools.lru_cache(maxsize=None)
def _abstract_params(module: nn.Module, input_hw: tuple[int, int]) -> Any:
  x = jax.ShapeDtypeStruct((1, *input_hw, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]


def torch_layout(module: nn.Module, input_hw: tuple[int, int]
                 ) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], Callable | None]]:
  """torch key -> (Flax path or () if dropped, torch shape, converter) for `module`."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(_abstract_params(module, input_hw))[0]
  bn_prefixes = {tuple(k.key for k in path[:-1]) for path, _ in flat if path[-1].key == "mean"}
  for path, leaf in flat:
    names = tuple(k.key for k in path)
    is_bn = names[:-1] in bn_prefixes
    t_leaf, t_shape, fn = _torch_leaf(names[-1], tuple(leaf.shape), is_bn)
    prefix = ".".join(names[:-1])
    out[f"{prefix}.{t_leaf}"] = (names, t_shape, fn)
    if is_bn and names[-1] == "mean":
      out[f"{prefix}.num_batches_tracked"] = ((), (), None)
  return out


def convert_module(module: nn.Module, input_hw: tuple[int, int],
                   state_dict: Mapping[str, Any], source: str,
                   dropped: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
  """Strictly converts a torch state_dict for `module`; returns the nested params tree.

  `dropped`: further torch keys (with shapes) that must be present but are not used.
  """
  layout = torch_layout(module, input_hw)
  for name, shape in (dropped or {}).items():
    layout[name] = ((), tuple(shape), None)
  check_state_dict(state_dict, {k: v[1] for k, v in layout.items()}, source)
  params: dict[str, Any] = {}
  for name, (path, _, fn) in layout.items():
    if not path:
      continue
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = fn(state_dict[name])
  return params


# name -> (module, input (H, W), official constructor, unused torch entries with shapes)
_ARCHS: dict[str, Callable[[], tuple[nn.Module, tuple[int, int], str, dict]]] = {
    "irse50": lambda: (IRSE50(), (112, 112), "Backbone(50, 0.6, 'ir_se')", {}),
    "ir152": lambda: (IR152(), (112, 112), "IR_152((112, 112))", {}),
    "mobile_face": lambda: (MobileFaceNet(512), (112, 112), "MobileFaceNet(512)", {}),
    "facenet": lambda: (InceptionResnetV1(), (160, 160), "InceptionResnetV1(num_classes=8631)",
                        {"logits.weight": (8631, 512), "logits.bias": (8631,)}),
}


def expected_torch_shapes(arch: str) -> dict[str, tuple[int, ...]]:
  """Every key (with its shape) of the official state_dict of `arch`, from the Flax module."""
  module, hw, _, dropped = _ARCHS[arch]()
  return {**{k: v[1] for k, v in torch_layout(module, hw).items()}, **dropped}


def _convert(arch: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  module, hw, ctor, dropped = _ARCHS[arch]()
  return convert_module(module, hw, state_dict, f"{arch} ({ctor})", dropped)


def convert_irse50(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """irse50.pth (`Backbone(50, 0.6, 'ir_se')`) -> params of `IRSE50()`."""
  return _convert("irse50", state_dict)


def convert_ir152(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """ir152.pth (`IR_152((112, 112))`) -> params of `IR152()`."""
  return _convert("ir152", state_dict)


def convert_mobileface(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """mobile_face.pth (`MobileFaceNet(512)`) -> params of `MobileFaceNet(512)`."""
  return _convert("mobile_face", state_dict)


def convert_facenet(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """facenet.pth (`InceptionResnetV1(num_classes=8631)`) -> params of `InceptionResnetV1()`.

  `logits.weight` (8631, 512) and `logits.bias` (classify=True head) are required and dropped.
  """
  return _convert("facenet", state_dict)


def convert_face(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts the state_dict of registry model `name` (see models/face/registry.py)."""
  from clip2protect_jax.models.face import registry  # registry imports this module lazily
  return registry.get(name).convert(state_dict)
