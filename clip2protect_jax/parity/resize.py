"""Golden item `resize`: torch's F.interpolate conventions of the FR and stage-1 paths.

crop (1,3,300,260) -> bilinear 112 / 160 (align_corners=False, no antialias) at 2e-6
scaled, legacy nearest 112 exact; a [0,1] 1024 image -> nearest 256 exact. The box path
(`crop_and_resize_bilinear`, box as data) is checked on the same golden outputs by pasting
the crop into a larger canvas and cropping it back with a fractional box. Resize goldens
have no float64 twins (torch's coordinates are float32), so --float64 runs the same checks.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip2protect_jax import resize
from clip2protect_jax.parity import Comparison, compare
from clip2protect_jax.parity.recipe import load_arrays

BILINEAR_TOL = 2e-6
# The crop sits at rows 36:336, cols 61:321 of the canvas; the box rounds (half to even)
# back to exactly that: [x1, y1, x2, y2].
CANVAS_HW, CROP_AT, BOX = (400, 380), (36, 61), (60.6, 36.5, 321.4, 335.5)


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def run(item: str, golden_dir: str, manifest: dict[str, Any],
        float64: bool = False) -> list[Comparison]:
  del manifest, float64
  g = load_arrays(golden_dir, "resize.npz")
  crop = jnp.asarray(np.transpose(g["crop"], (0, 2, 3, 1)))
  img = jnp.asarray(np.transpose(g["img1024_u8"], (0, 2, 3, 1)).astype(np.float32) / 255)
  canvas = np.zeros((1, *CANVAS_HW, 3), np.float32)
  (r, c), (h, w) = CROP_AT, crop.shape[1:3]
  canvas[:, r:r + h, c:c + w] = np.asarray(crop)
  boxes = jnp.asarray([BOX], jnp.float32)
  crop_resize = jax.jit(resize.crop_and_resize_bilinear, static_argnums=2)
  out = []
  for s in (112, 160):
    key = f"crop_bilinear{s}"
    out.append(compare(item, key, nchw(resize.resize_bilinear(crop, (s, s))), g[key],
                       BILINEAR_TOL))
    out.append(compare(item, f"box_{key}", nchw(crop_resize(canvas, boxes, (s, s))), g[key],
                       BILINEAR_TOL))
  out.append(compare(item, "crop_nearest112", nchw(resize.resize_nearest(crop, (112, 112))),
                     g["crop_nearest112"], 0.0))
  out.append(compare(item, "img_nearest256", nchw(resize.resize_nearest(img, (256, 256))),
                     g["img_nearest256"], 0.0))
  return out
