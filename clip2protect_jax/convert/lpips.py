"""LPIPS-VGG weights -> Flax params of `clip2protect_jax.models.lpips.LPIPS` (numpy float32).

Accepted namings (all strict: missing, extra or mis-shaped keys raise WeightsMismatchError):
- `convert_lpips(vgg_state_dict, heads_state_dict, shift=None, scale=None)`: the pieces the
  lpips package loads: torchvision `vgg16().state_dict()` (`features.{i}.weight/bias`; the
  `classifier.*` entries of a full vgg16 state_dict are accepted and dropped) and the
  linear heads file of the lpips wheel (`lpips/weights/v0.1/vgg.pth`: `lin{K}.model.1.weight`,
  shape (1, C, 1, 1)). shift/scale default to lpips' ScalingLayer constants.
- `convert_lpips_state_dict(state_dict)`: a whole `lpips.LPIPS(net='vgg')` state_dict:
  `scaling_layer.shift/scale`, `net.slice{1..5}.{i}.weight/bias`, and the heads under both of
  their registered names `lin{K}.model.1.weight` and `lins.{K}.model.1.weight` (either or
  both; with both, `lins.{K}` is the value a loaded torch model holds, so it is used).
Renamings: conv OIHW -> HWIO under `vgg/conv{i}`; heads (1, C, 1, 1) -> `lin{K}` (C,).
"""
from __future__ import annotations

from typing import Any, Mapping

from flax.traverse_util import unflatten_dict

from clip2protect_jax.convert.common import as_float32, check_state_dict, conv_oihw_to_hwio
from clip2protect_jax.models.lpips import (LPIPS_SCALE, LPIPS_SHIFT, VGG16_CHANNELS,
                                           VGG16_SLICES)

_VGG16_CLASSIFIER = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                     "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                     "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}


def _convs():
  """(slice number 1..5, features index, in channels, out channels) for the 13 convs."""
  out, cin = [], 3
  for s, (idxs, chans) in enumerate(zip(VGG16_SLICES, VGG16_CHANNELS), start=1):
    for i, c in zip(idxs, chans):
      out.append((s, i, cin, c))
      cin = c
  return out


def _head_channels() -> list[int]:
  return [chans[-1] for chans in VGG16_CHANNELS]


def vgg_shapes(prefix_of=lambda s, i: f"features.{i}") -> dict[str, tuple]:
  shapes = {}
  for s, i, cin, cout in _convs():
    shapes[f"{prefix_of(s, i)}.weight"] = (cout, cin, 3, 3)
    shapes[f"{prefix_of(s, i)}.bias"] = (cout,)
  return shapes


def head_shapes(name_of=lambda k: f"lin{k}") -> dict[str, tuple]:
  return {f"{name_of(k)}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(_head_channels())}


def _params(convs: dict[int, tuple[Any, Any]], heads: list[Any], shift, scale) -> dict:
  flat = {("shift",): as_float32(shift).reshape(3), ("scale",): as_float32(scale).reshape(3)}
  for i, (w, b) in convs.items():
    flat[("vgg", f"conv{i}", "kernel")] = conv_oihw_to_hwio(w)
    flat[("vgg", f"conv{i}", "bias")] = as_float32(b)
  for k, w in enumerate(heads):
    flat[(f"lin{k}",)] = as_float32(w).reshape(-1)
  return {"params": unflatten_dict(flat)}


def convert_lpips(vgg_state_dict: Mapping[str, Any], heads_state_dict: Mapping[str, Any],
                  shift=LPIPS_SHIFT, scale=LPIPS_SCALE) -> dict[str, Any]:
  """torchvision vgg16 features + lpips v0.1 heads -> {'params': ...}."""
  vgg = dict(vgg_state_dict)
  if any(k.startswith("classifier.") for k in vgg):
    check_state_dict({k: vgg[k] for k in vgg if k.startswith("classifier.")},
                     _VGG16_CLASSIFIER, "torchvision vgg16 classifier")
    vgg = {k: v for k, v in vgg.items() if not k.startswith("classifier.")}
  check_state_dict(vgg, vgg_shapes(), "torchvision vgg16 state_dict")
  check_state_dict(heads_state_dict, head_shapes(), "lpips v0.1 vgg heads")
  convs = {i: (vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"]) for _, i, _, _ in _convs()}
  heads = [heads_state_dict[f"lin{k}.model.1.weight"] for k in range(5)]
  return _params(convs, heads, shift, scale)


def convert_lpips_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Whole `lpips.LPIPS(net='vgg')` state_dict -> {'params': ...} (shift/scale from it)."""
  sd = dict(state_dict)
  trunk = vgg_shapes(lambda s, i: f"net.slice{s}.{i}")
  expected = {"scaling_layer.shift": (1, 3, 1, 1), "scaling_layer.scale": (1, 3, 1, 1), **trunk}
  has_lin = any(k.startswith("lin") and not k.startswith("lins.") for k in sd)
  has_lins = any(k.startswith("lins.") for k in sd)
  if has_lin or not has_lins:
    expected.update(head_shapes())
  if has_lins:
    expected.update(head_shapes(lambda k: f"lins.{k}"))
  check_state_dict(sd, expected, "lpips.LPIPS(net='vgg') state_dict")
  head = (lambda k: f"lins.{k}") if has_lins else (lambda k: f"lin{k}")
  convs = {i: (sd[f"net.slice{s}.{i}.weight"], sd[f"net.slice{s}.{i}.bias"])
           for s, i, _, _ in _convs()}
  heads = [sd[f"{head(k)}.model.1.weight"] for k in range(5)]
  return _params(convs, heads, sd["scaling_layer.shift"], sd["scaling_layer.scale"])
