"""Resizes that match torch's `F.interpolate` exactly (NHWC, jittable, differentiable).

`jax.image.resize` antialiases when downsampling and uses other conventions, so it does not
match the official pipeline. These functions reproduce torch (golden/resize.npz):
  bilinear, align_corners=False, no antialias: scale = in/out and the source coordinate
    src = scale * (dst + 0.5) - 0.5 are computed in float32 (as torch does for float32
    tensors), clamped below at 0; i0 = floor(src), i1 = min(i0 + 1, in - 1),
    weights (1 - l, l) with l = src - i0; rows and columns are separable.
  legacy nearest (torch's default mode): src = min(floor(dst * scale), in - 1).
Value ranges are preserved: any input range works ([0, 1] images, [-1, 1] FR inputs), and
bilinear outputs are convex combinations of input pixels. Gradients flow to the images (not
to the box, whose coordinates are rounded). Images are [N, H, W, C].
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _bilinear_taps_np(size: int, out: int):
  """Source indices and weights of torch's bilinear resize size -> out, in numpy float32.

  Computed on the host so that the float32 rounding is exactly torch's: XLA rewrites a
  division by a broadcast scalar as a multiply by the reciprocal and may contract
  `scale * t - 0.5` into an FMA, both of which move coordinates by an ulp and outputs by
  up to ~6e-5. Returns (i0, i1, w0, w1), each [out] (int32, int32, float32, float32).
  """
  scale = np.float32(size) / np.float32(out)
  src = scale * (np.arange(out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int32), size - 1)
  lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  i1 = np.minimum(i0 + 1, size - 1).astype(np.int32)
  return i0, i1, (np.float32(1.0) - lam).astype(np.float32), lam


@functools.lru_cache(maxsize=32)
def _bilinear_taps_table(max_size: int, out: int):
  """`_bilinear_taps_np(k, out)` for every crop size k = 0..max_size (k = 0 acts as 1):
  four [max_size + 1, out] arrays, so a traced crop size just indexes them."""
  rows = [_bilinear_taps_np(max(k, 1), out) for k in range(max_size + 1)]
  return tuple(np.stack(a) for a in zip(*rows))


def _bilinear_taps(start, size, max_size: int, out: int):
  """Taps of a (traced) crop [start, start + size) of an axis of length `max_size`."""
  i0, i1, w0, w1 = (jnp.asarray(a) for a in _bilinear_taps_table(max_size, out))
  return start + i0[size], start + i1[size], w0[size], w1[size]


def _sample_bilinear(img, rows, cols):
  """img [H, W, C]; rows/cols from `_bilinear_taps` -> [out_h, out_w, C] (torch's order:
  interpolate along W within the two source rows, then along H)."""
  r0, r1, h0, h1 = rows
  c0, c1, w0, w1 = cols
  dt = img.dtype
  h0, h1, w0, w1 = (a.astype(dt) for a in (h0, h1, w0, w1))

  def along_w(band):  # [out_h, W, C] -> [out_h, out_w, C]
    return (w0[None, :, None] * jnp.take(band, c0, axis=1) +
            w1[None, :, None] * jnp.take(band, c1, axis=1))

  top = along_w(jnp.take(img, r0, axis=0))
  bottom = along_w(jnp.take(img, r1, axis=0))
  return h0[:, None, None] * top + h1[:, None, None] * bottom


def resize_bilinear(images: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """`F.interpolate(x, size=out_hw, mode='bilinear', align_corners=False)` (no antialias).

  images [N, H, W, C] (any range) -> [N, out_h, out_w, C].
  """
  _, h, w, _ = images.shape
  rows = tuple(jnp.asarray(a) for a in _bilinear_taps_np(h, int(out_hw[0])))
  cols = tuple(jnp.asarray(a) for a in _bilinear_taps_np(w, int(out_hw[1])))
  return jax.vmap(lambda im: _sample_bilinear(im, rows, cols))(images)


def _nearest_index(size: int, out: int) -> np.ndarray:
  """torch's legacy nearest source index, float32 scale, computed on the host."""
  scale = np.float32(size) / np.float32(out)
  src = np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(src, size - 1)


def resize_nearest(images: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """`F.interpolate(x, size=out_hw)` (legacy 'nearest', torch's default mode).

  images [N, H, W, C] (any range) -> [N, out_h, out_w, C]; e.g. 1024 -> 256 picks
  every 4th pixel starting at 0.
  """
  _, h, w, _ = images.shape
  rows = _nearest_index(h, int(out_hw[0]))
  cols = _nearest_index(w, int(out_hw[1]))
  return jnp.take(jnp.take(images, rows, axis=1), cols, axis=2)


def box_to_crop(box: jax.Array, hw: Sequence[int]):
  """[x1, y1, x2, y2] -> int32 (row0, rows, col0, cols) of img[round(y1):round(y2),
  round(x1):round(x2)] (round half to even, as Python's round). Ends are clipped to the
  image like slicing; negative starts are clipped to 0 (torch would count them from the
  end); the crop keeps at least one pixel."""
  h, w = hw
  x1, y1, x2, y2 = (jnp.round(box[i]).astype(jnp.int32) for i in range(4))
  y1, y2 = jnp.clip(y1, 0, h - 1), jnp.clip(y2, 0, h)
  x1, x2 = jnp.clip(x1, 0, w - 1), jnp.clip(x2, 0, w)
  return y1, jnp.maximum(y2 - y1, 1), x1, jnp.maximum(x2 - x1, 1)


def crop_and_resize_bilinear(images: jax.Array, boxes: jax.Array,
                             out_hw: Sequence[int]) -> jax.Array:
  """Per image: `F.interpolate(img[:, round(y1):round(y2), round(x1):round(x2)][None],
  size=out_hw, mode='bilinear', align_corners=False)`, the FR input path of stage 2.

  images [N, H, W, C] (any range); boxes [N, 4] = (x1, y1, x2, y2) in pixels of `images`,
  a traced array (one compilation for all boxes) -> [N, out_h, out_w, C]. The sampling
  grid of the crop is computed directly in the image, so no crop of dynamic size is made:
  torch's taps for every possible crop size are tabulated on the host ([H+1, out_h] and
  [W+1, out_w]) and indexed with the traced size.
  """
  _, h, w, _ = images.shape
  out_h, out_w = int(out_hw[0]), int(out_hw[1])

  def one(img, box):
    r0, nr, c0, nc = box_to_crop(box.astype(jnp.float32), (h, w))
    return _sample_bilinear(img, _bilinear_taps(r0, nr, h, out_h),
                            _bilinear_taps(c0, nc, w, out_w))

  return jax.vmap(one)(images, jnp.asarray(boxes))
