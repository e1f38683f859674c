"""The face-recognition registry: one entry per FR model, and the embedding API.

Each `FRModel` says how to build the module, convert its torch weights, feed it and read
its output. Adding a model = write its module and converter, then one `register(FRModel(...))`
call below. Thresholds are cosine similarities at FAR 0.1 / 0.01 / 0.001 (AMT-GAN's values,
REFERENCE.md section 6): a pair is "the same person" when cos > threshold.

Input convention of the CLIP2Protect models (alignment "box"): an image in [0, 1] is
cropped with the face box, mapped to [-1, 1] by (x - 0.5) * 2 and resized bilinearly
(align_corners=False, no antialias) to `input_size` (see resize.crop_and_resize_bilinear and
`preprocess`).

The real models installable here (tools/fetch_assets.py: dlib_resnet, faceres, mobileface)
need a landmark-aligned input: their alignment is an affine warp computed once from the
original photo's landmarks and applied to generated images by `fr_align.warp_affine`
(differentiable), so they can be stage-2 surrogates. Their weights load straight from the
fetched TF.js files (`load_folder`), and their thresholds come from
`tools/calibrate_thresholds.py` (data/fr_thresholds.json, with the pairs behind each value).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip2protect_jax import fr_align, resize
from clip2protect_jax.models.face.dlib_resnet import DlibResNet
from clip2protect_jax.models.face.facenet import InceptionResnetV1
from clip2protect_jax.models.face.human import FaceRes, MobileFace
from clip2protect_jax.models.face.ir152 import IR152
from clip2protect_jax.models.face.irse import IRSE50, MobileFaceNet


# The paper's four models keep these; calibrated values (data/fr_thresholds.json) are read
# for the TF.js models only.
AMT_GAN_THRESHOLDS = "AMT-GAN's released thresholds (REFERENCE.md section 6)"


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
  alignment: str = "box"                  # "box" or one of fr_align.ALIGNMENTS
  weights_subdir: str = ""                # folder under config.fr.weights_dir ("" = name)
  load_folder: Callable[[str], Any] | None = None  # folder of fetched files -> params
  threshold_source: str = AMT_GAN_THRESHOLDS
  fetched_files: tuple[str, ...] = ()     # the files load_folder reads (weights.fingerprint)

  def module(self, dtype: Any = jnp.float32) -> nn.Module:
    return self.make(dtype=dtype)


_REGISTRY: dict[str, FRModel] = {}
_ALIASES: dict[str, str] = {}
CALIBRATED_THRESHOLDS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data", "fr_thresholds.json")


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


@functools.lru_cache(maxsize=1)
def calibrated() -> dict[str, Any]:
  """data/fr_thresholds.json: model -> {"thresholds": {FAR: value}, "metric", "pairs", ...}
  as written by tools/calibrate_thresholds.py ({} if the file is absent)."""
  if not os.path.isfile(CALIBRATED_THRESHOLDS):
    return {}
  with open(CALIBRATED_THRESHOLDS) as f:
    return json.load(f)["models"]


def _calibrated_thresholds(name: str) -> dict[float, float]:
  entry = calibrated().get(name)
  return {float(k): float(v) for k, v in entry["thresholds"].items()} if entry else {}


def get_calibration_source(name: str) -> str:
  """Where the calibrated thresholds of `name` (a registry model or 'dlib') come from."""
  entry = calibrated().get(name)
  if not entry:
    return "not calibrated: run tools/calibrate_thresholds.py"
  return (f"calibrated on {entry['dataset']}: {entry['impostor_pairs']} impostor pairs, "
          f"{entry['genuine_pairs']} genuine pairs ({entry['command']})")


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


def _no_torch(name: str):
  def convert(state_dict):
    raise ValueError(f"{name} has no PyTorch checkpoint: its weights load from the TF.js "
                     "files that tools/fetch_assets.py puts in checkpoints/")
  return convert


def _tfjs_loader(module: str, function: str) -> Callable[[str], Any]:
  """folder -> params through clip2protect_jax.convert.<module>.<function> (imported
  lazily: the converters import the modules)."""
  def load(folder: str):
    import importlib
    return getattr(importlib.import_module(f"clip2protect_jax.convert.{module}"),
                   function)(folder)
  return load


def _register_tfjs(name: str, make, load: Callable[[str], Any], subdir: str,
                   files: tuple[str, ...], size: tuple[int, int], dim: int, alignment: str,
                   description: str) -> None:
  """A model whose weights come as TF.js files from npm (`files` in `subdir`); input RGB in
  [0, 255]."""
  register(FRModel(
      name, make, _no_torch(name), "", size, (0.0, 255.0), dim, False,
      _calibrated_thresholds(name), description, alignment, subdir, load,
      get_calibration_source(name), files))


_register_tfjs("dlib_resnet", DlibResNet, _tfjs_loader("dlib_resnet", "load_dlib_resnet"),
               "face-api", ("face_recognition_model-weights_manifest.json",
                            "face_recognition_model.bin"), (150, 150), 128, "dlib_chip",
               "dlib ResNet-29 descriptor (face-api's quantised TF.js weights), dlib chip")
_register_tfjs("faceres", FaceRes, _tfjs_loader("human", "load_faceres"), "human-models",
               ("faceres.json", "faceres.bin"), (224, 224), 1024, "loose",
               "HSE MobileNet (human-models faceres), global_pooling/Mean, loose crop")
_register_tfjs("mobileface", MobileFace, _tfjs_loader("human", "load_mobileface"),
               "human-models", ("mobileface.json", "mobileface.bin"), (112, 112), 256,
               "arcface", "MobileFace (human-models mobileface), ArcFace-aligned crop")


# ------------------------------------------------------------------ embedding API

def embed(name: str, params: Any, images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """[N, H, W, 3] images already at the model's size and range -> [N, D] raw model output.

  Jittable and differentiable w.r.t. `images`; `params` as returned by the converter.
  """
  spec = get(name)
  if tuple(images.shape[1:3]) != spec.input_size:
    raise ValueError(f"{name} expects {spec.input_size} inputs, got {images.shape}")
  return spec.module(dtype).apply({"params": params}, images)


def to_range(name: str, images01: jax.Array) -> jax.Array:
  """[0, 1] pixels -> the model's input range ((x - 0.5) * 2 for [-1, 1], as official)."""
  lo, hi = get(name).value_range
  return (images01 - 0.5) * 2.0 if (lo, hi) == (-1.0, 1.0) else lo + (hi - lo) * images01


def preprocess(name: str, images01: jax.Array, boxes: jax.Array) -> jax.Array:
  """[N, H, W, 3] in [0, 1] + boxes [N, 4] (x1, y1, x2, y2) -> model input, e.g. [-1, 1].

  The official order: crop, (x - 0.5) * 2, bilinear resize to `input_size`.
  """
  return resize.crop_and_resize_bilinear(to_range(name, images01), boxes, get(name).input_size)


def model_input(name: str, images01: jax.Array, crops: Mapping[str, jax.Array]) -> jax.Array:
  """[N, H, W, 3] in [0, 1] -> model input, by the model's alignment.

  crops: "box" -> [N, 4] face boxes (alignment "box"); model name -> [N, 2, 3] its affine
  warp (output pixel -> image pixel, fr_align.transform_for) for aligned models.
  """
  spec = get(name)
  if spec.alignment == "box":
    return preprocess(name, images01, crops["box"])
  if name not in crops:
    raise KeyError(f"{name} needs its {spec.alignment} warp in crops (fr_align.transform_for)")
  x = fr_align.warp_affine(images01, crops[name], spec.input_size,
                           fr_align.supersample_for(images01.shape[1]))
  return to_range(name, x)


def aligned_models(names) -> tuple[str, ...]:
  """The models of `names` that need a landmark warp (not the official face box)."""
  return tuple(n for n in names if get(n).alignment != "box")


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
