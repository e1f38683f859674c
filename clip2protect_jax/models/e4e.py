"""The e4e encoder (encoder4editing `Encoder4Editing(50, 'ir_se', opts)`) in Flax.

Inference only (BatchNorm uses running statistics). Input: an FFHQ-aligned face,
NHWC [N, 256, 256, 3] float in [-1, 1] (`(u8/255 - 0.5)/0.5`). Output: the raw codes
[N, n_styles, 512] (row 0 = w0, row i = w0 + delta_i); add the checkpoint's `latent_avg`
(see `to_wplus`) to get the W+ latents the StyleGAN2 generator takes.

Parameter names mirror the module-local torch state_dict (the checkpoint key without its
`encoder.` prefix): the Flax path ('styles.5', 'convs.2', 'kernel') is torch's
`styles.5.convs.2.weight`; convert/e4e.py relies on this. The IR-SE body reuses the blocks
of models/face/irse.py.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from clip2protect_jax.models.face.irse import BatchNorm, BottleneckIR, PReLU, block_config, conv

Dtype = Any

# Taps of the IR-SE-50 body: c1 (128 ch, H/4), c2 (256 ch, H/8), c3 (512 ch, H/16).
C1_INDEX, C2_INDEX, C3_INDEX = 6, 20, 23


def n_styles(stylegan_size: int) -> int:
  """Number of W+ rows: 2*log2(size) - 2 (18 for 1024, 14 for 256)."""
  return 2 * int(math.log2(stylegan_size)) - 2


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float64 matrix of torch bilinear interpolation with align_corners=True."""
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.arange(n_out, dtype=np.float64) * scale
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  lam = src - i0
  m = np.zeros((n_out, n_in), np.float64)
  m[np.arange(n_out), i0] += 1.0 - lam
  m[np.arange(n_out), i1] += lam
  return m


def upsample_align_corners(x, out_hw: tuple[int, int]):
  """F.interpolate(mode='bilinear', align_corners=True) on NHWC `x` (any range)."""
  mh = jnp.asarray(_align_corners_matrix(x.shape[1], out_hw[0]), x.dtype)
  mw = jnp.asarray(_align_corners_matrix(x.shape[2], out_hw[1]), x.dtype)
  x = jnp.einsum("oh,nhwc->nowc", mh, x, precision="highest")
  return jnp.einsum("pw,nowc->nopc", mw, x, precision="highest")


class EqualLinear(nn.Module):
  """stylegan2 EqualLinear without activation, lr_mul 1: y = x @ (kernel / sqrt(in)) + bias."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    scale = jnp.asarray(1.0 / math.sqrt(x.shape[-1]), self.dtype)
    w = jnp.asarray(kernel, self.dtype) * scale
    return jnp.dot(x, w, precision="highest") + jnp.asarray(bias, self.dtype)


class GradualStyleBlock(nn.Module):
  """log2(spatial) stride-2 3x3 convs (bias) + LeakyReLU(0.01), flatten, EqualLinear.

  [N, s, s, C] -> [N, out_c]. torch names: convs.0, convs.2, ... (LeakyReLUs in between).
  """
  out_c: int
  spatial: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, return_convs: bool = False):
    for j in range(int(math.log2(self.spatial))):
      x = conv(self.out_c, 3, 2, 1, bias=True, dtype=self.dtype, name=f"convs.{2 * j}")(x)
      x = nn.leaky_relu(x, 0.01)
    pooled = x
    x = EqualLinear(self.out_c, dtype=self.dtype, name="linear")(x.reshape(x.shape[0], -1))
    return (x, pooled) if return_convs else x


class Encoder4Editing(nn.Module):
  """psp_encoders.Encoder4Editing(50, 'ir_se') at progressive stage Inference (all deltas).

  __call__(x [N, 256, 256, 3] in [-1, 1]) -> codes [N, n_styles, 512] (before latent_avg).
  With `debug=True` also returns a dict of intermediate NHWC tensors (golden dbg items).
  """
  stylegan_size: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, debug: bool = False):
    d = self.dtype
    dbg: dict[str, Any] = {}
    x = jnp.asarray(x, d)
    x = conv(64, 3, 1, 1, dtype=d, name="input_layer.0")(x)
    x = BatchNorm(dtype=d, name="input_layer.1")(x)
    x = PReLU(dtype=d, name="input_layer.2")(x)
    dbg["input_layer"] = x
    c1 = c2 = c3 = None
    for i, (cin, depth, stride) in enumerate(block_config(50)):
      x = BottleneckIR(cin, depth, stride, True, dtype=d, name=f"body.{i}")(x)
      dbg[f"body.{i}"] = x
      if i == C1_INDEX:
        c1 = x
      elif i == C2_INDEX:
        c2 = x
      elif i == C3_INDEX:
        c3 = x
    count = n_styles(self.stylegan_size)
    coarse, middle = 3, 7
    heads = []
    for i in range(count):
      spatial = c3.shape[1] if i < coarse else (c2.shape[1] if i < middle else c1.shape[1])
      heads.append(GradualStyleBlock(512, spatial, dtype=d, name=f"styles.{i}"))
    w0, conv0 = heads[0](c3, return_convs=True)
    dbg["styles.0.convs"] = conv0
    rows = [w0]
    features = c3
    for i in range(1, count):
      if i == coarse:
        lat1 = conv(512, 1, bias=True, dtype=d, name="latlayer1")(c2)
        dbg["latlayer1"] = lat1
        features = upsample_align_corners(c3, c2.shape[1:3]) + lat1
        dbg["styles.3.input"] = features
      elif i == middle:
        lat2 = conv(512, 1, bias=True, dtype=d, name="latlayer2")(c1)
        dbg["latlayer2"] = lat2
        features = upsample_align_corners(features, c1.shape[1:3]) + lat2
        dbg["styles.7.input"] = features
      delta, conv_i = heads[i](features, return_convs=True)
      dbg[f"styles.{i}.convs"] = conv_i
      dbg[f"delta.{i}"] = delta
      rows.append(w0 + delta)
    codes = jnp.stack(rows, axis=1)
    return (codes, dbg) if debug else codes


def to_wplus(codes, latent_avg):
  """codes [N, R, 512] + latent_avg ([R, 512] or [512]) -> W+ [N, R, 512]."""
  latent_avg = jnp.asarray(latent_avg, codes.dtype)
  if latent_avg.ndim == 1:
    latent_avg = latent_avg[None, :]
  return codes + latent_avg[None]


def images_to_input(images_u8) -> np.ndarray:
  """uint8 [N, 256, 256, 3] -> float32 [-1, 1] exactly as transform_test: (u8/255 - .5)/.5."""
  x = np.asarray(images_u8, np.uint8).astype(np.float32) / np.float32(255.0)
  return (x - np.float32(0.5)) / np.float32(0.5)
