"""Golden item `clip_preprocess`: the official CLIP input chain (resize.npz `clip_*` arrays).

A [0,1] 1024x1024 image through Normalize(-1, 2) (the official quirk) and torch bicubic
Resize(224, antialias=False): `clip_resized_noaa`; then CenterCrop and the CLIP mean/std:
`clip_input_noaa`. Tolerance 1e-5 scaled (golden README, float32 coordinates). No float64
twins exist (torch's coordinates are float32), so --float64 runs the same float32 checks.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from clip2protect_jax import clip_preprocess as cp
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays

TOL = 1e-5


def _nchw(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  del manifest, float64
  g = load_arrays(golden_dir, "resize.npz")
  img = np.transpose(g["img1024_u8"], (0, 2, 3, 1)).astype(np.float32) / np.float32(255)
  shifted = jax.jit(lambda x: cp.resize_bicubic((x + 1.0) / 2.0, (224, 224)))(img)
  full = jax.jit(lambda x: cp.clip_preprocess(x, official_shift=True))(img)
  return [compare(item, "clip_resized_noaa", _nchw(shifted), g["clip_resized_noaa"], TOL),
          compare(item, "clip_input_noaa", _nchw(full), g["clip_input_noaa"], TOL)]
