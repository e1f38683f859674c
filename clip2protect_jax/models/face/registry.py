"""The face-recognition registry: one entry per FR model, and the embedding API.

Each `FRModel` says how to build the module, convert its torch weights, feed it and read
its output. Adding a model = write its module and converter, then one `register(FRModel(...))`
call below. Thresholds are cosine similarities at FAR 0.1 / 0.01 / 0.001 (AMT-GAN's values,
REFERENCE.md section 6): a pair is "the same person" when cos > threshold.

Input convention of the CLIP2Protect models: an image in [0, 1] is cropped with the face box,
mapped to [-1, 1] by (x - 0.5) * 2 and resized bilinearly (align_corners=False, no
antialias) to `input_size` (see resize.crop_and_resize_bilinear and `preprocess`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip2protect_jax import resize
from clip2protect_jax.models.face.facenet import InceptionResnetV1
from clip2protect_jax.models.face.ir152 import IR152
from clip2protect_jax.models.face.irse import IRSE50, MobileFaceNet


@dataclasses.dataclass(frozen=True)
class FRModel:
  """Everything the pipeline needs to know about one face-recognition model."""
  name: str
  make: Callable[..., nn.Module]          # make(dtype=...) -> module; __call__(x) -> [N, D]
  convert: Callable[[Mapping[str, Any]], Any]  # torch state_dict (numpy) -> params
  weights_file: str                       # the official checkpoint's file name
  input_size: tuple[int, int]             # (H, W) the module expects
  value_range: tuple[float, float]        # range of the module's input pixels
  embedding_size: int
  l2_normalized: bool                     # whether the module's output has unit norm
  thresholds: Mapping[float, float]       # FAR -> cosine threshold
  description: str = ""

  def module(self, dtype: Any = jnp.float32) -> nn.Module:
    return self.make(dtype=dtype)


_REGISTRY: dict[str, FRModel] = {}
_ALIASES = {"mobileface": "mobile_face"}


def register(model: FRModel) -> FRModel:
  if model.name in _REGISTRY:
    raise ValueError(f"FR model {model.name!r} is already registered")
  _REGISTRY[model.name] = model
  return model


def get(name: str) -> FRModel:
  name = _ALIASES.get(name, name)
  if name not in _REGISTRY:
    raise KeyError(f"unknown FR model {name!r}; known: {', '.join(names())}")
  return _REGISTRY[name]


def names() -> list[str]:
  return list(_REGISTRY)


def _converters():
  from clip2protect_jax.convert import face  # lazy: convert.face imports the modules
  return face


register(FRModel(
    "ir152", IR152, lambda sd: _converters().convert_ir152(sd), "ir152.pth", (112, 112),
    (-1.0, 1.0), 512, False, {0.1: 0.094632, 0.01: 0.166788, 0.001: 0.227922},
    "IR-152 (face.evoLVe, no SE), raw BatchNorm1d output"))
register(FRModel(
    "irse50", IRSE50, lambda sd: _converters().convert_irse50(sd), "irse50.pth", (112, 112),
    (-1.0, 1.0), 512, True, {0.1: 0.144840, 0.01: 0.241045, 0.001: 0.312703},
    "IR-SE-50 ArcFace backbone, Backbone(50, 0.6, 'ir_se')"))
register(FRModel(
    "facenet", InceptionResnetV1, lambda sd: _converters().convert_facenet(sd), "facenet.pth",
    (160, 160), (-1.0, 1.0), 512, True, {0.1: 0.256587, 0.01: 0.409131, 0.001: 0.591191},
    "FaceNet InceptionResnetV1 (VGGFace2), BN eps 1e-3"))
register(FRModel(
    "mobile_face", lambda dtype=jnp.float32: MobileFaceNet(512, dtype=dtype),
    lambda sd: _converters().convert_mobileface(sd), "mobile_face.pth", (112, 112),
    (-1.0, 1.0), 512, True, {0.1: 0.183635, 0.01: 0.301611, 0.001: 0.380878},
    "MobileFaceNet(512)"))


# ------------------------------------------------------------------ embedding API

def embed(name: str, params: Any, images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """[N, H, W, 3] images already at the model's size and range -> [N, D] raw model output.

  Jittable and differentiable w.r.t. `images`; `params` as returned by the converter.
  """
  spec = get(name)
  if tuple(images.shape[1:3]) != spec.input_size:
    raise ValueError(f"{name} expects {spec.input_size} inputs, got {images.shape}")
  return spec.module(dtype).apply({"params": params}, images)


def preprocess(name: str, images01: jax.Array, boxes: jax.Array) -> jax.Array:
  """[N, H, W, 3] in [0, 1] + boxes [N, 4] (x1, y1, x2, y2) -> model input, e.g. [-1, 1].

  The official order: crop, (x - 0.5) * 2, bilinear resize to `input_size`.
  """
  spec = get(name)
  lo, hi = spec.value_range
  x = (images01 - 0.5) * 2.0 if (lo, hi) == (-1.0, 1.0) else lo + (hi - lo) * images01
  return resize.crop_and_resize_bilinear(x, boxes, spec.input_size)


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Unit L2 norm over the last axis (F.normalize semantics)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cosine of [..., D] and [..., D] (broadcasting) -> [...]."""
  return jnp.sum(normalize(a) * normalize(b), axis=-1)


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """All-pairs cosine: [N, D] x [M, D] -> [N, M]."""
  return normalize(a) @ normalize(b).T


def is_match(name: str, cos: jax.Array, far: float = 0.01) -> jax.Array:
  """cos > threshold of model `name` at false-accept rate `far` (0.1, 0.01 or 0.001)."""
  return cos > get(name).thresholds[far]
