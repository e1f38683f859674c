"""face-api's TF.js `face_recognition_model` (dlib's ResNet descriptor) -> DlibResNet params.

Source: checkpoints/face-api/face_recognition_model-weights_manifest.json + .bin from npm
@vladmandic/face-api 1.7.15 (fetched by `python tools/fetch_assets.py`): 117 tensors,
uint8-quantised per tensor (tfjs.read_weights dequantises them). Name mapping:
  <layer>/conv/filters (kh, kw, I, O)  -> <layer>/conv/kernel   (already HWIO)
  <layer>/conv/bias (O,)               -> <layer>/conv/bias
  <layer>/scale/weights|biases (O,)    -> <layer>/scale/scale|bias
  fc (256, 128)                        -> fc/kernel             (already (in, out))
where <layer> is `conv32_down` or `<block>/conv1|conv2`. The expected names and shapes
come from `jax.eval_shape` of DlibResNet's init; any missing, unexpected or mis-shaped
tensor raises WeightsMismatchError.

Apply with `DlibResNet().apply({"params": load_dlib_resnet(folder)}, chips)`.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.convert import tfjs
from clip2protect_jax.convert.common import as_float32, check_state_dict
from clip2protect_jax.models.face.dlib_resnet import CHIP_SIZE, DlibResNet

MANIFEST = "face_recognition_model-weights_manifest.json"
DEFAULT_FOLDER = "checkpoints/face-api"
_SOURCE = "face-api face_recognition_model (dlib ResNet)"

# (Flax module, leaf) -> TF.js leaf
_LEAF = {("conv", "kernel"): "filters", ("conv", "bias"): "bias",
         ("scale", "scale"): "weights", ("scale", "bias"): "biases"}


@functools.lru_cache(maxsize=1)
def _abstract_params() -> Any:
  x = jax.ShapeDtypeStruct((1, CHIP_SIZE, CHIP_SIZE, 3), jnp.float32)
  return jax.eval_shape(DlibResNet().init, jax.random.PRNGKey(0), x)["params"]


def tfjs_layout() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """TF.js weight name -> (Flax params path, shape) for DlibResNet."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(_abstract_params())[0]:
    names = tuple(k.key for k in path)
    name = "fc" if names == ("fc", "kernel") else "/".join(names[:-1] + (_LEAF[names[-2:]],))
    out[name] = (names, tuple(leaf.shape))
  return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Every tensor of face-api's face_recognition_model with its shape (117 entries)."""
  return {k: v[1] for k, v in tfjs_layout().items()}


def convert_dlib_resnet(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """TF.js name -> array (as tfjs.read_weights returns) -> nested params of DlibResNet()."""
  layout = tfjs_layout()
  check_state_dict(weights, {k: v[1] for k, v in layout.items()}, _SOURCE,
                   "expected the @vladmandic/face-api 1.7.15 files; refetch with "
                   "`python tools/fetch_assets.py`.")
  params: dict[str, Any] = {}
  for name, (path, _) in layout.items():
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = as_float32(weights[name])
  return params


def load_dlib_resnet(folder: str = DEFAULT_FOLDER) -> dict[str, Any]:
  """Reads `folder`/face_recognition_model-weights_manifest.json (+ its .bin shard) ->
  params of DlibResNet()."""
  manifest = os.path.join(folder, MANIFEST)
  if not os.path.isfile(manifest):
    raise FileNotFoundError(
        f"{manifest} is missing: dlib's ResNet weights (face-api's face_recognition_model) "
        f"are not in {folder!r}; run `python tools/fetch_assets.py` to fetch them.")
  return convert_dlib_resnet(tfjs.read_weights(manifest))


__all__ = ["MANIFEST", "convert_dlib_resnet", "expected_shapes", "load_dlib_resnet",
           "tfjs_layout"]
