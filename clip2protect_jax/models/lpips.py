"""LPIPS v0.1 with the VGG16 trunk (`lpips.LPIPS(net='vgg')` of lpips==0.1.4), Flax linen.

d(x0, x1) = sum_k mean_hw( w_k . (n(f_k(s(x0))) - n(f_k(s(x1))))^2 ), where
  s(x) = (x - shift) / scale is the ScalingLayer (shift/scale are parameters here, taken
        from the weights; lpips' constants are LPIPS_SHIFT / LPIPS_SCALE),
  f_k   = VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (3x3 convs pad 1, 2x2 max pools),
  n(f)  = f / (||f||_channels + 1e-10),
  w_k   = the 1x1 linear head (no bias; dropout is inactive in eval).
Images are NHWC in [-1, 1] (lpips' normalize=False); the output is (N,) float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16 `features` indices of the 13 convs, grouped into lpips' five slices.
VGG16_SLICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16Features(nn.Module):
  """VGG16 trunk; returns the 5 relu outputs [(N, H/2^k, W/2^k, C_k)] for k = 0..4."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    feats = []
    for k, (idxs, chans) in enumerate(zip(VGG16_SLICES, VGG16_CHANNELS)):
      if k > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for i, c in zip(idxs, chans):
        x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=jnp.float32, name=f"conv{i}")(x)
        x = nn.relu(x)
      feats.append(x)
    return feats


class LPIPS(nn.Module):
  """LPIPS-VGG v0.1. `__call__(x0, x1)` -> (N,); with per_layer=True also (5, N).

  The two halves as methods (`apply(..., method=LPIPS.features)` / `LPIPS.distance`), so a
  fixed image's features can be computed once: distance(features(x0), features(x1)) is
  __call__(x0, x1), which runs both images through the trunk as one batch.
  """
  dtype: Dtype = jnp.float32

  def setup(self):
    self.shift = self.param("shift", lambda *_: jnp.asarray(LPIPS_SHIFT, jnp.float32))
    self.scale = self.param("scale", lambda *_: jnp.asarray(LPIPS_SCALE, jnp.float32))
    self.vgg = VGG16Features(self.dtype)
    self.lin = [self.param(f"lin{k}", nn.initializers.normal(0.01), (chans[-1],), jnp.float32)
                for k, chans in enumerate(VGG16_CHANNELS)]

  @property
  def _accumulation_dtype(self) -> Dtype:
    return jnp.promote_types(self.dtype, jnp.float32)   # norms/means in >= float32

  def features(self, x):
    """(N, H, W, 3) in [-1, 1] -> the 5 VGG feature maps [(N, H/2^k, W/2^k, C_k)], each
    unit-normalised over channels, in the accumulation dtype (>= float32)."""
    x = ((x - self.shift.astype(x.dtype)) / self.scale.astype(x.dtype)).astype(self.dtype)
    feats = []
    for f in self.vgg(x):
      f = f.astype(self._accumulation_dtype)
      feats.append(f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10))
    return feats

  def distance(self, feats0, feats1, per_layer: bool = False):
    """LPIPS between two lists of `features` outputs (same shapes) -> (N,) [, (5, N)]."""
    acc = self._accumulation_dtype
    terms = jnp.stack([
        jnp.mean(jnp.einsum("nhwc,c->nhw", (f0 - f1) ** 2, w.astype(acc)), axis=(1, 2))
        for f0, f1, w in zip(feats0, feats1, self.lin, strict=True)])
    total = jnp.sum(terms, axis=0)
    return (total, terms) if per_layer else total

  def __call__(self, x0, x1, per_layer: bool = False):
    n = x0.shape[0]
    feats = self.features(jnp.concatenate([x0, x1], axis=0))
    return self.distance([f[:n] for f in feats], [f[n:] for f in feats], per_layer)
