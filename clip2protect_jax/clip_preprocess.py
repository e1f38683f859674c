"""CLIP image preprocessing as the official `NCELoss.preprocess` applies it (NHWC, jittable).

Chain (torchvision 0.9.1 on tensors, as pinned by the official repo):
  1. optional official quirk `official_shift`: Normalize(mean=-1, std=2), i.e. (v + 1) / 2.
     The official code applies it to images already in [0, 1], so CLIP sees [0.5, 1];
  2. Resize(size, bicubic) of the short side, antialias=False (torch `F.interpolate(...,
     mode='bicubic', align_corners=False)`: Keys kernel a = -0.75, src = scale*(dst+0.5)-0.5
     with scale = in/out, taps floor(src)-1 .. floor(src)+2 clamped to the border, no
     clamping of the values). Coordinates and weights are computed in the image's float
     type promoted to at least float32, like torch's opmath (float32 for float32 images);
  3. CenterCrop(size) (offsets int(round((in - size) / 2)), Python rounding);
  4. Normalize with the CLIP mean/std.
Differentiable w.r.t. the images; shapes are static, so taps/weights are numpy constants.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_A = -0.75  # torch's bicubic constant


def bicubic_taps(in_size: int, out_size: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """torch bicubic (align_corners=False) source indices (out, 4) int32 and weights (out, 4).

  All arithmetic in `dtype` (torch's opmath type): float32 for float32 images.
  """
  dt = np.dtype(dtype).type
  scale = dt(in_size) / dt(out_size)
  src = scale * (np.arange(out_size, dtype=dt) + dt(0.5)) - dt(0.5)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  t = np.clip(src - i0.astype(dt), dt(0), dt(1))
  a = dt(_A)

  def near(x):  # |x| <= 1
    return ((a + dt(2)) * x - (a + dt(3))) * x * x + dt(1)

  def far(x):  # 1 < |x| < 2
    return ((a * x - dt(5) * a) * x + dt(8) * a) * x - dt(4) * a

  u = dt(1) - t
  weights = np.stack([far(t + dt(1)), near(t), near(u), far(u + dt(1))], axis=1).astype(dt)
  idx = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1).astype(np.int32)
  return idx, weights


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  """Bicubic resize of one spatial axis of x (N, H, W, C)."""
  opmath = np.promote_types(x.dtype, np.float32)
  idx, w = bicubic_taps(x.shape[axis], out_size, opmath)
  taps = jnp.take(x, jnp.asarray(idx.reshape(-1)), axis=axis)
  shape = list(x.shape)
  shape[axis:axis + 1] = [out_size, 4]
  taps = taps.reshape(shape).astype(opmath)
  wshape = [1] * len(shape)
  wshape[axis], wshape[axis + 1] = out_size, 4
  return jnp.sum(taps * jnp.asarray(w).reshape(wshape), axis=axis + 1).astype(x.dtype)


def resize_bicubic(images: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """`F.interpolate(x, size=out_hw, mode='bicubic', align_corners=False)`, NHWC.

  Interpolates along W first, then H, as torch's kernel nests them.
  """
  x = _resize_axis(images, 2, int(out_hw[1]))
  return _resize_axis(x, 1, int(out_hw[0]))


def resize_short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
  """torchvision Resize(int) output (h, w): short side -> size, long side truncated."""
  if w <= h:
    return int(size * h / w), size
  return size, int(size * w / h)


def center_crop(images: jax.Array, size: int) -> jax.Array:
  """torchvision CenterCrop for images at least `size` on both sides. (N,H,W,C)."""
  h, w = images.shape[1:3]
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return images[:, top:top + size, left:left + size]


def clip_preprocess(images: jax.Array, *, official_shift: bool = False, size: int = 224,
                    mean=CLIP_MEAN, std=CLIP_STD) -> jax.Array:
  """(N, H, W, 3) images in [0, 1] -> CLIP input (N, size, size, 3), CLIP-normalised.

  official_shift=True reproduces the official code's extra (v + 1) / 2 (so [0, 1] inputs
  become [0.5, 1]); False (the corrected behaviour) feeds the [0, 1] image as is.
  """
  x = images
  if official_shift:
    x = (x - x.dtype.type(-1.0)) / x.dtype.type(2.0)
  h, w = x.shape[1:3]
  if min(h, w) != size:  # torchvision returns the image unchanged when the short side fits
    x = resize_bicubic(x, resize_short_side_size(h, w, size))
  x = center_crop(x, size)
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  return (x - mean) / std
